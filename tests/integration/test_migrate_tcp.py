"""Live migration over TCP, between two network namespaces joined by a veth pair (over loopback
where the kernel has no veth: the nested VM's), the hosts proving a shared secret to each other.

1. With the same secret on both hosts, a guest that rewrites its pages and verifies them
   migrates over TCP: done, the digests of its memory where it stopped and where it starts are
   equal, and it verifies at the destination.
2. A source holding another secret is refused in the handshake (the destination says why; the
   source runs its VM on); a source with no secret does not even connect (EPERM); a host asked
   to listen on TCP without a secret does not start.

Nothing asserts on timing."""
import os
import subprocess

from kvmemtest import check, finish, require_accel, require_root, run, wait_for
from ctlhelp import (Host, host_config, no_verify_fail, request, stats, tmpdir, vm_of,
                     wait_incoming, wait_socket)

require_accel()
require_root("live migration hands guest memory between processes")

d = tmpdir()
tag = str(os.getpid())
ns_a, ns_b = f"kvmem-a-{tag}", f"kvmem-b-{tag}"


def sh(*args):
    return subprocess.run(list(args), capture_output=True, text=True).returncode == 0


def netns():
    """Two namespaces joined by veth (10.77.0.1 and .2); False where that cannot be made."""
    ok = sh("ip", "netns", "add", ns_a) and sh("ip", "netns", "add", ns_b) and \
        sh("ip", "link", "add", "kvm-va", "netns", ns_a, "type", "veth", "peer", "name",
           "kvm-vb", "netns", ns_b)
    for ns, dev, ip in ((ns_a, "kvm-va", "10.77.0.1"), (ns_b, "kvm-vb", "10.77.0.2")):
        ok = ok and sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev) and \
            sh("ip", "-n", ns, "link", "set", dev, "up") and sh("ip", "-n", ns, "link", "set", "lo", "up")
    return ok


def cleanup():
    sh("ip", "netns", "del", ns_a)
    sh("ip", "netns", "del", ns_b)


def secret(name, data):
    path = f"{d}/{name}"
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


good, other = secret("good", os.urandom(32)), secret("other", os.urandom(32))
if netns():
    pa, pb, where = ["ip", "netns", "exec", ns_a], ["ip", "netns", "exec", ns_b], "10.77.0.2"
    print("info   two network namespaces joined by veth", flush=True)
else:
    cleanup()
    pa, pb, where = [], [], "127.0.0.1"
    # The nested VM's init leaves loopback down.
    sh("ip", "link", "set", "lo", "up")
    print("info   no veth here: TCP over loopback in one namespace", flush=True)
to = f"tcp:{where}:47311"
a_sock, b_sock = f"{d}/a.sock", f"{d}/b.sock"
WL = "kvmem.wl=size=32,zero=20,id=3,rate=4,verify=1,then=sleep"
cfg = {"budget": "2G", "socket": a_sock, "console_prefix": True, "migration_secret": good,
       "vms": [{"name": "mig", "mem": "96M", "append": WL}]}
src = Host(["host", "--config", host_config(d, cfg)], prefix=pa)
dst = Host(["host", "--incoming", to, "--migration-secret", good, "--socket", b_sock], prefix=pb)


def last_out(sock):
    st = stats(sock)
    found = [v["migration"] for v in st["vms"] if v["name"] == "mig" and v.get("migration")] + \
        [m for m in st.get("migrated", []) if m["vm"] == "mig" and m["direction"] == "out"]
    return found[-1] if found else {}


def wait_end(sock):
    wait_for(lambda: last_out(sock).get("stage") in ("done", "failed", "cancelled"), 300)
    return last_out(sock)


try:
    check(wait_socket(src, a_sock) and wait_socket(dst, b_sock) and wait_incoming(dst),
          "both hosts run, the destination takes VMs in")
    check(src.wait_line(r"\[mig\] kvmem-wl: verify ok", n=2), "the guest verifies")

    # 2 first, while the VM is at the source: a wrong secret, and none.
    wrong = Host(["host", "--config", host_config(f"{d}", {
        "budget": "1G", "socket": f"{d}/w.sock", "migration_secret": other,
        "vms": [{"name": "mig", "mem": "32M", "append": "kvmem.wl=size=4,then=sleep"}]})],
        prefix=pa)
    check(wait_socket(wrong, f"{d}/w.sock"), "a host with another secret")
    # Its socket answers before its VM starts: migrate a running one.
    wait_for(lambda: (vm_of(stats(f"{d}/w.sock"), "mig") or {}).get("state") == "running", 60)
    r = request(f"{d}/w.sock", {"verb": "migrate", "vm": "mig", "to": to})
    check(r.get("ok") is True, f"it connects ({r.get('error', 'ok')})")
    out = wait_end(f"{d}/w.sock") if r.get("ok") else {}
    check(out.get("stage") == "failed" and "secret" in out.get("error", ""),
          f"the wrong secret is refused in the handshake ({out.get('error')})")
    check(vm_of(stats(f"{d}/w.sock"), "mig")["state"] == "running", "and its VM runs on")
    check(not [v for v in stats(b_sock)["vms"] if v["name"] == "mig"],
          "the destination took nothing from it")
    wrong.stop()
    nosecret = Host(["host", "--config", host_config(f"{d}", {
        "budget": "1G", "socket": f"{d}/n.sock",
        "vms": [{"name": "x", "mem": "32M", "append": "kvmem.wl=size=4,then=sleep"}]})],
        prefix=pa)
    check(wait_socket(nosecret, f"{d}/n.sock"), "a host without a secret")
    r = request(f"{d}/n.sock", {"verb": "migrate", "vm": "x", "to": to})
    check(r.get("ok") is False and r.get("code") == "EPERM" and "secret" in r.get("error", ""),
          f"it does not migrate over TCP ({r})")
    nosecret.stop()
    r = run(["host", "--incoming", "tcp::47312", "--socket", f"{d}/z.sock"], timeout=60)
    check(r.returncode != 0 and "secret" in r.stderr,
          f"a host does not listen on TCP without a secret ({r.returncode}: {r.stderr.strip()[-160:]})")

    # 1. The migration.
    r = request(a_sock, {"verb": "migrate", "vm": "mig", "to": to, "checksum": True})
    check(r.get("ok") is True, f"the migration starts ({r.get('error', 'ok')})")
    out = wait_end(a_sock)
    print(f"info   out: {out}", flush=True)
    check(out.get("stage") == "done", f"it is done over TCP ({out.get('error', '')})")
    inn = [m for m in [v.get("migration") for v in stats(b_sock)["vms"] if v["name"] == "mig"]
           if m] or [{}]
    check(out.get("checksum") and out.get("checksum") == inn[-1].get("checksum"),
          f"every page arrived as it stopped ({out.get('checksum')}, {inn[-1].get('checksum')})")
    n = dst.count(r"\[mig\] kvmem-wl: verify ok")
    check(dst.wait_line(r"\[mig\] kvmem-wl: verify ok", n=n + 2, deadline_s=120),
          "the guest verifies at the destination")
    no_verify_fail(dst, "at the destination")
    no_verify_fail(src, "at the source")
finally:
    rc_src, rc_dst = src.stop(), dst.stop()
    cleanup()
check(rc_src == 0 and rc_dst == 0, f"both hosts stop cleanly ({rc_src}, {rc_dst})")
finish()
