"""Every mechanism that takes pages from a guest, at once, then the memcheck
verb: each page's state against what its mapping shows (mem_check_states).

Two guests fill memory with zero pages, pages identical across both and
pages of their own, and keep verifying it. Each mechanism is made to act,
in an order that leaves none of them nothing to do:
1. the balloon: a target below each VM's memory, set while the workloads
   wait for it (wait=balloon), so the balloon takes memory the guest has
   never used and the fill then uses the rest;
2. zero reclaim: a budget far below what the host uses, so the policy's
   cheapest mechanism drops the zero pages of the fill (the dedup scanner,
   which drops stable zero pages too, is off until then);
3. page sharing: the scanner on again (and the policy's "share" mechanism,
   which the pressure calls every pass) merges the identical pages.
With every VM showing zero, shared and ballooned pages, both VMs are paused
and checked: with no guest running, a page whose state its mapping
contradicts is a bug of the accounting, whichever mechanism left it. The
mechanisms keep running meanwhile (the pressure stays): the check skips a
page a transaction holds or that changes under it. Then the guests run on
and verify all their memory again. Every wait is a poll with a generous
deadline; nothing asserts on timing."""
from kvmemtest import check, finish, require_accel, run
from ctlhelp import request, wait_state
from deduphelp import DedupHost, PAGE

MIB = 1 << 20
MEM, TARGET, FILL = 256, 192, 96     # MiB: each VM's RAM, its balloon target, its fill
VERIFY = r"kvmem-wl: verify ok \d+$"
DUP = FILL * MIB // PAGE // 2        # each guest's pages identical across both (dup=50)

require_accel()
h = DedupHost([f"size={FILL},dup=50,zero=25,id={i + 1},verify=2,wait=balloon,then=sleep"
               for i in range(2)], mem=f"{MEM}M")


def vm_pages(s, state):
    return [v["pages"][state] for v in s["vms"]]


