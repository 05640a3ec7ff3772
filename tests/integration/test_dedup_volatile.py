"""A page that changes between two visits is not merged. Two guests hold the
same pages; one keeps rewriting a hot quarter of them at a high rate. The
scanner counts pages whose content changed since their previous visit
(pages_volatile) and leaves them alone, the steady pages are shared, and
both guests verify. (The exact rule is checked page by page in the unit
test test_dedup_page_changing_between_visits_is_not_merged.)"""
from kvmemtest import check, finish, require_accel
from deduphelp import DedupHost

require_accel()
MIB = 16
P = MIB * 256
WL = f"size={MIB},dup=100,verify=3,then=sleep,id="

h = DedupHost([WL + "1", WL + "2,rate=64,hot=25"])
try:
    check(h.wait_all(r"kvmem-wl: verify ok \d+$"), "both guests fill and verify")
    h.dedup(cpu_percent=100, pages_per_sec=1 << 20)
    ok, d = h.wait_dedup(lambda d: d["pages_volatile"] > 0 and d["full_scans"] >= 3)
    check(ok, f"pages rewritten between visits are counted volatile ({d.get('pages_volatile')})")
    # The cold three quarters are shared; the hot quarter keeps changing.
    ok, d = h.wait_dedup(lambda d: d["pages_sharing"] >= P * 3 // 4 * 0.95)
    check(ok, f"the steady pages are shared ({d.get('pages_sharing')} of {P * 3 // 4})")
    # The hot quarter changes between any two visits: never shared, in any sample.
    check(d["pages_sharing"] < P, f"not every page is shared ({d['pages_sharing']} of {P})")
    check(h.wait_more(r"kvmem-wl: verify ok \d+$", 2), "both guests go on verifying")
    h.no_verify_fail("volatile pages")
    check(d["errors"] == 0, f"no dedup errors ({d['errors']})")
finally:
    h.stop()
finish()
