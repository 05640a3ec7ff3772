"""Helpers for the host-swap integration tests: a directory on a disk for the
swap file, a host with swap, and its swap figures from the control socket.
Every wait is a poll with a generous deadline; nothing asserts on timing."""
import atexit
import os
import shutil
import subprocess
import tempfile

from kvmemtest import KVMEM, check
from ctlhelp import (Host, host_config, no_verify_fail, request, stats, vm_of, wait_socket,
                     wait_state)

MIB = 1 << 20
PAGE = 4096


def fs_type(path):
    r = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "?"


def disk_dir():
    """A fresh directory on a disk filesystem: next to the kvmem binary (the
    build directory), else under /var/tmp. (None, why) when there is none."""
    seen = []
    for base in (os.path.dirname(os.path.abspath(KVMEM)), "/var/tmp"):
        try:
            d = tempfile.mkdtemp(prefix="kvmem-swap-", dir=base)
        except OSError as e:
            seen.append(f"{base}: {e}")
            continue
        t = fs_type(d)
        if t not in ("tmpfs", "ramfs", "?"):
            atexit.register(shutil.rmtree, d, True)
            return d, t
        seen.append(f"{base}: {t}")
        shutil.rmtree(d, True)
    return None, "; ".join(seen)


def swap_host(dirname, swap, vms, dedup="off", extra=None):
    """A host with the given swap object (or none) and VMs, console prefixed;
    extra: more host config fields."""
    sock = os.path.join(dirname, "k.sock")
    cfg = {"budget": "8G", "socket": sock, "dedup": dedup, "console_prefix": True, "vms": vms}
    cfg.update(extra or {})
    if swap:
        cfg["swap"] = swap
    h = Host(["host", "--config", host_config(dirname, cfg)])
    ok = wait_socket(h, sock)
    check(ok, "the host serves its control socket" + ("" if ok else f" ({h.stderr()[-3:]})"))
    return h, sock


def host_swap(sock):
    return stats(sock)["host"].get("swap")


def show_vm(v):
    return (f"{v['state']}, resident {v['resident_bytes'] // MIB} MiB, swapped "
            f"{v.get('swap', {}).get('swapped_bytes', 0) // MIB} MiB, pages {v['pages']}")


def swap_out(sock, name, to, enough, tries=30, **fields):
    """The swap verb for VM name down to `to` (and any other request fields),
    asked again while the swap-out goes on: the verb waits for its worker 5 s
    at most, which a sanitizer build or a nested VM writing over 9p outlasts,
    and the next request continues it. Until the reply says the target was
    reached, enough(the VM's stats) holds, or an error other than ETIMEDOUT.
    Every reply, the last one last."""
    answers = []
    for _ in range(tries):
        r = request(sock, dict({"verb": "swap", "vm": name, "to": to}, **fields), timeout=60)
        answers.append(r)
        if r.get("ok") is not True and r.get("code") != "ETIMEDOUT":
            break
        if r.get("reached") or enough(vm_of(stats(sock), name)):
            break
    return answers


def swapped_in(v):
    """Pages a VM read back from swap: touched ones and their read-ahead."""
    return v["swap"]["faults"] + v["swap"]["readahead"]


def resume_and_read_back(h, sock, name, verify, what):
    """A paused VM with pages in swap: its page states agree with its mapping
    (memcheck), it resumes, its touches read pages back, and its workload
    verifies twice more (every page each time, so all read back), never FAIL."""
    r = request(sock, {"verb": "memcheck", "vm": name})
    check(r.get("ok") is True and r.get("checked", 0) > 0 and r.get("mismatches") == 0,
          f"memcheck: no page's state contradicts its mapping ({r})")
    r = request(sock, {"verb": "resume", "vm": name})
    check(r.get("ok") is True, f"the VM resumes ({r})")
    wait_state(sock, None, lambda s: s["host"]["swap"]["swap_ins"] > 0,
               "the guest's touches read swapped pages back",
               show=lambda s: f"{s['host']['swap']}")
    check(h.wait_line(verify, h.count(verify) + 2, 600),
          f"the guest verifies all {what} twice more, reading it back from swap")
    no_verify_fail(h, "swapped out and read back")
