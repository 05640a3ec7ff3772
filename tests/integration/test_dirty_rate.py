"""How fast a VM dirties its memory: the dirty_rate verb (QEMU's calc-dirty-rate).

Two VMs on one host: "busy" rewrites its pages all the time, "idle" filled its pages and sleeps.

1. Busy dirtied pages within the second measured, and idle far fewer than busy: under kvm from
   KVM's dirty log, under thread from the memory manager's write protection; the VMM's own writes
   marked through the access API on both.
2. Bad requests: a window outside 100..5000 ms (EINVAL), an unknown VM (ENOENT).

Nothing asserts on timing: a busy guest writes thousands of pages a second, so the bound it must
pass (a page) holds on any machine, and the idle one is compared with it, measured the same way."""
from kvmemtest import check, finish, require_accel
from ctlhelp import Host, host_config, request, tmpdir, wait_socket

require_accel()

d = tmpdir()
sock = f"{d}/k.sock"
cfg = {"budget": "4G", "socket": sock, "console_prefix": True, "dedup": "off",
       "vms": [{"name": "busy", "mem": "128M",
                "append": "kvmem.wl=size=32,id=1,rate=16,then=sleep"},
               {"name": "idle", "mem": "128M", "append": "kvmem.wl=size=32,id=2,then=sleep"}]}
h = Host(["host", "--config", host_config(d, cfg)])
try:
    check(wait_socket(h, sock), "the host serves its control socket")
    check(h.wait_line(r"kvmem-wl: filled", n=2), "both guests filled their pages")
    busy = request(sock, {"verb": "dirty_rate", "vm": "busy", "ms": 1000}, timeout=30)
    idle = request(sock, {"verb": "dirty_rate", "vm": "idle", "ms": 1000}, timeout=30)
    check(busy.get("ok") is True and busy["dirty_pages"] > 0 and busy["ms"] == 1000,
          f"the busy VM dirtied pages within the second ({busy})")
    check(idle.get("ok") is True and idle["dirty_pages"] < busy.get("dirty_pages", 0),
          f"the idle VM dirtied fewer ({idle.get('dirty_pages', idle)} "
          f"against {busy.get('dirty_pages')})")
    check(busy.get("dirty_mib_s", 0) > 0 and busy.get("vmm_pages", 1) <= busy.get("dirty_pages", 0),
          f"the figures add up ({busy})")
    again = request(sock, {"verb": "dirty_rate", "vm": "busy", "ms": 100}, timeout=30)
    check(again.get("ok") is True, f"a second measurement of the same VM works ({again})")
    for ms in (5, 60000, "1s"):
        r = request(sock, {"verb": "dirty_rate", "vm": "busy", "ms": ms}, timeout=30)
        check(r.get("ok") is False and r.get("code") == "EINVAL",
              f"a window of {ms!r} is refused ({r})")
    r = request(sock, {"verb": "dirty_rate", "vm": "nope"}, timeout=30)
    check(r.get("ok") is False and r.get("code") == "ENOENT", f"an unknown VM is refused ({r})")
    st = request(sock, {"verb": "stats"}, timeout=30)
    check(all(v["state"] == "running" for v in st["vms"]), "both VMs run on")
finally:
    rc = h.stop()
check(rc == 0, f"the host stops cleanly ({rc})")
finish()
