"""`kvmem stat`: the --json schema, the table (a row per VM and a TOTAL row,
aligned), the OpenMetrics exposition (checked by Prometheus's parser),
--watch, and its errors (one line on stderr, exit 1; usage exit 2)."""
import json
import os
import re
import signal
import socket
import subprocess
import threading

from kvmemtest import ACCEL, KVMEM, check, finish, require_accel, wait_for
from ctlhelp import Host, host_config, tmpdir, wait_socket
from prometheus_client.openmetrics.parser import text_string_to_metric_families

require_accel()
d = tmpdir()
sock = os.path.join(d, "k.sock")
cfg = host_config(d, {
    "budget": "2G", "socket": sock, "vms": [
        {"name": "alpha", "mem": "256M", "append": "kvmem.wl=size=32,zero=50,then=sleep"},
        {"name": "beta-with-a-long-name", "mem": "128M", "min": "32M",
         "append": "kvmem.wl=size=16,then=sleep"},
    ]})


def stat(*args, timeout=60):
    return subprocess.run([KVMEM, "stat"] + list(args), capture_output=True, text=True,
                          timeout=timeout)


PAGE_STATES = ("anon", "zero", "shared", "ballooned", "reported", "swapped")
host = Host(["host", "--config", cfg])
try:
    check(wait_socket(host, sock), "the host serves its control socket")
    check(host.wait_line(r"^\[alpha\] kvmem-wl: filled") and
          host.wait_line(r"^\[beta-with-a-long-name\] kvmem-wl: filled"), "both guests filled")

    # --json: the documented schema, one JSON document.
    r = stat("--socket", sock, "--json")
    check(r.returncode == 0, f"stat --json exits 0 ({r.returncode}: {r.stderr.strip()})")
    doc = json.loads(r.stdout)
    h = doc.get("host", {})
    check("ok" not in doc and "id" not in doc, "--json prints the payload, not the envelope")
    for k in ("budget_bytes", "used_bytes", "saved_bytes", "configured_bytes", "over_budget",
              "policy_passes", "reclaimed_bytes", "used_source"):
        check(k in h, f"host.{k} present")
    check(h.get("budget_bytes") == 2 << 30, f"host.budget_bytes is the configured 2 GiB "
          f"({h.get('budget_bytes')})")
    check(h.get("configured_bytes") == (256 + 128) << 20, "host.configured_bytes is the sum of mem")
    vms = {v["name"]: v for v in doc.get("vms", [])}
    check(sorted(vms) == ["alpha", "beta-with-a-long-name"], f"one entry per VM ({sorted(vms)})")
    for name, v in vms.items():
        for k in ("name", "state", "mem_bytes", "min_bytes", "resident_bytes", "shares",
                  "entitlement_bytes", "pages", "last_action"):
            check(k in v, f"vms[{name}].{k} present")
        check(all(isinstance(v["pages"].get(s), int) for s in PAGE_STATES),
              f"vms[{name}].pages has every state ({v['pages']})")
        # A property of every sample (README: "the states add up to mem_bytes"),
        # so one sample is checked, as it comes.
        check(sum(v["pages"].values()) * 4096 == v["mem_bytes"],
              f"vms[{name}]: the page states add up to mem ({v['pages']})")
    check(vms["alpha"]["mem_bytes"] == 256 << 20 and vms["beta-with-a-long-name"]["min_bytes"]
          == 32 << 20, "mem and min are the configured ones")

    # The table: host summary, a header, a row per VM, TOTAL; columns aligned.
    r = stat("--socket", sock)
    check(r.returncode == 0 and not r.stderr, f"stat exits 0 quietly ({r.returncode}: {r.stderr})")
    lines = r.stdout.splitlines()
    check(lines and lines[0].startswith("HOST") and "budget 2.0 GiB" in lines[0]
          and "configured 384.0 MiB" in lines[0] and "overcommit 0.19x" in lines[0],
          f"host line with budget, configured and overcommit ({lines[:1]})")
    check(any(l.startswith("      resident ") for l in lines[:4]) and
          any(l.startswith("      saved by:  untouched ") for l in lines[:4]),
          f"lines of what resident memory is and what saves the rest ({lines[1:3]})")
    hdr = next((i for i, l in enumerate(lines) if l.startswith("NAME")), None)
    if check(hdr is not None, "a header row"):
        cols = lines[hdr].split()
        check(cols[:6] == ["NAME", "STATE", "ACCEL", "MEM", "RESIDENT", "ENTITLED"] and
              all(c in cols for c in ("ANON", "ZERO", "SHARED", "BALLOON", "SWAP")),
              f"columns ({cols})")
        rows = lines[hdr + 1:hdr + 4]
        check([row.split()[0] for row in rows] == ["alpha", "beta-with-a-long-name", "TOTAL"],
              f"a row per VM, then TOTAL ({rows})")
        check(all(row.split()[1] == "running" for row in rows[:2]), "both rows say running")
        check(all(row.split()[2] == ACCEL for row in rows[:2]),
              f"both rows name the accelerator {ACCEL}")
        # Right-aligned size columns: every row ends where the header ends.
        check(len({len(l) for l in [lines[hdr]] + rows}) == 1, "rows are aligned")
        check(re.search(r"\b256\.0 MiB\b", rows[0]) and re.search(r"\b384\.0 MiB\b", rows[2]),
              "sizes have units; TOTAL sums MEM")

    # --format openmetrics: a valid OpenMetrics exposition (Prometheus's own
    # parser) of the same figures, VMs as labels.
    r = stat("--socket", sock, "--format", "openmetrics")
    check(r.returncode == 0 and r.stdout.endswith("# EOF\n"),
          f"--format openmetrics exits 0 and ends with # EOF ({r.returncode}: {r.stderr.strip()})")
    fams = {}
    try:
        fams = {f.name: f for f in text_string_to_metric_families(r.stdout)}
        check(True, f"Prometheus's OpenMetrics parser takes it ({len(fams)} families)")
    except ValueError as e:
        check(False, f"Prometheus's OpenMetrics parser takes it ({e})")

    def value(name, **labels):
        f = fams.get(name)
        return next((s.value for s in f.samples if s.labels == labels), None) if f else None
    check(value("kvmem_host_budget_bytes") == 2 << 30 and fams["kvmem_host_budget_bytes"].unit
          == "bytes", "kvmem_host_budget_bytes is the budget, in bytes")
    check(value("kvmem_vm_mem_bytes", vm="alpha") == 256 << 20 and
          value("kvmem_vm_mem_bytes", vm="beta-with-a-long-name") == 128 << 20,
          "kvmem_vm_mem_bytes per VM, named by the vm label")
    check(fams.get("kvmem_host_policy_passes") and fams["kvmem_host_policy_passes"].type ==
          "counter", "counters are typed counter (samples ending in _total)")
    check(value("kvmem_vm_info", vm="alpha", state="running", accel=ACCEL) == 1,
          "kvmem_vm_info names each VM's state and accelerator")
    for name in ("alpha", "beta-with-a-long-name"):
        saved = sum(s.value for s in fams["kvmem_vm_saved_by_bytes"].samples
                    if s.labels["vm"] == name)
        check(saved + value("kvmem_vm_resident_bytes", vm=name) == value("kvmem_vm_mem_bytes",
                                                                         vm=name),
              f"{name}: kvmem_vm_saved_by_bytes by source and resident add up to its memory")
    r = stat("--socket", sock, "--format", "yaml")
    check(r.returncode == 2 and "--format yaml" in r.stderr, f"--format yaml is a usage error "
          f"({r.returncode}: {r.stderr.strip()})")

    # --watch, not a tty: successive tables separated by blank lines, until SIGINT.
    p = subprocess.Popen([KVMEM, "stat", "--socket", sock, "--watch", "0.2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    t = threading.Thread(target=lambda: out.extend(p.stdout), daemon=True)
    t.start()
    wait_for(lambda: sum(l.startswith("TOTAL") for l in list(out)) >= 3, 60)
    p.send_signal(signal.SIGINT)
    rc = p.wait(60)
    t.join(10)
    tables = sum(l.startswith("TOTAL") for l in out)
    check(rc == 0 and tables >= 3, f"--watch prints table after table, exits 0 on SIGINT "
          f"(exit {rc}, {tables} tables)")
    check("\033[" not in "".join(out), "no ANSI codes when stdout is not a tty")
    check(sum(l == "\n" for l in out) >= tables - 1 and out[0].startswith("HOST"),
          "tables are separated by a blank line")

    # --watch --json: one compact document per line.
    p = subprocess.Popen([KVMEM, "stat", "--socket", sock, "--watch", "0.2", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    t = threading.Thread(target=lambda: out.extend(p.stdout), daemon=True)
    t.start()
    wait_for(lambda: len(out) >= 2, 60)
    p.send_signal(signal.SIGTERM)
    p.wait(60)
    t.join(10)
    docs = [json.loads(l) for l in out]
    check(len(docs) >= 2 and all("host" in x and len(x["vms"]) == 2 for x in docs),
          f"--watch --json prints JSON Lines ({len(docs)} documents)")
finally:
    rc = host.stop()
check(rc == 0, f"the host exits 0 on SIGTERM (got {rc})")


def one_error_line(r, code, msg, what):
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    check(r.returncode == code and len(lines) == 1 and msg in lines[0] and not r.stdout,
          f"{what} -> exit {code}, one line naming the problem ({r.returncode}: {lines})")


# Errors: the host is gone now.
one_error_line(stat("--socket", sock), 1, "no such socket", "no socket")
stale = os.path.join(d, "stale.sock")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(stale)
s.close()
one_error_line(stat("--socket", stale), 1, "connection refused", "a stale socket")

# A server that answers nonsense, then one that refuses.
for answer, msg in ((b"this is not json\n", "bad reply"),
                    (b'{"ok":true}\n', "bad reply"),
                    (b'{"ok":false,"error":"go away","code":"EPERM"}\n', "go away"),
                    (b"", "closed the connection")):
    fake = os.path.join(d, "fake.sock")
    if os.path.exists(fake):
        os.unlink(fake)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(fake)
    srv.listen(1)

    def serve(srv=srv, answer=answer):
        c, _ = srv.accept()
        c.recv(65536)
        c.sendall(answer)
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    one_error_line(stat("--socket", fake), 1, msg, f"a server answering {answer!r}")
    t.join(10)
    srv.close()

for args, msg in ((["--watch", "0"], "--watch 0"), (["--watch", "x"], "--watch x"),
                  (["--frob"], "unknown option"), (["extra"], "unexpected argument"),
                  (["--socket"], "--socket: missing value"), (["-jz"], "-z: unknown option")):
    one_error_line(stat(*args), 2, msg, f"stat {' '.join(args)}")
r = stat("--help")
check(r.returncode == 0 and "--watch" in r.stdout and "/run/kvmem.sock" in r.stdout,
      "stat --help shows the options and the default socket")
finish()
