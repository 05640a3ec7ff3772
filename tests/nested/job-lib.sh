# Sourced by the job.sh that tests/nested/run.sh writes into a run's dir; runs
# inside the nested VM (chrooted into the host's /, in the checkout). OUT is
# the run's dir. step NAME CMD... runs one part of the job with its output on
# the console and in $OUT/stepN.log, and records "N<TAB>status<TAB>seconds<TAB>NAME"
# in $OUT/steps.tsv; finish exits 1 if any step failed.
nsteps=0
nfailed=0
step() {
	local name=$1 rc t0 t1 secs
	shift
	nsteps=$((nsteps + 1))
	echo "== $name"
	t0=$EPOCHREALTIME # no fork: forks are slow under emulation
	"$@" 2>&1 | tee "$OUT/step$nsteps.log"
	rc=${PIPESTATUS[0]}
	t1=$EPOCHREALTIME
	secs=$(((${t1/./} - ${t0/./}) / 1000000))
	printf '%s\t%s\t%s\t%s\n' "$nsteps" "$rc" "$secs" "$name" >> "$OUT/steps.tsv"
	echo "== $name: exit $rc after $secs s"
	((rc == 0)) || nfailed=$((nfailed + 1))
	sync
}
finish() {
	exit $((nfailed ? 1 : 0))
}
