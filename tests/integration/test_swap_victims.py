"""Which pages swap takes: the coldest chunks by access information, against random victims.

The same guest twice, on a host with swap: 320 MiB of unique pages, a hot
tenth of them written and read all the time, the rest untouched after the
fill. Once the access monitor has watched a few intervals, the budget drops
to a little more than half of what the guest holds, so the policy swaps.
With the coldest chunks first (the default), the pages that go are the
untouched ones and the guest hardly reads any back; with random victims
(swap.victims "random", ESX 2002's choice) a tenth of what goes is hot and
comes straight back. Both settle under the budget; the random host reads
back several times more. The stats name the source of the access
information and the victim choice; neither guest reports a page it did not
write.

Every wait is a poll with a generous deadline; nothing asserts on timing."""
import time

from kvmemtest import check, finish, require_accel
from ctlhelp import no_verify_fail, request, stats, tmpdir, vm_of, wait_state
from swaphelp import MIB, disk_dir, show_vm, swap_host, swapped_in

require_accel()

SIZE = 320
BUDGET = SIZE // 2 + 40
SLACK = 16 * MIB
# Policy passes (one a second) watched before the squeeze: cold chunks are this many intervals old.
WATCH_PASSES = 8

ddir, dfs = disk_dir()
if not check(ddir is not None, f"a directory on a disk filesystem for the swap file ({dfs})"):
    finish()


def squeeze(victims):
    """Run the guest under a host taking `victims`; the pages it read back once squeezed."""
    d = tmpdir()
    h, sock = swap_host(d, {"path": ddir, "size": "1G", "victims": victims}, [
        {"name": "a", "mem": "512M",
         "append": f"kvmem.wl=size={SIZE},id=1,rate=4,read=16,hot=10,then=sleep"}])
    back = None
    try:
        check(h.wait_line(r"^\[a\] kvmem-wl: filled", 1, 300), f"{victims}: the guest filled")
        p0 = stats(sock)["host"]["policy_passes"]
        wait_state(sock, None, lambda st: st["host"]["policy_passes"] >= p0 + WATCH_PASSES,
                   f"{victims}: the access monitor watches {WATCH_PASSES} intervals")
        st = stats(sock)
        check(st["host"]["access_source"] in ("sampling", "damon") and
              st["host"]["swap"]["victims"] == victims,
              f"{victims}: the stats name the access source ({st['host']['access_source']}) "
              f"and the victims ({st['host']['swap']['victims']})")
        r = request(sock, {"verb": "budget", "bytes": f"{BUDGET}M"})
        check(r.get("ok") is True, f"{victims}: the budget drops to {BUDGET} MiB ({r})")
        ok, st = wait_state(sock, None, lambda st: st["host"]["used_bytes"] <=
                            st["host"]["budget_bytes"] + SLACK and
                            vm_of(st, "a")["swap"]["swapped_bytes"] >= SIZE // 4 * MIB,
                            f"{victims}: swap brings the host under the budget",
                            show=lambda st: show_vm(vm_of(st, "a")), deadline_s=300)
        # The guest keeps working over its hot set a while; what it reads back meanwhile counts too.
        p1 = stats(sock)["host"]["policy_passes"]
        wait_state(sock, None, lambda st: st["host"]["policy_passes"] >= p1 + 6,
                   f"{victims}: six more intervals squeezed")
        a = vm_of(stats(sock), "a")
        back = swapped_in(a)
        print(f"info   {victims}: read back {back} pages in {a['swap']['faults']} faults; "
              f"{show_vm(a)}", flush=True)
        no_verify_fail(h, f"{victims}: squeezed")
    finally:
        rc = h.stop()
    check(rc == 0, f"{victims}: the host stops cleanly ({rc}; last log lines {h.stderr()[-3:]})")
    return back


cold = squeeze("coldest")
rand = squeeze("random")
if cold is not None and rand is not None:
    # A tenth of random victims are hot: they come back. Three times is the floor.
    check(rand >= 3 * cold + 256,
          f"coldest victims read back far fewer pages than random ones ({cold} vs {rand})")
finish()
