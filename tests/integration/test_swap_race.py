"""Host swap against a guest that keeps working, and against pages it gives up.

1. Swap-out racing the guest, inside dedup's windows: two VMs share half of
   their pages (dup=50, dedup on: the shared pages live in the store's
   windows) and rewrite, read and move pages all the time (rate=, read=,
   churn=), each read checking the page, with a full verification every
   5 s. Five times each, the swap verb swaps a VM down to 32 MiB while it
   runs, dedup merging and unsharing beside it. No write is lost and no read
   is stale: no guest reports verify FAIL over the verifications that span
   the swaps; pages went out and came back; paused, every page's state
   matches its mapping (memcheck).
2. Free page reporting over swapped pages: a guest fills 64 MiB and holds
   still (hold=) while the verb swaps it out, then frees every page; its
   free page reports reach the swapped pages, whose slots are released
   without being read back.
3. Balloon inflation over swapped pages: a guest without free page
   reporting frees its 64 MiB (the pages stay behind, resident), the verb
   swaps them out, and a balloon target takes free pages, some of them
   swapped: their slots are released unread.

Every wait is a poll with a generous deadline; nothing asserts on timing."""
from kvmemtest import check, finish, require_accel
from ctlhelp import no_verify_fail, request, stats, tmpdir, vm_of, wait_state
from swaphelp import MIB, PAGE, disk_dir, host_swap, show_vm, swap_host, swapped_in

require_accel()

ROUNDS = 5
VERIFY = r"kvmem-wl: verify ok \d+$"

ddir, dfs = disk_dir()
if not check(ddir is not None, f"a directory on a disk filesystem for the swap file ({dfs})"):
    finish()


def verified(h, name):
    return h.count(r"^\[" + name + r"\] " + VERIFY)


def swap(sock, name, to):
    r = request(sock, {"verb": "swap", "vm": name, "to": to}, timeout=60)
    if not r.get("ok"):
        check(False, f"swap {name} to {to} answers ({r})")
    return r


# ---- 1. Swap-out racing the guest's writes and reads, inside dedup's windows -------------------
WL = "kvmem.wl=size=128,id={},dup=50,rate=4,read=8,churn=1,hot=50,verify=5,then=sleep"
d = tmpdir()
h, sock = swap_host(d, {"path": ddir, "size": "1G", "pool": "16M"},
                    [{"name": n, "mem": "192M", "append": WL.format(i + 1)}
                     for i, n in enumerate("ab")], dedup="on")
try:
    check(h.wait_line(r"^\[a\] " + VERIFY, 1, 300) and h.wait_line(r"^\[b\] " + VERIFY, 1, 300),
          "both guests filled 128 MiB, half of it alike, and verified it")
    wait_state(sock, None, lambda st: all(v["pages"]["shared"] > 4096 for v in st["vms"]),
               "dedup shares the pages the guests have alike (more than 16 MiB each)",
               show=lambda st: str([v["pages"]["shared"] for v in st["vms"]]))
    swapped = 0
    for r in range(ROUNDS):
        for n in "ab":
            before = verified(h, n)
            swapped += swap(sock, n, "32M").get("swapped_bytes", 0)
            # A verification that reads every page after this swap-out, before the next one.
            if not h.wait_line(r"^\[" + n + r"\] " + VERIFY, before + 1, 120):
                check(False, f"round {r}: {n} verifies after its swap-out")
    hs = host_swap(sock)
    st = stats(sock)
    ins = sum(swapped_in(v) for v in st["vms"])
    print(f"info   {ROUNDS} rounds: {swapped // MIB} MiB swapped out within the verbs' waits, "
          f"{ins * PAGE // MIB} MiB read back; host {hs}", flush=True)
    # What the replies say is what went within each verb's wait (the worker goes on after,
    # slowly under emulation); the host counts all of it. How much each later round finds
    # depends on how fast the guests take pages back: the first round alone swaps more than
    # 32 MiB of each.
    out = hs["swap_outs"] * PAGE
    check(out > 64 * MIB and ins > 0,
          f"pages went out while the guests ran, and came back on their touches "
          f"({out // MIB} MiB out, {ins} pages in)")
    check(hs["write_errors"] == 0 and hs["read_errors"] == 0,
          f"no write or read of the swap file failed ({hs})")
    check(all(v["state"] == "running" for v in st["vms"]), "both guests still run")
    no_verify_fail(h, "swapped out again and again while writing, reading and sharing")
    for n in "ab":
        r = request(sock, {"verb": "pause", "vm": n})
        check(r.get("ok") is True, f"{n} pauses ({r})")
        r = request(sock, {"verb": "memcheck", "vm": n})
        check(r.get("ok") is True and r.get("checked", 0) > 0 and r.get("mismatches") == 0,
              f"memcheck {n}: no page's state contradicts its mapping ({r})")
        r = request(sock, {"verb": "resume", "vm": n})
        check(r.get("ok") is True, f"{n} resumes ({r})")
