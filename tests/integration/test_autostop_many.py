"""Host shutdown with many VMs: ``vmm autostop`` stops them all at once, so systemd's
TimeoutStopSec (one VM's escalation plus a margin) holds for 50 VMs as for one; and on a host
that systemd runs, each VM gets a scope of its own (a session's end does not kill it)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import VmmEnv
from tests.integration.test_autostart import fc, lines, vmm  # noqa: F401  (fc is a fixture)
from tests.netns import NetNS
from vmm.autostart import MAX_PARALLEL
from vmm.host.process import in_own_scope

pytestmark = pytest.mark.integration


def test_autostop_stops_more_vms_than_the_start_limit_at_once(fc: VmmEnv, netns: NetNS) -> None:  # noqa: F811
    names = [f"m{i}" for i in range(MAX_PARALLEL + 4)]
    for name in names:
        fc.run("create", name, "--autostart", check=True)
    r = vmm(fc, netns, "autostart", FAKE_FC_IGNORE_CTRL_ALT_DEL="1")
    assert r.returncode == 0, r.stderr
    t0 = time.monotonic()
    stop = vmm(fc, netns, "autostop", "--timeout", "6")
    elapsed = time.monotonic() - t0
    assert stop.returncode == 0, stop.stderr
    assert lines(stop.stdout) == dict.fromkeys(names, "stopped (terminated (SIGTERM))")
    # one round of 6 s graceful waits, not two (MAX_PARALLEL at a time would take >= 12 s)
    assert elapsed < 11, f"{len(names)} stops took {elapsed:.1f} s: not all at once"
    assert netns.pids() == []


def test_each_vm_in_its_own_scope_when_systemd_runs_the_host() -> None:
    argv = ["/usr/bin/qemu-system-x86_64", "-name", "dev"]
    assert in_own_scope(argv, vm_name="dev", systemd_run=None) == argv
    wrapped = in_own_scope(argv, vm_name="dev", systemd_run="/usr/bin/systemd-run")
    assert wrapped[:2] == ["/usr/bin/systemd-run", "--scope"]
    assert "--slice=vmm.slice" in wrapped and "--property=Before=vmm.service" in wrapped
    assert wrapped[wrapped.index("--") + 1 :] == argv  # exec'd as it is: the pid is QEMU's
