"""Accounting matches the kernel: a guest that filled 256 MiB shows
resident_bytes within 2% of what the kernel says is resident in its RAM.

How the comparison is made fair:
- The kernel's figure is the Rss of the guest RAM's own mappings, taken from
  /proc/PID/smaps (the per-VMA form of smaps_rollup), not smaps_rollup's total
  minus a guessed VMM overhead: the VMM's own memory (jemalloc arenas, thread
  stacks, and under ASan the shadow and quarantine) is neither small nor
  constant across builds, so subtracting a constant would be either unfair or
  loose. Guest RAM is the accessible part of the VM's reservation, which
  starts at the stats' ram_base (guest-physical 0) and spans 4 GiB for a VM
  of this size; its mappings are anonymous, private, writable (and
  executable under the thread accelerator, which runs guest code in them),
  created with MAP_NORESERVE and MADV_NOHUGEPAGE ("nr", "nh") and registered
  with userfaultfd ("um"/"uw"/"ui"). Their sizes must add up to the VM's mem.
  The rollup is still checked: guest RAM can't be more than the process's
  whole anonymous memory.
- Both figures leave out the shared zero page (Rss does not count it,
  resident_bytes skips its pfn), and `then=sleep` keeps the guest's memory
  still, so the two reads see the same pages; resident_bytes is refreshed by
  the policy pass, so the test waits for a pass that began after the fill.
- The guest touches a little more than the fill (its page tables, allocator
  bitmap, workload metadata), so resident_bytes is also checked against the
  known fill from below (>= 256 MiB) and within 2% above."""
import os
import re

from kvmemtest import ACCEL, check, finish, require_accel
from ctlhelp import Host, stats, tmpdir, vm_of, wait_socket, wait_state

MIB = 1 << 20
MEM, FILL = 512 * MIB, 256 * MIB


def guest_ram_rss(pid, base, span):
    """Rss (bytes) of the guest RAM mappings in [base, base + span), and the rollup's Anonymous."""
    vmas, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\d+)\s*(.*)$", line)
            if m:
                cur = {"start": int(m[1], 16), "end": int(m[2], 16), "perm": m[3],
                       "anon": m[4] == "0" and not m[5], "rss": 0, "flags": []}
                cur["len"] = cur["end"] - cur["start"]
                vmas.append(cur)
            elif line.startswith("Rss:"):
                cur["rss"] = int(line.split()[1]) * 1024
            elif line.startswith("VmFlags:"):
                cur["flags"] = line.split()[1:]
    want = "rwxp" if ACCEL == "thread" else "rw-p"
    ram = [v for v in vmas if base <= v["start"] and v["end"] <= base + span
           and v["perm"] != "---p"]
    check(all(v["anon"] and v["perm"] == want and "nr" in v["flags"] and "nh" in v["flags"]
              and {"um", "uw", "ui"} & set(v["flags"]) for v in ram),
          f"guest RAM is anonymous {want}, NORESERVE, no THP, under userfaultfd "
          f"({[(v['perm'], v['flags']) for v in ram]})")
    with open(f"/proc/{pid}/smaps_rollup") as f:
        anon = next(int(l.split()[1]) * 1024 for l in f if l.startswith("Anonymous:"))
    return ram, anon


require_accel()
d = tmpdir()
sock = os.path.join(d, "k.sock")
host = Host(["run", "--mem", "512M", "--socket", sock, "--append",
             "kvmem.wl=size=256,then=sleep"])
try:
    check(wait_socket(host, sock), "the host serves its control socket")
    check(host.wait_line(r"^kvmem-wl: filled 256 in"), "the guest filled 256 MiB")
    check(host.wait_line(r"^kvmem-wl: verify ok 65536$"), "... and verified it")
    p0 = stats(sock)["host"]["policy_passes"]
    # A pass that started after the fill: two more than counted now.
    wait_state(sock, None, lambda s: s["host"]["policy_passes"] >= p0 + 2,
               "the policy measured the VM after the fill",
               show=lambda s: f"policy passes {p0} -> {s['host']['policy_passes']}")
    st = stats(sock)
    resident = vm_of(st, "vm0")["resident_bytes"]
    ram, rollup_anon = guest_ram_rss(host.p.pid, vm_of(st, "vm0")["ram_base"], 4 << 30)
    kernel = sum(v["rss"] for v in ram)
    check(sum(v["len"] for v in ram) == MEM,
          f"found the guest RAM mappings in smaps ({[(v['len'] >> 20, v['flags']) for v in ram]})")
    print(f"info   resident_bytes {resident / MIB:.2f} MiB, kernel Rss of guest RAM "
          f"{kernel / MIB:.2f} MiB, process Anonymous {rollup_anon / MIB:.2f} MiB, "
          f"VMM overhead {(rollup_anon - kernel) / MIB:.2f} MiB", flush=True)
    check(kernel > 0 and abs(resident - kernel) <= 0.02 * kernel,
          f"resident_bytes within 2% of the kernel's Rss for guest RAM "
          f"({resident} vs {kernel}: {100 * (resident - kernel) / max(kernel, 1):+.3f}%)")
    check(FILL <= resident <= FILL * 1.02,
          f"resident_bytes covers the 256 MiB fill, within 2% ({resident / MIB:.2f} MiB)")
    check(kernel <= rollup_anon, "guest RAM is part of the process's anonymous memory")
    # Nothing reclaims here (no budget pressure, no dedup) and the page states
    # add up to mem in every sample (README): one sample must show every page anon.
    pages = vm_of(st, "vm0")["pages"]
    check(pages["anon"] == MEM // 4096 and pages["zero"] == 0,
          f"no reclaim happened: every page is anon ({pages})")
finally:
    rc = host.stop()
check(rc == 0, f"the host exits 0 on SIGTERM (got {rc})")
finish()
