#!/bin/bash
# Run kvmem's kvm tests (or any command) on hardware-style KVM from a machine
# without /dev/kvm: boot a Debian kernel under QEMU's software emulation (TCG,
# single-threaded) with an emulated AMD SVM CPU (-cpu max), load kvm-amd
# there, and run the job inside, chrooted into this machine's own / (shared
# read-only over 9p) with this checkout shared read-write at the same path,
# so the builds made here run unchanged. Results, the console and the guest
# kernel's log land in a run dir; QEMU is always gone when this returns.
#
#   tests/nested/run.sh [OPTIONS] [TEST...]        meson tests (default below)
#   tests/nested/run.sh [OPTIONS] -- CMD [ARG...]  any command, in the checkout
#   tests/nested/run.sh --shell                    a shell inside
#
# Default job: `meson test --suite integration-kvm` on build, then on
# build-asan when it exists (with the sanitizer options .ci/run uses), with a
# timeout multiplier; the sanitizer build leaves out the suite long-kvm (long
# scenarios, run under the sanitizers on thread instead), and both leave out
# slow-nested-kvm (budget scenarios that take minutes each under emulation,
# their kvm paths covered by other tests; --suite slow-nested-kvm runs them).
# The Linux guests' tests (suite linux-guests) are long scenarios: the
# normal build's. TEST names (e.g.
# run-kvm) replace the suite and run on build only, unless --build says
# otherwise. A ThreadSanitizer build (--build build-tsan) runs the suite
# tsan-kvm instead, each process ending at its first report.
#   --suite NAME     meson suite (repeatable; default integration-kvm)
#   --build DIR      build dir (repeatable; default build, and build-asan if built)
#   --multiplier N   meson --timeout-multiplier (default 3: emulation is slow)
#   --env VAR=VALUE  environment of the job (repeatable; the guest inherits none)
#   --share DIR      one more host dir writable inside at its own path (repeatable)
#   --timeout MIN    kill QEMU after MIN minutes (default 15 + 30 per meson run;
#                    60 for a command)
#   --mem SIZE       guest RAM (default 6G; less on a small host)   --smp N (default 1, below)
#   --append ARGS    more kernel command line (e.g. kvm_amd.npt=0)
#   --out DIR        the run dir (default $KVMEM_NESTED_DIR/runs/DATE-PID)
#   -v, --verbose    show the whole guest console live, not only the job's lines
# Status: 0 only if every step of the job passed (and no meson test skipped);
# 1 otherwise (the reason is printed: a failing test, a timeout, a guest that
# panicked or could not load kvm-amd or mount the shares); 2 usage error.
# Setup (packages, kernel, initramfs) is tests/nested/setup.sh, run first and
# cached in $KVMEM_NESTED_DIR (default /var/tmp/kvmem-nested). One nested
# VM runs at a time per KVMEM_NESTED_SLOT (default 0): a second slot lets a
# caller that knows a core is free run two (.ci/run does). See
# tests/nested/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
work=${KVMEM_NESTED_DIR:-/var/tmp/kvmem-nested}

say() { echo "nested: $*"; }
usage() { echo "nested: $*" >&2; echo "usage: tests/nested/run.sh [--suite S] [--build DIR] [--multiplier N] [--env V=X] [--share DIR] [--timeout MIN] [--mem SIZE] [--smp N] [--append ARGS] [--out DIR] [-v] [TEST...] [-- CMD...] | --shell" >&2; exit 2; }

