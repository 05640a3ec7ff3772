"""Two stock Linux guests in one kvmem host with page sharing on (`dedup: on`):
each boots Debian's kernel with nokaslr, so both kernels sit at the same
addresses with the same text, and runs the workload kvmem-linux-wl with 64
MiB of which half is identical across the two. kvmem's scanner shares the
identical workload pages and the kernels' identical pages besides, and both
guests go on verifying all of their workload's memory, shared (where the
guests have timer interrupts: KVMEM_LINUX_TIMERS).
kvm only (linuxhelp.require_linux skips elsewhere, saying why). Every wait is
a poll with a generous deadline; nothing asserts on timing."""
from kvmemtest import check, finish, require_accel
from deduphelp import DedupHost
from linuxhelp import CPUS, TIMERS, cmdline, require_linux, without_timers

MIB = 64
D = MIB * 256 * 50 // 100  # the workload's pages identical across the guests
# The kernels' own identical pages (text, read-only data, the initramfs): well above this.
KERNEL_MIN = 1024
# Under the nested VM's emulation two boots take minutes; natively seconds.
BOOT_S = 900

require_accel()
kernel, initrd = require_linux()


def boot(wl):
    return {"kernel": kernel, "initrd": initrd, "cpus": CPUS,
            "cmdline": cmdline(f"quiet nokaslr kvmem.wl={wl}")}


# verify=: verify everything again every 5 s, which sleeps in between (the guest's timer).
again = ",verify=5" if TIMERS else ""
h = DedupHost([f"size={MIB},dup=50,zero=25,id={i + 1}{again},then=sleep" for i in range(2)],
              mem="512M", boot=boot)
try:
    check(h.wait_all(rf"kvmem-wl: verify ok {MIB * 256}$", deadline_s=BOOT_S),
          f"both Linux guests fill {MIB} MiB and verify it")
    h.dedup(cpu_percent=100, pages_per_sec=1 << 20)
    ok, d = h.wait_dedup(lambda d: d["pages_sharing"] >= D + KERNEL_MIN and d["full_scans"] >= 2,
                         deadline_s=300)
    check(ok, f"the workloads' identical pages ({D}) and the kernels' ({KERNEL_MIN} or more) are "
              f"shared: pages_sharing {d.get('pages_sharing')}, pages_shared "
              f"{d.get('pages_shared')}, full scans {d.get('full_scans')}")
    for v in h.stats()["vms"]:
        check(v["pages"]["shared"] >= D, f"{v['name']}: its stats count its pages shared "
              f"({v['pages']['shared']} of at least {D})")
    if TIMERS:
        check(h.wait_more(rf"kvmem-wl: verify ok {MIB * 256}$", 2, deadline_s=300),
              "both guests verify all of their memory twice more, shared")
    else:
        without_timers("the workloads' verifications after sharing (verify= sleeps between them)")
    check(h.host.alive() and all(v["state"] == "running" for v in h.stats()["vms"]),
          "both guests still run")
    h.no_verify_fail("after sharing")
finally:
    h.stop()
finish()
