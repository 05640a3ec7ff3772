"""A host killed (SIGKILL) in the middle of heavy work, and a host started again with its config.

Host 1 runs two guests with page sharing, a swap file on a disk, a memory cgroup of its own
(hard_limit), a control socket and a socket taking VMs in. While the sharing scanner merges,
the swap verb swaps a out again and again (its guest reads it back as it verifies) and the
balloon inflates in b, the host is killed. What it leaves: its two socket files (nobody
listens), no swap file (it never had a name: O_TMPFILE), its cgroup. Host 2, started with the
same config, replaces the stale sockets, removes the stale cgroup and makes its own, and runs
both guests, which fill and verify, swap included. While it runs, a host with its config, or
with only its incoming address, refuses to start and takes nothing of host 2's. Host 2 stops
with status 0 and leaves nothing: no socket, no cgroup, no file in the swap directory.

Every wait is a poll with a generous deadline; nothing depends on timing."""
import json
import os
import socket
import stat
import threading

from kvmemtest import check, finish, require_accel, require_root, run
from ctlhelp import Host, request, stats, tmpdir, vm_of, wait_incoming, wait_socket, wait_state
from swaphelp import disk_dir, swap_out

require_accel()
require_root("a memory cgroup of the host's own")
ddir, dfs = disk_dir()
if not check(ddir is not None, f"a directory on a disk filesystem for the swap file ({dfs})"):
    finish()

VERIFY = r"kvmem-wl: verify ok \d+$"
d = tmpdir()
sock, inc = f"{d}/k.sock", f"{d}/in.sock"
cfg_path = f"{d}/host.json"
with open(cfg_path, "w") as f:
    json.dump({"budget": "2G", "hard_limit": "3G", "socket": sock, "incoming": f"unix:{inc}",
               "console_prefix": True, "dedup": "on", "swap": {"path": ddir, "size": "256M"},
               "vms": [{"name": n, "mem": "128M",
                        "append": f"kvmem.wl=size=48,dup=30,zero=10,id={i + 1},rate=4,hot=25,"
                                  f"verify=2,then=sleep"} for i, n in enumerate("ab")]}, f)


def cgroup_of(pid):
    """The memory cgroup directory of process pid (v1's controller, else v2's)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            n, ctrl, path = line.rstrip("\n").split(":", 2)
            if ctrl == "memory":
                return "/sys/fs/cgroup/memory" + path
            if n == "0" and ctrl == "":
                v2 = "/sys/fs/cgroup" + path
    return v2


def listening(path):
    """True when a process accepts on the UNIX socket at path."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def is_socket(path):
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def both_verify(h, what):
    ok = h.wait_line(rf"^\[a\] {VERIFY}", h.count(rf"^\[a\] {VERIFY}") + 1, 180) and \
        h.wait_line(rf"^\[b\] {VERIFY}", h.count(rf"^\[b\] {VERIFY}") + 1, 180)
    fails = [l for l in h.stdout() if "verify FAIL" in l]
    check(ok and not fails, f"{what}: a and b verify all their memory, no FAIL ({fails[:3]})")


# 1. Host 1, in the middle of heavy work.
h1 = Host(["host", "--config", cfg_path])
check(wait_socket(h1, sock) and wait_incoming(h1), "host 1 serves its sockets")
cg1 = cgroup_of(h1.p.pid)
check(os.path.basename(cg1) == f"kvmem-{h1.p.pid}", f"host 1 runs in a cgroup of its own ({cg1})")
both_verify(h1, "host 1")
r = request(sock, {"verb": "balloon", "vm": "b", "target": "64M"})
check(r.get("ok") is True, f"the balloon inflates in b ({r.get('error', 'ok')})")
stop_swapping = threading.Event()


def swap_a_again_and_again():
    while not stop_swapping.is_set():
        try:
            request(sock, {"verb": "swap", "vm": "a", "to": "8M"}, timeout=30)
        except (OSError, ValueError):
            pass  # the host is gone (killed): the loop ends with the test's event


