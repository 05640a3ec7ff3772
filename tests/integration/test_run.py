"""Foundation: `kvmem run` boots the kvmem guest, its workload verifies, every
vCPU works, guest faults are reported, and bad arguments are usage errors."""
import os
import re

from kvmemtest import check, finish, require_accel, run

require_accel()

# The workload fills 256 MiB with the usual mix (50% pages identical across guests,
# 25% zero, the rest unique) and verifies every page.
r = run(["run", "--mem", "512M", "--append",
         "kvmem.wl=size=256,dup=50,zero=25,then=poweroff"])
check(r.returncode == 0, f"fill+verify exits 0 (got {r.returncode}: {r.stderr.strip()[-200:]})")
check(re.search(r"^kvmem-wl: filled 256 in \d+ ms$", r.stdout, re.M) is not None,
      "guest reports the fill")
check(re.search(r"^kvmem-wl: verify ok 65536$", r.stdout, re.M) is not None,
      "guest verifies all 65536 pages")

# Two vCPUs: both take a share of the pages, and the sum is the whole fill.
r = run(["run", "--mem", "512M", "--cpus", "2", "--append",
         "kvmem.wl=size=128,dup=50,zero=25,then=poweroff"])
per_cpu = {int(c): int(p) for c, p in re.findall(r"^kvmem-wl: cpu (\d+) pages (\d+)$",
                                                 r.stdout, re.M)}
check(r.returncode == 0 and "kvmem-wl: verify ok 32768" in r.stdout,
      "two vCPUs: verify ok and exit 0")
check(sorted(per_cpu) == [0, 1] and all(v > 0 for v in per_cpu.values())
      and sum(per_cpu.values()) == 32768, f"both vCPUs did work: {per_cpu}")

# A guest that faults on purpose: the VM ends, the exception is named.
r = run(["run", "--mem", "64M", "--append", "kvmem.debug=fault"])
check(r.returncode == 3, f"page fault ends the VM with status 3 (got {r.returncode})")
check(re.search(r"guest exception #PF page fault \(vector 14\) at rip 0x[0-9a-f]+ .*address 0x",
                r.stderr) is not None, "the #PF is reported with rip and address")
r = run(["run", "--mem", "64M", "--append", "kvmem.debug=ud"])
check(r.returncode == 3 and "#UD invalid opcode (vector 6)" in r.stderr,
      "an invalid opcode is reported")

# The guest's own power-off status becomes the VMM's exit status.
r = run(["run", "--mem", "64M", "--append", "kvmem.debug=exit7"])
check(r.returncode == 7, f"guest power-off status 7 passes through (got {r.returncode})")

# Bad arguments: one clear line on stderr, status 2.
bad = [
    (["run", "--mem", "64M", "--guest", "/nonexistent/guest.elf"], "no such readable file"),
    (["run", "--mem", "0"], "--mem 0"),
    (["run", "--mem", "banana"], "--mem banana"),
    (["run", "--mem", "100T"], "more than"),
    (["run", "--mem", "64M", "--cpus", "0"], "--cpus 0"),
    (["run", "--mem", "64M", "--frobnicate"], "unknown option"),
    (["run"], "--mem is required"),
    (["explode"], "unknown command"),
    (["run", "--mem", "64M", "--guest", "/etc/passwd"], "not a kvmem guest image"),
]
# A ThreadSanitizer build says once, at start, that it runs without seccomp
# filters: the build's line, not the problem's.
TSAN_LINE = "seccomp filters are off: not supported under ThreadSanitizer"
for args, msg in bad:
    r = run(args, timeout=30)
    lines = [l for l in r.stderr.splitlines()
             if l.strip() and not (os.environ.get("KVMEM_TSAN") == "1" and TSAN_LINE in l)]
    check(r.returncode == 2 and len(lines) == 1 and msg in lines[0],
          f"{' '.join(args)} -> status 2 with one line naming the problem "
          f"(got {r.returncode}: {lines})")

finish()
