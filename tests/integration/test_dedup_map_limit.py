"""Every shared page is a mapping of its own, and the kernel allows a process
vm.max_map_count of them: kvmem raises the limit before its merges reach
it, whichever thread merges. Here only the policy's "share" mechanism does
(the scanner is off), page by page (no windows), from a limit set low
before the host starts: the merges go past it, the limit is raised, and no
mapping is refused (a refused one leaves the page private and counts as a
failed commit). The limit is put back as it was at the end.

Two guests fill memory with pages identical across both, interleaved with
pages of their own, so that each merged page splits its neighbours'
mappings. They wait for a balloon target before they fill, so that nothing
is merged before the scanner is off. Every wait is a poll with a generous
deadline; nothing asserts on timing."""
from kvmemtest import check, finish, require_accel, require_root, wait_for
from ctlhelp import request
from deduphelp import DedupHost

MAX_MAP_COUNT = "/proc/sys/vm/max_map_count"
# Low, yet above what the host and the scanner's first batches may reserve
# (4096 for the process's other mappings, plus room for a batch's merges).
LIMIT = 8000
MEM, TARGET, FILL = 128, 112, 64     # MiB: each VM's RAM, its balloon target, its fill
VERIFY = r"kvmem-wl: verify ok \d+$"


def limit():
    with open(MAX_MAP_COUNT) as f:
        return int(f.read())


def set_limit(n):
    with open(MAX_MAP_COUNT, "w") as f:
        f.write(f"{n}\n")


require_accel()
require_root("the test lowers vm.max_map_count")
old = limit()
set_limit(LIMIT)
h = None
try:
    h = DedupHost([f"size={FILL},dup=50,id={i + 1},verify=2,wait=balloon,then=sleep"
                   for i in range(2)], mem=f"{MEM}M")
    d = h.dedup(enabled=False, windows=False)
    check(not d["enabled"] and not d["windows_enabled"],
          f"the scanner is off, merges page by page ({d['enabled']}, {d['windows_enabled']})")
    check(limit() == LIMIT, f"vm.max_map_count is still {LIMIT} before the guests fill ({limit()})")
    check(h.wait_all(r"kvmem-wl: waiting for the balloon$"), "both workloads wait for the balloon")
    for n in h.names:
        r = request(h.sock, {"verb": "balloon", "vm": n, "target": f"{TARGET}M"})
        check(r.get("ok") is True, f"{n}: balloon target {TARGET} MiB ({r.get('error', 'ok')})")
    check(h.wait_all(VERIFY), f"both guests filled {FILL} MiB and verified it")

    # A budget the host cannot meet: the policy reclaims, sharing included, every pass.
    r = request(h.sock, {"verb": "budget", "bytes": "16M"})
    check(r.get("ok") is True, f"budget 16 MiB ({r.get('error', 'ok')})")
    ok, d = h.wait_dedup(lambda d: d["merges"] > LIMIT // 2 or d["errors"] > 0)
    check(ok and d["merges"] > LIMIT // 2,
          f"the policy merged more pages than fit under the old limit ({d.get('merges')})")
    check(limit() > LIMIT, f"vm.max_map_count was raised ({LIMIT} -> {limit()})")
    check(wait_for(lambda: any("raised vm.max_map_count from 8000 " in l
                               for l in h.host.stderr()), 30),
          "the host says it raised the limit")
    s = h.stats()
    check(s["txn"]["failed"] == 0 and d["errors"] == 0 and d["map_refused"] == 0,
          f"no mapping was refused: failed commits {s['txn']['failed']}, errors "
          f"{d['errors']}, merges refused {d['map_refused']}")
    check(h.wait_more(VERIFY, 2), "both guests verify all their memory again")
    h.no_verify_fail("merges past the old limit")
finally:
    if h:
        h.stop()
    set_limit(old)
finish()
