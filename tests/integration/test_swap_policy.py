"""Swap as the policy's last reclaim mechanism: the budget holds when guests keep their memory.

1. A host with a 256 MiB budget and swap runs a 512 MiB guest keeping 450
   MiB of unique pages (a hot tenth of them read all the time, all of them
   verified every minute: a working set the budget can hold; a guest that
   reads everything all the time only thrashes) and a 128 MiB guest of
   64 MiB that must never be swapped (`swap_max` "0B", a latency-sensitive
   VM). Nothing is zero, nothing is shared, and the balloon finds little
   free: the policy ends at swap, and the host's usage comes back under the
   budget; the first guest's pages are in swap, the second guest has none;
   neither reports a page it did not write. The `swap` verb changes a VM's limit.
2. A guest whose balloon driver never inflates (kvmem.balloon.inflate=off)
   on a host over budget: the policy asks its balloon first; the inflation
   it never makes stops counting as reclaimed after the deadline, and swap
   takes the rest, so the budget holds anyway.

Every wait is a poll with a generous deadline; nothing asserts on timing."""
from kvmemtest import check, finish, require_accel
from ctlhelp import no_verify_fail, request, stats, tmpdir, vm_of, wait_state
from swaphelp import MIB, disk_dir, show_vm, swap_host

require_accel()

VERIFY = r"kvmem-wl: verify ok \d+$"
# The policy reclaims to 2% under the budget; the rest is the VMM's own memory moving.
SLACK = 16 * MIB

ddir, dfs = disk_dir()
if not check(ddir is not None, f"a directory on a disk filesystem for the swap file ({dfs})"):
    finish()


def host_line(st):
    h = st["host"]
    return (f"used {h['used_bytes'] // MIB} MiB of {h['budget_bytes'] // MIB} MiB, reclaimed "
            f"{ {k: v // MIB for k, v in h['reclaimed_bytes'].items()} } MiB")


def under_budget(st):
    return st["host"]["used_bytes"] <= st["host"]["budget_bytes"] + SLACK


# ---- 1. The budget holds through swap; a VM that must not be swapped is not -------------------
d = tmpdir()
h, sock = swap_host(d, {"path": ddir, "size": "1G"}, [
    {"name": "a", "mem": "512M",
     "append": "kvmem.wl=size=450,id=1,read=1,hot=10,verify=60,then=sleep"},
    {"name": "b", "mem": "128M", "swap_max": "0B",
     "append": "kvmem.wl=size=64,id=2,read=1,verify=5,then=sleep"}])
try:
    check(h.wait_line(r"^\[a\] " + VERIFY, 1, 300) and h.wait_line(r"^\[b\] " + VERIFY, 1, 300),
          "both guests filled their memory and verified it")
    r = request(sock, {"verb": "budget", "bytes": "256M"})
    check(r.get("ok") is True, f"the budget drops to 256 MiB ({r})")
    ok, st = wait_state(sock, None, lambda st: under_budget(st) and
                        st["host"]["reclaimed_bytes"].get("swap", 0) > 0,
                        "swap reclaims: the host's usage comes back under the budget",
                        show=host_line, deadline_s=300)
    a, b = vm_of(st, "a"), vm_of(st, "b")
    check(a["swap"]["swapped_bytes"] > 128 * MIB, f"a's pages are in swap ({show_vm(a)})")
    check(b["swap"]["swapped_bytes"] == 0 and b["swap"]["max_bytes"] == 0,
          f"b, never to be swapped, has no page in swap ({show_vm(b)}, limit "
          f"{b['swap']['max_bytes']})")
    check(a["swap"]["max_bytes"] is None, "a has no swap limit")
    # b verifies all of its (resident) memory; a, reading its own back from swap, keeps
    # verifying too (slowly under emulation): no_verify_fail below covers what it checked.
    c = h.count(r"^\[b\] " + VERIFY)
    check(h.wait_line(r"^\[b\] " + VERIFY, c + 1, 180), "b verifies every page again")
    # The verb moves a limit: a may keep at most 64 MiB in swap from now on.
    r = request(sock, {"verb": "swap", "vm": "a", "max": "64M"})
    check(r.get("ok") is True and r.get("max_bytes") == 64 * MIB, f"the verb sets a's limit ({r})")
    check(vm_of(stats(sock), "a")["swap"]["max_bytes"] == 64 * MIB, "the stats show it")
    r = request(sock, {"verb": "swap", "vm": "a", "max": None})
    check(r.get("ok") is True and r.get("max_bytes", 0) is None, f"and lift it ({r})")
    r = request(sock, {"verb": "swap", "vm": "nosuch", "max": "1G"})
    check(r.get("ok") is False and r.get("code") == "ENOENT", f"an unknown VM: ENOENT ({r})")
    r = request(sock, {"verb": "swap", "vm": "a", "max": "lots"})
    check(r.get("ok") is False and r.get("code") == "EINVAL", f"a bad size: EINVAL ({r})")
    no_verify_fail(h, "squeezed into swap by the policy")
finally:
    rc = h.stop()
check(rc == 0, f"the host stops cleanly ({rc}; last log lines {h.stderr()[-3:]})")

# ---- 2. A balloon that never inflates does not hold swap back ----------------------------------
d = tmpdir()
h, sock = swap_host(d, {"path": ddir, "size": "1G"}, [
    {"name": "c", "mem": "256M",
     "append": "kvmem.balloon.inflate=off kvmem.wl=size=150,id=3,read=1,verify=5,then=sleep"}])
try:
    check(h.wait_line(r"^\[c\] " + VERIFY, 1, 300), "c filled 150 MiB and verified it")
    r = request(sock, {"verb": "budget", "bytes": "112M"})
    check(r.get("ok") is True, f"the budget drops under what c holds ({r})")
    ok, v = wait_state(sock, "c", lambda v: v["balloon"]["target_bytes"] < 256 * MIB,
                       "the policy asks c's balloon first",
                       show=lambda v: f"target {v['balloon']['target_bytes'] // MIB} MiB, "
                                      f"actual {v['balloon']['actual_bytes'] // MIB} MiB")
    ok, st = wait_state(sock, None, lambda st: under_budget(st) and
                        st["host"]["reclaimed_bytes"].get("swap", 0) > 0,
                        "the inflation c never makes stops counting; swap brings the host under "
                        "the budget", show=host_line, deadline_s=300)
    v = vm_of(st, "c")
    check(v["balloon"]["actual_bytes"] == 256 * MIB,
          f"c's balloon never inflated (actual {v['balloon']['actual_bytes'] // MIB} MiB)")
    c = h.count(r"^\[c\] " + VERIFY)
    check(h.wait_line(r"^\[c\] " + VERIFY, c + 1, 180), "c verifies every page, squeezed")
    no_verify_fail(h, "a guest that ignores its balloon, squeezed by swap")
finally:
    rc = h.stop()
check(rc == 0, f"the host stops cleanly ({rc}; last log lines {h.stderr()[-3:]})")
finish()
