#!/bin/bash
# The libFuzzer targets of tests/fuzz: built in their own directory (clang,
# -Dfuzz=true), then run.
#
#   tests/fuzz/run.sh regress [TARGET...]
#       every target over its committed corpus (tests/fuzz/corpus/TARGET),
#       then a fixed number of mutations from a fixed seed: a minute or two
#       in all, for CI. Fails on any crash, leak, timeout or broken invariant.
#   tests/fuzz/run.sh long [SECONDS | --runs N] [--jobs J] [TARGET...]
#       each target in turn for SECONDS (default 600) or N executions, from a
#       working corpus kept between runs (the committed one to start with);
#       prints per target its executions, exec/s, coverage (cov: edges, ft:
#       features, from libFuzzer's last status line) and crashes. --jobs J:
#       J fuzzers of the target at once on the one corpus, each pinned to a
#       CPU of its own, N split between them; the figures are their sums
#       (coverage: the best of them).
#
# Environment: BUILD (default build-fuzz), CC (default clang, else
# clang-14), FUZZ_WORK (long's corpora and crash files; default
# $BUILD/fuzz-work). Nothing is written to the committed corpus: what a run
# finds goes to a directory of its own (regress: a temporary one).
set -euo pipefail
cd "$(dirname "$0")/../.."

targets_all=(fuzz_virtq fuzz_virtio_mmio fuzz_balloon fuzz_config fuzz_size fuzz_control
	fuzz_elf fuzz_stream)
# regress: mutations per target after the corpus, up to about 10 s each on
# a 2-core machine (the migration stream makes a VM, and a snapshot file for
# some inputs, and starts the destination's thread for every input: several
# hundred a second; the balloon and the control socket a few thousand).
declare -A regress_runs=(
	[fuzz_virtq]=200000 [fuzz_virtio_mmio]=40000 [fuzz_balloon]=20000 [fuzz_config]=60000
	[fuzz_size]=500000 [fuzz_control]=20000 [fuzz_elf]=100000 [fuzz_stream]=3000
)
# libFuzzer options of one target, for regress and long alike.
# fuzz_control: inputs of at most 1 KiB. Its working corpus grew to 4 KiB
# inputs of up to a hundred requests, most of them one verb repeated for
# libFuzzer's hit-count features ("metrics" 99 times in one input), each
# request 50 to 500 us in this build: 2 ms an input. Cut to 1 KiB, that
# corpus covers the same edges in every function (-print_coverage); the one
# check past 1 KiB a request can reach, a guest command line's 2 KiB limit,
# is config.c's, which fuzz_config reaches.
declare -A target_opts=([fuzz_control]="-max_len=1024")
SEED=20240601
BUILD=${BUILD:-build-fuzz}
corpus_dir=tests/fuzz/corpus

usage() {
	sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

build() {
	local cc=${CC:-}

	if [ -z "$cc" ]; then
		cc=clang
		command -v clang >/dev/null || cc=clang-14
	fi
	if [ ! -f "$BUILD/build.ninja" ]; then
		CC=$cc meson setup "$BUILD" -Dfuzz=true >/dev/null
	fi
	ninja -C "$BUILD" >/dev/null
}

# libFuzzer's options for every run: errors of the code under test out of
# the way (stderr closed; libFuzzer's and the sanitizers' reports still
# show), a hang is a failure after 60 s, memory is bounded.
common=(-close_fd_mask=2 -timeout=60 -rss_limit_mb=4096 -print_final_stats=1)

# Figures from a libFuzzer log: "execs exec/s cov ft" (the last status line).
figures() {
	awk '
		/stat::number_of_executed_units:/ { execs = $2 }
		/stat::average_exec_per_sec:/ { rate = $2 }
		/^#[0-9]+/ {
			for (i = 1; i <= NF; i++) {
				if ($i == "cov:") cov = $(i + 1)
				if ($i == "ft:") ft = $(i + 1)
			}
		}
		END { printf "%s %s %s %s\n", execs + 0, rate + 0, cov + 0, ft + 0 }' "$1"
}

# Crash, leak, timeout and out-of-memory inputs of target $2 in directory $1,
# written since the file $3 was.
crashes() {
	find "$1" -maxdepth 1 -type f \( -name "$2-crash-*" -o -name "$2-leak-*" -o \
		-name "$2-timeout-*" -o -name "$2-oom-*" \) -newer "$3" | wc -l
}

# Run target $1 again on each input that failed, stderr open this time: the
# sanitizer's report or the invariant that broke, and kvmem's own messages.
why() {
	local t=$1 f
	shift
	for f in "$@"; do
		[ -f "$f" ] || continue
		echo "== $f"
		"$BUILD/tests/fuzz/$t" -timeout=60 "$f" 2>&1 | grep -vE '^(INFO|Running|Executed|MS:|base64)' |
			tail -25 || true
	done
}

