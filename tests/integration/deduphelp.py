"""Helpers for the page-sharing integration tests: a kvmem host of identical
kvmem guests with `dedup: on`, and its sharing figures from the control
socket. Every wait is a poll with a generous deadline (a broken build fails
instead of hanging); nothing asserts on timing."""
import os
import re

from kvmemtest import check, wait_for
from ctlhelp import Host, host_config, request, stats, tmpdir, wait_socket

PAGE = 4096


class DedupHost:
    """kvmem host with one VM per workload spec, dedup on, console prefixed."""

    def __init__(self, wls, mem="128M", dedup="on", boot=None):
        """boot(wl) gives what boots a VM with workload wl in its config (a Linux kernel's
        "kernel", "initrd" and "cmdline"); by default the kvmem guest with it on "append"."""
        self.dir = tmpdir()
        self.sock = os.path.join(self.dir, "k.sock")
        self.names = [chr(ord("a") + i) for i in range(len(wls))]
        boot = boot or (lambda wl: {"append": "kvmem.wl=" + wl})
        cfg = host_config(self.dir, {
            "budget": "8G", "socket": self.sock, "console_prefix": True, "dedup": dedup,
            "vms": [dict({"name": n, "mem": mem}, **boot(wl)) for n, wl in zip(self.names, wls)]})
        self.host = Host(["host", "--config", cfg])
        check(wait_socket(self.host, self.sock), "the host serves its control socket")

    def dedup(self, **kw):
        r = request(self.sock, dict(verb="dedup", **kw))
        if not r.get("ok"):
            raise RuntimeError(f"dedup verb failed: {r}")
        return r["dedup"]

    def stats(self):
        """The host's figures, with its VMs under "vms"."""
        r = stats(self.sock)
        return dict(r["host"], vms=r["vms"])

    def lines(self, name, regex):
        r = re.compile(r"^\[" + name + r"\] " + regex)
        return [l for l in self.host.stdout() if r.search(l)]

    def counts(self, regex):
        return {v: len(self.lines(v, regex)) for v in self.names}

    def wait_all(self, regex, n=1, deadline_s=180):
        """Every VM printed n lines matching regex (False if the host died)."""
        ok = wait_for(lambda: all(len(self.lines(v, regex)) >= n for v in self.names)
                      or not self.host.alive(), deadline_s) and \
            all(len(self.lines(v, regex)) >= n for v in self.names)
        if not ok:
            self.host.gave_up(f"{n} line(s) matching {regex!r} from every VM: "
                              f"{self.counts(regex)} seen")
        return ok

    def wait_more(self, regex, more, deadline_s=180):
        """Every VM prints `more` further lines matching regex."""
        base = self.counts(regex)
        ok = wait_for(lambda: all(len(self.lines(v, regex)) >= base[v] + more
                                  for v in self.names) or not self.host.alive(),
                      deadline_s) and self.host.alive()
        if not ok:
            self.host.gave_up(f"{more} more line(s) matching {regex!r} from every VM: "
                              f"{self.counts(regex)} seen, {base} before")
        return ok

    def wait_dedup(self, pred, deadline_s=180):
        """Poll the dedup figures until pred(figures) holds; the last figures."""
        last = {}

        def poll():
            nonlocal last
            if not self.host.alive():
                return "dead"
            last = self.dedup()
            return pred(last) and "yes"
        ok = wait_for(poll, deadline_s, step=0.5) == "yes"
        return ok, last

    def pause_all(self):
        for n in self.names:
            r = request(self.sock, {"verb": "pause", "vm": n})
            check(r.get("ok"), f"pause {n} ({r})")

    def resume_all(self):
        for n in self.names:
            r = request(self.sock, {"verb": "resume", "vm": n})
            check(r.get("ok"), f"resume {n} ({r})")

    def no_verify_fail(self, what):
        fails = [l for l in self.host.stdout() if "verify FAIL" in l]
        return check(not fails, f"{what}: no guest reports verify FAIL ({fails[:3]})")

    def stop(self):
        rc = self.host.stop()
        check(rc == 0, f"the host exits 0 on SIGTERM (got {rc}; {self.host.stderr()[-3:]})")
        errs = [l for l in self.host.stderr() if "dedup" in l and ("error" in l or "warn" in l)]
        check(not errs, f"dedup logged no error or warning ({errs[:3]})")


def settle(sock, slack_pages=256, deadline_s=300):
    """Wait until page sharing has little left to do: two full passes of the
    scanner that merged, dropped or saw broken fewer than slack_pages pages
    (a guest's kernel keeps changing a few pages, which merge and break
    again). True when it did within the deadline."""
    def changes():
        d = request(sock, {"verb": "dedup"})["dedup"]
        return d["full_scans"], d["merges"] + d["zero_pages"] + d["cow_breaks"]

    def quiet():
        scans, c0 = changes()
        return (wait_for(lambda: changes()[0] >= scans + 2, deadline_s) and
                changes()[1] - c0 < slack_pages)
    return bool(wait_for(quiet, deadline_s, step=0))

