"""The control socket's group ("socket_group" in the host config): its
members read stats without control. The clients run with ids no account has
(setpriv; nothing is added to /etc/passwd or /etc/group, which may be
read-only, as in the nested VM): a member by a supplementary group and one by
its primary group get `kvmem stat` (JSON and OpenMetrics) and are refused
every control verb with a clear EPERM on a connection that goes on, while the
VM runs on; a user outside the group cannot connect (the file's mode) and is
refused by its credentials when let past the mode; root still has every
verb. A group nobody has is a config error (exit 2)."""
import json
import os
import shutil
import stat
import subprocess

from kvmemtest import KVMEM, check, finish, require_accel, require_root
from ctlhelp import (Host, host_config, request, request_as, stats, tmpdir, vm_of, wait_socket,
                     wait_state)

require_accel()
require_root("the clients take other users' ids (setpriv)")

# Ids of no account: the kernel checks numbers, and so does kvmem.
GROUP = 64123                  # the socket's group
SUPP = (64124, 64124, [GROUP])  # uid, gid, groups: in GROUP by a supplementary group
PRIM = (64125, GROUP, [])       # GROUP is its primary group
OUTSIDER = (64126, 64126, [])   # in no group of the socket's
gid = GROUP

d = tmpdir()
# The users must reach the socket, and run kvmem: the build directory may be
# under a directory they cannot enter (a home of mode 0700), so they run a copy.
os.chmod(d, 0o755)
kvmem_copy = os.path.join(d, "kvmem")
shutil.copy2(KVMEM, kvmem_copy)
os.chmod(kvmem_copy, 0o755)
sock = os.path.join(d, "k.sock")


