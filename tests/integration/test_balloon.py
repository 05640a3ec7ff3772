"""virtio-balloon with the kvmem guest's driver, end to end:
1. free page reporting: a 1 GiB guest fills 768 MiB, frees it, and host
   resident memory falls by at least 90% of that with no balloon target;
2. inflate to a 512 MiB target: the guest's total memory (its stats) falls to
   about 512 MiB, the balloon reaches the target, the data still verifies;
   deflate back to 1 GiB and the guest fills the memory it got back and
   verifies it all; and inflating memory the guest had used and freed
   (reporting off) drops it from the host;
3. deflate-on-OOM: a guest that needs memory while inflated gets it back.
Every wait is a poll with a generous deadline; nothing asserts on timing."""
import contextlib
import os
import re

from kvmemtest import check, finish, require_accel, run, wait_for, wait_until
from ctlhelp import Host, no_verify_fail, request, stats, tmpdir, vm_of, wait_socket, wait_state

MIB = 1 << 20
PAGE = 4096
PAGES_PER_MIB = MIB // PAGE
# Far above what the guests use: the policy never balloons them on its own.
BUDGET = "16G"

require_accel()
d = tmpdir()


def start(name, append):
    sock = os.path.join(d, name + ".sock")
    host = Host(["run", "--mem", "1G", "--budget", BUDGET, "--socket", sock,
                 "--append", append])
    check(wait_socket(host, sock), f"{name}: the host serves its control socket")
    return host, sock


@contextlib.contextmanager
def section(name, append):
    """One part of the test on its own host; the host exits 0 on SIGTERM after it."""
    host, sock = start(name, append)
    try:
        yield host, sock
    finally:
        rc = host.stop()
    check(rc == 0, f"{name}: the host exits 0 on SIGTERM (got {rc})")


def vm(sock):
    return vm_of(stats(sock), "vm0")


def balloon(sock):
    return vm(sock)["balloon"]


def set_target(sock, size, what):
    r = request(sock, {"verb": "balloon", "vm": "vm0", "target": size})
    check(r.get("ok") is True, f"{what}: balloon target {size} ({r})")


def balloon_cli(sock, *args):
    return run(["balloon", "--socket", sock] + list(args), timeout=60)


def policy_passes(sock, n=2):
    """Wait for n more policy passes: resident_bytes is measured by them."""
    p0 = stats(sock)["host"]["policy_passes"]
    ok, last = wait_until(lambda: stats(sock)["host"]["policy_passes"], lambda p: p >= p0 + n, 120)
    if not ok:
        print(f"info   gave up waiting for {n} policy passes: {p0} -> {last}", flush=True)
    return ok


def mib_sum(host, regex):
    return sum(int(m.group(1)) for l in host.stdout() for m in [re.search(regex, l)] if m)


# --- 1. free page reporting --------------------------------------------------------------

with section("report", "kvmem.wl=size=768,time=10,then=free") as (host, sock):
    check(host.wait_line(r"^kvmem-balloon: features 0x[0-9a-f]+$"), "report: the driver starts")
    check(host.wait_line(r"^kvmem-wl: verify ok 196608$"), "report: the guest filled 768 MiB")
    # Hold the guest while the policy measures it full (it frees 10 s after the fill).
    r = request(sock, {"verb": "pause", "vm": "vm0"})
    check(r.get("ok") is True, f"report: pause ({r})")
    check(policy_passes(sock), "report: the policy measured the full guest")
    r0 = vm(sock)["resident_bytes"]
    check(r0 >= 760 * MIB, f"report: 768 MiB resident after the fill ({r0 / MIB:.1f} MiB)")
    r = request(sock, {"verb": "resume", "vm": "vm0"})
    check(r.get("ok") is True, f"report: resume ({r})")
    check(host.wait_line(r"^kvmem-wl: freed 768$"), "report: the guest freed 768 MiB")

    wait_state(sock, "vm0", lambda v: r0 - v["resident_bytes"] >= 0.9 * 768 * MIB,
               "report: host resident memory fell by at least 90% of the 768 MiB freed",
               show=lambda v: f"resident {r0 / MIB:.1f} -> {v['resident_bytes'] / MIB:.1f} MiB",
               deadline_s=120, step=0.5)
    # The device counts a report once it has dropped all of its ranges (up to
    # 256 MiB): the counters may trail the resident figure.
    wait_state(sock, "vm0", lambda v: v["balloon"]["counters"]["reported_bytes"] >= 0.9 * 768 * MIB
               and v["balloon"]["counters"]["reports"] > 0,
               "report: the device dropped the reported ranges",
               show=lambda v: v["balloon"]["counters"])
    b = balloon(sock)
    # No target was ever set: true of every sample.
    check(b["balloon_actual_bytes"] == 0 and b["balloon_target_bytes"] == 0,
          f"report: no balloon target, nothing inflated ({b['balloon_actual_bytes']})")
    # The guest prints a line per burst of reports, once a burst finds nothing more.
    reported = r"^kvmem-balloon: reported (\d+) MiB$"
    check(wait_for(lambda: mib_sum(host, reported) >= 0.9 * 768 or not host.alive(), 120) and
          mib_sum(host, reported) >= 0.9 * 768,
          f"report: the guest says what it reported ({mib_sum(host, reported)} MiB)")
    # Reported chunks are not reported again while they stay free (counted from
    # after the guest's burst line: every report of the burst is in by then).
    n = balloon(sock)["counters"]["reports"]
    check(policy_passes(sock, 3) and balloon(sock)["counters"]["reports"] == n,
          "report: free chunks already reported are left alone")
    wait_state(sock, "vm0", lambda v: v["balloon"]["guest"].get("free_bytes", 0) >= 1000 * MIB,
               "report: the guest's stats show its memory free again",
               show=lambda v: v["balloon"]["guest"], deadline_s=120)
    check(host.alive() and vm(sock)["state"] == "running", "report: the VM is still running")

