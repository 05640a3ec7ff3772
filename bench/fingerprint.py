#!/usr/bin/env python3
"""bench/fingerprint: estimate the sharing between VMs from their content
fingerprints (the "fingerprint" verb), without moving anything.

    bench/fingerprint.py SOCKET:VM SOCKET:VM [...] [--k N]

prints, for every pair, the contents both hold (what sharing would save,
in pages, if they met on one host), their Jaccard similarity and each one's
distinct contents. The VMs may be on different hosts: their sketches compare
when the hosts share a fingerprint_key (or both have none).

The estimate (bottom-k sketches, Broder 1997; Memory Buddies, VEE 2009): of
the k smallest hashes of both VMs' contents together, the share present in
both estimates the Jaccard similarity J; the k-th smallest, h_k, estimates
the number of distinct contents of the union, (k - 1) / (h_k / 2^64); their
product is the number of contents in common. With fewer than k contents in
all the sketches hold every one, and the figures are exact.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import request, take_opt  # noqa: E402


def hashes(fp):
    """The sketch's hashes (ascending ints) from the verb's reply."""
    h = fp["hashes"]
    return [int(h[i:i + 16], 16) for i in range(0, len(h), 16)]


def union_sketch(sketches, k):
    """The bottom-k sketch of the union of several sets' contents (a host's, say)."""
    return sorted(set().union(*map(set, sketches)))[:k]


def estimate(a, b, k):
    """Contents a and b share, their Jaccard similarity and the union's size.

    a and b are ascending lists of hashes, each the k smallest of its set (or
    the whole set when smaller). Exact when both sets are smaller than k."""
    full = len(a) >= k or len(b) >= k
    u = union_sketch([a, b], k)
    if not u:
        return {"common": 0.0, "jaccard": 0.0, "union": 0.0}
    sa, sb = set(a), set(b)
    # Below the k-th smallest of the union every hash of a and of b is in its
    # sketch, so membership is exact there.
    both = sum(1 for h in u if h in sa and h in sb)
    jac = both / len(u)
    union = (len(u) - 1) / (u[-1] / 2.0 ** 64) if full and len(u) >= k else float(len(u))
    return {"common": jac * union, "jaccard": jac, "union": union}


def fingerprint(sock, vm, k):
    r = request(sock, {"verb": "fingerprint", "vm": vm, "k": k}, timeout=120)
    if not r.get("ok"):
        sys.exit(f"fingerprint {vm} at {sock}: {r.get('error')}")
    return r["fingerprint"]


def main():
    k = int(take_opt("--k", "1024"))
    targets = sys.argv[1:]
    if len(targets) < 2 or any(":" not in t for t in targets):
        sys.exit(__doc__.split("\n\n")[1])
    fps = {t: fingerprint(*t.rsplit(":", 1), k) for t in targets}
    for t, fp in fps.items():
        print(f"{t}: {fp['pages']} pages, {fp['distinct']} distinct contents, "
              f"{'keyed' if fp['keyed'] else 'not keyed'}, {fp['ms']} ms")
    for i, a in enumerate(targets):
        for b in targets[i + 1:]:
            e = estimate(hashes(fps[a]), hashes(fps[b]), k)
            print(f"{a} ~ {b}: {e['common']:.0f} contents in common "
                  f"({e['common'] * 4096 / 2**20:.1f} MiB sharing would save), "
                  f"Jaccard {e['jaccard']:.3f}")


if __name__ == "__main__":
    main()
