"""Three identical-mix guests (50% pages identical across guests, 25% zero,
25% unique): kvmem's scanner shares the identical pages and drops the zero
pages until the host's net saving reaches 90% of what this mix allows, and
every guest then verifies all of its memory.

The most the mix allows: with N guests of P filled pages, the D = P/2
identical pages are kept once instead of N times and the Z = P/4 zero pages
need no memory: ((N - 1) * D + N * Z) pages. The host's saved_bytes counts
sharing net of what it costs (the kernel's mappings, the engine's tables).
The workload interleaves its classes (every other page is identical), which
would cost a host mapping per shared page if pages were remapped one by one:
whole 2 MiB windows are remapped instead, so the mappings stay few."""
from kvmemtest import check, finish, require_accel
from ctlhelp import wait_state
from deduphelp import DedupHost, PAGE

require_accel()
N, MIB = 3, 64
P = MIB * 256
D, Z = P * 50 // 100, P * 25 // 100
WL = f"size={MIB},dup=50,zero=25,verify=2,then=sleep"
MAX = ((N - 1) * D + N * Z) * PAGE

h = DedupHost([WL + f",id={i + 1}" for i in range(N)])
try:
    check(h.wait_all(r"kvmem-wl: verify ok \d+$"), "every guest fills and verifies")
    d = h.dedup(cpu_percent=100, pages_per_sec=1 << 20)
    check(d["enabled"] and d["cpu_percent"] == 100 and d["pages_per_sec"] == 1 << 20,
          f"the dedup verb retunes the scanner ({d})")
    ok, d = h.wait_dedup(lambda d: d["pages_sharing"] + 0 >= (N - 1) * D * 0.95 and
                         d["full_scans"] >= 3)
    check(ok, f"identical pages are shared: pages_sharing {d.get('pages_sharing')} of "
          f"{(N - 1) * D}")
    ok, st = wait_state(h.sock, None, lambda s: s["host"]["saved_bytes"] >= 0.9 * MAX,
                        "net saving (sharing net of its kernel and table cost, plus zero pages) "
                        "reaches 90% of the mix's maximum",
                        show=lambda s: f"saved {s['host']['saved_bytes'] / 2**20:.1f} MiB")
    if st:
        hst, d = st["host"], st["host"]["dedup"]
        zero_bytes = sum(v["pages"]["zero"] for v in st["vms"]) * PAGE
        print(f"info   max {MAX >> 20} MiB; host saved {hst['saved_bytes'] / 2**20:.1f} MiB = "
              f"{100 * hst['saved_bytes'] / MAX:.1f}% of max; sharing saves "
              f"{d['saved_bytes'] / 2**20:.1f} MiB gross, {d['net_saved_bytes'] / 2**20:.1f} MiB "
              f"net (kernel {d['kernel_cost_bytes'] / 2**20:.1f} MiB for {d['ram_vmas']} "
              f"mappings, tables {d['metadata_bytes'] / 2**20:.1f} MiB, {d['windows']} windows); "
              f"zero {zero_bytes >> 20} MiB", flush=True)
    # Mappings are counted now and then (an upper bound in between): wait for a count.
    # (N * D // 64 in quiet runs; a loaded or sanitized host merges more pages one by
    # one before their window qualifies: 2424 seen under ASan in the nested VM beside a
    # second one. Page by page would be at least (N - 1) * D.)
    ok, d = h.wait_dedup(lambda d: d["windows"] > 0 and d["ram_vmas"] < N * D // 8)
    check(ok, f"whole windows are remapped: {d['ram_vmas']} mappings for {(N - 1) * D} shared "
          f"pages ({d['windows']} windows)")
    check(d["net_saved_bytes"] > 0 and d["errors"] == 0 and d["map_refused"] == 0,
          f"sharing saves net, without errors ({d['errors']}) or refusals")
    # A VM's pages turn shared as the scanner maps them (the first holder of a
    # frame's content among them), which may trail the host's figures: wait.
    wait_state(h.sock, None, lambda s: all(v["pages"]["shared"] >= D * 0.95 for v in s["vms"]),
               f"each VM's pages by state show its shared pages (>= {int(D * 0.95)})",
               show=lambda s: f"shared {[v['pages']['shared'] for v in s['vms']]}")
    # The guests verify every 2 s: two more rounds read every page through the frames.
    check(h.wait_more(r"kvmem-wl: verify ok \d+$", 2),
          "every guest verifies all its memory again after sharing")
    h.no_verify_fail("sharing")
    # Only the guests' own bookkeeping pages (stacks, page tables) may be written.
    d = h.dedup()
    print(f"info   copy-on-write breaks while the guests only read: {d['cow_breaks']}", flush=True)
    # Quiet runs see <= 64 (bookkeeping pages); one loaded ASan run saw 2208 with every
    # guest still verifying: an efficiency question left open, so only a loose bound here.
    check(d["cow_breaks"] <= (N - 1) * D // 4,
          f"reading shared pages breaks few of them ({d['cow_breaks']})")
finally:
    h.stop()
finish()