suites=() builds=() tests=() cmd=() envs=() shares=()
mult=3 timeout_min= mem= smp= append= out= verbose=0 shell=0
while (($#)); do
	case $1 in
	--suite) suites+=("${2:?}"); shift 2 ;;
	--build) builds+=("${2:?}"); shift 2 ;;
	--multiplier) mult=${2:?}; shift 2 ;;
	--env) [[ ${2:-} == [A-Za-z_]*=* ]] || usage "--env wants VAR=VALUE"; envs+=("$2"); shift 2 ;;
	--share) shares+=("$(cd "${2:?}" && pwd -P)") || usage "no dir $2"; shift 2 ;;
	--timeout) timeout_min=${2:?}; shift 2 ;;
	--mem) mem=${2:?}; shift 2 ;;
	--smp) smp=${2:?}; shift 2 ;;
	--append) append=${2:?}; shift 2 ;;
	--out) out=${2:?}; shift 2 ;;
	-v | --verbose) verbose=1; shift ;;
	--shell) shell=1; shift ;;
	--) shift; cmd=("$@"); (($#)) || usage "nothing after --"; break ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) usage "unknown option $1" ;;
	*) tests+=("$1"); shift ;;
	esac
done
smp=${smp:-1}
[[ $mult =~ ^[0-9]+$ && $smp =~ ^[0-9]+$ ]] || usage "--multiplier and --smp take numbers"
[[ -z $timeout_min || $timeout_min =~ ^[0-9]+$ ]] || usage "--timeout takes minutes"
((${#cmd[@]} == 0 || ${#tests[@]} + ${#suites[@]} == 0)) || usage "give either meson tests or a command"
user_suites=${#suites[@]}
((user_suites)) || suites=(integration-kvm)

# Setup (cached) first: it installs QEMU when it is missing.
bash "$here/setup.sh" --env-out "$work/.env.$$"
# shellcheck disable=SC1090
. "$work/.env.$$"
rm -f "$work/.env.$$"

# One nested VM at a time per slot: two would fight over the core QEMU's
# one TCG thread leaves free. A run that finds another in its slot waits
# for it.
slot=${KVMEM_NESTED_SLOT:-0}
[[ $slot =~ ^[0-9]+$ ]] || usage "KVMEM_NESTED_SLOT takes a number"
lock=$work/run.lock
((slot == 0)) || lock=$work/run-$slot.lock
exec {lockfd}> "$lock"
if ! flock -n "$lockfd"; then
	say "another nested run holds $lock: waiting for it to end"
	flock "$lockfd"
fi

# The run dir; keep the last 10 (a run another slot runs now is among them).
mkdir -p "$work/runs"
if [ -z "$out" ]; then
	out=$work/runs/$(date +%Y%m%d-%H%M%S)-$$
	{ ls -d "$work"/runs/*/ 2> /dev/null || true; } | sort | head -n -9 | xargs -r rm -rf
fi
mkdir -p "$out"
out=$(cd "$out" && pwd -P)
rm -f "$out"/{config,job.sh,booted,exit,fatal,steps.tsv,dmesg.txt,console.log,qemu.err} "$out"/step*.log
for p in "$repo" "$out" "${shares[@]}"; do
	# The kernel command line and the share list are split on blanks.
	[[ $p != *[[:space:]]* ]] || usage "paths with blanks cannot be shared: '$p'"
done

# The job.
q() { printf '%q ' "$@"; }
job=$out/job.sh
{
	echo "# written by tests/nested/run.sh; runs inside the nested VM"
	echo "export OUT=$(q "$out")"
	echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8"
	for e in "${envs[@]}"; do echo "export $(q "$e")"; done
	cat "$here/job-lib.sh"
	echo "cd $(q "$repo") || exit 1"
} > "$job"
nmeson=0
names=()
if ((shell)); then
	:
elif ((${#cmd[@]})); then
	names+=("command: ${cmd[*]}")
	echo "step $(q "${names[-1]}") $(q "${cmd[@]}")" >> "$job"
else
	if ((${#builds[@]} == 0)); then
		builds=(build)
		((${#tests[@]})) || [ ! -f "$repo/build-asan/build.ninja" ] || builds+=(build-asan)
	fi
	sel=()
	if ((${#tests[@]})); then
		sel=("${tests[@]}")
	else
		for s in "${suites[@]}"; do sel+=(--suite "$s"); done
		# Minutes each under emulation, their kvm paths covered by other tests (tests/meson.build).
		[[ " ${suites[*]} " == *" slow-nested-kvm "* ]] || sel+=(--no-suite slow-nested-kvm)
	fi
	for b in "${builds[@]}"; do
		bdir=$(cd "$repo" && cd "$b" 2> /dev/null && pwd -P) || usage "no build dir $b (bash .ci/setup builds build and, with SANITIZE=1, build-asan and build-tsan)"
		[ -f "$bdir/build.ninja" ] || usage "$b is not a configured meson build dir"
		[[ $bdir == "$repo"/* ]] || shares+=("$bdir")
		# The guest runs what is built here: bring it up to date first (the
		# guest gets --no-rebuild; a build under emulation would take ages).
		ninja -C "$bdir" > "$out/ninja-$(basename "$b").log" 2>&1 || { cat "$out/ninja-$(basename "$b").log"; say "FAILED: ninja -C $b"; exit 1; }
		# A sanitizer build (b_sanitize is "none", or a list, by meson version)
		# gets the options .ci/run gives it.
		san=$(python3 -c 'import json, sys; v = next((o["value"] for o in json.load(open(sys.argv[1])) if o["name"] == "b_sanitize"), "none"); print(",".join(v) if isinstance(v, list) else v)' \
			"$bdir/meson-info/intro-buildoptions.json" 2> /dev/null || echo none)
		env=() bsel=("${sel[@]}") what="${tests[*]:-${suites[*]}}"
		if [[ $san == *thread* ]]; then
			# ThreadSanitizer: the first report ends that process (status 66), so the
			# test fails on it; its subset of the suite (tsan-kvm, tests/meson.build)
			# unless tests or suites were named. GCC's TSan cannot start under more
			# than 28 random mmap bits, which a newer guest kernel may have.
			env=(env TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1)
			((${#tests[@]} || user_suites)) || { bsel=(--suite tsan-kvm); what=tsan-kvm; }
			echo '[ "$(cat /proc/sys/vm/mmap_rnd_bits)" -le 28 ] || sysctl -qw vm.mmap_rnd_bits=28' >> "$job"
		elif [[ $san != none && -n $san ]]; then
			env=(env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1)
			# Long scenarios run under the sanitizers on thread, and here with the normal build.
			((${#tests[@]})) || bsel+=(--no-suite long-kvm)
		fi
		names+=("$what ($b)")
		echo "step $(q "${names[-1]}") ${env[*]} meson test -C $(q "$bdir") --no-rebuild --print-errorlogs --num-processes 1 -t $mult --logbase nested $(q "${bsel[@]}")" >> "$job"
		nmeson=$((nmeson + 1))
	done
fi
echo "finish" >> "$job"

share_list="s0:$repo s1:$out"
virtfs=(-virtfs "local,path=$repo,mount_tag=s0,security_model=none,multidevs=remap"
	-virtfs "local,path=$out,mount_tag=s1,security_model=none,multidevs=remap")
i=2
for s in "${shares[@]}"; do
	share_list+=" s$i:$s"
	virtfs+=(-virtfs "local,path=$s,mount_tag=s$i,security_model=none,multidevs=remap")
	i=$((i + 1))
done
{
	echo "MODE=$( ((shell)) && echo shell || echo job)"
	echo "SHARES='$share_list'"
	echo "SHELL_DIR='$repo'"
} > "$out/config"

if [ -z "$mem" ]; then
	# 6G unless the host has less to give (QEMU itself takes ~1G more).
	avail=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
	mem=6G
	if ((avail < 8192)); then
		mem=$((avail - 2048 < 2048 ? 2048 : avail - 2048))M
		say "only $avail MiB available here: the guest gets $mem"
	fi
fi
if [ -z "$timeout_min" ]; then
	if ((${#cmd[@]})); then timeout_min=60; else timeout_min=$((15 + 30 * nmeson)); fi
fi

console=$out/console.log
# panic=-1 + -no-reboot: a panicking guest ends QEMU at once; oops=panic: an
# oops of the guest kernel (KVM included) fails the run instead of hanging it.
# highres=off nohz=off: L1 keeps its local APIC timer periodic. QEMU 7.2's
# emulated SVM (helper_vmrun) sets a bit of the CPU's interrupt_request
# without the lock every other writer holds: a timer or virtio interrupt
# raised by QEMU's main thread at that moment loses its wake-up, and a
# halted CPU stays halted with the vector pending in the APIC's IRR (seen:
# HLT=1, IF=1, IRR 236, ISR empty, QEMU idle). A one-shot timer is never
# armed again, so with one CPU L1 slept for good, more often the more the
# host was loaded; a periodic one re-raises the interrupt every tick, which
# delivers whatever is pending. (QEMU 10.2 makes those writes atomic.)
kargs="console=ttyS0 loglevel=5 panic=-1 oops=panic highres=off nohz=off kvmem_nested.out=$out $append"
# One CPU: with two, a Linux guest of L1's KVM hangs within minutes once it
# has a timer. When KVM injects an interrupt at VMRUN (EVENTINJ), QEMU's
# emulated SVM (7.2 to 10.0) delivers it but leaves its vector as the CPU's
# pending exception; the round-robin scheduler's kick of a CPU (every
# 100 ms, and whenever another CPU is kicked; with one CPU there is none)
# then makes QEMU deliver that vector into the guest a second time,
# whatever its interrupt flag. A timer handler run twice over spins for
# ever on the lock its first run holds. A second CPU would buy nothing:
# single-threaded TCG runs one at a time. The guests' vCPUs are threads of
# L1 and share its one CPU.
qemu=(qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot
	-accel tcg,thread=single,tb-size=512 -cpu "${KVMEM_NESTED_CPU:-max}" -smp "$smp" -m "$mem"
	-kernel "$KERNEL" -initrd "$INITRD" -append "$kargs"
	-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
	"${virtfs[@]}")

if ((shell)); then
	say "a shell in the nested VM (kernel $KVER); exit it to power off"
	"${qemu[@]}" -serial mon:stdio
	exit $?
fi

say "booting kernel $KVER under TCG (-cpu max, $smp CPUs, $mem); run dir $out"
say "job: $(IFS=';'; echo "${names[*]}" | sed 's/;/; /g') (QEMU timeout $timeout_min min)"
t0=$(date +%s)
: > "$console"
# The QEMU monitor listens in the run dir: a hung run can be asked where L1's
# CPUs are (socat - UNIX-CONNECT:RUN/monitor.sock, then info registers, info lapic).
timeout --kill-after=30 "${timeout_min}m" "${qemu[@]}" -serial "file:$console" \
	-monitor "unix:$out/monitor.sock,server=on,wait=off" \
	< /dev/null > "$out/qemu.err" 2>&1 &
qpid=$!
trap 'kill $qpid 2> /dev/null || true' EXIT
trap 'kill $qpid 2> /dev/null || true; say "interrupted: QEMU stopped"; exit 1' INT TERM
# Follow the console: the job's lines (and every kernel alarm) as they come.
# (bash reads it: tr and mawk would hold lines back in their buffers.)
follow() {
	local l
	while IFS= read -r l; do
		l=${l%$'\r'}
		if ((verbose)); then
			printf '%s\n' "$l"
		elif [[ $l == 'job| '* ]]; then
			printf '%s\n' "${l:5}"
		elif [[ $l =~ ^kvmem-nested:\ |Kernel\ panic|Oops|BUG:|WARNING:|Call\ Trace:|Out\ of\ memory|soft\ lockup ]]; then
			printf 'guest: %s\n' "$l"
		fi
	done
}
tail -n +1 -F --pid="$qpid" "$console" 2> /dev/null | follow &
tpid=$!
set +e
wait "$qpid"
qrc=$?
wait "$tpid" 2> /dev/null
set -e
trap - EXIT INT TERM
total=$(($(date +%s) - t0))
mins() { awk -v s="$1" 'BEGIN { printf "%.1f", s / 60 }'; }

fail=
con=$out/console.txt
tr -d '\r' < "$console" > "$con"
# The step the guest was in when it ended, if it ended inside one.
running=$(grep -E '^job\| == ' "$con" | tail -n 1 | sed 's/^job| == //' || true)
[[ $running != *": exit "* ]] || running=
if ((qrc == 124 || qrc == 137)); then
	fail="QEMU did not finish within $timeout_min min: killed it"
elif [ ! -f "$out/exit" ]; then
	# The guest ended without results: say why, from the console.
	if grep -q '^kvmem-nested: FATAL' "$con"; then
		fail="the guest could not start the job: $(grep -m1 '^kvmem-nested: FATAL' "$con" | sed 's/^kvmem-nested: FATAL //')"
	elif grep -qE 'Kernel panic' "$con"; then
		fail="the guest kernel panicked: $(grep -m1 -E 'Kernel panic' "$con" | sed 's/^\[[ 0-9.]*\] //')"
		! grep -qE 'Out of memory|oom-kill' "$con" || fail+=" (it ran out of memory: try --mem)"
	elif ((qrc != 0)); then
		fail="QEMU failed (status $qrc): $(tail -3 "$out/qemu.err" | paste -sd' ' -)"
	elif [ ! -s "$console" ]; then
		fail="the guest wrote nothing on its console (QEMU: $(tail -3 "$out/qemu.err" | paste -sd' ' -))"
	else
		fail="the guest ended without writing its results (no $out/exit)"
	fi
fi
[ -z "$fail" ] || [ -z "$running" ] || [ -f "$out/exit" ] || fail+=", in the step '$running' (see the console tail)"

echo
say "== results (run dir $out)"
steps_total=0
bad_steps=0
if [ -f "$out/steps.tsv" ]; then
	while IFS=$'\t' read -r n rc secs name; do
		steps_total=$((steps_total + secs))
		log=$out/step$n.log
		counts=$(grep -E '^(Ok|Fail|Skipped|Timeout|Expected Fail|Unexpected Pass): +[0-9]+' "$log" 2> /dev/null |
			awk -F': *' '$2 + 0 > 0 || $1 == "Ok" { printf "%s%s %d", sep, $1, $2; sep = ", " }' || true)
		skipped=$(grep -E '^Skipped: +[0-9]+' "$log" 2> /dev/null | awk '{ print $2 }' || true)
		verdict="passed"
		if ((rc != 0)); then
			verdict="FAILED (exit $rc)"
		elif [ "${skipped:-0}" != 0 ]; then
			verdict="FAILED ($skipped skipped: is /dev/kvm usable inside?)"
		fi
		[ "$verdict" = passed ] || bad_steps=$((bad_steps + 1))
		say "$name: $verdict in $(mins "$secs") min${counts:+ ($counts)}"
		# (meson prints a failing test twice: as it ends and in its summary)
		grep -E '^ *[0-9]+/[0-9]+ .* (FAIL|TIMEOUT|ERROR|SKIP|UNEXPECTEDPASS) ' "$log" | awk '!seen[$0]++ { print "    " $0 }' || true
	done < "$out/steps.tsv"
fi
if [ -f "$out/exit" ] && [ "$(cat "$out/exit")" != 0 ] && ((bad_steps == 0)); then
	fail=${fail:-"the job exited $(cat "$out/exit")"}
fi
((bad_steps == 0)) || fail=${fail:-"$bad_steps step(s) failed"}

# The guest kernel's log: its alarms, then its tail.
klog=$out/dmesg.txt
[ -s "$klog" ] || { klog=$out/console-kernel.txt; grep -E '^\[ *[0-9]+\.[0-9]+\]' "$con" > "$klog" || true; }
alarms='WARNING:|BUG:|Oops|Call Trace:|general protection|Kernel panic|soft lockup|hung_task|blocked for more than|Out of memory|oom-kill|kvm.*(error|fail)|segfault'
n=$(grep -cE "$alarms" "$klog" || true)
say "== guest kernel log ($(basename "$klog")): ${n:-0} WARN/BUG/Oops/OOM lines"
grep -E "$alarms" "$klog" | head -40 | sed 's/^/    /' || true
say "   its tail:"
tail -n 8 "$klog" | sed 's/^/    /'
if [ -n "$fail" ] && [ ! -f "$out/exit" ]; then
	say "== console tail"
	tail -n 25 "$con" | sed 's/^/    /'
fi

say "== minutes: boot, power-off and the rest $(mins $((total > steps_total ? total - steps_total : 0))), $(
	[ -f "$out/steps.tsv" ] && awk -F'\t' '{ printf "%s %.1f, ", $4, $3 / 60 }' "$out/steps.tsv")total $(mins "$total") (QEMU wall)"
if [ -n "$fail" ]; then
	say "FAILED: $fail"
	exit 1
fi
say "passed"
