#!/usr/bin/env python3
"""bench/hotset: a hot-set guest squeezed to half its size, under each way of choosing what goes.

One 512 MiB guest fills 400 MiB of unique pages, then rewrites and reads a hot tenth of them as
fast as it can, and reads a page of the cold rest now and then (cold=, 1 MiB/s asked: a working
set's rare touches of cold memory, which keep reclaim busy). WARM seconds after its fill (time
for access information), the host squeezes it to about half (a 240 MiB budget, or a 240 MiB
memory cgroup limit), and the run counts how many pages came back from swap per second from
then on (the squeeze and what follows it), and what the guest got done over its whole run (hot
operations per second):

  coldest   kvmem's swap, its victims the coldest chunks by access information
  random    kvmem's swap, random victims (ESX 2002's choice)
  pageout   kvmem's victims (the coldest chunks) handed to the kernel with MADV_PAGEOUT into a
            kernel swap file: the same choice on the kernel's I/O path
  kernel    no kvmem reclaim: the kvmem process in a memory cgroup limited to 240 MiB with a
            kernel swap file (the usual way to overcommit with a stock VMM), the kernel's LRU
            choosing
  free      no squeeze: the ceiling the others are compared with

Each variant runs --runs times (default 3); the lines give medians, and each squeezed variant's
throughput as a share of the unsqueezed one and against random victims (same run). Root is
needed for the kernel and pageout variants (swapon, a cgroup); without it their lines say why.

Usage: bench_hotset.py KVMEM SWAP_DIR [seconds] [--accel auto|kvm|thread] [--runs N]
       [--variants free,coldest,random,pageout,kernel]
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

from benchlib import cmd, emit, request, take_accel

ACCEL = take_accel()


def take(flag, default):
    if flag in sys.argv:
        i = sys.argv.index(flag)
        v = sys.argv[i + 1]
        del sys.argv[i:i + 2]
        return v
    return default


RUNS = int(take("--runs", "3"))
VARIANTS = take("--variants", "free,coldest,random,pageout,kernel").split(",")
KVMEM, SWAPDIR = sys.argv[1], sys.argv[2]
SECONDS = int(sys.argv[3]) if len(sys.argv) > 3 else 60
MEM, FILL, SQUEEZE = 512, 400, 240
WARM, SETTLE = 8, 0
WL = (f"kvmem.wl=size={FILL},id=1,hot=10,rate=4096,read=16384,cold=1,time={SECONDS},"
      "then=sleep")
DONE = re.compile(r"kvmem-wl: rewrites (\d+) reads (\d+) .*cold reads (\d+)")


def vmstat(key):
    with open("/proc/vmstat") as f:
        for line in f:
            k, v = line.split()
            if k == key:
                return int(v)
    return 0


def memory_cgroup():
    """The directory of the memory cgroup this process is in (v1, else v2)."""
    v2 = None
    with open("/proc/self/cgroup") as f:
        for line in f:
            n, ctrl, path = line.rstrip("\n").split(":", 2)
            if ctrl == "memory":
                return "/sys/fs/cgroup/memory" + path.rstrip("/"), "memory.limit_in_bytes"
            if n == "0" and not ctrl:
                v2 = "/sys/fs/cgroup" + path.rstrip("/")
    return v2, "memory.max"


def run(variant, d):
    """One run: (hot ops per second, pages read back per second, cold reads), or raise."""
    sock = os.path.join(d, "k.sock")
    cfg = {"budget": "8G", "socket": sock,
           "dedup": "off", "console_prefix": False, "access": "auto",
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
    if variant == "kernel":
        parent, limit_file = memory_cgroup()
        cg = os.path.join(parent, f"kvmem-bench-{os.getpid()}")
        os.mkdir(cg)
        # The shell moves itself into the group, then becomes kvmem.
        argv = ["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh", *argv]
    host = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        t0 = time.monotonic()
        while not os.path.exists(sock) and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        window, timer = [], None

        def squeeze_then_count():
            if variant == "kernel":
                with open(os.path.join(cg, limit_file), "w") as f:
                    f.write(str(SQUEEZE << 20))
            elif variant != "free":
                request(sock, {"verb": "budget", "bytes": f"{SQUEEZE}M"})
            time.sleep(SETTLE)
            # Counted before the workload's final verification (which reads every page back).
            window.append(count_back(variant, sock))
            time.sleep(SECONDS - WARM - SETTLE - 1)
            window.append(count_back(variant, sock))

        for line in host.stdout:
            if timer is None and "kvmem-wl: filled" in line:
                timer = threading.Timer(WARM, squeeze_then_count)
                timer.start()
            m = DONE.search(line)
            if m:
                timer.join()
                ops = int(m.group(1)) + int(m.group(2))
                return (ops / SECONDS, (window[1] - window[0]) / (SECONDS - WARM - SETTLE - 1),
                        int(m.group(3)))
        raise RuntimeError(f"the guest never finished (exit {host.poll()})")
    finally:
        host.terminate()
        host.wait(60)
        if cg:
            os.rmdir(cg)


def count_back(variant, sock):
    """Pages read back from swap so far: kvmem's own figures, or the kernel's."""
    if variant not in ("coldest", "random"):
        return vmstat("pswpin")
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
    ops, back, cold = [], [], []
    try:
        for _ in range(RUNS):
            with tempfile.TemporaryDirectory() as d:
                o, b, c = (with_kernel_swap(lambda: run(variant, d))
                           if variant in ("kernel", "pageout") else run(variant, d))
            ops.append(o)
            back.append(b)
            cold.append(c)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        emit("hotset_ops_per_s", "ops/s", None, {"variant": variant}, error=str(e))
        continue
    results[variant] = (statistics.median(ops), statistics.median(back), ops,
                        statistics.median(cold) / SECONDS)

for variant, (ops, back, all_ops, cold) in results.items():
    extra = {"runs": [round(o) for o in all_ops], "swap_ins_per_s": round(back, 1),
             "cold_reads_per_s": round(cold, 1)}
    if "free" in results and variant != "free":
        extra["of_free"] = round(ops / results["free"][0], 3)
    if "random" in results and variant != "random":
        extra["vs_random"] = round(ops / results["random"][0], 3)
    emit("hotset_ops_per_s", "ops/s", round(ops),
         {"variant": variant, "mem_mib": MEM, "fill_mib": FILL, "squeeze_mib": SQUEEZE,
          "hot": "10%", "cold_mib_s": 1, "seconds": SECONDS}, **extra)
