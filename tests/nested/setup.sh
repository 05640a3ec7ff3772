#!/bin/bash
# Prepare the nested SVM VM that tests/nested/run.sh boots: QEMU and the tools
# from Debian (only what is missing), the newest Debian 6.x amd64 kernel
# package unpacked without installing it, and an initramfs (busybox, the
# kvm/kvm-amd/9p modules, and loop and ext4 for the tests that need a
# filesystem of their own, in dependency order, tests/nested/init as /init).
#
#   bash tests/nested/setup.sh [--env-out FILE]
#
# Everything is cached in $KVMEM_NESTED_DIR (default /var/tmp/kvmem-nested):
# a second run only checks and prints one line. --env-out writes KERNEL=,
# INITRD=, KVER= for run.sh. KVMEM_NESTED_KPKG=linux-image-... picks the
# kernel package. Root, Debian 12 (or newer), no terminal needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${KVMEM_NESTED_DIR:-/var/tmp/kvmem-nested}
env_out=
while (($#)); do
	case $1 in
	--env-out) env_out=$2; shift 2 ;;
	*) echo "nested setup: unknown argument '$1' (usage: setup.sh [--env-out FILE])" >&2; exit 2 ;;
	esac
done
say() { echo "nested setup: $*"; }
die() { echo "nested setup: FAILED: $*" >&2; exit 1; }
[[ $work != *[[:space:]]* ]] || die "KVMEM_NESTED_DIR must not contain whitespace ('$work')"
mkdir -p "$work"
exec 9>"$work/.setup.lock"
flock 9 # one setup at a time (a CI run and a developer's run may share the dir)
export DEBIAN_FRONTEND=noninteractive

updated=0
apt_update() {
	((updated)) && return 0
	say "apt-get update"
	apt-get update -qq < /dev/null > "$work/apt-update.log" 2>&1 ||
		die "apt-get update failed (no network?); see $work/apt-update.log"
	updated=1
}

# Tools. qemu-system-x86 brings qemu-system-x86_64; busybox-static the
# initramfs's userland; kmod depmod/modprobe to order the modules.
pkgs=(qemu-system-x86 busybox-static xz-utils zstd cpio kmod gzip)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	apt_update
	say "installing ${missing[*]}"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" < /dev/null > "$work/apt-install.log" 2>&1 ||
		die "apt-get install ${missing[*]} failed; see $work/apt-install.log"
fi
command -v qemu-system-x86_64 > /dev/null || die "qemu-system-x86_64 is missing after installing qemu-system-x86"
[ -x /bin/busybox ] || die "/bin/busybox is missing after installing busybox-static"

# The kernel: the newest generic 6.x amd64 image the archive offers (not the
# cloud one: it lacks 9p), unless KVMEM_NESTED_KPKG names one.
newest_kpkg() {
	apt-cache search --names-only '^linux-image-6\.[0-9.]+[-+].*amd64$' 2>/dev/null | awk '{print $1}' |
		grep -vE -- '-(cloud|rt)-amd64$|-unsigned|-dbg' | sort -V | tail -1
}
kpkg=${KVMEM_NESTED_KPKG:-}
if [ -z "$kpkg" ]; then
	kpkg=$(newest_kpkg)
	[ -n "$kpkg" ] || { apt_update; kpkg=$(newest_kpkg); }
	[ -n "$kpkg" ] || die "apt-cache finds no linux-image-6.*-amd64 package"