# --- 2. inflate to a target, deflate, refill ---------------------------------------------

VERIFY_256 = r"^kvmem-wl: verify ok 65536$"
with section("target", "kvmem.wl=size=256,verify=2,grow=16") as (host, sock):
    check(host.wait_line(VERIFY_256), "target: the guest filled 256 MiB and verifies")
    # The CLI's errors first: one line on stderr, nothing changed.
    for args, code, msg in ((["--vm", "nosuch", "--target", "512M"], 1, "nosuch"),
                            (["--vm", "vm0", "--target", "5x"], 2, "--target 5x"),
                            (["--vm", "vm0"], 2, "--target SIZE or --auto"),
                            (["--vm", "vm0", "--target", "512M", "--auto"], 2, "either"),
                            (["--frob"], 2, "unknown option")):
        r = balloon_cli(sock, *args)
        check(r.returncode == code and msg in r.stderr and len(r.stderr.splitlines()) == 1,
              f"target: kvmem balloon {' '.join(args)}: exit {code}, one line naming the "
              f"problem ({r.returncode}, {r.stderr.strip()!r})")
    check(balloon(sock)["balloon_target_bytes"] == 0, "target: the errors changed nothing")
    r = balloon_cli(sock, "--help")
    check(r.returncode == 0 and "--target" in r.stdout and "--auto" in r.stdout,
          "target: kvmem balloon --help lists its options")
    # The target itself through the CLI (the socket verb does the deflate below).
    r = balloon_cli(sock, "--vm", "vm0", "--target", "512M")
    check(r.returncode == 0 and r.stdout.strip() == "vm0: balloon target 512.0 MiB",
          f"target: kvmem balloon --target 512M ({r.returncode}, {r.stdout.strip()!r}, "
          f"{r.stderr.strip()!r})")
    ok, v = wait_state(sock, "vm0", lambda v: v["balloon"]["balloon_actual_bytes"] == 512 * MIB
                       and v["balloon"]["guest"].get("total_bytes", 1 << 40) <= 528 * MIB,
                       "target: the balloon holds 512 MiB and the guest's total memory fell to "
                       "about 512 MiB", show=lambda v: v["balloon"], deadline_s=120)
    if ok:
        # The sample that showed it: the guest's and the device's figures of one moment.
        b = v["balloon"]
        tot = b["guest"]["total_bytes"]
        check(480 * MIB <= tot <= 528 * MIB and b["actual_bytes"] == 512 * MIB,
              f"target: guest total {tot / MIB:.1f} MiB, VM keeps {b['actual_bytes'] / MIB:.0f} MiB")
        check(b["counters"]["inflated_pages"] >= 512 * PAGES_PER_MIB and
              b["counters"]["needs_reset"] == 0, f"target: inflated ({b['counters']})")
    check(host.wait_line(r"^kvmem-balloon: target 512 MiB actual 512 MiB$"),
          "target: the guest reports reaching the target")
    check(host.wait_line(VERIFY_256, host.count(VERIFY_256) + 2),
          "target: the guest's data still verifies while inflated")

    set_target(sock, "1G", "target")
    wait_state(sock, "vm0", lambda v: v["balloon"]["balloon_actual_bytes"] == 0 and
               v["balloon"]["guest"].get("total_bytes", 0) >= 1000 * MIB,
               "target: deflated: the balloon is empty and the guest has all its memory back",
               show=lambda v: v["balloon"], deadline_s=120)
    full = r"^kvmem-wl: verify ok (\d+)$"

    def refilled():
        return any(int(m.group(1)) >= (256 + 0.95 * 512) * PAGES_PER_MIB
                   for l in host.stdout() for m in [re.search(full, l)] if m)

    check(wait_for(lambda: refilled() or not host.alive(), 180) and refilled(),
          "target: the guest filled the memory it got back and verifies all of it")
    check(mib_sum(host, r"^kvmem-wl: grew (\d+) to \d+$") >= 0.95 * 512,
          "target: the workload grew by the 512 MiB deflated")
    # Refilled and verified: resident from here on, so one sample after a pass shows it.
    check(policy_passes(sock) and vm(sock)["resident_bytes"] >= 740 * MIB,
          f"target: the refilled memory is resident ({vm(sock)['resident_bytes'] / MIB:.1f} MiB)")
    n = host.count(full)
    check(host.wait_line(full, n + 2), "target: the guest goes on verifying")
    no_verify_fail(host, "target")

