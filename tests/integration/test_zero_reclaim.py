"""Zero-page reclaim gives memory back: a guest whose fill is half zero pages
goes over a budget set through the control socket; the policy drops its zero
pages, resident memory falls by (about) their size, and the guest still
verifies every page afterwards (the dropped pages read back as zeros).

The guest verifies every 2 s, so it keeps reading the pages the host dropped:
they must stay free all the same. On a kernel whose reads of a hole allocate
a page (the machines without /dev/kvm boot with pvm_no_zero_page) that holds
only because kvmem maps the kernel's zero page into what it drops."""
import os

from kvmemtest import check, finish, require_accel, wait_for
from ctlhelp import Host, no_verify_fail, request, stats, tmpdir, vm_of, wait_socket, wait_state

MIB = 1 << 20
PAGE = 4096
VERIFY = r"^kvmem-wl: verify ok 65536$"

require_accel()
d = tmpdir()
sock = os.path.join(d, "k.sock")
host = Host(["run", "--mem", "512M", "--socket", sock, "--append",
             # The balloon would also answer the pressure; this test is about
             # zero pages alone.
             "kvmem.wl=size=256,zero=50,verify=2 kvmem.balloon=off"])
try:
    check(wait_socket(host, sock), "the host serves its control socket")
    check(host.wait_line(r"^kvmem-wl: filled 256 in") and host.wait_line(VERIFY),
          "the guest filled 256 MiB (half zeros) and verified it")
    p0 = stats(sock)["host"]["policy_passes"]
    wait_state(sock, None, lambda s: s["host"]["policy_passes"] >= p0 + 2,
               "the policy measured the VM after the fill",
               show=lambda s: f"policy passes {p0} -> {s['host']['policy_passes']}")
    before = vm_of(stats(sock), "vm0")
    r0 = before["resident_bytes"]
    check(r0 >= 256 * MIB and before["pages"]["zero"] == 0,
          f"before: all 256 MiB resident, no zero pages ({r0 / MIB:.1f} MiB, {before['pages']})")

    # Budget below what the host uses: the policy must reclaim.
    r = request(sock, {"verb": "budget", "bytes": "64M", "id": "b"})
    check(r == {"ok": True, "id": "b", "budget_bytes": 64 * MIB}, f"budget set to 64 MiB ({r})")
    check(stats(sock)["host"]["budget_bytes"] == 64 * MIB, "stats shows the new budget")

    unexplained = []

    def reclaimed():
        vm = vm_of(stats(sock), "vm0")
        zero_bytes = vm["pages"]["zero"] * PAGE
        # Every sample is one consistent state: dropped pages come with the decision.
        if zero_bytes and "zero" not in vm["last_action"]:
            unexplained.append(vm["last_action"])
        fell = r0 - vm["resident_bytes"]
        return vm if zero_bytes > 0 and fell >= 0.9 * zero_bytes else None

    after = wait_for(reclaimed, 240, step=0.5)
    if check(after is not None, "zero pages were dropped and resident memory fell by "
             "at least 90% of their size"):
        zb = after["pages"]["zero"] * PAGE
        print(f"info   resident {r0 / MIB:.1f} -> {after['resident_bytes'] / MIB:.1f} MiB, "
              f"zero pages {zb / MIB:.1f} MiB, last action: {after['last_action']}", flush=True)
        check("zero" in after["last_action"], f"last_action names the mechanism "
              f"({after['last_action']})")
    check(not unexplained, f"no sample showed dropped zero pages without the decision "
          f"({unexplained[:3]})")
    # Every zero page of the fill goes, in one pass or several.
    def zero_mib(s):
        return vm_of(s, "vm0")["pages"]["zero"] * PAGE / MIB

    wait_state(sock, None, lambda s: zero_mib(s) >= 128, "all 128 MiB of the fill's zero pages "
               "are reclaimed", show=lambda s: f"{zero_mib(s):.1f} MiB zero", deadline_s=240)
    # The figures that follow the drop: resident_bytes is measured at most 0.2 s
    # before the sample, and a mechanism's reclaimed_bytes grows when its pass
    # ends, after the page states moved. Wait for them too.
    wait_state(sock, None, lambda s: vm_of(s, "vm0")["resident_bytes"] <= r0 - 0.9 * 128 * MIB,
               "resident fell by at least 90% of 128 MiB",
               show=lambda s: f"{r0 / MIB:.1f} -> {vm_of(s, 'vm0')['resident_bytes'] / MIB:.1f} "
               f"MiB")
    # saved_bytes counts the same sample's zero pages: it holds in every sample.
    wait_state(sock, None, lambda s: s["host"]["saved_bytes"] >= zero_mib(s) * MIB and
               s["host"]["reclaimed_bytes"]["zero"] > 0, "host figures: saved covers the zero "
               "pages, and the zero mechanism's reclaimed bytes",
               show=lambda s: f"saved {s['host']['saved_bytes'] / MIB:.1f} MiB, zero "
               f"{zero_mib(s):.1f} MiB, reclaimed {s['host']['reclaimed_bytes']}")

    # The guest still verifies all of its pages: two full passes after the reclaim,
    # each of them reading every dropped page again.
    n = host.count(VERIFY)
    check(host.wait_line(VERIFY, n + 2), "the guest verifies its memory after the reclaim")
    no_verify_fail(host, "zero reclaim")
    # Once reclaimed, the pages stay dropped through the reads: one sample, which
    # must show it (any sample after the reclaim would).
    vm = vm_of(stats(sock), "vm0")
    check(vm["pages"]["zero"] * PAGE >= 128 * MIB and
          vm["resident_bytes"] <= r0 - 0.9 * 128 * MIB,
          f"the guest's reads left its zero pages free: {vm['pages']['zero'] * PAGE / MIB:.1f} "
          f"MiB zero, resident {vm['resident_bytes'] / MIB:.1f} MiB")
    check(vm_of(stats(sock), "vm0")["state"] == "running", "the VM is still running")
finally:
    rc = host.stop()
check(rc == 0, f"the host exits 0 on SIGTERM (got {rc})")
finish()
