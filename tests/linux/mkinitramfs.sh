#!/bin/bash
# Make the initramfs a Linux guest of kvmem boots into (never committed: it
# is built from this machine's kernel modules and compiler):
#
#   tests/linux/mkinitramfs.sh KERNEL OUT
#
# KERNEL is a bzImage (Debian's /boot/vmlinuz-*); OUT the gzip'd cpio to
# write. Inside: /init, tests/linux/init.c built static with ${CC:-cc};
# /bin/kvmem-linux-wl, the workload the init runs for kvmem.wl= (the
# sources src/guest/linux/meson.build names: src/guest/linux and the
# engine's wl.c, wlgen.c, palloc.c, str.c), built static the same way; and
# the modules the virtio balloon needs (virtio_ring, virtio, virtio_mmio,
# virtio_balloon, those the kernel does not have built in), decompressed,
# with /lib/modules/load naming them in load order. The modules are the
# kernel's own, from /lib/modules/VERSION (VERSION read from the image's
# header) or from the lib/modules beside an unpacked kernel's boot/
# directory; KVMEM_MODULES names another directory. Needs cpio and gzip
# (and xz or zstd for compressed modules). Status 0, or 1 with the reason.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
die() { echo "mkinitramfs: $*" >&2; exit 1; }

(($# == 2)) || die "usage: tests/linux/mkinitramfs.sh KERNEL OUT"
kernel=$1 out=$2
[ -r "$kernel" ] || die "no readable kernel image $kernel"

# The version string: kernel_version (0x20e) points to it, less 0x200, in the setup code.
off=$(od -An -tu2 -j $((0x20e)) -N2 "$kernel" | tr -d ' ')
[[ $off =~ ^[0-9]+$ ]] && ((off > 0)) || die "$kernel: no kernel_version in its header"
version=$(dd if="$kernel" bs=1 skip=$((off + 0x200)) count=128 status=none | tr '\0' '\n' |
	head -n1 | cut -d' ' -f1)
[ -n "$version" ] || die "$kernel: empty version string"

if [ -n "${KVMEM_MODULES:-}" ]; then
	moddir=$KVMEM_MODULES
elif [ -d "$(dirname "$kernel")/../lib/modules/$version" ]; then
	moddir=$(cd "$(dirname "$kernel")/../lib/modules/$version" && pwd -P)
else
	moddir=/lib/modules/$version
fi
[ -d "$moddir" ] || die "no modules for $version in $moddir (KVMEM_MODULES names a directory)"

tmp=$(mktemp -d /tmp/kvmem-initramfs.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/root/lib/modules" "$tmp/root/bin" "$tmp/root/proc" "$tmp/root/sys" "$tmp/root/dev"

${CC:-cc} -std=gnu11 -static -O2 -Wall -Wextra -Werror -I"$repo/src" -o "$tmp/root/init" \
	"$here/init.c" || die "building init with ${CC:-cc} -static failed (libc.a installed?)"
${CC:-cc} -std=gnu11 -static -pthread -O2 -Wall -Wextra -Werror -I"$repo/src" \
	-o "$tmp/root/bin/kvmem-linux-wl" "$repo"/src/guest/linux/*.c \
	"$repo"/src/guest/{wl,wlgen,palloc,str}.c ||
	die "building kvmem-linux-wl with ${CC:-cc} -static failed"

: > "$tmp/root/lib/modules/load"
for m in virtio_ring virtio virtio_mmio virtio_balloon; do
	if [ -f "$moddir/modules.builtin" ] && grep -q "/$m\.ko$" "$moddir/modules.builtin"; then
		continue
	fi
	src=$(find "$moddir" -name "$m.ko" -o -name "$m.ko.*" | head -n1)
	[ -n "$src" ] || die "$m: neither built into $version nor a module in $moddir"
	case $src in
	*.ko) cp "$src" "$tmp/root/lib/modules/$m.ko" ;;
	*.ko.xz) xz -dc "$src" > "$tmp/root/lib/modules/$m.ko" ;;
	*.ko.zst) zstd -qdc "$src" > "$tmp/root/lib/modules/$m.ko" ;;
	*.ko.gz) gzip -dc "$src" > "$tmp/root/lib/modules/$m.ko" ;;
	*) die "$src: unknown compression" ;;
	esac
	echo "$m.ko" >> "$tmp/root/lib/modules/load"
done

(cd "$tmp/root" && find . -print0 | LC_ALL=C sort -z |
	cpio --null -o -H newc -R 0:0 --quiet) | gzip -9 > "$tmp/initramfs"
mv "$tmp/initramfs" "$out"
echo "mkinitramfs: $out: kernel $version, the workload bin/kvmem-linux-wl, modules" \
	"$(tr '\n' ' ' < "$tmp/root/lib/modules/load")"