# Inflating pages the guest used and freed (reporting off, so they stay resident) drops them.
with section("inflate-rss",
             "kvmem.balloon.report=off kvmem.wl=size=768,then=free") as (host, sock):
    check(host.wait_line(r"^kvmem-wl: freed 768$"), "inflate-rss: the guest used and freed 768 MiB")
    check(policy_passes(sock), "inflate-rss: the policy measured the guest")
    r0 = vm(sock)["resident_bytes"]
    check(r0 >= 760 * MIB, f"inflate-rss: freed pages stay resident without reporting "
          f"({r0 / MIB:.1f} MiB)")
    set_target(sock, "256M", "inflate-rss")
    wait_state(sock, "vm0", lambda v: v["balloon"]["balloon_actual_bytes"] == 768 * MIB,
               "inflate-rss: the balloon holds 768 MiB",
               show=lambda v: f"{v['balloon']['balloon_actual_bytes'] / MIB:.0f} MiB",
               deadline_s=120)
    wait_state(sock, "vm0", lambda v: r0 - v["resident_bytes"] >= 0.9 * 768 * MIB,
               "inflate-rss: host resident memory fell by at least 90% of the 768 MiB inflated",
               show=lambda v: f"resident {r0 / MIB:.1f} -> {v['resident_bytes'] / MIB:.1f} MiB",
               deadline_s=120, step=0.5)
    set_target(sock, "1G", "inflate-rss")
    wait_state(sock, "vm0", lambda v: v["balloon"]["balloon_actual_bytes"] == 0,
               "inflate-rss: deflated back to an empty balloon",
               show=lambda v: f"{v['balloon']['balloon_actual_bytes'] / MIB:.0f} MiB",
               deadline_s=120)
    # The guest touches none of them: every sample from here on must show it.
    check(policy_passes(sock) and vm(sock)["resident_bytes"] <= r0 - 0.9 * 768 * MIB,
          "inflate-rss: deflated pages cost the host nothing until the guest uses them")
    check(balloon(sock)["counters"]["reports"] == 0, "inflate-rss: nothing was reported")

# --- 3. deflate-on-OOM --------------------------------------------------------------------

with section("oom", "kvmem.wl=size=768,wait=balloon,verify=2") as (host, sock):
    check(host.wait_line(r"^kvmem-wl: waiting for the balloon$"), "oom: the workload waits")
    set_target(sock, "256M", "oom")
    check(host.wait_line(r"^kvmem-wl: balloon holds 768 MiB, \d+ MiB free$"),
          "oom: the balloon holds 768 MiB before the workload allocates")
    check(host.wait_line(r"^kvmem-balloon: deflate-on-oom \d+ pages$"),
          "oom: the driver deflates when the allocation falls short")
    check(host.wait_line(r"^kvmem-wl: verify ok 196608$"),
          "oom: the guest got its 768 MiB, filled and verified them")
    # The device counts a deflate before the guest sees it done and says so, and
    # the balloon cannot grow back to 768 MiB while the workload holds its memory:
    # one sample after the lines must show both.
    b = balloon(sock)
    oom_pages = mib_sum(host, r"^kvmem-balloon: deflate-on-oom (\d+) pages$")
    check(b["counters"]["oom_deflated_pages"] >= oom_pages > 0,
          f"oom: the device counts the deflate as deflate-on-OOM ({b['counters']}, "
          f"guest said {oom_pages})")
    check(b["balloon_actual_bytes"] < 768 * MIB and b["balloon_target_bytes"] == 768 * MIB,
          f"oom: the balloon gave pages back although the target did not change "
          f"({b['balloon_actual_bytes'] / MIB:.0f} MiB held)")
    wait_state(sock, "vm0", lambda v: v["balloon"]["guest"].get("alloc_stalls", 0) >= 1,
               "oom: the guest's stats count the allocation stall",
               show=lambda v: v["balloon"]["guest"], deadline_s=120)
    check(host.wait_line(r"^kvmem-wl: verify ok 196608$", 3), "oom: the guest goes on verifying")
    no_verify_fail(host, "oom")
    check(vm(sock)["state"] == "running", "oom: the VM is still running")
finish()
