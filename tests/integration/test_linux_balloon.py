"""The stock Linux virtio_balloon driver against kvmem's balloon device, end to
end, in one boot of Debian's kernel (512 MiB, the workload kvmem-linux-wl):
1. free page reporting: the workload fills 192 MiB, holds it, then frees it
   to Linux, whose page reporting hands the free ranges to the device: host
   resident memory falls by most of the 192 MiB and the device counts the
   reports (where the guests have timer interrupts: KVMEM_LINUX_TIMERS);
2. the driver's stats queue: the tags Linux sends reach `kvmem stat --json`,
   its total memory among them;
3. inflate to a target 256 MiB below the guest's memory: the balloon holds
   256 MiB, the guest's free memory falls by as much, and the VM's resident
   memory stays within what it keeps (falling, where the workload's freed
   pages were still resident: unreported); deflate back: the balloon
   empties and the guest has its memory free again;
4. deflate-on-OOM, in a second boot (where the guests have timer
   interrupts: Linux's reclaim waits on a timer before it gives up and
   calls the balloon's OOM notifier): the workload waits for the balloon
   to hold 256 MiB, then fills more than the guest has left; Linux takes
   the balloon's pages back to give them, the device counts them as
   deflate-on-OOM, the target unchanged, and no process is killed.
kvm only (linuxhelp.require_linux skips elsewhere, saying why). Every wait is
a poll with a generous deadline; nothing asserts on timing."""
import os

from kvmemtest import check, finish, require_accel
from ctlhelp import Host, request, stats, tmpdir, vm_of, wait_socket, wait_state
from linuxhelp import CPUS, TIMERS, cmdline, require_linux, without_timers

MIB = 1 << 20
PAGES_PER_MIB = MIB // 4096
RAM = 512 * MIB
FILL = 192
DOWN = 256
# Far above what the guest uses: the policy never balloons it on its own.
BUDGET = "16G"
# Under the nested VM's emulation a boot takes a minute or two; natively seconds.
BOOT_S = 600
# ... and the driver's 256 requests of a 256 MiB inflate or deflate take minutes there on a
# loaded machine (a deflate had done 190 of them in 5 minutes at a load average of 12).
BALLOON_S = 900

require_accel()
kernel, initrd = require_linux()
d = tmpdir()
sock = os.path.join(d, "k.sock")


def vm():
    return vm_of(stats(sock), "vm0")


def set_target(size, what):
    r = request(sock, {"verb": "balloon", "vm": "vm0", "target": size})
    check(r.get("ok") is True, f"{what}: balloon target {size} ({r})")


def policy_passes(n=2):
    """Wait for n more policy passes: resident_bytes is measured by them."""
    p0 = stats(sock)["host"]["policy_passes"]
    ok, _ = wait_state(sock, None, lambda s: s["host"]["policy_passes"] >= p0 + n,
                       f"{n} more policy passes", deadline_s=120)
    return ok


def boot(wl):
    """A host running one Linux guest with the workload wl, serving the control socket."""
    host = Host(["run", "--mem", "512M", "--cpus", str(CPUS), "--kernel", kernel, "--initrd",
                 initrd, "--budget", BUDGET, "--socket", sock,
                 "--cmdline", cmdline(f"quiet kvmem.wl={wl}")])
    check(wait_socket(host, sock), "the host serves its control socket")
    return host


