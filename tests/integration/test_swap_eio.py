"""Host swap on a disk that fails: real I/O errors, nothing lost.

The swap file lives on a small ext4 filesystem of its own (a loop device
over an image file), which the test shuts down behind the host's back
(EXT4_IOC_SHUTDOWN, the ioctl xfstests uses to simulate a dead disk): from
then on every write and read of the file fails with EIO, from the kernel.

Two VMs, a and b, each filling 64 MiB and reading and verifying it. a is
swapped out while the disk works. Then the disk dies:
- swapping b out fails: the verb answers EIO, saying the pages stay
  resident; the write error is counted; b swapped nothing, and goes on
  verifying every page it wrote;
- a's guest touches its swapped pages: they cannot be read back, so a stops
  with the reason (never a page of zeros), while b runs on.
The host exits 1 (a VMM failure of a's). Skipped when no loop device can be
mounted (needs root)."""
import atexit
import fcntl
import os
import shutil
import struct
import subprocess
import tempfile

from kvmemtest import check, finish, require_accel
from ctlhelp import request, stats, tmpdir, vm_of, wait_state
from swaphelp import MIB, host_swap, show_vm, swap_host, swap_out

require_accel()

EXT4_IOC_SHUTDOWN = 0x8004587D           # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2
VERIFY = r"kvmem-wl: verify ok \d+$"

work = tempfile.mkdtemp(prefix="kvmem-swap-eio-")
atexit.register(shutil.rmtree, work, True)
img, mnt = os.path.join(work, "disk.img"), os.path.join(work, "mnt")
os.mkdir(mnt)
with open(img, "wb") as f:
    f.truncate(256 * MIB)
made = subprocess.run(["mkfs.ext4", "-q", "-F", img], capture_output=True, text=True)
# The loop driver may be a module nobody loaded yet (a minimal VM): best effort.
subprocess.run(["modprobe", "loop"], capture_output=True)
mount = subprocess.run(["mount", "-o", "loop", img, mnt], capture_output=True, text=True)
mounted = made.returncode == 0 and mount.returncode == 0
if not mounted:
    why = made.stderr.strip() or mount.stderr.strip() or "mount -o loop failed"
    print(f"SKIP   no filesystem of its own for the swap file ({why}; needs root and a loop "
          f"device)", flush=True)
    finish()
atexit.register(subprocess.run, ["umount", "-l", mnt], capture_output=True)

WL = "kvmem.wl=size=64,id={},read=1,verify=5,then=sleep"
d = tmpdir()
h, sock = swap_host(d, {"path": mnt, "size": "192M"},
                    [{"name": n, "mem": "128M", "append": WL.format(i + 1)}
                     for i, n in enumerate("ab")])
try:
    check(h.wait_line(r"^\[a\] " + VERIFY, 1, 300) and h.wait_line(r"^\[b\] " + VERIFY, 1, 300),
          "both guests filled 64 MiB and verified it")
    r = swap_out(sock, "a", "16M", lambda v: v["swap"]["swapped_bytes"] > 32 * MIB)[-1]
    v = vm_of(stats(sock), "a")
    check(r.get("ok") is True and v["swap"]["swapped_bytes"] > 32 * MIB,
          f"a swapped out while the disk works ({r}; {show_vm(v)})")

    # The disk dies.
    fd = os.open(mnt, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)
    print("info   the swap file's filesystem is shut down: its I/O fails with EIO", flush=True)

    b0 = vm_of(stats(sock), "b")
    r = request(sock, {"verb": "swap", "vm": "b", "to": "16M"}, timeout=60)
    check(r.get("ok") is False and r.get("code") == "EIO" and "stay resident" in r.get("error", ""),
          f"swapping b out on the dead disk: EIO, its pages stay resident ({r})")
    hs = host_swap(sock)
    check(hs["write_errors"] >= 1, f"stats: the failed write is counted ({hs})")
    b1 = vm_of(stats(sock), "b")
    check(b1["swap"]["swapped_bytes"] == 0 and
          b1["resident_bytes"] >= b0["resident_bytes"] - 4 * MIB,
          f"b swapped nothing: every page it had is still resident ({show_vm(b1)})")

    ok, v = wait_state(sock, "a", lambda v: v["state"] == "stopped" and "error" in v["swap"],
                       "a touches its swapped pages: they cannot be read, a stops, saying why",
                       show=lambda v: f"{v['state']}, {v['swap']}")
    check(ok and "cannot be read back" in v["swap"]["error"] and
          "Input/output error" in v["swap"]["error"],
          f"the reason names the page and the I/O error ({v['swap'].get('error')})")
    check(host_swap(sock)["read_errors"] >= 1, "stats: the failed read is counted")

    nb = h.count(r"^\[b\] " + VERIFY)
    check(h.wait_line(r"^\[b\] " + VERIFY, nb + 2, 120), "b runs on and verifies every page")
    check(vm_of(stats(sock), "b")["state"] == "running", "b is still running")
    check(not [l for l in h.stdout() if "verify FAIL" in l],
          "no guest verified a page of zeros or anything else it did not write")
    check(any("a: swap: " in l and "stopping the VM" in l for l in h.stderr()),
          f"the log names the VM and the reason ({h.stderr()[-3:]})")
finally:
    rc = h.stop()
check(rc == 1, f"the host exits 1, a VMM failure of a's ({rc}; last log lines {h.stderr()[-3:]})")
finish()
