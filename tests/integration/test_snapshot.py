"""Save, snapshot and restore: a VM into a file and back, on this host and on a second one.

1. A live snapshot (`kvmem save` without --stop) of a guest that keeps rewriting and verifying its
   memory (zero and duplicate pages shared by kvmem's page sharing, some pages in the balloon):
   the command ends "done", the VM ran on (it verifies after), its pause stayed within the
   downtime limit, and the file takes the disk of the VM's data, not of its size.
2. A save with --stop mid-workload: the VM is gone from the host, shown as saved.
3. Files that must be refused are, with a clear reason and nothing left behind: not a snapshot,
   truncated, another format version, a data page that does not match its hash (found while
   loading: the half-made VM is discarded), and a restore into a host without the budget for the
   VM's min.
4. The saved VM is restored into the same host, lazily (it runs before its memory is in): a
   digest of every guest page where it was saved equals the one where it starts, the guest goes
   on verifying while the prefetcher and its own touches race for the pages, every page of the
   file comes in (by one or the other, never both), and the page states agree with the mappings.
   Restored again without the prefetcher, the guest runs and verifies on pages that came in only
   as it touched them.
5. Rollback: a snapshot, the guest writes on, the VM is rolled back to it: a digest of every
   page once reloaded equals the snapshot's, only pages that differ were reloaded (by the
   file's page hashes), and the guest verifies from there. With the CLI too. A file that is
   not a snapshot is refused and the VM runs on untouched.
6. The snapshot of 1 runs in a second host (`kvmem run --restore`), verifying; under kvm it is
   also restored beside the VM it was taken from, under another name (under thread a VM resumes
   only at its original place in the address space, so that is refused with that reason).

Nothing asserts on timing but the downtime, which the VMM holds to its limit."""
import os
import struct
import subprocess

from kvmemtest import ACCEL, KVMEM, check, finish, require_accel, wait_for
from ctlhelp import Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of, wait_socket

require_accel()
d = tmpdir()
sock, b_sock = f"{d}/a.sock", f"{d}/b.sock"
WL = "kvmem.wl=size=48,dup=30,zero=20,id=1,rate=8,hot=30,verify=1,then=sleep"
# It takes VMs in (incoming), so that it serves on once its only VM is saved away.
cfg = {"budget": "4G", "socket": sock, "console_prefix": True, "dedup": "on",
       "incoming": f"unix:{d}/a-in.sock",
       "vms": [{"name": "snap", "mem": "128M", "min": "64M", "cpus": 2, "append": WL}]}
host = Host(["host", "--config", host_config(d, cfg)])
others = []


def job(vm, kind):
    """The last job of that kind of vm the host shows (live VM first, then those that left)."""
    st = stats(sock)
    for v in st.get("vms", []):
        m = v.get("migration")
        if v["name"] == vm and isinstance(m, dict) and m["kind"] == kind:
            return m
    found = [m for m in st.get("migrated", []) if m["vm"] == vm and m["kind"] == kind]
    return found[-1] if found else None


def verifies(h, name, what, more=1):
    """New "verify ok" lines of VM name (None: kvmem run's, without a prefix), no FAIL."""
    line = (rf"\[{name}\] " if name else "^") + "kvmem-wl: verify ok"
    n = h.count(line)
    check(h.wait_line(line, n=n + more, deadline_s=120),
          f"{what}: the guest verifies its memory")
    no_verify_fail(h, what)


def refused(path, why, what, sock_=None, lazy=True):
    r = request(sock_ or sock, {"verb": "restore", "file": path, "name": "refused", "lazy": lazy},
                timeout=60)
    check(r.get("ok") is False and why in r.get("error", ""),
          f"{what}: refused saying why ({r.get('error')})")
    check(not vm_of(stats(sock_ or sock), "refused"), f"{what}: no VM of it is left")


