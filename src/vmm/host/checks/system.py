"""The host's devices, tools, sysctls, data dir and subnet: the checks that hold whichever
engine runs the VMs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from vmm.errors import VmmError
from vmm.host.checks import FAIL, OK, WARN, Check

if TYPE_CHECKING:
    from vmm.config import Config
    from vmm.host.checks.probes import Probes

E2FSPROGS = ("mkfs.ext4", "debugfs", "resize2fs", "e2fsck")


def check_config(error: str | None, path: str) -> Check:
    if error:
        return Check(
            "config", FAIL, error, f"fix {path}, or move it away and run 'vmm config init'"
        )
    return Check(
        "config",
        OK,
        f"{path} is valid" if os.path.exists(path) else f"{path}: not present, defaults",
    )


def check_tun(p: Probes, _cfg: Config) -> Check:
    err = p.open_rw_error("/dev/net/tun")
    if err is None:
        return Check("tun", OK, "/dev/net/tun is usable")
    return Check(
        "tun", FAIL, f"/dev/net/tun cannot be opened: {err}", "modprobe tun; run vmm as root"
    )


def check_iproute(p: Probes, _cfg: Config) -> Check:
    if p.which("ip"):
        return Check("iproute2", OK, "ip found")
    return Check("iproute2", FAIL, "ip not found", "apt-get install iproute2")


def check_nft(p: Probes, _cfg: Config) -> Check:
    if not p.which("nft"):
        return Check("nftables", FAIL, "nft not found", "apt-get install nftables")
    rc, out = p.output(["nft", "list", "tables"])
    if rc != 0:
        return Check(
            "nftables",
            FAIL,
            f"nft does not work: {out[-200:]}",
            "run vmm as root; check that the nf_tables module loads",
        )
    return Check("nftables", OK, "nft works")


def check_ip_forward(p: Probes, _cfg: Config) -> Check:
    value = (p.read("/proc/sys/net/ipv4/ip_forward") or "").strip()
    if value == "1":
        return Check("ip_forward", OK, "net.ipv4.ip_forward = 1")
    return Check(
        "ip_forward", WARN, f"net.ipv4.ip_forward = {value or '?'} (vmm sets it to 1 when a VM starts)",
        "nothing to do; to keep it across reboots: echo net.ipv4.ip_forward=1 > /etc/sysctl.d/99-vmm.conf",
    )  # fmt: skip


def check_e2fsprogs(p: Probes, _cfg: Config) -> Check:
    missing = [t for t in E2FSPROGS if not p.which(t)]
    if missing:
        return Check(
            "e2fsprogs", FAIL, f"missing: {', '.join(missing)}", "apt-get install e2fsprogs"
        )
    return Check("e2fsprogs", OK, ", ".join(E2FSPROGS) + " found")


def check_e2tools(p: Probes, _cfg: Config) -> Check:
    if p.which("e2cp"):
        return Check("e2tools", OK, "e2cp found")
    return Check(
        "e2tools",
        WARN,
        "e2cp not found (optional: vmm edits images with debugfs)",
        "apt-get install e2tools",
    )


def check_cgroup2(p: Probes, _cfg: Config) -> Check:
    if p.exists("/sys/fs/cgroup/cgroup.controllers"):
        return Check("cgroup2", OK, "cgroup v2 mounted at /sys/fs/cgroup")
    return Check(
        "cgroup2",
        WARN,
        "cgroup v2 is not mounted at /sys/fs/cgroup (the jailer needs it)",
        "boot with systemd.unified_cgroup_hierarchy=1",
    )


def check_data_dir(p: Probes, cfg: Config) -> Check:
    path = cfg.data_path
    problem = p.dir_problem(path)
    if problem:
        return Check(
            "data_dir",
            FAIL,
            f"{path}: {problem}",
            "run vmm as root, or set data_dir (or VMM_DATA_DIR) to a writable directory",
        )
    if not p.exists(str(path)):
        return Check("data_dir", OK, f"{path} (created on first use)")
    return Check("data_dir", OK, f"{path} is writable")


def check_subnet(p: Probes, cfg: Config) -> Check:
    from vmm.network import ipam

    try:
        routes = p.routes()
    except VmmError as exc:
        return Check("subnet", WARN, f"cannot list routes: {exc.brief}", "install iproute2")
    clash = ipam.overlapping_routes(cfg.subnet, routes, own_dev=cfg.bridge_name)
    if clash:
        return Check(
            "subnet", FAIL, f"{cfg.subnet} overlaps host route(s): {', '.join(str(r) for r in clash)}",
            "set another private subnet and gateway in the config (e.g. 10.123.0.0/16, 10.123.0.1)",
        )  # fmt: skip
    return Check("subnet", OK, f"{cfg.subnet} does not clash with host routes")


# The checks that follow the engines' in the report, in report order.
TOOL_CHECKS: tuple[Callable[[Probes, Config], Check], ...] = (
    check_iproute, check_nft, check_ip_forward, check_e2fsprogs, check_e2tools, check_cgroup2,
    check_data_dir, check_subnet,
)  # fmt: skip
