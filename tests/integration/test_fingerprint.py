"""Content fingerprints: the sharing between two guests estimated from their
sketches (the "fingerprint" verb, bench/fingerprint.py's estimate) lands
within 10% of the sharing reached when they are put together, and sketches
compare across hosts that share a key, and not across hosts that do not.

Guests a and b (host h1, page sharing on) and c (host h2, sharing off, the
same key) run the same mix: half their pages alike across guests, a quarter
zero, a quarter their own. d (host h3, another key) runs it too. The
estimate for a~b is checked against what h1's sharing reached across the two
(saved_by.shared_across: a page per content both hold, once merged); a~c,
across hosts, must estimate as much; a~d must find nothing in common (its
hashes are keyed otherwise). A key file anyone may read is refused."""
import os
import sys

from kvmemtest import check, finish, require_accel, wait_for
from ctlhelp import Host, host_config, request, tmpdir, wait_socket, wait_state
from deduphelp import settle

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from fingerprint import estimate, hashes  # noqa: E402

require_accel()
K = 4096
PAGE = 4096
WL = "kvmem.wl=size=64,dup=50,zero=25,then=sleep"
d = tmpdir()


def key(name, mode=0o600):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(path, mode)
    return path


def host(name, vms, fkey, dedup="off"):
    sock = os.path.join(d, name + ".sock")
    cfg = host_config(d, {"budget": "4G", "socket": sock, "console_prefix": True,
                          "dedup": dedup, "fingerprint_key": fkey,
                          "vms": [{"name": n, "mem": "128M", "append": f"{WL},id={i}"}
                                  for n, i in vms]})
    h = Host(["host", "--config", cfg])
    check(wait_socket(h, sock), f"{name} serves its control socket")
    return h, sock


def fingerprint(sock, vm, **kw):
    return request(sock, dict({"verb": "fingerprint", "vm": vm, "k": K}, **kw), timeout=120)


cluster = key("cluster.key")
h1, s1 = host("h1", [("a", 1), ("b", 2)], cluster, dedup="on")
h2, s2 = host("h2", [("c", 3)], cluster)
h3, s3 = host("h3", [("d", 4)], key("other.key"))
hosts = [h1, h2, h3]
try:
    for h, names in ((h1, "ab"), (h2, "c"), (h3, "d")):
        for n in names:
            check(h.wait_line(rf"^\[{n}\] kvmem-wl: verify ok"), f"{n} filled")
    fp = {n: fingerprint(s, n) for s, n in ((s1, "a"), (s1, "b"), (s2, "c"), (s3, "d"))}
    check(all(r.get("ok") for r in fp.values()), f"every VM's fingerprint "
          f"({[r.get('error') for r in fp.values() if not r.get('ok')]})")
    fp = {n: r["fingerprint"] for n, r in fp.items()}
    a = fp["a"]
    check(a["keyed"] and a["k"] == K and a["n"] == K and len(a["hashes"]) == 16 * K and
          a["pages"] >= 0.9 * 48 * 256, f"a's sketch: keyed, {K} hashes of {a['pages']} pages "
          f"({a['distinct']} distinct)")
    h = {n: hashes(f) for n, f in fp.items()}
    check(h["a"] == sorted(set(h["a"])), "the hashes are distinct and ascending")
    ab, ac, ad = (estimate(h["a"], h[x], K) for x in "bcd")
    print(f"info   estimates: a~b {ab['common']:.0f} contents (J {ab['jaccard']:.3f}), "
          f"a~c {ac['common']:.0f}, a~d {ad['common']:.0f}", flush=True)
    check(abs(ac["common"] - ab["common"]) <= 0.1 * ab["common"],
          "a~c (another host, the same key) estimates as a~b")
    check(ad["common"] < 0.01 * ab["common"], "a~d (another key) finds nothing in common")

    # What sharing reaches: a page saved across the two VMs per content both hold.
    request(s1, {"verb": "dedup", "cpu_percent": 100, "pages_per_sec": 1 << 20})

    check(settle(s1), "h1's sharing settles (two full passes change fewer than 256 pages)")
    ok, st = wait_state(s1, None, lambda s: s["host"]["saved_by"]["shared_across"] > 0,
                        "sharing across a and b")
    reached = st["host"]["saved_by"]["shared_across"] / PAGE if st else 0
    err = abs(ab["common"] - reached) / reached if reached else 1
    print(f"info   a~b: estimated {ab['common']:.0f} pages, reached {reached:.0f} "
          f"({100 * err:.1f}% off)", flush=True)
    check(err <= 0.10, f"the estimate is within 10% of the sharing reached ({100 * err:.1f}%)")

    r = fingerprint(s1, "nosuch")
    check(not r.get("ok") and r.get("code") == "ENOENT", f"an unknown VM: ENOENT ({r})")
    r = fingerprint(s1, "a", k=0)
    check(not r.get("ok") and r.get("code") == "EINVAL", f"k 0: EINVAL ({r})")
finally:
    for h in hosts:
        h.stop()

# A key anyone may read protects nothing: the host refuses to start.
sock = os.path.join(d, "loose.sock")
cfg = host_config(d, {"budget": "1G", "socket": sock, "fingerprint_key": key("loose", 0o644),
                      "vms": [{"name": "x", "mem": "64M"}]})
h = Host(["host", "--config", cfg])
check(wait_for(lambda: not h.alive(), 60) and "fingerprint_key" in " ".join(h.stderr()) and
      "0600" in " ".join(h.stderr()), f"a key file of mode 0644 is refused ({h.stderr()[-2:]})")
h.stop()
finish()
