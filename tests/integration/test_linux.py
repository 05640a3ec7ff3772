"""Linux guests, as far as they go without booting: `kvmem run --kernel`
checks the image, its initrd and command line before anything starts (a bad
one is one line on stderr and status 2), then refuses in one line where the
kernel cannot run: on thread and on kvm-pvm. On hardware KVM it boots, which
test_linux_boot checks. The kernel image is Debian's (linux-image-amd64;
KVMEM_TEST_KERNEL names another); without one, the checks that need it say
so and the others run.

A Linux guest arriving (a migration's description saying "linux", sent by a
fake source written here) is refused the same way before anything of it is
made where it cannot run (a Linux guest on thread), as is a description whose
"linux" is not a boolean: the destination answers with the reason, holds no
VM and takes VMs on (test_linux_migrate moves real ones)."""
import ctypes
import json
import os
import re
import shutil
import socket
import struct
import tempfile

from kvmemtest import ACCEL, check, finish, require_accel, run
from ctlhelp import Host, stats, wait_incoming, wait_socket
from linuxhelp import find_kernel

require_accel()

_xxh = ctypes.CDLL("libxxhash.so.0")
_xxh.XXH3_64bits.restype = ctypes.c_uint64
_xxh.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_xxh.XXH3_64bits_withSeed.restype = ctypes.c_uint64
_xxh.XXH3_64bits_withSeed.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64]

VM_RECORD, RESERVE_RECORD = 1, 2


def record(kind, seq, payload):
    """One migration stream record (src/migrate/stream.h): header, its checks, the payload."""
    head = struct.pack("<IIQ", kind, len(payload), seq)
    head += struct.pack("<Q", _xxh.XXH3_64bits_withSeed(payload, len(payload),
                                                        _xxh.XXH3_64bits(head, 16)))
    return head + struct.pack("<Q", _xxh.XXH3_64bits(head, 24)) + payload