def ids(who):
    """setpriv's options for who (uid, gid, supplementary groups)."""
    uid, g, groups = who
    return ["--reuid", str(uid), "--regid", str(g)] + (
        ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"])


def as_user(who, args):
    """Run args as who (ids)."""
    return subprocess.run(["setpriv"] + ids(who) + args, capture_output=True,
                          text=True, timeout=120, cwd=d)


def raw(who, *reqs):
    """Requests on one connection as who (request_as)."""
    return request_as(ids(who), sock, *reqs)


def root_only(reply, verb):
    msg = reply.get("error", "")
    return (reply.get("ok") is False and reply.get("code") == "EPERM" and
            f'"{verb}" is root-only; this connection is read-only (socket_group)' in msg)


# A group nobody has: a config error, naming the field.
bad = host_config(d, {"socket": sock, "socket_group": f"kvmem-nosuch{os.getpid()}",
                      "vms": [{"name": "a", "mem": "64M"}]})
r = subprocess.run([KVMEM, "host", "--config", bad], capture_output=True, text=True, timeout=120)
check(r.returncode == 2 and f'socket_group: no such group "kvmem-nosuch{os.getpid()}"' in r.stderr,
      f"an unknown socket_group is refused, exit 2 ({r.returncode}: {r.stderr.strip()})")
check(not os.path.exists(sock), "... before any socket is made")

cfg = host_config(d, {"socket": sock, "socket_group": str(GROUP), "vms": [
    {"name": "a", "mem": "64M", "append": "kvmem.wl=size=8,then=sleep"}]})
host = Host(["host", "--config", cfg])
try:
    if not check(wait_socket(host, sock), "the host serves its control socket"):
        raise SystemExit
    # The socket comes before the VM starts: from "running" on, only a verb changes it.
    wait_state(sock, "a", lambda v: v["state"] == "running", "the VM runs",
               show=lambda v: v["state"], deadline_s=60)
    st = os.stat(sock)
    check(stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0
          and st.st_gid == gid, f"the socket is mode 0660, root's, group {GROUP} (mode "
          f"{oct(st.st_mode)}, uid {st.st_uid}, gid {st.st_gid}, want gid {gid})")

    # Members: kvmem stat as it is, by a supplementary group and by the primary one.
    for who, how in ((SUPP, "a supplementary group"), (PRIM, "its primary group")):
        r = as_user(who, [kvmem_copy, "stat", "--socket", sock, "--json"])
        doc = json.loads(r.stdout) if r.returncode == 0 else {}
        check(r.returncode == 0 and [v["name"] for v in doc.get("vms", [])] == ["a"] and
              "budget_bytes" in doc.get("host", {}),
              f"a member by {how} gets kvmem stat --json ({r.returncode}: {r.stderr.strip()})")
    r = as_user(SUPP, [kvmem_copy, "stat", "--socket", sock, "--format", "openmetrics"])
    check(r.returncode == 0 and 'kvmem_vm_mem_bytes{vm="a"}' in r.stdout and
          r.stdout.endswith("# EOF\n"),
          f"... and the OpenMetrics exposition ({r.returncode}: {r.stderr.strip()})")

    # A control verb from a member: refused, clearly, and the connection goes on.
    res = raw(SUPP, {"verb": "stop", "vm": "a"}, {"verb": "fingerprint", "vm": "a"},
              {"verb": "list"})
    rep = res.get("replies", [])
    check(len(rep) == 3 and root_only(rep[0], "stop") and root_only(rep[1], "fingerprint"),
          f"stop and fingerprint from a member: EPERM, root-only ({res})")
    check(len(rep) == 3 and rep[2].get("ok") is True and
          [v["name"] for v in rep[2].get("vms", [])] == ["a"],
          "... and the same connection still serves list")
    # The refusal is the reply: nothing was started, so no wait for the VM is needed.
    check(vm_of(stats(sock), "a")["state"] == "running", "the refused stop did not happen")
    r = as_user(PRIM, [kvmem_copy, "balloon", "--socket", sock, "--vm", "a", "--target", "32M"])
    check(r.returncode == 1 and '"balloon" is root-only' in r.stderr and "EPERM" in r.stderr,
          f"kvmem balloon from a member: exit 1, the host's refusal ({r.returncode}: "
          f"{r.stderr.strip()})")
    bal = vm_of(stats(sock), "a").get("balloon", {})
    check(bal.get("target_bytes") == 64 << 20,
          f"... and no balloon target was set: the target is still all 64 MiB ({bal})")

    # Outside the group: the file's mode keeps it out ...
    r = as_user(OUTSIDER, [kvmem_copy, "stat", "--socket", sock])
    check(r.returncode == 1 and "permission denied" in r.stderr and not r.stdout,
          f"kvmem stat from a user outside the group: exit 1, permission denied "
          f"({r.returncode}: {r.stderr.strip()})")
    res = raw(OUTSIDER, {"verb": "stats"})
    check(res.get("connect") == 13, f"... its connect fails with EACCES ({res})")
    # ... and with the file opened up (a chmod by mistake), its credentials do.
    os.chmod(sock, 0o666)
    res = raw(OUTSIDER, {"verb": "stats"})
    os.chmod(sock, 0o660)
    rep = res.get("replies", [])
    check(res.get("connect") == 0 and len(rep) == 1 and rep[0].get("ok") is False and
          rep[0].get("code") == "EPERM" and "permission denied" in rep[0].get("error", ""),
          f"through a chmod 0666 socket it is refused by its credentials ({res})")

    # Root: every verb, on the same socket. pause answers once every vCPU is
    # parked, resume once they may run: the next sample says so.
    r = request(sock, {"verb": "pause", "vm": "a"})
    check(r.get("ok") is True and vm_of(stats(sock), "a")["state"] == "paused",
          f"root pauses the VM ({r})")
    r = request(sock, {"verb": "resume", "vm": "a"})
    check(r.get("ok") is True and vm_of(stats(sock), "a")["state"] == "running",
          f"... and resumes it ({r})")
    r = subprocess.run([KVMEM, "stat", "--socket", sock, "--json"], capture_output=True,
                       text=True, timeout=120)
    check(r.returncode == 0, f"root's kvmem stat ({r.returncode}: {r.stderr.strip()})")
    check(host.alive(), "the host ran through all of it")
finally:
    rc = host.stop()
check(rc == 0, f"the host exits 0 on SIGTERM (got {rc}; {host.stderr()[-3:]})")
check(not os.path.exists(sock), "the socket file is removed at exit")
finish()
