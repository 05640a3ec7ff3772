"""Host swap under a stock Linux guest: Debian's kernel (512 MiB, the workload
kvmem-linux-wl filling 192 MiB, rewriting and reading some of it all the
time and verifying all of it every 5 s) is paused and swapped down to 96
MiB, its kernel's own pages with the workload's: the VM's page states match
its mappings (memcheck), and once resumed the guest reads its pages back
through the faults of hardware KVM, goes on verifying every page of its
workload, and its kernel keeps running (the console goes on). No write or
read of the swap file failed. kvm only (linuxhelp.require_linux skips
elsewhere, saying why). Every wait is a poll with a generous deadline;
nothing asserts on timing."""
from kvmemtest import check, finish, require_accel
from ctlhelp import request, stats, tmpdir, vm_of, wait_state
from linuxhelp import CPUS, TIMERS, cmdline, require_linux, without_timers
from swaphelp import MIB, PAGE, disk_dir, host_swap, resume_and_read_back, show_vm, swap_host

FILL, TO = 192, 96      # MiB: the workload's fill, what the verb swaps the VM to
VERIFY = rf"kvmem-wl: verify ok {FILL * 256}$"
# Under the nested VM's emulation a boot takes a minute or two; natively seconds.
BOOT_S = 600

require_accel()
kernel, initrd = require_linux()
if not TIMERS:
    # Without timers the workload cannot verify again after the swap: nothing would be shown.
    without_timers("Linux guests under host swap (the verifications after it sleep in between)")
    print("SKIP   nothing to check without the guest's timer interrupts", flush=True)
    raise SystemExit(77)
ddir, dfs = disk_dir()
if not check(ddir is not None, f"a directory on a disk filesystem for the swap file ({dfs})"):
    finish()
print(f"info   swap file in {ddir} ({dfs})", flush=True)
wl = f"size={FILL},id=9,read=1,rate=1,verify=5,then=sleep"
h, sock = swap_host(tmpdir(), {"path": ddir, "size": "1G"},
                    [{"name": "a", "mem": "512M", "cpus": CPUS, "kernel": kernel,
                      "initrd": initrd, "cmdline": cmdline(f"quiet kvmem.wl={wl}")}])
try:
    check(h.wait_line(VERIFY, 1, BOOT_S), f"the Linux guest filled {FILL} MiB and verified it")
    # Paused right after a verification: no guest touch races the swap-out.
    check(h.wait_line(VERIFY, h.count(VERIFY) + 1, 300), "the guest verifies again")
    r = request(sock, {"verb": "pause", "vm": "a"})
    check(r.get("ok") is True, f"the VM pauses ({r})")

    def swapped_enough(v):
        return (v["resident_bytes"] < (TO + 32) * MIB and
                v["swap"]["swapped_bytes"] > (FILL - TO) * MIB)

    for attempt in range(30):
        r = request(sock, {"verb": "swap", "vm": "a", "to": f"{TO}M"}, timeout=60)
        if r.get("ok") is not True and r.get("code") != "ETIMEDOUT":
            break
        if r.get("reached") or swapped_enough(vm_of(stats(sock), "a")):
            break
    check(r.get("ok") is True or r.get("code") == "ETIMEDOUT", f"swap to {TO} MiB answers ({r})")
    wait_state(sock, "a", swapped_enough,
               f"stats: the VM holds less than {TO + 32} MiB, more than {FILL - TO} MiB in swap",
               show=show_vm)
    resume_and_read_back(h, sock, "a", VERIFY, "its workload's memory")
    v = vm_of(stats(sock), "a")
    check(h.alive() and v["state"] == "running", f"the VM still runs ({show_vm(v)})")
    hs = host_swap(sock)
    print(f"info   swap figures: {hs}", flush=True)
    check(hs["write_errors"] == 0 and hs["read_errors"] == 0 and hs["full"] == 0 and
          hs["swap_outs"] > (FILL - TO) * MIB // PAGE,
          f"no write or read of the swap file failed, and what went out is counted ({hs})")
finally:
    rc = h.stop()
check(rc == 0, f"the host exits 0 on SIGTERM (got {rc})")
finish()