pick_targets() {
	local t
	if [ $# -eq 0 ]; then
		targets=("${targets_all[@]}")
		return
	fi
	for t in "$@"; do
		[ -d "$corpus_dir/$t" ] || { echo "run.sh: no target $t" >&2; exit 2; }
	done
	targets=("$@")
}

regress() {
	local tmp failed=0 t log start
	pick_targets "$@"
	build
	tmp=$(mktemp -d /tmp/kvmem-fuzz-regress.XXXXXX)
	printf '%-18s %9s %9s %6s %6s %6s %s\n' target execs exec/s cov ft secs result
	for t in "${targets[@]}"; do
		log=$tmp/$t.log
		mkdir -p "$tmp/$t"
		start=$(date +%s)
		# shellcheck disable=SC2086 # target_opts: options, one word each
		if "$BUILD/tests/fuzz/$t" "${common[@]}" ${target_opts[$t]:-} -seed=$SEED \
			-runs="${regress_runs[$t]}" \
			-artifact_prefix="$tmp/$t-" "$tmp/$t" "$corpus_dir/$t" >"$log" 2>&1; then
			result=ok
		else
			result="FAILED (log: $log)"
			failed=1
		fi
		read -r execs rate cov ft <<<"$(figures "$log")"
		printf '%-18s %9s %9s %6s %6s %6s %s\n' "$t" "$execs" "$rate" "$cov" "$ft" \
			"$(($(date +%s) - start))" "$result"
		[ "$result" = ok ] || why "$t" "$tmp"/"$t"-*
	done
	if ((failed)); then
		echo "run.sh: regression FAILED: the inputs are in $tmp (reproduce: $BUILD/tests/fuzz/TARGET FILE)"
		exit 1
	fi
	rm -rf "$tmp"
}

# One fuzzer of target $1 writing log $2, pinned to CPU $3 where taskset is:
# every input of some targets starts a thread, and the sanitizer maps and
# unmaps each thread's state; a process whose threads ran on both CPUs pays
# an IPI for every unmap's TLB flush, which in a VM costs more than the rest
# of a short input (fuzz_stream: 966 a second unpinned, 1,329 pinned).
fuzz_one() {
	local t=$1 log=$2 cpu=$3 pin=()
	shift 3
	command -v taskset >/dev/null && pin=(taskset -c "$cpu")
	# Exit status aside: a crash is counted from the files it left.
	# shellcheck disable=SC2086 # target_opts: options, one word each
	"${pin[@]}" "$BUILD/tests/fuzz/$t" "${common[@]}" ${target_opts[$t]:-} "$@" \
		-artifact_prefix="$work/artifacts/$t-" "$work/$t" "$corpus_dir/$t" >"$log" 2>&1 || true
}

long() {
	local limit=(-max_total_time=600) runs=0 jobs=1 t n i failed=0 logs found
	while [ $# -gt 0 ]; do
		case $1 in
		--runs) [ $# -ge 2 ] || usage; runs=$2; shift 2 ;;
		--jobs)
			[[ ${2:-} =~ ^[1-9][0-9]*$ ]] || usage
			jobs=$2
			shift 2
			;;
		[0-9]*) [[ $1 =~ ^[0-9]+$ ]] || usage; limit=(-max_total_time="$1"); shift ;;
		*) break ;;
		esac
	done
	((runs == 0)) || limit=(-runs=$(((runs + jobs - 1) / jobs)))
	pick_targets "$@"
	build
	work=${FUZZ_WORK:-$BUILD/fuzz-work}
	printf '%-18s %11s %9s %6s %6s %7s %s\n' target execs exec/s cov ft corpus crashes
	for t in "${targets[@]}"; do
		mkdir -p "$work/$t" "$work/artifacts"
		touch "$work/$t.start"
		logs=("$work/$t.log")
		for ((i = 1; i < jobs; i++)); do
			logs+=("$work/$t.$i.log")
		done
		for ((i = 0; i < jobs; i++)); do
			fuzz_one "$t" "${logs[$i]}" $((i % $(nproc))) "${limit[@]}" &
		done
		wait
		read -r execs rate cov ft <<<"$(for i in "${logs[@]}"; do figures "$i"; done |
			awk '{ e += $1; r += $2; if ($3 > c) c = $3; if ($4 > f) f = $4 }
				END { printf "%d %d %d %d\n", e, r, c, f }')"
		n=$(crashes "$work/artifacts" "$t" "$work/$t.start")
		if ((n)); then
			failed=1
			mapfile -t found < <(find "$work/artifacts" -maxdepth 1 -type f -name "$t-*" \
				-newer "$work/$t.start")
			why "$t" "${found[@]}"
		fi
		printf '%-18s %11s %9s %6s %6s %7s %s\n' "$t" "$execs" "$rate" "$cov" "$ft" \
			"$(find "$work/$t" -type f | wc -l)" "$n"
	done
	echo "run.sh: logs, corpora and crash inputs in $work"
	exit $failed
}

[ $# -ge 1 ] || usage
mode=$1
shift
case $mode in
regress) regress "$@" ;;
long) long "$@" ;;
*) usage ;;
esac
