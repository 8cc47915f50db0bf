"""vmm doctor's checks from data: fake probes for a healthy host and for each failure."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from vmm.config import Config
from vmm.engines import registry
from vmm.host import doctor
from vmm.host.checks import engines, records
from vmm.host.checks.probes import Probes
from vmm.host.checks.records import Inventory
from vmm.network.iproute import Link, Route

pytestmark = pytest.mark.unit


class FakeProbes(Probes):
    def __init__(self, **overrides: object):
        super().__init__()
        self.kvm: str | None = None
        self.tun: str | None = None
        self.bins = {
            n: f"/usr/bin/{n}"
            for n in (
                "ip",
                "nft",
                "mkfs.ext4",
                "debugfs",
                "resize2fs",
                "e2fsck",
                "e2cp",
                "firecracker",
                "jailer",
                "qemu-system-x86_64",
            )
        }
        self.outputs = {
            "/usr/bin/firecracker --version": (0, "Firecracker v1.11.0\n"),
            "/usr/bin/qemu-system-x86_64 --version": (0, "QEMU emulator version 7.2.22"),
            "nft list tables": (0, ""),
        }
        self.files = {
            "/proc/sys/net/ipv4/ip_forward": "1\n",
            "/sys/fs/cgroup/cgroup.controllers": "cpu",
        }
        self.route_list: list[Route] = [
            Route(None, "eth0"),
            Route(IPv4Network("10.0.0.0/24"), "eth0"),
        ]
        self.link_list: list[Link] = []
        self.dir_err: str | None = None
        self.__dict__.update(overrides)

    def kvm_unusable_reason(self) -> str | None:
        return self.kvm

    def open_rw_error(self, path: str) -> str | None:
        return self.tun

    def which(self, name: str) -> str | None:
        return self.bins.get(name)

    def executable(self, path: str) -> bool:
        return path in self.bins.values()

    def output(self, argv: list[str]) -> tuple[int, str]:
        return self.outputs.get(" ".join(argv), (127, "not found"))

    def read(self, path: str) -> str | None:
        return self.files.get(path)

    def exists(self, path: str) -> bool:
        return path in self.files

    def dir_problem(self, path: Path) -> str | None:
        return self.dir_err

    def routes(self) -> list[Route]:
        return self.route_list

    def links(self) -> list[Link]:
        return self.link_list


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def run(
    probes: FakeProbes, tmp_path: Path, error: str | None = None, **cfg: object
) -> dict[str, doctor.Check]:
    config = Config(path=tmp_path / "config.json", data_dir=str(tmp_path / "data"), **cfg)  # type: ignore[arg-type]
    return by_name(doctor.run_checks(config, error, probes))


def test_healthy(tmp_path: Path) -> None:
    checks = run(FakeProbes(), tmp_path)
    assert {c.status for c in checks.values()} == {"ok"}, [
        c for c in checks.values() if c.status != "ok"
    ]
    assert doctor.healthy(list(checks.values()))
    assert "v1.11.0" in checks["firecracker"].message


@pytest.mark.parametrize(
    ("overrides", "cfg", "name", "status", "text"),
    [
        ({"kvm": "/dev/kvm does not exist"}, {}, "kvm", "fail", "needs KVM"),
        ({"kvm": "kvm_pvm"}, {"engine": "qemu"}, "kvm", "warn", "TCG"),
        ({"tun": "No such device"}, {}, "tun", "fail", "No such device"),
        ({"bins": {}}, {}, "firecracker", "fail", "not found"),
        ({"bins": {}}, {"engine": "qemu"}, "qemu", "fail", "not found"),
        ({"bins": {}}, {}, "nftables", "fail", "nft not found"),
        ({"bins": {}}, {}, "e2fsprogs", "fail", "mkfs.ext4"),
        ({"bins": {}}, {}, "jailer", "warn", "not found"),
        (
            {"outputs": {"/usr/bin/firecracker --version": (0, "Firecracker v1.10.1")}},
            {},
            "firecracker",
            "warn",
            "v1.11.x",
        ),
        (
            {"outputs": {"nft list tables": (1, "Operation not permitted")}},
            {},
            "nftables",
            "fail",
            "not permitted",
        ),
        ({"files": {"/proc/sys/net/ipv4/ip_forward": "0\n"}}, {}, "ip_forward", "warn", "= 0"),
        ({"files": {"/proc/sys/net/ipv4/ip_forward": "1\n"}}, {}, "cgroup2", "warn", "not mounted"),
        (
            {"dir_err": "cannot write in /x: Read-only file system"},
            {},
            "data_dir",
            "fail",
            "Read-only",
        ),
        ({"route_list": [Route(IPv4Network("172.16.5.0/24"), "wg0")]}, {}, "subnet", "fail", "wg0"),
    ],
)
def test_each_failure(
    tmp_path: Path,
    overrides: dict[str, object],
    cfg: dict[str, object],
    name: str,
    status: str,
    text: str,
) -> None:
    c = run(FakeProbes(**overrides), tmp_path, **cfg)[name]
    assert c.status == status and text in c.message and (c.hint or status == "ok")


def test_missing_firecracker_is_only_a_warning_for_qemu(tmp_path: Path) -> None:
    bins = {
        n: f"/usr/bin/{n}"
        for n in ("ip", "nft", "mkfs.ext4", "debugfs", "resize2fs", "e2fsck", "qemu-system-x86_64")
    }
    checks = run(FakeProbes(bins=bins, kvm="kvm_pvm"), tmp_path, engine="qemu")
    assert checks["firecracker"].status == "warn"
    assert doctor.healthy(list(checks.values()))


def test_corrupt_config_is_reported(tmp_path: Path) -> None:
    checks = run(FakeProbes(), tmp_path, error="config x is not valid JSON")
    assert checks["config"].status == "fail" and "not valid JSON" in checks["config"].message


def test_bridge_route_is_not_a_clash(tmp_path: Path) -> None:
    probes = FakeProbes(route_list=[Route(IPv4Network("172.16.0.0/16"), "vmm-br0")])
    assert run(probes, tmp_path)["subnet"].status == "ok"


def test_orphan_taps_from_data() -> None:
    inv = Inventory(
        names=("a",),
        taps=frozenset({"vmm-aaaaaaaa"}),
        alive=frozenset(),
        corrupt=(),
        tmp_files=(),
        dirs_without_record=(),
        sockets=(),
    )
    links = [
        Link("vmm-aaaaaaaa", 3, kind="tun", tun_type="tap"),
        Link("vmm-bbbbbbbb", 4, kind="tun", tun_type="tap"),
        Link("vmm-br0", 2, kind="bridge"),
        Link("vmm-cccccccc", 5, kind="veth"),  # not a TAP: not ours to remove
    ]
    assert records.orphan_taps(links, inv) == ["vmm-bbbbbbbb"]


def test_leftovers_in_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "vms" / "gone").mkdir(parents=True)
    (data / "vms" / ".x.json.12.tmp").write_text("{")
    (data / "vms" / "bad.json").write_text("{not json")
    (data / "vms" / "bad.json").write_text('{"tap": "vmm-12345678", ')
    checks = run(
        FakeProbes(link_list=[Link("vmm-12345678", 3, kind="tun", tun_type="tap")]), tmp_path
    )
    assert checks["taps"].status == "ok"  # named by the corrupt record: not an orphan
    assert (
        checks["record bad"].status == "warn" and "vmm delete -f bad" in checks["record bad"].hint
    )
    tmp_file, gone = data / "vms" / ".x.json.12.tmp", data / "vms" / "gone"
    assert sorted(checks["records"].leftovers) == sorted([str(tmp_file), str(gone)])
    done = doctor.fix([checks["records"]], FakeProbes().runner)
    # each one removed (two "could not remove" lines would be two lines too)
    assert sorted(done) == sorted([f"removed {tmp_file}", f"removed {gone}"])
    assert not tmp_file.exists() and not gone.exists()
    assert sorted(p.name for p in (data / "vms").iterdir()) == ["bad.json"]  # corrupt records stay


def test_a_broken_probe_is_reported_not_raised(tmp_path: Path) -> None:
    class Broken(FakeProbes):
        def routes(self) -> list[Route]:
            raise RuntimeError("boom")

    c = run(Broken(), tmp_path)["subnet"]
    assert c.status == "fail" and "boom" in c.message


def test_every_engine_has_its_checks() -> None:
    # a third engine in the registry needs a row in the doctor's per-engine table
    assert set(engines.ENGINE_CHECKS) == set(registry.names())


def test_engine_checks_follow_the_registry(tmp_path: Path) -> None:
    names = list(run(FakeProbes(), tmp_path))
    engine_part = names[names.index("tun") + 1 : names.index("iproute2")]
    assert engine_part == ["firecracker", "jailer", "qemu"]


def test_configured_binaries_come_from_the_engines_settings(tmp_path: Path) -> None:
    probes = FakeProbes()
    probes.bins["fc"] = "/opt/fc/firecracker"
    del probes.bins["jailer"]  # not on PATH: found beside the configured firecracker
    probes.bins["opt-jailer"] = "/opt/fc/jailer"
    probes.bins["qemu"] = "/opt/qemu/bin/qemu-system-x86_64"
    probes.outputs["/opt/fc/firecracker --version"] = (0, "Firecracker v1.11.0")
    probes.outputs["/opt/qemu/bin/qemu-system-x86_64 --version"] = (0, "QEMU emulator version 9.0.0")
    checks = run(
        probes,
        tmp_path,
        firecracker_bin="/opt/fc/firecracker",
        qemu_bin="/opt/qemu/bin/qemu-system-x86_64",
    )
    assert checks["firecracker"].message == "/opt/fc/firecracker v1.11.0"
    assert checks["jailer"].message == "/opt/fc/jailer"
    assert checks["qemu"].message == "/opt/qemu/bin/qemu-system-x86_64 9.0.0"
    missing = run(FakeProbes(bins={}), tmp_path, firecracker_bin="/nowhere/fc")["firecracker"]
    assert missing.message == "not found: firecracker_bin '/nowhere/fc'"


def test_kvm_missing_names_the_engines_that_emulate(tmp_path: Path) -> None:
    c = run(FakeProbes(kvm="/dev/kvm does not exist"), tmp_path)["kvm"]
    assert c.message == "/dev/kvm does not exist: the firecracker engine needs KVM"
    assert c.hint.endswith("or use engine 'qemu' (it runs guests under TCG without KVM)")
    q = run(FakeProbes(kvm="kvm_pvm"), tmp_path, engine="qemu")["kvm"]
    assert (q.message, q.hint) == ("kvm_pvm: QEMU guests run under TCG (slower)", "nothing to do for engine qemu")
