"""Sharing groups: pages are shared only inside a VM's group.

Guests a (group g1) and b (group g2) hold the same content: 80% of their
pages cycle through 1024 contents, alike in both.
1. Sharing settles: each keeps its sharing inside itself (shared_within per
   group), nothing is shared across them (shared_across 0), and their
   fingerprints, taken with their groups' salts, have no hash in common.
2. b moves to g1 (the "sharing_group" verb): they share across too (about a
   page per content: each VM shares most of its copies inside itself).
3. b moves back to g2: the verb makes its shared pages its own at once, and
   nothing is shared across the groups any more; both still verify.
4. A bad group name is refused, by the verb and in a config; so is a group
   on a host whose sharing is the kernel's KSM (it cannot keep groups apart).
"""
import os

from kvmemtest import check, finish, require_accel, wait_for
from ctlhelp import Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of, wait_socket
from deduphelp import settle

require_accel()
PAGE = 4096
SIZE_MIB, DUP, DUPSET = 32, 80, 1024
dup_pages = SIZE_MIB * 256 * DUP // 100
d = tmpdir()
sock = f"{d}/h.sock"
WL = f"kvmem.wl=size={SIZE_MIB},dup={DUP},dupset={DUPSET},verify=2,then=sleep"
h = Host(["host", "--config", host_config(d, {
    "budget": "4G", "socket": sock, "console_prefix": True, "dedup": "on",
    "vms": [{"name": "a", "mem": "64M", "sharing_group": "g1", "append": f"{WL},id=1"},
            {"name": "b", "mem": "64M", "sharing_group": "g2", "append": f"{WL},id=2"}]})])


def saved():
    """Host shared_within and shared_across in pages, and the groups' figures."""
    hs = stats(sock)["host"]
    return (hs["saved_by"]["shared_within"] // PAGE, hs["saved_by"]["shared_across"] // PAGE,
            hs["sharing_groups"])


def group(vm, g):
    return request(sock, {"verb": "sharing_group", "vm": vm, "group": g}, timeout=120)


def verifies(what):
    for n in "ab":
        c = h.count(rf"^\[{n}\] kvmem-wl: verify ok")
        check(h.wait_line(rf"^\[{n}\] kvmem-wl: verify ok", n=c + 1), f"{what}: {n} verifies")


try:
    check(wait_socket(h, sock), "the host serves its socket")
    for n in "ab":
        check(h.wait_line(rf"^\[{n}\] kvmem-wl: verify ok"), f"{n} filled")
    st = stats(sock)
    check(vm_of(st, "a")["sharing_group"] == "g1" and vm_of(st, "b")["sharing_group"] == "g2",
          "the stats name each VM's group")
    request(sock, {"verb": "dedup", "cpu_percent": 100, "pages_per_sec": 1 << 20})

    # 1. Apart. (Window merges give a content a frame per window position it takes, so
    # a VM keeps somewhat more than DUPSET frames: its sharing inside stays below the most.)
    within_each = dup_pages - DUPSET
    check(settle(sock, slack_pages=8), "sharing settles")
    wait_for(lambda: min(g["shared_within_bytes"] for g in saved()[2].values()) // PAGE
             >= within_each // 2, 120)
    within, across, groups = saved()
    print(f"info   apart: within {within}, across {across} pages; groups {groups}", flush=True)
    check(across == 0, f"nothing is shared across the groups ({across} pages)")
    check(all(groups[g]["shared_within_bytes"] // PAGE >= within_each // 2 for g in ("g1", "g2")),
          f"each group shares inside its VM (at least half of the {within_each} pages it could)")
    fa, fb = (request(sock, {"verb": "fingerprint", "vm": n, "k": 4096}, timeout=120)["fingerprint"]
              for n in "ab")
    ha = {fa["hashes"][i:i + 16] for i in range(0, len(fa["hashes"]), 16)}
    hb = {fb["hashes"][i:i + 16] for i in range(0, len(fb["hashes"]), 16)}
    check(fa["sharing_group"] == "g1" and len(ha) >= DUPSET and not ha & hb,
          f"their fingerprints have no hash in common ({len(ha & hb)} of {len(ha)})")

    # 2. Together.
    r = group("b", "g1")
    check(r.get("ok") is True and r.get("sharing_group") == "g1",
          f"b moves to g1 ({r.get('error', 'ok')}, {r.get('unshared_pages')} pages unshared)")
    apart = within
    # b's pages left g2's frames; merged again in g1, they share more than apart.
    wait_for(lambda: saved()[1] >= DUPSET // 2 and sum(saved()[:2]) > apart, 180)
    within, across, groups = saved()
    print(f"info   together: within {within}, across {across} pages", flush=True)
    check(across >= DUPSET // 2 and within + across > apart,
          f"in one group they share across too ({across} pages across, {within + across} in "
          f"all against {apart} apart)")
    check(groups["g1"]["vms"] == 2 and "g2" not in groups, f"the stats' groups: {groups}")
    verifies("together")

    # 3. Apart again: at once, nothing across.
    r = group("b", "g2")
    check(r.get("ok") is True and r.get("unshared_pages", 0) > 0,
          f"b moves back to g2, its shared pages made its own ({r.get('unshared_pages')})")
    check(wait_for(lambda: saved()[1] == 0, 30), f"nothing is shared across any more "
          f"({saved()[1]} pages)")
    verifies("apart again")
    no_verify_fail(h, "at the end")

    # 4. Refusals.
    r = group("a", "no spaces")
    check(r.get("ok") is False and r.get("code") == "EINVAL", f"a bad group name: EINVAL ({r})")
    r = group("nosuch", "g1")
    check(r.get("ok") is False and r.get("code") == "ENOENT", f"an unknown VM: ENOENT ({r})")
finally:
    h.stop()

for dedup, grp, what in (("on", "bad/name", "a bad group name"),
                         ("ksm", "g1", "a group on a host KSM shares")):
    os.makedirs(f"{d}/{dedup}", exist_ok=True)
    x = Host(["host", "--config", host_config(f"{d}/{dedup}", {
        "budget": "1G", "socket": f"{d}/{dedup}/x.sock", "dedup": dedup,
        "vms": [{"name": "x", "mem": "32M", "sharing_group": grp}]})])
    check(wait_for(lambda: not x.alive(), 60) and x.stop() == 2 and
          any("sharing_group" in l for l in x.stderr()),
          f"a config with {what} is refused ({x.stderr()[-1:]})")
finish()