swapper = threading.Thread(target=swap_a_again_and_again, daemon=True)
swapper.start()
ok, st = wait_state(sock, None, lambda s: s["host"]["dedup"]["merges"] > 0 and
                    s["host"]["swap"]["swap_outs"] > 0 and s["host"]["swap"]["swap_ins"] > 0 and
                    vm_of(s, "b")["balloon"]["counters"]["inflated_pages"] > 0,
                    "sharing, swap (out and back in) and the balloon are all at work",
                    show=lambda s: f"merges {s['host']['dedup']['merges']}, swap outs "
                    f"{s['host']['swap']['swap_outs']} ins {s['host']['swap']['swap_ins']}, "
                    f"inflated {vm_of(s, 'b')['balloon']['counters']['inflated_pages']}")
h1.p.kill()
h1.p.wait(60)
stop_swapping.set()
swapper.join(60)
check(h1.p.returncode == -9, f"host 1 was killed ({h1.p.returncode})")

# What it left.
check(is_socket(sock) and not listening(sock), "its control socket file is left, stale")
check(is_socket(inc) and not listening(inc), "its incoming socket file is left, stale")
check(os.listdir(ddir) == [], f"no swap file is left: it never had a name ({os.listdir(ddir)})")
check(os.path.isdir(cg1), f"its cgroup is left ({cg1})")

# 2. Host 2, the same config.
h2 = Host(["host", "--config", cfg_path])
check(wait_socket(h2, sock) and wait_incoming(h2), "host 2 serves both sockets")
check(any("replacing a stale socket" in l for l in h2.stderr()),
      "host 2 replaced the stale control socket, saying so")
cg2 = cgroup_of(h2.p.pid)
check(os.path.basename(cg2) == f"kvmem-{h2.p.pid}" and os.path.isdir(cg2),
      f"host 2 runs in a cgroup of its own ({cg2})")
check(not os.path.exists(cg1) and any("removed the stale memory cgroup" in l for l in h2.stderr()),
      f"host 1's stale cgroup is gone, and the log says so ({cg1})")
both_verify(h2, "host 2")
r = swap_out(sock, "a", "8M", lambda v: v["swap"]["swapped_bytes"] > 0)[-1]
check(r.get("ok") is True and vm_of(stats(sock), "a")["swap"]["swapped_bytes"] > 0,
      f"swap works on host 2 ({r})")
both_verify(h2, "host 2, after a swap-out")

# 3. Hosts that must not take host 2's place.
r = run(["host", "--config", cfg_path], timeout=120)
check(r.returncode != 0 and "another kvmem host is listening there" in r.stderr,
      f"a host with the same config refuses to start ({r.returncode}: {r.stderr.strip()[-200:]})")
r = run(["host", "--incoming", f"unix:{inc}", "--socket", f"{d}/other.sock"], timeout=120)
check(r.returncode != 0 and "another host takes VMs in there" in r.stderr,
      f"a host with only its incoming address refuses to start ({r.returncode}: "
      f"{r.stderr.strip()[-200:]})")
check(listening(sock) and listening(inc), "host 2 still has both its sockets")
check([c for c in os.listdir(os.path.dirname(cg2)) if c.startswith("kvmem-")] ==
      [os.path.basename(cg2)], "the refused hosts left no cgroup")
check(vm_of(stats(sock), "a")["state"] == "running" and vm_of(stats(sock), "b")["state"] ==
      "running", "host 2's VMs run on")

rc = h2.stop()
check(rc == 0, f"host 2 stops cleanly ({rc}; {h2.stderr()[-3:]})")
check(not os.path.exists(sock) and not os.path.exists(inc), "it removes both socket files")
check(not os.path.exists(cg2), f"and its cgroup ({cg2})")
check(os.listdir(ddir) == [], f"and leaves nothing in the swap directory ({os.listdir(ddir)})")
finish()