# time=: the workload holds its pages that long after the fill (verifying them once more)
# before it frees them, long enough for the pause below however slow the machine.
hold = ",time=5" if TIMERS else ""
host = boot(f"size={FILL}{hold},then=free")
try:
    check(host.wait_line(r"^kvmem-linux: virtio_balloon bound to virtio\d+", deadline_s=BOOT_S),
          "the stock virtio_balloon driver binds the device")
    full = rf"^kvmem-wl: verify ok {FILL * PAGES_PER_MIB}$"
    check(host.wait_line(full, deadline_s=BOOT_S), f"the workload filled {FILL} MiB")

    # 1. Free page reporting: Linux reports from delayed work, which needs its timer.
    if not TIMERS:
        without_timers("free page reporting (Linux reports free pages from delayed work)")
        check(host.wait_line(r"^kvmem-linux-wl: idle, free pages given back to Linux$"),
              "the workload freed its pages to Linux")
    else:
        r = request(sock, {"verb": "pause", "vm": "vm0"})
        check(r.get("ok") is True, f"report: pause ({r})")
        check(policy_passes(), "report: the policy measured the full guest")
        r0 = vm()["resident_bytes"]
        rep0 = vm()["balloon"]["counters"]["reported_bytes"]
        check(r0 >= FILL * MIB, f"report: {FILL} MiB resident after the fill ({r0 / MIB:.1f} MiB)")
        r = request(sock, {"verb": "resume", "vm": "vm0"})
        check(r.get("ok") is True, f"report: resume ({r})")
        check(host.wait_line(r"^kvmem-linux-wl: idle, free pages given back to Linux$"),
              "report: the workload verified again and freed its pages to Linux")
        # Linux reports free blocks of its pageblock order (2 MiB) a couple of seconds after
        # they are freed, in passes: most of the memory comes back, not necessarily all of it.
        wait_state(sock, "vm0", lambda v: r0 - v["resident_bytes"] >= 0.75 * FILL * MIB,
                   f"report: host resident memory fell by at least 75% of the {FILL} MiB freed",
                   show=lambda v: f"resident {r0 / MIB:.1f} -> {v['resident_bytes'] / MIB:.1f} "
                                  f"MiB, {v['balloon']['counters']}",
                   deadline_s=180, step=0.5)
        wait_state(sock, "vm0", lambda v: v["balloon"]["counters"]["reported_bytes"] - rep0 >=
                   0.75 * FILL * MIB and v["balloon"]["counters"]["needs_reset"] == 0,
                   "report: the device dropped the reported ranges",
                   show=lambda v: v["balloon"]["counters"])

    # 2. The stats queue: what Linux 6.x sends (virtio_balloon's update_balloon_stats).
    tags = ("swap_in_bytes", "swap_out_bytes", "major_faults", "minor_faults", "free_bytes",
            "total_bytes", "available_bytes", "disk_caches_bytes")
    ok, v = wait_state(sock, "vm0", lambda v: all(t in v["balloon"]["guest"] for t in tags),
                       "stats: the driver's tags reach kvmem stat --json",
                       show=lambda v: v["balloon"]["guest"], deadline_s=120)
    if ok:
        g = v["balloon"]["guest"]
        check(400 * MIB <= g["total_bytes"] <= RAM and 0 < g["free_bytes"] <= g["total_bytes"],
              f"stats: the guest's total ({g['total_bytes'] / MIB:.1f} MiB) is most of its RAM, "
              f"its free memory ({g['free_bytes'] / MIB:.1f} MiB) within it")
        check(g["minor_faults"] > 0, f"stats: its page faults counted ({g['minor_faults']})")
    # The stats trail the guest by an interval or more: wait for them to show the workload's
    # pages free before measuring from them.
    ok, v = wait_state(sock, "vm0", lambda v: v["balloon"]["guest"].get("free_bytes", 0) >=
                       v["balloon"]["guest"].get("total_bytes", 1 << 40) - 64 * MIB,
                       "stats: the guest's free memory shows the workload's pages freed",
                       show=lambda v: f"free {v['balloon']['guest'].get('free_bytes', 0) / MIB:.1f}"
                                      " MiB", deadline_s=120)
    free0 = v["balloon"]["guest"].get("free_bytes", 0) if v else 0

    # 3. Inflate 256 MiB below the guest's memory, then deflate.
    check(policy_passes(), "inflate: the policy measured the guest before")
    r1 = vm()["resident_bytes"]
    set_target(f"{(RAM >> 20) - DOWN}M", "inflate")
    ok, v = wait_state(sock, "vm0", lambda v: v["balloon"]["balloon_actual_bytes"] == DOWN * MIB,
                       f"inflate: the driver filled the balloon to {DOWN} MiB",
                       show=lambda v: v["balloon"], deadline_s=BALLOON_S)
    if ok:
        c = v["balloon"]["counters"]
        check(c["inflated_pages"] >= DOWN * PAGES_PER_MIB and c["needs_reset"] == 0 and
              c["bad_pfns"] == 0, f"inflate: the device dropped every page it was given ({c})")
    wait_state(sock, "vm0", lambda v: v["balloon"]["guest"].get("free_bytes", 1 << 40) <=
               free0 - (DOWN - 16) * MIB,
               f"inflate: the guest's free memory fell by the {DOWN} MiB ballooned",
               show=lambda v: f"free {free0 / MIB:.1f} -> "
                              f"{v['balloon']['guest'].get('free_bytes', 0) / MIB:.1f} MiB",
               deadline_s=120)
    check(policy_passes(), "inflate: the policy measured the guest")
    v = vm()
    # Pages the guest had used and freed are resident until reported or ballooned: which of
    # them the driver takes is Linux's choice, so the fall is shown, the bound checked (the
    # slack: what the guest's kernel touches meanwhile).
    check(v["resident_bytes"] <= min(r1 + 4 * MIB, RAM - DOWN * MIB),
          f"inflate: the VM's resident memory ({r1 / MIB:.1f} -> "
          f"{v['resident_bytes'] / MIB:.1f} MiB) is within the {(RAM >> 20) - DOWN} MiB it keeps")

    set_target("512M", "deflate")
    wait_state(sock, "vm0", lambda v: v["balloon"]["balloon_actual_bytes"] == 0 and
               v["balloon"]["counters"]["deflated_pages"] >= DOWN * PAGES_PER_MIB,
               "deflate: the balloon is empty, every page given back",
               show=lambda v: v["balloon"], deadline_s=BALLOON_S)
    wait_state(sock, "vm0", lambda v: v["balloon"]["guest"].get("free_bytes", 0) >=
               free0 - 16 * MIB, "deflate: the guest has its memory free again",
               # The count of stats updates tells a guest that stopped from a driver that did.
               show=lambda v: f"free {v['balloon']['guest'].get('free_bytes', 0) / MIB:.1f} MiB, "
                              f"stats updates {v['balloon']['guest'].get('updates')}",
               deadline_s=120)
    check(host.alive() and vm()["state"] == "running", "the VM is still running")
    check(not any("verify FAIL" in l or l.startswith("kvmem-linux: FAIL") for l in host.stdout()),
          "no verification and no step of the init failed")
