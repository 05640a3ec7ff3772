"""Control socket under hostile input: every bad request gets a JSON error (or
the client is dropped), the host keeps serving and its VM keeps running; the
socket is root-only (file mode and peer credentials)."""
import json
import os
import socket
import stat

from kvmemtest import check, finish, require_accel, wait_until
from ctlhelp import (Host, connect, read_line, request, request_as, stats, tmpdir, vm_of,
                     wait_socket)

require_accel()
d = tmpdir()
sock = os.path.join(d, "k.sock")
host = Host(["run", "--mem", "256M", "--socket", sock, "--append",
             "kvmem.wl=size=32,verify=1"])


def healthy(what):
    """After each attack: stats answers and the VM still runs and verifies."""
    st = stats(sock)
    vm = vm_of(st, "vm0")
    n = host.count(r"^kvmem-wl: verify ok")
    check(host.alive() and vm is not None and vm["state"] == "running",
          f"after {what}: stats answers, vm0 is running")
    check(host.wait_line(r"^kvmem-wl: verify ok", n + 1),
          f"after {what}: the guest verifies its memory again")


def exchange(lines):
    """Send raw lines on one connection; return the decoded reply lines."""
    s = connect(sock)
    s.sendall(b"".join(lines))
    s.shutdown(socket.SHUT_WR)
    replies, buf = [], b""
    while True:
        line, buf = read_line(s, buf)
        if line is None:
            break
        replies.append(json.loads(line))
    s.close()
    return replies


