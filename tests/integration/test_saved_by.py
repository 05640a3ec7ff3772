"""Savings by source: every page of every VM is in exactly one place, so per
VM and per host `resident_bytes + sum(saved_by) == configured` in every
sample, and each mechanism's saving shows under its own name.

One host (page sharing on, a swap file with a compressed pool) and five
guests, each exercising mechanisms of its own:

  a, b   the same mix (dup pages cycling through DUPSET contents, zero
         pages, unique pages): sharing across the two VMs, sharing inside
         each (a content comes again every DUPSET dup pages), zero pages
  c      a balloon target takes BALLOON MiB from it
  d      swapped out to 8 MiB resident (the swap file; the pool takes
         what compresses)
  e      fills, frees everything (then=free): free page reporting

plus what no guest touched (untouched). The split of shared frames follows
the stated rule (README, "Where memory is"): a frame mapped by m VMs is
charged 1/m to each, so a and b are charged half of each frame they share,
and the host counts each frame once. Resident memory does not move when a
VM merely reads its shared pages: a and b verify (read) every page every
2 s, and their resident figure stays put while they do."""
import os

from kvmemtest import check, finish, require_accel
from ctlhelp import request, tmpdir, wait_state
from deduphelp import settle
from swaphelp import MIB, PAGE, disk_dir, swap_host

require_accel()
DUPSET = 64
SIZE = 48			# MiB each of a and b fill
D = SIZE * 256 * 50 // 100	# their dup pages (50%)
Z = SIZE * 256 * 25 // 100	# their zero pages (25%)
BALLOON = 48
SOURCES = ("untouched", "zero", "shared_within", "shared_across", "balloon", "reported",
           "compressed", "swapped", "not_restored")

ddir, why = disk_dir()
if not check(ddir is not None, f"a disk directory for the swap file ({why})"):
    finish()
mix = f"kvmem.wl=size={SIZE},dup=50,dupset={DUPSET},zero=25,verify=2,then=sleep"
vms = [{"name": "a", "mem": "128M", "append": mix + ",id=1"},
       {"name": "b", "mem": "128M", "append": mix + ",id=2"},
       {"name": "c", "mem": "128M", "append": "kvmem.wl=size=16,id=3,then=sleep"},
       {"name": "d", "mem": "128M", "append": "kvmem.wl=size=32,id=4,then=sleep"},
       {"name": "e", "mem": "128M", "append": "kvmem.wl=size=64,id=5,time=1,then=free"}]
h, sock = swap_host(tmpdir(), {"path": ddir, "size": "256M", "pool": "16M"}, vms, dedup="on")


def adds_up(o):
    return o["resident_bytes"] + sum(o["saved_by"].values())


def consistent(st):
    """Every VM's figures and the host's add up to what is configured."""
    hst = st["host"]
    return (all(adds_up(v) == v["mem_bytes"] for v in st["vms"]) and
            adds_up(hst) == hst["configured_bytes"] and
            hst["saved_bytes"] == hst["configured_bytes"] - hst["resident_bytes"] and
            all(v["resident_bytes"] == sum(v["resident_by"][k]
                                           for k in ("private", "shared", "compressed"))
                for v in st["vms"]))


def by(st, name):
    return next(v for v in st["vms"] if v["name"] == name)["saved_by"]


