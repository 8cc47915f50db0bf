"""Property-based tests: what a user types (port forwards, mounts, addresses, names, sources).

Every parser of outside input either returns a well-formed value or raises a ``VmmError``
subclass — never ``ValueError``, ``IndexError``, ``OSError`` or another exception.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vmm.errors import ConflictError, ValidationError, VmmError
from vmm.guest import customize, mounts, sources
from vmm.models import (
    MAX_CPUS,
    PortForward,
    validate_cpus,
    validate_disk,
    validate_dns_servers,
    validate_memory,
    validate_name,
)
from vmm.network import ipam, links
from vmm.network.forwards import find, parse_key, parse_spec

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=int(os.environ.get("VMM_FUZZ_EXAMPLES") or 200), deadline=None, database=None)

# Characters that matter to these parsers, plus the ones that break naive code: non-ASCII
# digits ('²' passes str.isdigit() but not int()), NUL, newlines, surrogate escapes (argv
# bytes that are not UTF-8), and a digit run past Python's int-conversion limit.
TRICKY = [
    *"0123456789:/.-_ ", "\t", "\n", "\0", "²", "٨", "\udcff", "é", "~",
    "tcp", "udp", "TCP", "ro", "rw", "oci", "docker", "docker-archive", "oci-archive",
    "127.0.0.1", "0.0.0.0", "255.255.255.255", "65535", "65536", "00080", "1" * 5000, "/" + "a" * 300,
]
tricky_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(["\udcff", "\udc80"])),
    st.lists(st.sampled_from(TRICKY), max_size=12).map("".join),
)


def _one_line(exc: VmmError) -> None:
    assert isinstance(exc, VmmError)
    assert "\n" not in exc.brief, exc.brief


# -- port forwards ---------------------------------------------------------------------


@FUZZ
@given(tricky_text)
@example("²:80")  # str.isdigit() is true for '²', int() refuses it
@example("80:" + "1" * 5000)  # past int()'s 4300-digit limit
def test_parse_spec(spec: str) -> None:
    try:
        fwd = parse_spec(spec)
    except ValidationError as exc:
        _one_line(exc)
        return
    assert 1 <= fwd.host_port <= 65535 and 1 <= fwd.guest_port <= 65535
    assert fwd.proto in ("tcp", "udp")
    assert fwd.host_addr is None or fwd.host_addr.count(".") == 3
    assert parse_spec(f"{fwd.host_addr + ':' if fwd.host_addr else ''}{fwd.host_port}:"
                      f"{fwd.guest_port}/{fwd.proto}") == fwd


@FUZZ
@given(tricky_text)
@example("²")
@example("1" * 5000)
def test_parse_key(key: str) -> None:
    try:
        addr, port, proto = parse_key(key)
    except ValidationError as exc:
        _one_line(exc)
        return
    assert 1 <= port <= 65535 and proto in (None, "tcp", "udp")
    assert addr is None or addr.count(".") == 3


@FUZZ
@given(
    st.lists(
        st.builds(
            PortForward,
            st.integers(1, 65535),
            st.integers(1, 65535),
            st.sampled_from(["tcp", "udp"]),
            st.sampled_from([None, "127.0.0.1", "10.0.0.1"]),
        ),
        max_size=5,
    ),
    tricky_text,
)
def test_find(forwards: list[PortForward], key: str) -> None:
    try:
        assert find(forwards, key) in forwards
    except VmmError as exc:
        _one_line(exc)


# -- mounts ----------------------------------------------------------------------------


@FUZZ
@given(tricky_text)
def test_parse_mount_spec(spec: str) -> None:
    try:
        m = mounts.parse_mount_spec(spec)
    except ValidationError:
        return
    assert m.host_path.startswith("/") and m.tag and len(m.label or "") <= mounts.LABEL_MAX


@FUZZ
@given(st.lists(tricky_text, max_size=3))
@example(["/" + "a" * 300 + ":tag"])  # ENAMETOOLONG from stat()
@example(["/" + "a/" * 3000 + ":tag"])  # a path past PATH_MAX
@example(["/tmp\0x:tag"])
def test_parse_mounts(specs: list[str]) -> None:
    try:
        out = mounts.parse_mounts(specs, vm_name="vm", mounts_dir=Path("/nonexistent/mounts"))
    except ValidationError:
        return
    assert len({m.tag for m in out}) == len(out)
    assert all(os.path.isdir(m.host_path) for m in out)


# -- addresses, names, sizes ----------------------------------------------------------


@FUZZ
@given(tricky_text, tricky_text)
@example("10.0.0.0/8", "10.0.0.1")
def test_validate_network(subnet: str, gateway: str) -> None:
    try:
        net, gw = ipam.validate_network(subnet, gateway)
    except ValidationError:
        return
    assert gw in net and ipam.MIN_PREFIX <= net.prefixlen <= ipam.MAX_PREFIX


@FUZZ
@given(tricky_text, st.lists(tricky_text, max_size=3), st.none() | tricky_text)
def test_allocate(gateway: str, used: list[str], requested: str | None) -> None:
    try:
        ip = ipam.allocate("172.16.0.0/24", gateway, used, requested)
    except (ValidationError, ConflictError):
        return
    assert str(ip).startswith("172.16.0.")


@FUZZ
@given(tricky_text | st.integers())
def test_parse_address_and_mac(text: str | int) -> None:
    try:
        ip = ipam.parse_address(text)  # type: ignore[arg-type]
    except ValidationError:
        return
    assert len(ipam.mac_for(ip)) == 17


@FUZZ
@given(st.one_of(tricky_text, st.integers(), st.none(), st.booleans(), st.floats()))
def test_validate_names_and_interfaces(value: object) -> None:
    for check in (validate_name, links.validate_ifname, links.validate_tap_name, links.tap_name):
        try:
            out = check(value)  # type: ignore[arg-type]
        except ValidationError:
            continue
        assert isinstance(out, str) and "\n" not in out, (check.__name__, out)


@pytest.mark.parametrize("name", ["eth0\n", "br0\n"])
def test_ifname_rejects_a_trailing_newline(name: str) -> None:
    """``$`` matches before a final newline: ``re.match(r"^...$")`` let "eth0\\n" through."""
    with pytest.raises(ValidationError):
        links.validate_ifname(name)
    with pytest.raises(ValidationError):
        links.validate_tap_name("vmm-abcd1234\n")
    with pytest.raises(ValidationError):
        links.tap_name("abcd1234\n")


@FUZZ
@given(st.one_of(st.integers(), st.booleans(), st.floats(), st.none(), tricky_text))
def test_validate_sizes(value: object) -> None:
    for check in (validate_cpus, validate_memory, validate_disk):
        try:
            out = check(value)  # type: ignore[arg-type]
        except ValidationError:
            continue
        assert isinstance(out, int) and not isinstance(out, bool) and out >= 1
    with contextlib.suppress(ValidationError):
        assert validate_cpus(value) <= MAX_CPUS  # type: ignore[arg-type]


@FUZZ
@given(st.lists(tricky_text, max_size=4))
def test_validate_dns_servers(servers: list[str]) -> None:
    try:
        out = validate_dns_servers(servers)
    except ValidationError:
        return
    assert out and all(s.count(".") == 3 for s in out)


@FUZZ
@given(tricky_text, st.integers(0, 30))
def test_validate_boot_args(extra: str, n_mounts: int) -> None:
    try:
        out = customize.validate_boot_args(extra, mounts=n_mounts)
    except ValidationError:
        return
    assert all(" " <= c <= "~" for c in out) and "root=" not in out.split()


# -- image sources ---------------------------------------------------------------------

_SCRATCH = Path(tempfile.mkdtemp(prefix="vmm-fuzz-sources-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
(_SCRATCH / "dir").mkdir(exist_ok=True)
(_SCRATCH / "file.tar").write_bytes(b"\0" * 1024)
SOURCE_PARTS = [
    *TRICKY, str(_SCRATCH), str(_SCRATCH / "dir"), str(_SCRATCH / "file.tar"), "oci:",
    "oci-archive:", "docker://", "docker-archive:", "debian:bookworm", "://", "@sha256:",
]


@settings(FUZZ, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tricky_text, st.lists(st.sampled_from(SOURCE_PARTS), max_size=5).map("".join)))
@example("oci:/" + "a" * 300)
def test_parse_source(text: str) -> None:
    try:
        src = sources.parse_source(text)
    except ValidationError:
        return
    assert src.kind in ("dir", "ext4", "tar", "squashfs", *sources.SCHEMES)