try:
    # The scanner off before any guest fills: the zero pages are zero reclaim's.
    d = h.dedup(enabled=False)
    check(not d["enabled"], f"the dedup scanner is off for now ({d['enabled']})")
    check(h.wait_all(r"kvmem-wl: waiting for the balloon$"), "both workloads wait for the balloon")

    # 1. The balloon.
    for n in h.names:
        r = request(h.sock, {"verb": "balloon", "vm": n, "target": f"{TARGET}M"})
        check(r.get("ok") is True and r.get("target_bytes") == TARGET * MIB,
              f"{n}: balloon target {TARGET} MiB ({r})")
    wait_state(h.sock, None, lambda s: all(
        v["balloon"]["balloon_actual_bytes"] == (MEM - TARGET) * MIB and
        v["balloon"]["counters"]["inflated_pages"] > 0 for v in s["vms"]),
        f"the balloon holds {MEM - TARGET} MiB of each VM",
        show=lambda s: f"held {[v['balloon']['balloon_actual_bytes'] >> 20 for v in s['vms']]} "
        f"MiB, inflated pages {[v['balloon']['counters']['inflated_pages'] for v in s['vms']]}")
    check(h.wait_all(VERIFY), f"both guests filled {FILL} MiB beside the balloon and verified it")

    # 2. Zero reclaim: a budget the host cannot meet keeps the policy reclaiming.
    r = request(h.sock, {"verb": "budget", "bytes": "16M"})
    check(r.get("ok") is True, f"budget 16 MiB ({r})")
    wait_state(h.sock, None, lambda s: s["host"]["reclaimed_bytes"].get("zero", 0) > 0 and
               all(z > 0 for z in vm_pages(s, "zero")),
               "zero reclaim dropped zero pages of each VM",
               show=lambda s: f"zero pages {vm_pages(s, 'zero')}, reclaimed "
               f"{s['host']['reclaimed_bytes']}")

    # 3. Page sharing.
    d = h.dedup(enabled=True, cpu_percent=100)
    check(d["enabled"], "the dedup scanner is on again")
    ok, st = wait_state(h.sock, None, lambda s: s["host"]["dedup"]["merges"] > 0 and
                        all(n >= 0.9 * DUP for n in vm_pages(s, "shared")),
                        f"the identical pages are merged: each VM has at least 90% of its {DUP} "
                        f"shared",
                        show=lambda s: f"merges {s['host']['dedup']['merges']}, shared "
                        f"{vm_pages(s, 'shared')}")

    # All three have acted: one sample shows each of them in each VM.
    ok, st = wait_state(h.sock, None, lambda s: s["host"]["dedup"]["merges"] > 0 and all(
        v["pages"]["zero"] > 0 and v["pages"]["shared"] > 0 and v["pages"]["ballooned"] > 0 and
        v["balloon"]["counters"]["inflated_pages"] > 0 for v in s["vms"]),
        "every VM has zero, shared and ballooned pages at once",
        show=lambda s: f"{[v['pages'] for v in s['vms']]}")

    # The check, with no guest running.
    h.pause_all()
    for n in h.names:
        r = request(h.sock, {"verb": "memcheck", "vm": n, "id": n})
        check(r.get("ok") is True and r.get("id") == n and r.get("vm") == n and
              isinstance(r.get("checked"), int) and isinstance(r.get("mismatches"), int),
              f"{n}: memcheck answers ({r})")
        check(r.get("checked", 0) > 0, f"{n}: memcheck compared pages ({r.get('checked')} of "
              f"{MEM * MIB // PAGE})")
        check(r.get("mismatches") == 0,
              f"{n}: no page's state contradicts its mapping ({r.get('mismatches')} mismatches; "
              f"first: page {r.get('first_bad')} {r.get('first_state')}, pagemap "
              f"{r.get('first_pm')})")
        check(("first_bad" in r) == (r.get("mismatches", 0) > 0),
              f"{n}: first_bad is given exactly when there is a mismatch ({sorted(r)})")
    r = request(h.sock, {"verb": "memcheck", "vm": "nosuch"})
    check(r == {"ok": False, "error": 'vm "nosuch": no such VM', "code": "ENOENT"},
          f"memcheck of an unknown VM: the usual error ({r})")
    r = request(h.sock, {"verb": "memcheck"})
    check(r.get("ok") is False and r.get("code") == "EINVAL" and "vm" in r.get("error", ""),
          f"memcheck without a VM: EINVAL naming the field ({r})")
    st = h.stats()
    check(all(v["state"] == "paused" for v in st["vms"]),
          f"both VMs were paused for the check ({[v['state'] for v in st['vms']]})")
    h.resume_all()

    # The guests verify every 2 s: two more rounds read every page after all of it.
    check(h.wait_more(VERIFY, 2), "both guests verify all their memory again")
    h.no_verify_fail("zero reclaim, sharing and the balloon at once")

    # The protocol's figures.
    st = h.stats()
    txn, uffd = st["txn"], st["uffd"]
    print(f"info   txn {txn}; uffd {uffd}; reclaimed {st['reclaimed_bytes']}", flush=True)
    check(txn["claims"] > 0 and txn["pages"] >= txn["claims"],
          f"stats: txn counts the claims ({txn['claims']} claims, {txn['pages']} pages)")
    check(all(txn["commits"].get(c, 0) > 0 for c in ("zero", "frame", "ballooned")),
          f"stats: txn counts the commits of each mechanism ({txn['commits']})")
    check(sorted(txn["commits"]) == sorted(("keep", "private", "zero", "frame", "ballooned",
                                            "reported", "swapped")),
          f"stats: txn.commits has one key per commit ({sorted(txn['commits'])})")
    check(uffd["stray"] == 0, f"stats: no write hit a page protected for no reason "
          f"(uffd.stray {uffd['stray']})")
    check(all(isinstance(uffd.get(k), int) for k in
              ("wp_faults", "sample_hits", "stray", "missing_faults", "zero_fills", "zero_pages",
               "errors")), f"stats: the uffd object has its figures ({sorted(uffd)})")
    # kvmem stat shows the transaction's figures on the host's lines, commits by name.
    r = run(["stat", "--socket", h.sock], timeout=60)
    txn_line = [l for l in r.stdout.splitlines() if l.strip().startswith("txn:")]
    check(r.returncode == 0 and len(txn_line) == 1 and "claims " in txn_line[0] and
          "commits {keep " in txn_line[0] and " ballooned " in txn_line[0],
          f"kvmem stat shows the txn figures ({r.returncode}, {txn_line})")
finally:
    h.stop()
finish()