try:
    if not check(wait_socket(host, sock), "the host serves its control socket"):
        raise SystemExit
    st = os.stat(sock)
    check(stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0,
          f"socket is mode 0600 owned by root (mode {oct(st.st_mode)}, uid {st.st_uid})")
    check(host.wait_line(r"^kvmem-wl: verify ok"), "the guest verifies before the attacks")

    # Malformed requests, pipelined on one connection: one error reply each, in order.
    bad = [
        (b"this is not json\n", "EINVAL"),
        (b"{\"verb\": \"list\"\n", "EINVAL"),
        (b"[1, 2, 3]\n", "EINVAL"),
        (b"\"verb\"\n", "EINVAL"),
        (b"{}\n", "EINVAL"),
        (b"{\"verb\": 42}\n", "EINVAL"),
        (b"{\"verb\": \"frobnicate\"}\n", "ENOSYS"),
        (b"{\"verb\": \"pause\"}\n", "EINVAL"),
        (b"{\"verb\": \"pause\", \"vm\": 7}\n", "EINVAL"),
        (b"{\"verb\": \"stop\", \"vm\": \"nosuchvm\"}\n", "ENOENT"),
        (b"{\"verb\": \"resume\", \"vm\": \"vm0\"}\n", "EINVAL"),
        (b"{\"verb\": \"budget\"}\n", "EINVAL"),
        (b"{\"verb\": \"budget\", \"bytes\": -5}\n", "EINVAL"),
        (b"{\"verb\": \"budget\", \"bytes\": \"lots\"}\n", "EINVAL"),
        (b"{\"verb\": \"budget\", \"bytes\": 0}\n", "EINVAL"),
        (b"{\"verb\": \"list\", \"verb\": \"stats\"}\n", "EINVAL"),
        (b"\xff\xfe\x00garbage\x80\n", "EINVAL"),
        (b"{\"verb\": \"\xc3\x28\"}\n", "EINVAL"),
        (b"[" * 30000 + b"]" * 30000 + b"\n", "EINVAL"),
        (b"[" * 100000 + b"\n", "E2BIG"),
    ]
    # The last one is longer than a request line may be: the error, then the server closes.
    replies = exchange([l for l, _ in bad])
    check(len(replies) == len(bad), f"one reply per bad request ({len(replies)}/{len(bad)})")
    for (line, code), r in zip(bad, replies):
        check(r.get("ok") is False and r.get("code") == code and isinstance(r.get("error"), str)
              and r["error"], f"{line[:40]!r}... -> error {code} ({r})")

    # Good requests interleaved with bad ones on one connection, ids echoed.
    replies = exchange([b'{"verb":"list","id":1}\n', b"nope\n", b'{"id":"x","verb":"stats"}\r\n',
                        b"\n", b'{"verb":"verbs","id":[1,{"a":2}]}\n'])
    check([r.get("ok") for r in replies] == [True, False, True, True],
          f"good, bad, good, good (blank line ignored) -> {[r.get('ok') for r in replies]}")
    check([r.get("id") for r in replies] == [1, None, "x", [1, {"a": 2}]], "ids are echoed")
    check(replies[1].get("code") == "EINVAL", "the bad one says EINVAL")
    check(all(v in replies[3].get("verbs", []) for v in
              ("list", "stats", "pause", "resume", "stop", "budget", "reclaim")),
          f"verbs lists the host's verbs ({replies[3].get('verbs')})")
    healthy("malformed requests")

    # A burst of pipelined requests on one connection: every one answered, in order.
    replies = exchange([b'{"verb":"list","id":%d}\n' % i for i in range(2000)])
    check([r.get("id") for r in replies] == list(range(2000)) and
          all(r.get("ok") for r in replies), f"2000 pipelined requests: 2000 replies in order "
          f"({len(replies)})")

    # A 10 MB line: an error reply naming the limit, then the connection ends.
    s = connect(sock, timeout=120)
    s.sendall(b'{"verb":"list","pad":"' + b"A" * (10 * 1024 * 1024) + b'"}\n')
    line, buf = read_line(s)
    r = json.loads(line) if line else {}
    check(r.get("ok") is False and r.get("code") == "E2BIG" and "longer" in r.get("error", ""),
          f"10 MB line -> E2BIG error ({r})")
    check(read_line(s, buf)[0] is None, "... and the server closes that connection")
    s.close()
    healthy("a 10 MB line")

    # Clients that go away mid-request or before reading their reply.
    for partial in (b'{"verb":"sta', b'{"verb":"stats"}\n', b'{"verb":"stats"}\n' * 50, b"x" * 70000):
        s = connect(sock)
        s.sendall(partial)
        s.close()
    s = connect(sock)
    s.sendall(b'{"verb":"stats"}')
    s.shutdown(socket.SHUT_WR)
    check(read_line(s)[0] is None, "a request without its newline at EOF gets no reply")
    s.close()
    healthy("clients that disconnect mid-request")

    # A client that sends requests and never reads: dropped once its replies pile up.
    s = connect(sock, timeout=120)
    sent, dropped = 0, False
    req = b'{"verb":"stats"}\n' * 256
    try:
        while sent < 256 * 1024 * 1024:
            s.sendall(req)
            sent += len(req)
    except (BrokenPipeError, ConnectionResetError):
        dropped = True
    except socket.timeout:
        pass
    s.close()
    check(dropped, f"a client that never reads is dropped (after {sent} bytes of requests)")
    healthy("a client that never reads")

    # Many clients at once: at most 64 served, the rest told why and closed.
    def burst():
        conns = [connect(sock) for _ in range(100)]
        oks, busy = 0, 0
        for s in conns:
            try:
                s.sendall(b'{"verb":"list"}\n')
            except (BrokenPipeError, ConnectionResetError):
                pass
            line, _ = read_line(s)
            r = json.loads(line) if line else {}
            oks += r.get("ok") is True
            busy += r.get("code") == "EBUSY"
        for s in conns:
            s.close()
        bursts.append((oks, busy))
        return oks, busy

    # Every burst is answered in full, never more than 64 served; exactly 64 once
    # the host has closed the clients of the earlier checks (and of an earlier
    # burst), which it may not have yet when a burst comes: wait for that.
    bursts = []
    ok, _ = wait_until(burst, lambda b: b[0] == 64 or b[0] > 64 or sum(b) != 100, 120, 1)
    check(ok and all(o <= 64 and o + b == 100 for o, b in bursts) and bursts[-1][0] == 64,
          f"100 clients: 64 served, the rest refused with EBUSY (served, refused per burst: "
          f"{bursts})")
    healthy("100 clients at once")

    # Not root: the file mode keeps uid 65534 out ...
    def as_nobody():
        return request_as(["--reuid", "65534", "--regid", "65534", "--clear-groups"], sock,
                          {"verb": "stop", "vm": "vm0"})

    r = as_nobody()
    check(r.get("connect") == 13, f"uid 65534 cannot connect: EACCES ({r})")
    # ... and with the file opened up (a chmod by mistake), the peer check refuses it.
    os.chmod(d, 0o755)
    os.chmod(sock, 0o666)
    r = as_nobody()
    reply = (r.get("replies") or [{}])[0]
    check(r.get("connect") == 0 and reply.get("ok") is not True and
          reply.get("code", "EPERM") == "EPERM",
          f"uid 65534 through a chmod 0666 socket is refused ({r})")
    os.chmod(sock, 0o600)
    healthy("a non-root client")
    check(vm_of(stats(sock), "vm0")["state"] == "running", "the refused stop did not happen")
finally:
    rc = host.stop()
check(rc == 0, f"the host exits 0 on SIGTERM (got {rc}; {host.stderr()[-3:]})")
check(not os.path.exists(sock), "the socket file is removed at exit")
finish()