def reserve(path, desc):
    """Ask the host listening at path to take the VM desc describes; its RESERVE answer."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(path)
    s.sendall(b"KVMEMMIG" + struct.pack("<II", 1, 0) +
              record(VM_RECORD, 0, json.dumps(desc).encode()))
    got = b""
    while len(got) < 16 + 32:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    kind, n = struct.unpack_from("<II", got, 16) if len(got) >= 48 else (0, 0)
    while len(got) < 48 + n:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    return json.loads(got[48:48 + n]) if kind == RESERVE_RECORD else {"record": kind}


def arrivals_refused(tmp):
    """A Linux guest described to a host that cannot run it is refused, saying why."""
    if os.geteuid() != 0:
        print("SKIP   an arriving Linux guest: only a host running as root takes VMs in",
              flush=True)
        return
    sock, inc = os.path.join(tmp, "h.sock"), os.path.join(tmp, "in.sock")
    host = Host(["host", "--socket", sock, "--incoming", f"unix:{inc}"])
    try:
        if not check(wait_socket(host, sock) and wait_incoming(host), "a host takes VMs in"):
            return
        desc = {"name": "lnx", "mem_bytes": 256 << 20, "cpus": 1, "accel": "thread",
                "linux": True}
        r = reserve(inc, desc)
        check(r.get("accepted") is False and "it is a Linux guest: the thread accelerator "
              "cannot run an unmodified Linux kernel" in r.get("reason", ""),
              f"a Linux guest on thread: refused with the --kernel refusal's reason ({r})")
        r = reserve(inc, dict(desc, linux="yes"))
        check(r.get("accepted") is False and "malformed" in r.get("reason", ""),
              f"a description whose \"linux\" is not a boolean: refused ({r})")
        check(host.alive() and not stats(sock)["vms"], "the host holds no VM and serves on")
    finally:
        rc = host.stop()
    check(rc == 0, f"the host exits 0 (got {rc})")


def refused(args, says, what):
    """kvmem run ARGS ends with status 2 and one stderr line that says `says`."""
    r = run(["run", "--mem", "512M"] + args, timeout=60)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    ok = r.returncode == 2 and len(lines) == 1 and any(s in lines[0] for s in says)
    return check(ok, f"{what}: status 2 and one line saying {' or '.join(says)!r} "
                     f"(got {r.returncode}: {lines})")


tmp = tempfile.mkdtemp(prefix="kvmem-test-linux-")
try:
    def scratch(name, data=b"", size=None):
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(data)
            if size is not None:
                f.truncate(size)
        return path

    # Files that are no kernel at all.
    refused(["--kernel", "/etc/passwd"], ["boot_flag"], "a text file as the kernel")
    refused(["--kernel", scratch("short", b"\0" * 600)], ["truncated"], "a 600-byte kernel")
    refused(["--kernel", os.path.join(tmp, "missing")], ["No such file"], "a missing kernel")
    refused(["--initrd", "/etc/passwd"], ["only with --kernel"], "--initrd without --kernel")

    kernel = find_kernel()
    if kernel is None:
        print("SKIP   the checks of a real kernel: no readable /boot/vmlinuz-* (install "
              "Debian's linux-image-amd64) and no KVMEM_TEST_KERNEL", flush=True)
    else:
        print(f"kernel image: {kernel}", flush=True)
        with open(kernel, "rb") as f:
            image = bytearray(f.read())

        def broken(name, off, fmt, value):
            b = bytearray(image)
            struct.pack_into(fmt, b, off, value)
            return scratch(name, bytes(b))

        # The real image broken one field at a time: each refused naming it.
        refused(["--kernel", scratch("trunc", bytes(image[:65536]))], ["syssize"],
                "the kernel cut at 64 KiB")
        refused(["--kernel", broken("magic", 0x202, "<I", 0x5a726448)], ["HdrS"],
                "a kernel without its HdrS signature")
        refused(["--kernel", broken("old", 0x206, "<H", 0x0206)], ["older than 2.12"],
                "a kernel of boot protocol 2.06")
        xlf = struct.unpack_from("<H", image, 0x236)[0]
        refused(["--kernel", broken("no64", 0x236, "<H", xlf & ~1)], ["XLF_KERNEL_64"],
                "a kernel without a 64-bit entry")
        # What does not fit this VM.
        refused(["--kernel", kernel, "--initrd", scratch("big-initrd", size=600 << 20)],
                ["initrd"], "an initrd larger than the VM's RAM")
        refused(["--kernel", kernel, "--cmdline", "a" * 70000], ["cmdline_size"],
                "a command line longer than the kernel takes")
        r = run(["run", "--mem", "64M", "--kernel", kernel], timeout=60)
        check(r.returncode == 2 and "init_size" in r.stderr and len(r.stderr.splitlines()) == 1,
              f"a VM too small for the kernel: one line naming init_size (got {r.returncode}: "
              f"{r.stderr.strip()})")

        # A good kernel: refused where it cannot run, in one line. Hardware KVM boots it
        # (test_linux_boot): a CPU with VMX or SVM is where kvmem does not call KVM kvm-pvm.
        with open("/proc/cpuinfo") as f:
            hardware = re.search(r"^flags\s*:.*\b(vmx|svm)\b", f.read(), re.M) is not None
        if ACCEL == "kvm" and hardware:
            print("SKIP   the refusal of a good kernel: this KVM is hardware-virtualized, "
                  "where it boots (test_linux_boot)", flush=True)
        else:
            says = (["thread accelerator cannot run an unmodified Linux kernel"]
                    if ACCEL == "thread" else ["kvm-pvm"])
            refused(["--kernel", kernel, "--initrd", scratch("initrd", b"\x07" * 4096),
                     "--cmdline", "console=ttyS0"], says, f"Debian's kernel on {ACCEL}")
    arrivals_refused(tmp)
finally:
    shutil.rmtree(tmp)

finish()
