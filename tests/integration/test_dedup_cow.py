"""Guests write into shared pages. Three guests share their identical pages;
then each rewrites a different half of them (cow=50 picks by id). The kernel
copies each written page on write: every guest sees its own writes, the
others keep the old content (still shared), and all of them verify. The
scanner notices the copy-on-write breaks and drops those frame references.

Ordering without timing: each guest announces its writes, then sleeps a
few seconds (cowwait) before making them; the test pauses it at once, waits
until the scanner has merged, and resumes it."""
from kvmemtest import check, finish, require_accel
from deduphelp import DedupHost

require_accel()
N, MIB = 3, 32
P = MIB * 256
D = P // 2
WL = f"size={MIB},dup=50,zero=25,cow=50,cowwait=3,verify=2,then=sleep"

h = DedupHost([WL + f",id={i + 1}" for i in range(N)])
try:
    check(h.wait_all(r"kvmem-wl: cow in 3 s$"), "every guest fills, verifies and announces its writes")
    h.pause_all()
    h.dedup(cpu_percent=100, pages_per_sec=1 << 20)
    ok, d = h.wait_dedup(lambda d: d["pages_sharing"] >= (N - 1) * D * 0.95)
    check(ok, f"identical pages are shared before the writes ({d.get('pages_sharing')} of "
          f"{(N - 1) * D})")
    before = d
    h.resume_all()
    check(h.wait_all(r"kvmem-wl: cow wrote \d+$"), "every guest writes into its dup pages")
    wrote = {v: int(h.lines(v, r"kvmem-wl: cow wrote \d+$")[0].split()[-1]) for v in h.names}
    total = sum(wrote.values())
    check(all(D * 0.4 <= w <= D * 0.6 for w in wrote.values()),
          f"each guest wrote about half of its dup pages ({wrote})")
    # The first verification after the writes: each guest sees exactly its own writes.
    check(h.wait_more(r"kvmem-wl: verify ok \d+$", 1), "every guest verifies after writing")
    h.no_verify_fail("after the writes")
    ok, d = h.wait_dedup(lambda d: d["cow_breaks"] - before["cow_breaks"] >= total * 0.9)
    check(ok, f"the scanner notices the copy-on-write breaks ({d.get('cow_breaks')} of the "
          f"{total} written pages, {before['cow_breaks']} before)")
    # Pages nobody wrote stay shared; frames written by every sharer are freed.
    check(d["pages_shared"] > 0 and d["pages_sharing"] > 0,
          f"unwritten identical pages stay shared ({d['pages_shared']} frames, "
          f"{d['pages_sharing']} sharing)")
    # A frame leaves the count and the store together (under the scanner's lock):
    # a property of every sample.
    check(d["store_bytes"] <= (d["pages_shared"] + 16) * 4096,
          f"the store holds no more than its live frames ({d['store_bytes']} bytes)")
    check(h.wait_more(r"kvmem-wl: verify ok \d+$", 2), "the guests go on verifying")
    h.no_verify_fail("copy-on-write")
    check(d["errors"] == 0, f"no dedup errors ({d['errors']})")
finally:
    h.stop()
finish()
