#!/usr/bin/env python3
"""bench/hotset: a hot-set guest squeezed to half its size, under each way of choosing what goes.

One 512 MiB guest fills 400 MiB of unique pages, then rewrites and reads a hot half of them
(random pages) as fast as it can, and reads random pages of the cold rest at 2 MiB/s (cold=: a
working set's rare touches of cold memory, which keep reclaim busy). WARM seconds after its fill
(time for access information), the host squeezes it to about half (a 240 MiB budget), so that
the hot half just fits: every victim taken from it is read back at once. The run counts the
pages read back from swap per second from then on (the squeeze and what follows it), and what
the guest got done while squeezed (operations per second, from its progress reports: the second
one after the squeeze to the last one before its end):

  coldest   kvmem's swap, its victims the coldest chunks by access information
  random    kvmem's swap, random victims (ESX 2002's choice)
  pageout   kvmem's victims (the coldest chunks) handed to the kernel with MADV_PAGEOUT into a
            kernel swap file: the same choice on the kernel's I/O path; in a memory cgroup
            limited as for kernel, so that the kernel's swap cache (pages read ahead, pages
            not yet freed) counts against the same memory as everything else
  kernel    no kvmem reclaim: the kvmem process in a memory cgroup with a kernel swap file
            (the usual way to overcommit with a stock VMM), the kernel's LRU choosing; its
            limit is 240 MiB plus what the process holds besides guest RAM (measured just before
            the squeeze), so that the guest gets the same 240 MiB
  free      no squeeze: the ceiling the others are compared with (the same window)

Each variant runs --runs times (default 3); the lines give medians, and each squeezed variant's
throughput as a share of the unsqueezed one and against random victims (same run). Root is
needed for the kernel and pageout variants (swapon, a cgroup); without it their lines say why.
Pages read back: kvmem's swap figures (faults + read-ahead) for its own store, the kvmem
process's major faults for the kernel's.

Each line also gives the access source the host used, its kdamond's CPU time and the VMM's
own (ms over the run): DAMON's cost beside kvmem's (--access damon|sampling to choose).

Usage: bench_hotset.py KVMEM SWAP_DIR [seconds] [--accel auto|kvm|thread] [--runs N]
       [--variants free,coldest,random,pageout,kernel] [--access auto|damon|sampling]
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import cmd, emit, memory_cgroup, request, take_accel, take_opt

ACCEL = take_accel()


RUNS = int(take_opt("--runs", "3"))
ACCESS = take_opt("--access", "auto")
VARIANTS = take_opt("--variants", "free,coldest,random,pageout,kernel").split(",")
KVMEM, SWAPDIR = sys.argv[1], sys.argv[2]
SECONDS = int(sys.argv[3]) if len(sys.argv) > 3 else 60
MEM, FILL, SQUEEZE = 512, 400, 240
WARM, SETTLE = 8, 0
HOT, COLD = 50, 2
WL = (f"kvmem.wl=size={FILL},id=1,hot={HOT},rate=4096,read=16384,cold={COLD},time={SECONDS},"
      "report=1,then=sleep")
PROGRESS = re.compile(r"kvmem-wl: progress (\d+) ms ops (\d+)")
DONE = re.compile(r"kvmem-wl: rewrites (\d+) reads (\d+) .*cold reads (\d+)")


def majflt(pid):
    """Major faults of the whole process (its threads' and its dead threads' too)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[9])