finally:
    rc = host.stop()
check(rc == 0, f"the host exits 0 on SIGTERM (got {rc})")

# 4. Deflate-on-OOM: Linux calls the OOM notifiers only after its reclaim made no progress,
# and that reclaim first waits on a timer (reclaim_throttle).
if not TIMERS:
    without_timers("deflate-on-OOM (Linux's reclaim sleeps before it calls the OOM notifiers)")
    finish()
OOM_FILL = 320
host = boot(f"size={OOM_FILL},wait=balloon,then=sleep")
try:
    check(host.wait_line(r"^kvmem-wl: waiting for the balloon$", deadline_s=BOOT_S),
          "oom: the workload waits for the balloon")
    set_target(f"{(RAM >> 20) - DOWN}M", "oom")
    check(host.wait_line(rf"^kvmem-wl: balloon holds {DOWN} MiB, \d+ MiB free$",
                         deadline_s=BALLOON_S),
          f"oom: the balloon holds {DOWN} MiB before the workload allocates")
    check(host.wait_line(rf"^kvmem-wl: verify ok {OOM_FILL * PAGES_PER_MIB}$",
                         deadline_s=BALLOON_S),
          f"oom: the guest got its {OOM_FILL} MiB, more than it had left, filled and verified "
          "them")
    # The workload holds its memory from here on: the balloon cannot grow back meanwhile.
    b = vm()["balloon"]
    c = b["counters"]
    check(c["oom_deflated_pages"] > 0 and c["needs_reset"] == 0 and c["bad_pfns"] == 0,
          f"oom: the device counts the pages Linux took back as deflate-on-OOM ({c})")
    check(b["balloon_actual_bytes"] < DOWN * MIB and b["balloon_target_bytes"] == DOWN * MIB,
          f"oom: the balloon gave pages back although the target did not change "
          f"({b['balloon_actual_bytes'] / MIB:.0f} of {b['balloon_target_bytes'] / MIB:.0f} "
          "MiB held)")
    check(not any("Killed process" in l or "verify FAIL" in l or l.startswith("kvmem-linux: FAIL")
                  for l in host.stdout()),
          "oom: no process was killed, no verification and no step of the init failed")
    check(host.alive() and vm()["state"] == "running", "oom: the VM is still running")
finally:
    rc = host.stop()
check(rc == 0, f"oom: the host exits 0 on SIGTERM (got {rc})")
finish()
