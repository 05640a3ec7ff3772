"""When every sharer of a frame has written its page, the frame is freed:
three guests share all their (identical) pages, then each rewrites every
one of them. Every old frame loses its last reference and is punched out of
the store; the new contents, identical again across the guests, are shared
anew; every guest verifies."""
from kvmemtest import check, finish, require_accel
from deduphelp import DedupHost

require_accel()
N, MIB = 3, 16
P = MIB * 256
WL = f"size={MIB},dup=100,cow=100,cowwait=3,verify=2,then=sleep"

h = DedupHost([WL + f",id={i + 1}" for i in range(N)])
try:
    check(h.wait_all(r"kvmem-wl: cow in 3 s$"), "every guest fills and announces its writes")
    h.pause_all()
    h.dedup(cpu_percent=100, pages_per_sec=1 << 20)
    ok, before = h.wait_dedup(lambda d: d["pages_shared"] >= P * 0.95 and
                              d["pages_sharing"] >= (N - 1) * P * 0.95)
    check(ok, f"all identical pages are shared ({before.get('pages_shared')} frames)")
    h.resume_all()
    check(h.wait_all(r"kvmem-wl: cow wrote \d+$"), "every guest rewrites every page")
    check(h.wait_more(r"kvmem-wl: verify ok \d+$", 1), "every guest verifies after writing")
    # The frames of the rewritten pages (all but a few of the guests' own bookkeeping pages).
    ok, d = h.wait_dedup(lambda d: d["frames_freed"] - before["frames_freed"] >= P * 0.95)
    check(ok, f"the old frames are freed ({d.get('frames_freed')} freed; there were "
          f"{before['pages_shared']}, {P} of them for the rewritten pages)")
    ok, d = h.wait_dedup(lambda d: d["pages_shared"] >= P * 0.95 and
                         d["pages_sharing"] >= (N - 1) * P * 0.95)
    check(ok, f"the new identical contents are shared again ({d.get('pages_shared')} frames)")
    # A frame leaves the count and the store together (under the scanner's lock):
    # a property of every sample.
    check(d["store_bytes"] <= (d["pages_shared"] + 16) * 4096,
          f"freed frames are punched out: the store holds its live frames only "
          f"({d['store_bytes']} bytes for {d['pages_shared']} frames)")
    check(h.wait_more(r"kvmem-wl: verify ok \d+$", 2), "the guests go on verifying")
    h.no_verify_fail("frames freed")
    check(d["errors"] == 0, f"no dedup errors ({d['errors']})")
finally:
    h.stop()
finish()