try:
    for n in "abcd":
        check(h.wait_line(rf"^\[{n}\] kvmem-wl: (verify ok|filled)"), f"{n} filled")
    check(h.wait_line(r"^\[e\] kvmem-wl: freed 64$"), "e freed its 64 MiB")
    r = request(sock, {"verb": "balloon", "vm": "c", "target": f"{128 - BALLOON}M"})
    check(r.get("ok") is True, f"a balloon target for c ({r})")
    r = request(sock, {"verb": "swap", "vm": "d", "to": "8M"}, timeout=120)
    check(r.get("ok") is True, f"d swapped out to 8 MiB resident ({r})")
    request(sock, {"verb": "dedup", "cpu_percent": 100, "pages_per_sec": 1 << 20})

    want = {
        "a and b share their dup contents across the two VMs (one frame, half each)":
            lambda s: by(s, "a")["shared_across"] >= 0.9 * DUPSET * PAGE / 2,
        "inside a, each content comes again every DUPSET dup pages":
            lambda s: by(s, "a")["shared_within"] >= 0.9 * (D - DUPSET) * PAGE,
        "a's zero pages are dropped": lambda s: by(s, "a")["zero"] >= 0.9 * Z * PAGE,
        "c's balloon holds its target": lambda s: by(s, "c")["balloon"] >= 0.9 * BALLOON * MIB,
        "d's pages are in the swap file or the pool":
            lambda s: by(s, "d")["swapped"] + by(s, "d")["compressed"] >= 16 * MIB,
        "e's freed pages were reported": lambda s: by(s, "e")["reported"] >= 32 * MIB,
        "what no guest touched is untouched":
            lambda s: all(v["saved_by"]["untouched"] >= 32 * MIB for v in s["vms"]),
    }
    for what, pred in want.items():
        ok, st = wait_state(sock, None, lambda s: consistent(s) and pred(s), what,
                            show=lambda s: {v["name"]: {k: x >> 20 for k, x in
                                                        v["saved_by"].items() if x}
                                            for v in s["vms"]}, deadline_s=240, step=0.5)
    ok, st = wait_state(sock, None, consistent, "the figures add up",
                        show=lambda s: [(v["name"], adds_up(v), v["mem_bytes"])
                                        for v in s["vms"]])
    if st:
        hst = st["host"]
        check(set(hst["saved_by"]) == set(SOURCES) and
              all(set(v["saved_by"]) == set(SOURCES) for v in st["vms"]),
              f"saved_by names every source, host and VMs ({sorted(hst['saved_by'])})")
        # The host counts each frame once: its shared part is a page per frame,
        # and the VMs' parts add up to it (each rounded to bytes).
        parts = sum(v["resident_by"]["shared"] for v in st["vms"])
        check(hst["resident_by"]["shared"] == hst["shared_frames"] * PAGE and
              abs(parts - hst["resident_by"]["shared"]) <= len(st["vms"]),
              f"shared frames are counted once at host level ({hst['resident_by']}, VMs' "
              f"parts {parts})")
        for s in SOURCES:
            check(abs(sum(by(st, v["name"])[s] for v in st["vms"]) - hst["saved_by"][s])
                  <= len(st["vms"]), f"the host's {s} is its VMs' ({hst['saved_by'][s]})")
        print("info   host saved by: " + ", ".join(f"{k} {x / MIB:.1f} MiB" for k, x in
                                                   hst["saved_by"].items() if x), flush=True)

    # Reading shared pages moves nothing: a and b read every page at each
    # verification; their resident figures stay where they are across two,
    # once the scanner has (almost) nothing left to merge.
    check(settle(sock), "the scanner settles (two full passes change fewer than 256 pages)")
    st0 = wait_state(sock, None, consistent, "figures before two verifications")[1]
    for n in "ab":
        seen = h.count(rf"^\[{n}\] kvmem-wl: verify ok")
        check(h.wait_line(rf"^\[{n}\] kvmem-wl: verify ok", seen + 2), f"{n} verifies twice more")
    st1 = wait_state(sock, None, consistent, "figures after them")[1]
    if st0 and st1:
        for n in "ab":
            r0 = next(v for v in st0["vms"] if v["name"] == n)["resident_bytes"]
            r1 = next(v for v in st1["vms"] if v["name"] == n)["resident_bytes"]
            check(abs(r1 - r0) <= MIB, f"{n}: reading its shared pages leaves resident where "
                  f"it was ({r0 / MIB:.1f} -> {r1 / MIB:.1f} MiB)")
    check(not h.count(r"verify FAIL"), "no guest ever failed a verification")
finally:
    rc = h.stop()
check(rc == 0, f"the host exits 0 on SIGTERM (got {rc})")
finish()