fi
kdir=$work/kernels/$kpkg
if [ ! -f "$kdir/.complete" ]; then
	say "downloading and unpacking $kpkg (not installed)"
	tmp=$(mktemp -d "$work/kernel.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	if ! (cd "$tmp" && apt-get download "$kpkg" < /dev/null > download.log 2>&1); then
		# Stale package lists name a version the mirror no longer has: update once, retry.
		apt_update
		(cd "$tmp" && apt-get download "$kpkg" < /dev/null > download.log 2>&1) || {
			cp "$tmp/download.log" "$work/download.log" 2>/dev/null || true
			# A kernel already unpacked will do when the archive is out of reach.
			old=$(ls -d "$work"/kernels/*/.complete 2>/dev/null | sort -V | tail -1 || true)
			[ -n "$old" ] || die "apt-get download $kpkg failed (no network?): $(tail -n 1 "$work/download.log")"
			kdir=$(dirname "$old")
			say "apt-get download $kpkg failed; using the cached $(basename "$kdir")"
		}
	fi
	if [ ! -f "$kdir/.complete" ]; then
		dpkg-deb -x "$tmp"/*.deb "$tmp/root" || die "dpkg-deb -x of $kpkg failed"
		mkdir -p "$work/kernels"
		rm -rf "$kdir"
		mv "$tmp/root" "$kdir"
		touch "$kdir/.complete"
	fi
	rm -rf "$tmp"
	trap - EXIT
fi
moddir=$(ls -d "$kdir"/lib/modules/6.* "$kdir"/usr/lib/modules/6.* 2>/dev/null | head -1 || true)
[ -n "$moddir" ] || die "no lib/modules/6.* in $kdir"
kver=$(basename "$moddir")
base=${moddir%/lib/modules/*}
kernel=$(ls "$kdir"/boot/vmlinuz-"$kver" "$kdir"/usr/lib/linux/vmlinuz-"$kver" 2>/dev/null | head -1 || true)
[ -n "$kernel" ] || die "no vmlinuz-$kver in $kdir"

# The initramfs, named after what goes into it, so checkouts with different
# init scripts (or kernels) never rebuild each other's.
mods=(kvm_amd 9p 9pnet_virtio loop ext4)
key=$( { echo "$kver ${mods[*]}"; cat "$here/init"; sha256sum /bin/busybox; } | sha256sum | cut -c1-16)
initrd=$work/initramfs-$key.cpio.gz
if [ ! -f "$initrd" ]; then
	say "building the initramfs for $kver"
	[ -f "$moddir/modules.dep" ] || depmod -b "$base" "$kver" || die "depmod for $kver failed"
	root=$(mktemp -d "$work/initramfs.XXXXXX")
	trap 'rm -rf "$root"' EXIT
	mkdir -p "$root"/{bin,proc,sys,dev,mnt,lib/mods}
	cp /bin/busybox "$root/bin/busybox"
	cp "$here/init" "$root/init"
	chmod 755 "$root/init"
	# modprobe lists each module's dependencies before it (builtin ones as
	# "builtin NAME"); busybox insmod wants plain .ko files.
	for m in "${mods[@]}"; do
		modprobe -d "$base" -S "$kver" --show-depends "$m" ||
			die "modprobe finds no module $m in $kver"
	done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' > "$root/list"
	while read -r f; do
		n=$(basename "$f"); n=${n%%.ko*}
		case $f in
		*.xz) xz -dc "$f" > "$root/lib/mods/$n.ko" ;;
		*.zst) zstd -qdc "$f" > "$root/lib/mods/$n.ko" ;;
		*.gz) gzip -dc "$f" > "$root/lib/mods/$n.ko" ;;
		*) cp "$f" "$root/lib/mods/$n.ko" ;;
		esac
		echo "$n" >> "$root/lib/mods/order"
	done < "$root/list"
	rm "$root/list"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp"
	mv "$initrd.tmp" "$initrd"
	rm -rf "$root"
	trap - EXIT
fi
touch "$initrd"
# Initramfs images of other checkouts nobody used for a month go.
find "$work" -maxdepth 1 -name 'initramfs-*.cpio.gz' -mtime +30 -delete
say "ready: kernel $kver, $(basename "$initrd") in $work"
if [ -n "$env_out" ]; then
	printf 'KERNEL=%q\nINITRD=%q\nKVER=%q\n' "$kernel" "$initrd" "$kver" > "$env_out"
fi
