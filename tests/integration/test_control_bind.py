"""Control socket binding: a stale socket file is replaced, a live one is not
(the second host fails with a clear error and the first keeps serving), a
path that is not a socket is left alone, and the socket is removed at exit."""
import os
import socket

from kvmemtest import check, finish, require_accel, wait_for
from ctlhelp import Host, request, tmpdir, wait_socket

require_accel()
d = tmpdir()
sock = os.path.join(d, "k.sock")
VM = ["run", "--mem", "64M", "--append", "kvmem.wl=size=8,then=sleep"]

# A stale socket: bound, never listened on, its owner gone.
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sock)
s.close()
check(os.path.exists(sock), "a stale socket file exists before the host starts")

first = Host(VM + ["--socket", sock])
try:
    check(wait_socket(first, sock), "the host replaces the stale socket and serves on it")
    # The line is on its way through the host's stderr pipe: wait for it.
    check(wait_for(lambda: any("stale socket" in l for l in first.stderr()), 60),
          f"... and says it replaced it ({first.stderr()[-3:]})")

    # A second host on the same path: refused, with one clear reason.
    second = Host(VM + ["--socket", sock])
    second.p.wait(120)
    rc = second.stop()
    err = second.stderr()
    check(rc == 1, f"a second host on a live socket exits 1 (got {rc})")
    check(any(sock in l and "another kvmem host is listening" in l for l in err),
          f"... naming the path and the reason ({err})")
    check(request(sock, {"verb": "list"}).get("ok") is True,
          "the first host still serves its socket")
finally:
    rc = first.stop()
check(rc == 0, f"the first host exits 0 on SIGTERM (got {rc})")
check(not os.path.exists(sock), "its socket is removed at exit")

# A regular file where the socket should go: left alone, the host fails.
with open(sock, "w") as f:
    f.write("precious\n")
h = Host(VM + ["--socket", sock])
h.p.wait(120)
rc = h.stop()
check(rc == 1 and any("not a socket" in l for l in h.stderr()),
      f"a non-socket path is refused (exit {rc}: {h.stderr()})")
with open(sock) as f:
    check(f.read() == "precious\n", "... and the file is untouched")
os.unlink(sock)

# A path too long for a UNIX socket.
long_path = os.path.join(d, "x" * 120 + ".sock")
h = Host(VM + ["--socket", long_path])
h.p.wait(120)
rc = h.stop()
check(rc == 1 and any("socket path" in l for l in h.stderr()),
      f"a socket path longer than sun_path is refused (exit {rc}: {h.stderr()})")
finish()
