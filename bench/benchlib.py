"""Shared by the bench scripts: the control-socket client and result lines."""
import json
import socket


def request(path, req, timeout=30):
    """One request to a kvmem control socket; returns the decoded reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall((json.dumps(req) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


def emit(name, unit, value, config, **extra):
    """One machine-readable result line: name, unit, value, config (+ ref etc.).
    A float value is rounded to 4 places; others (series, objects) go as they are."""
    if isinstance(value, float):
        value = round(value, 4)
    line = {"name": name, "unit": unit, "value": value, "config": config}
    line.update(extra)
    print(json.dumps(line), flush=True)