def run(variant, d):
    """One run: (operations per second while squeezed, pages read back per second, cold reads,
    kdamond CPU ms, VMM CPU ms, access source), or raise."""
    sock = os.path.join(d, "k.sock")
    cfg = {"budget": "8G", "socket": sock,
           "dedup": "off", "console_prefix": False, "access": ACCESS,
           "vms": [{"name": "a", "mem": f"{MEM}M", "append": WL}]}
    if variant in ("coldest", "random"):
        cfg["swap"] = {"path": SWAPDIR, "size": "1G", "victims": variant}
    elif variant == "pageout":
        cfg["swap"] = {"path": SWAPDIR, "size": "1G", "store": "kernel"}
    path = os.path.join(d, "host.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    argv = cmd(KVMEM, "host", "--config", path)
    cg = None
    if variant in ("kernel", "pageout"):
        parent, limit_file = memory_cgroup()
        usage_file = "memory.current" if limit_file == "memory.max" else "memory.usage_in_bytes"
        cg = os.path.join(parent, f"kvmem-bench-{os.getpid()}")
        os.mkdir(cg)
        # The shell moves itself into the group, then becomes kvmem.
        argv = ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh", *argv]
    host = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        t0 = time.monotonic()
        while not os.path.exists(sock) and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        window, cpu, source, timer = [], [], [], None
        squeezed = threading.Event()
        progress = []       # (guest ms, ops) printed after the squeeze

        def squeeze_then_count():
            if cg:
                with open(os.path.join(cg, usage_file)) as f:
                    usage = int(f.read())
                guest = request(sock, {"verb": "stats"})["vms"][0]["resident_bytes"]
                with open(os.path.join(cg, limit_file), "w") as f:
                    f.write(str((SQUEEZE << 20) + max(usage - guest, 0)))
            if variant not in ("kernel", "free"):
                request(sock, {"verb": "budget", "bytes": f"{SQUEEZE}M"})
            squeezed.set()
            time.sleep(SETTLE)
            # Counted before the workload's final verification (which reads every page back).
            window.append(count_back(variant, sock, host.pid))
            time.sleep(SECONDS - WARM - SETTLE - 1)
            window.append(count_back(variant, sock, host.pid))
            st = request(sock, {"verb": "stats"})["host"]
            cpu.append((st.get("damon") or {}).get("cpu_ms", 0))
            cpu.append(st.get("vmm_cpu_ms", 0))
            source.append(st.get("access_source"))

        for line in host.stdout:
            if timer is None and "kvmem-wl: filled" in line:
                timer = threading.Timer(WARM, squeeze_then_count)
                timer.start()
            m = PROGRESS.search(line)
            if m and squeezed.is_set():
                progress.append((int(m.group(1)), int(m.group(2))))
            m = DONE.search(line)
            if m:
                timer.join()
                # From the second report after the squeeze (the first may have been on its
                # way already) to the last: the squeezed guest's throughput, in its own time.
                if len(progress) < 3:
                    raise RuntimeError("too few progress reports after the squeeze")
                (t_a, ops_a), (t_b, ops_b) = progress[1], progress[-1]
                return ((ops_b - ops_a) * 1000 / (t_b - t_a),
                        (window[1] - window[0]) / (SECONDS - WARM - SETTLE - 1),
                        int(m.group(3)), cpu[0], cpu[1], source[0])
        raise RuntimeError(f"the guest never finished (exit {host.poll()})")
    finally:
        host.terminate()
        host.wait(60)
        if cg:
            os.rmdir(cg)


def count_back(variant, sock, pid):
    """Pages read back from swap so far: kvmem's own figures, or the kernel's."""
    if variant not in ("coldest", "random"):
        return majflt(pid)
    v = request(sock, {"verb": "stats"})["vms"][0]
    return v["swap"]["faults"] + v["swap"]["readahead"]


def with_kernel_swap(fn):
    """fn() with a kernel swap file of 1 GiB in SWAPDIR switched on around it."""
    path = os.path.join(SWAPDIR, f"kvmem-bench-kswap-{os.getpid()}")
    subprocess.run(["fallocate", "-l", "1G", path], check=True)
    os.chmod(path, 0o600)
    subprocess.run(["mkswap", path], check=True, capture_output=True)
    subprocess.run(["swapon", path], check=True, capture_output=True)
    try:
        return fn()
    finally:
        subprocess.run(["swapoff", path], capture_output=True)
        os.unlink(path)


results = {}
for variant in VARIANTS:
    ops, back, cold, kd, vmm = [], [], [], [], []
    try:
        for _ in range(RUNS):
            with tempfile.TemporaryDirectory() as d:
                o, b, c, k, v, src = (with_kernel_swap(lambda: run(variant, d))
                                      if variant in ("kernel", "pageout") else run(variant, d))
            ops.append(o)
            back.append(b)
            cold.append(c)
            kd.append(k)
            vmm.append(v)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        emit("hotset_ops_per_s", "ops/s", None, {"variant": variant}, error=str(e))
        continue
    results[variant] = (statistics.median(ops), statistics.median(back), ops,
                        statistics.median(cold) / SECONDS, statistics.median(kd),
                        statistics.median(vmm), src)

for variant, (ops, back, all_ops, cold, kd, vmm, src) in results.items():
    extra = {"runs": [round(o) for o in all_ops], "swap_ins_per_s": round(back, 1),
             "cold_reads_per_s": round(cold, 1), "access_source": src,
             "kdamond_cpu_ms": kd, "vmm_cpu_ms": vmm}
    if "free" in results and variant != "free":
        extra["of_free"] = round(ops / results["free"][0], 3)
    if "random" in results and variant != "random":
        extra["vs_random"] = round(ops / results["random"][0], 3)
    emit("hotset_ops_per_s", "ops/s", round(ops),
         {"variant": variant, "mem_mib": MEM, "fill_mib": FILL, "squeeze_mib": SQUEEZE,
          "hot": f"{HOT}%", "cold_mib_s": COLD, "seconds": SECONDS}, **extra)
