#!/usr/bin/env python3
"""bench/corpora: build content corpora from files every Debian machine has,
for guests whose memory looks like real guests' (kvmem.wl=corpus=).

    bench/corpora.py OUT_DIR [--part-mib N] [--only NAME,...]

A corpus is a file a guest reads as read-only memory outside its RAM
(`kvmem run --corpus FILE`, `"corpus"` in a host's config); its workload
copies pages from it into its RAM. Corpora made from the same files share
those files' pages, as two guests running the same distribution share their
libraries' pages in their page caches; corpora made from different files
share little but their zero pages. Each file starts on a page boundary and
its last page is padded with zeros, as a page cache holds it, so a file's
pages are the same in every corpus that has it.

Parts (files in sorted path order, each part at most --part-mib MiB, 48 by
default):
  libs    shared libraries (/usr/lib/x86_64-linux-gnu/*.so*)
  bin     executables (/usr/bin, /usr/sbin)
  python  the Python standard library (/usr/lib/python3*)
  perl    Perl's (/usr/share/perl*, /usr/lib/x86_64-linux-gnu/perl*)
  docs    documentation (/usr/share/doc, /usr/share/man)

Corpora (OUT_DIR/NAME.corpus):
  py      libs + bin + python   a Python service
  pl      libs + bin + perl     a Perl service (shares libs and bin with py)
  base    libs + bin            a minimal system (all of it in py and pl)
  docs    docs                  another kind of content altogether

OUT_DIR/corpora.json says what each holds: its files, pages, distinct and
zero pages, and for every pair the distinct pages both hold (what sharing
can reach between two guests that copy all of both). Nothing here is ever
committed: the files differ from machine to machine, the same machine gives
the same corpora run to run.
"""
import glob
import hashlib
import json
import os
import sys

PAGE = 4096
PARTS = {
    "libs": ["/usr/lib/x86_64-linux-gnu/*.so*"],
    "bin": ["/usr/bin/*", "/usr/sbin/*"],
    "python": ["/usr/lib/python3*/**/*"],
    "perl": ["/usr/share/perl*/**/*", "/usr/lib/x86_64-linux-gnu/perl*/**/*"],
    "docs": ["/usr/share/doc/**/*", "/usr/share/man/**/*"],
}
CORPORA = {
    "py": ["libs", "bin", "python"],
    "pl": ["libs", "bin", "perl"],
    "base": ["libs", "bin"],
    "docs": ["docs"],
}


def part_files(patterns, cap):
    """Regular files (no symlinks) of the patterns, sorted, until cap bytes (pages)."""
    seen, out, used = set(), [], 0
    paths = sorted({p for pat in patterns for p in glob.glob(pat, recursive=True)})
    for p in paths:
        if os.path.islink(p) or not os.path.isfile(p) or p in seen:
            continue
        try:
            size = os.path.getsize(p)
            if size == 0 or not os.access(p, os.R_OK):
                continue
        except OSError:
            continue
        pages = -(-size // PAGE) * PAGE
        if used + pages > cap:
            continue
        seen.add(p)
        out.append((p, size))
        used += pages
    return out


def write_corpus(path, files):
    """The files, each page aligned and zero padded; page hashes for the manifest."""
    digests = []
    with open(path + ".tmp", "wb") as out:
        for p, _ in files:
            with open(p, "rb") as f:
                data = f.read()
            data += bytes(-len(data) % PAGE)
            out.write(data)
            digests += [hashlib.blake2b(data[i:i + PAGE], digest_size=16).digest()
                        for i in range(0, len(data), PAGE)]
    os.replace(path + ".tmp", path)
    return digests


def main():
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    out, cap, only = argv[0], 48, None
    rest = argv[1:]
    while rest:
        opt = rest.pop(0)
        if opt == "--part-mib" and rest:
            cap = int(rest.pop(0))
        elif opt == "--only" and rest:
            only = rest.pop(0).split(",")
        else:
            print(f"corpora: unknown argument {opt} (see --help)", file=sys.stderr)
            return 2
    names = only or list(CORPORA)
    bad = [n for n in names if n not in CORPORA]
    if bad:
        print(f"corpora: no corpus named {', '.join(bad)} (there are {', '.join(CORPORA)})",
              file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    parts = {p: part_files(PARTS[p], cap << 20) for c in names for p in CORPORA[c]}
    zero = hashlib.blake2b(bytes(PAGE), digest_size=16).digest()
    manifest, sets = {"page_bytes": PAGE, "part_mib": cap, "corpora": {}}, {}
    for name in names:
        files = [f for p in CORPORA[name] for f in parts[p]]
        if not files:
            print(f"corpora: no files for {name} on this machine", file=sys.stderr)
            return 1
        path = os.path.join(out, f"{name}.corpus")
        digests = write_corpus(path, files)
        sets[name] = set(digests)
        manifest["corpora"][name] = {
            "file": path, "parts": CORPORA[name], "files": len(files),
            "bytes": os.path.getsize(path), "pages": len(digests),
            "distinct_pages": len(sets[name]), "zero_pages": digests.count(zero)}
        print(f"{name:6} {len(files):6} files {len(digests):7} pages "
              f"({os.path.getsize(path) >> 20} MiB), {len(sets[name])} distinct, "
              f"{digests.count(zero)} zero", flush=True)
    manifest["common_distinct_pages"] = {
        f"{a}+{b}": len(sets[a] & sets[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    for pair, n in manifest["common_distinct_pages"].items():
        print(f"{pair:10} {n:7} distinct pages in common")
    with open(os.path.join(out, "corpora.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