finally:
    rc = h.stop()
check(rc == 0, f"the host stops cleanly ({rc}; last log lines {h.stderr()[-3:]})")

# ---- 2 and 3. Pages given up while swapped lose their slots unread -----------------------------
GONE = 48 * MIB     # of the 64 MiB freed and reported, what must leave swap (whole 4 MiB chunks)
# The balloon takes free pages from the top of RAM down: a 100 MiB target in d's 128 MiB takes the
# never-touched ones first and ~28 MiB of those freed (and swapped) below them.
GONE_BALLOON = 16 * MIB
READ_BACK = 512     # pages: the guest's own bookkeeping it reads while it frees, at most
d = tmpdir()
h, sock = swap_host(d, {"path": ddir, "size": "512M"}, [
    {"name": "c", "mem": "128M", "append": "kvmem.wl=size=64,id=3,hold=20,then=free"},
    {"name": "d", "mem": "128M",
     "append": "kvmem.balloon.report=off kvmem.wl=size=64,id=4,then=free"}])


def given_up(name, before, gone, how):
    """Wait until `name` has `gone` fewer bytes in swap than in `before` (its
    sample once swapped out), and check they were not read back."""
    ok, v = wait_state(sock, name,
                       lambda v: v["swap"]["swapped_bytes"] <= before["swap"]["swapped_bytes"] - gone,
                       f"{how}: {name}'s swapped pages leave swap", show=show_vm)
    if ok:
        back = swapped_in(v) - swapped_in(before)
        check(back < READ_BACK, f"{how}: their slots were released unread ({back} pages of "
              f"{name}'s were read back, fewer than {READ_BACK})")


try:
    # 2. c holds its 64 MiB still (hold=20): swapped out meanwhile, then freed and reported.
    check(h.wait_line(r"^\[c\] kvmem-wl: hold", 1, 300), "c filled 64 MiB, verified, and holds")
    swap(sock, "c", "8M")
    ok, c0 = wait_state(sock, "c", lambda v: v["swap"]["swapped_bytes"] >= 56 * MIB,
                        "c is swapped out while it holds its pages", show=show_vm)
    disc0 = host_swap(sock)["discarded"]
    check(h.wait_line(r"^\[c\] kvmem-wl: freed", 1, 120), "c frees its pages")
    if ok:
        given_up("c", c0, GONE, "free page reporting")
    # 3. d freed its pages without reporting them: they stay behind, resident, until swapped.
    check(h.wait_line(r"^\[d\] kvmem-wl: freed", 1, 300), "d filled, verified and freed 64 MiB")
    swap(sock, "d", "8M")
    ok, d0 = wait_state(sock, "d", lambda v: v["swap"]["swapped_bytes"] >= 56 * MIB,
                        "d's freed pages are swapped out", show=show_vm)
    r = request(sock, {"verb": "balloon", "vm": "d", "target": "100M"})
    check(r.get("ok") is True, f"a balloon target for d ({r})")
    if ok:
        given_up("d", d0, GONE_BALLOON, "balloon inflation")
    hs = host_swap(sock)
    check(hs["discarded"] - disc0 >= (GONE + GONE_BALLOON) // PAGE,
          f"the host counts the slots freed unread ({hs['discarded'] - disc0} pages)")
    check(hs["read_errors"] == 0 and hs["write_errors"] == 0, f"no swap I/O failed ({hs})")
    no_verify_fail(h, "pages given up while swapped")
finally:
    rc = h.stop()
check(rc == 0, f"the host stops cleanly ({rc}; last log lines {h.stderr()[-3:]})")
finish()