try:
    check(wait_socket(host, sock), "the host serves its socket")
    verifies(host, "snap", "before", more=2)
    r = request(sock, {"verb": "balloon", "vm": "snap", "target": "112M"})
    check(r.get("ok") is True, f"the balloon takes 16 MiB ({r})")
    wait_for(lambda: vm_of(stats(sock), "snap")["pages"]["ballooned"] > 0, 60)

    # 1. A live snapshot, with the CLI.
    live = f"{d}/live.snap"
    p = subprocess.run([KVMEM, "save", "--socket", sock, "--vm", "snap", "--to", live],
                       capture_output=True, text=True, timeout=300)
    print(f"info   kvmem save: {p.stdout.strip()[-300:]} {p.stderr.strip()[-300:]}", flush=True)
    check(p.returncode == 0 and "snap: done" in p.stdout, "kvmem save (a snapshot) is done")
    m = job("snap", "snapshot") or {}
    check(m.get("downtime_ms", 1e9) <= m.get("downtime_limit_ms", 0),
          f"its pause ({m.get('downtime_ms')} ms) within the limit ({m.get('downtime_limit_ms')} ms)")
    check(m["pages"]["ballooned"] > 0 and m["pages"]["zero"] > 0,
          f"ballooned and zero pages were recorded as such ({m['pages']})")
    v = vm_of(stats(sock), "snap")
    check(v is not None and v["state"] == "running", "the VM runs on")
    st = os.stat(live)
    print(f"info   file: {st.st_size >> 20} MiB long, {st.st_blocks * 512 >> 20} MiB on disk",
          flush=True)
    check(st.st_mode & 0o777 == 0o600, f"the file is its owner's alone ({oct(st.st_mode)})")
    check(st.st_blocks * 512 < 100 << 20, "the file takes the disk of the VM's data (under 100 "
          "of its 128 MiB: zero and ballooned pages are holes)")
    verifies(host, "snap", "after the snapshot")

    # 2. Saved and stopped, mid-workload.
    saved = f"{d}/saved.snap"
    r = request(sock, {"verb": "save", "vm": "snap", "to": saved, "stop": True,
                       "checksum": True})
    check(r.get("ok") is True, f"the save starts ({r.get('error', 'ok')})")
    wait_for(lambda: (job("snap", "save") or {}).get("stage") in ("done", "failed"), 120)
    out = job("snap", "save") or {}
    check(out.get("stage") == "done", f"the save is done ({out.get('error', '')})")
    # The job ends first; the host's main thread lets the VM go right after.
    check(wait_for(lambda: not vm_of(stats(sock), "snap"), 60), "the saved VM is gone from the host")
    check(not [f for f in os.listdir(d) if f.startswith(".")], "no temporary file is left")

    # 3. Refusals.
    data = bytearray(open(saved, "rb").read())
    open(f"{d}/not.snap", "wb").write(b"#!/bin/sh\n" + bytes(8000))
    refused(f"{d}/not.snap", "not a kvmem snapshot", "a file that is not a snapshot")
    open(f"{d}/short.snap", "wb").write(data[:-1000])
    refused(f"{d}/short.snap", "truncated", "a truncated file")
    v2 = bytearray(data)
    struct.pack_into("<I", v2, 8, 99)
    open(f"{d}/v2.snap", "wb").write(v2)
    refused(f"{d}/v2.snap", "version 99", "a file of another version")
    nr, doff = struct.unpack_from("<Q", data, 16)[0], struct.unpack_from("<Q", data, 32)[0]
    page = data.index(1, 4096, 4096 + nr) - 4096
    bad = bytearray(data)
    bad[doff + page * 4096 + 123] ^= 0x5a
    open(f"{d}/bad.snap", "wb").write(bad)
    refused(f"{d}/bad.snap", "does not match its hash", "a corrupt guest page (loaded first)",
            lazy=False)
    # Lazily, the VM starts before the page is read: it stops when the page is, and goes.
    r = request(sock, {"verb": "restore", "file": f"{d}/bad.snap", "name": "bad"}, timeout=60)
    # The guest may touch the page before the verb answers: then the answer is the failure.
    check(r.get("ok") is True or "does not match its hash" in r.get("error", ""),
          f"a lazy restore of the corrupt file starts ({r.get('error', 'ok')})")
    wait_for(lambda: (job("bad", "restore") or {}).get("stage") == "failed", 120)
    m = job("bad", "restore") or {}
    check("does not match its hash" in m.get("error", ""),
          f"lazily: the corrupt page stops the VM, saying why ({m.get('error')})")
    wait_for(lambda: not vm_of(stats(sock), "bad"), 60)
    check(not vm_of(stats(sock), "bad"), "lazily: the VM whose memory cannot be whole is gone")
    small = Host(["host", "--config", host_config(d, {
        "budget": "48M", "socket": b_sock, "vms": [], "incoming": f"unix:{d}/b-in.sock"})])
    others.append(small)
    check(wait_socket(small, b_sock), "a host with a 48 MiB budget serves its socket")
    refused(saved, "does not fit", "a restore into a host without the budget for its min", b_sock)
    small.stop()

    # 4. Restored into the same host: every page as it was saved.
    r = request(sock, {"verb": "restore", "file": saved, "checksum": True}, timeout=60)
    check(r.get("ok") is True, f"the restore is done ({r.get('error', 'ok')})")
    inn = r.get("migration") or {}
    check(inn.get("stage") == "done" and inn.get("checksum") == out.get("checksum"),
          f"every guest page as it was saved (digests {out.get('checksum')} and "
          f"{inn.get('checksum')})")
    v = vm_of(stats(sock), "snap")
    check(v is not None and v["state"] == "running" and v["restored_from"] == saved,
          f"the VM runs again, restored from its file ({v and v['restored_from']})")
    check(host.wait_line(r"\[snap\] kvmem guest: resumed from a saved state \(generation 1\)"),
          "the guest sees it runs again from a saved state (its generation changed)")
    verifies(host, "snap", "after the restore")
    wait_for(lambda: (vm_of(stats(sock), "snap")["restore"] or {}).get("pages_left") == 0, 120)
    lz = vm_of(stats(sock), "snap")["restore"] or {}
    print(f"info   lazy restore: {lz}", flush=True)
    check(lz.get("pages_left") == 0 and lz.get("resident_ms") is not None,
          "every page of the file came in")
    check(lz["prefetched"] + lz["faulted"] == lz["lazy_pages"] and lz["prefetched"] > 0,
          f"each page came in once, by the prefetcher ({lz['prefetched']}) or a touch "
          f"({lz['faulted']})")
    check(request(sock, {"verb": "pause", "vm": "snap"}).get("ok") is True, "paused for a look")
    r = request(sock, {"verb": "memcheck", "vm": "snap"}, timeout=60)
    check(r.get("ok") is True and r.get("mismatches") == 0 and r.get("checked", 0) > 0,
          f"page states agree with the mappings ({r})")
    check(request(sock, {"verb": "resume", "vm": "snap"}).get("ok") is True, "resumed")
    verifies(host, "snap", "after full residency")

    # 5. Rollback.
    rb = f"{d}/rollback.snap"
    r = request(sock, {"verb": "save", "vm": "snap", "to": rb, "checksum": True})
    check(r.get("ok") is True, f"a snapshot to roll back to ({r.get('error', 'ok')})")
    wait_for(lambda: (job("snap", "snapshot") or {}).get("peer") == rb and
             job("snap", "snapshot").get("stage") in ("done", "failed"), 120)
    taken = job("snap", "snapshot") or {}
    check(taken.get("stage") == "done", f"taken ({taken.get('error', '')})")
    verifies(host, "snap", "writing on after the snapshot")
    r = request(sock, {"verb": "rollback", "vm": "snap", "file": rb, "checksum": True},
                timeout=60)
    back = r.get("rollback") or {}
    print(f"info   rollback: {back}", flush=True)
    check(r.get("ok") is True, f"rolled back ({r.get('error', 'ok')})")
    check(back.get("checksum") == taken.get("checksum"),
          f"every page as in the snapshot (digests {taken.get('checksum')} and "
          f"{back.get('checksum')})")
    check(0 < back.get("reloaded", 0) < back.get("pages", 0) and back.get("same", 0) > 0,
          f"only the pages that differ were reloaded ({back.get('reloaded')} of "
          f"{back.get('pages')}, {back.get('same')} the same)")
    check(host.wait_line(r"\[snap\] kvmem guest: resumed from a saved state \(generation 2\)"),
          "the guest sees it was rolled back (the snapshot's generation, and one more)")
    verifies(host, "snap", "after the rollback")
    p = subprocess.run([KVMEM, "rollback", "--socket", sock, "--vm", "snap", "--to", rb],
                       capture_output=True, text=True, timeout=120)
    check(p.returncode == 0 and "rolled back" in p.stdout,
          f"kvmem rollback ({p.stdout.strip()} {p.stderr.strip()})")
    verifies(host, "snap", "after the second rollback")
    r = request(sock, {"verb": "rollback", "vm": "snap", "file": f"{d}/not.snap"})
    check(r.get("ok") is False and "not a kvmem snapshot" in r.get("error", ""),
          f"a file that is not a snapshot is refused ({r.get('error')})")
    verifies(host, "snap", "after a refused rollback")

    # 6. The snapshot elsewhere: a second host, and beside the VM it was taken from.
    other = Host(["run", "--restore", live, "--socket", b_sock])
    others.append(other)
    check(wait_socket(other, b_sock), "kvmem run --restore serves its socket")
    verifies(other, None, "the snapshot in a second host")
    r = request(sock, {"verb": "restore", "file": live, "name": "copy"}, timeout=60)
    if ACCEL == "thread":
        check(r.get("ok") is False and "resumes only there" in r.get("error", ""),
              f"thread: a copy beside the VM it came from is refused saying why "
              f"({r.get('error')})")
    else:
        check(r.get("ok") is True, f"kvm: a copy restores beside the VM ({r.get('error', 'ok')})")
        verifies(host, "copy", "the copy")
        verifies(host, "snap", "the VM beside its copy")
    rc = other.stop()
    check(rc == 0, f"the second host stops cleanly ({rc})")

    # Without the prefetcher: only touches bring pages in, and the guest runs on them.
    other = Host(["host", "--config", host_config(d, {
        "budget": "1G", "socket": b_sock, "console_prefix": True, "vms": [],
        "incoming": f"unix:{d}/c-in.sock"})])
    others.append(other)
    check(wait_socket(other, b_sock), "a third host serves its socket")
    r = request(b_sock, {"verb": "restore", "file": live, "prefetch": False}, timeout=60)
    check(r.get("ok") is True, f"restored without the prefetcher ({r.get('error', 'ok')})")
    verifies(other, "snap", "on pages fetched as touched")
    lz = vm_of(stats(b_sock), "snap")["restore"] or {}
    print(f"info   touches only: {lz}", flush=True)
    check(lz.get("prefetched") == 0 and lz.get("faulted", 0) > 0,
          f"every page it has came in on a touch ({lz.get('faulted')} of {lz.get('lazy_pages')})")
finally:
    for h in others:
        h.stop()
    host.stop()
finish()
