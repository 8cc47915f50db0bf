"""Property-based tests: what host programs and /proc tell vmm (``ip -j``, ``nft -j``,
``/proc/net/*``, ``/proc/<pid>/stat``, /proc/cpuinfo, Firecracker's API, QEMU's QMP).

Whatever the output — any JSON value, wrong types, missing keys, deep nesting, garbage — the
parsers return well-formed values or raise a ``VmmError`` subclass, never another exception.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmm.engines.firecracker.api import FirecrackerApi
from vmm.engines.firecracker.engine import parse_version
from vmm.engines.qemu.accel import parse_cpuinfo_tsc_khz
from vmm.engines.qemu.qmp import QmpClient
from vmm.errors import VmmError
from vmm.host import listeners, liveness
from vmm.network import coexist, firewall, iproute
from vmm.runner import RecordingRunner, Result
from vmm.services import netreport as report

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=int(os.environ.get("VMM_FUZZ_EXAMPLES") or 200), deadline=None, database=None)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=16),
    st.sampled_from(["", "tun", "tap", "bridge", "inet", "inet6", "UP", "default", "10.0.0.0/8",
                     "10.0.0.1", "24", "forward", "drop", "ip", "inet", "vmm", "DOCKER-USER"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "[" + "1" * 5000 + "]"


def objects(keys: list[str], values: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects with (mostly) the keys a parser looks for, holding any JSON value."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), values, max_size=len(keys) + 1)


def texts(items: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    """Program output: a JSON list of ``items``, any JSON value, or any text."""
    return st.one_of(st.lists(items, max_size=4).map(json.dumps), json_values.map(json.dumps), st.text())


# -- ip -j ----------------------------------------------------------------------------

linkinfo = objects(["info_kind", "info_data"], json_values | objects(["type"]))
link_items = objects(
    ["ifname", "ifindex", "linkinfo", "master", "flags", "operstate", "address"],
    json_values | linkinfo,
)
route_items = objects(["dst", "gateway", "dev", "type"])
addr_info = objects(["family", "local", "prefixlen"])
addr_items = objects(["ifname", "addr_info"], json_values | st.lists(addr_info | json_values, max_size=3))


@FUZZ
@given(texts(link_items))
@example(DEEP)
@example(HUGE_INT)
@example('[{"ifname": "a", "ifindex": 1, "linkinfo": "tun"}]')
@example('[{"ifname": "a", "ifindex": 1, "linkinfo": {"info_kind": "tun", "info_data": "x"}}]')
@example('[{"ifname": "a", "ifindex": 1, "flags": 5}]')
@example('[{"ifname": "a", "ifindex": 1e400}]')
def test_parse_links(text: str) -> None:
    try:
        out = iproute.parse_links(text)
    except VmmError:
        return
    for link in out:
        assert isinstance(link.name, str) and isinstance(link.ifindex, int)
        assert all(isinstance(f, str) for f in link.flags)
        assert link.kind is None or isinstance(link.kind, str)


@FUZZ
@given(texts(route_items))
@example(DEEP)
@example('[{"dst": "10.0.0.0/8", "gateway": {"a": 1}}]')
def test_parse_routes(text: str) -> None:
    try:
        out = iproute.parse_routes(text)
    except VmmError:
        return
    assert all(isinstance(r, iproute.Route) and (r.dev is None or isinstance(r.dev, str)) for r in out)


@FUZZ
@given(texts(addr_items))
@example(DEEP)
@example('[{"ifname": "a", "addr_info": 5}]')
@example('[{"ifname": "a", "addr_info": ["x"]}]')
@example('[{"ifname": "a", "addr_info": [{"family": "inet", "local": [], "prefixlen": 8}]}]')
def test_parse_addresses(text: str) -> None:
    try:
        out = iproute.parse_addresses(text)
    except VmmError:
        return
    assert all(isinstance(k, str) and isinstance(v, list) for k, v in out.items())


# -- nft -j ----------------------------------------------------------------------------

chain_or_rule = objects(["family", "table", "name", "chain", "hook", "policy", "comment", "handle", "expr"])
nft_items = objects(["chain", "rule", "table"], json_values | chain_or_rule)
nft_texts = st.one_of(
    st.lists(nft_items, max_size=4).map(lambda items: json.dumps({"nftables": items})),
    texts(nft_items),
)


class _Runner(RecordingRunner):
    """Every command succeeds with ``stdout``; no iptables (the nft paths are the parsers)."""

    def __init__(self, stdout: str):
        super().__init__()
        self.stdout = stdout

    def run(self, argv: Any, **kwargs: Any) -> Result:
        super().run(argv, **kwargs)
        return Result([str(a) for a in argv], 0, self.stdout, "")

    def which(self, name: str) -> str | None:
        return None


def _docker_user(extra: dict[str, Any]) -> str:
    chain = {"family": "ip", "table": "filter", "name": "DOCKER-USER"}
    return json.dumps({"nftables": [{"chain": chain}, {"rule": {**chain, "chain": "DOCKER-USER",
                                                                "comment": "vmm", **extra}}]})


@FUZZ
@given(nft_texts)
@example(DEEP)
@example(HUGE_INT)
@example('{"nftables": [{"chain": {"name": "DOCKER-USER", "family": "ip"}}]}')  # no table
@example(_docker_user({"handle": "x"}))
@example(_docker_user({}))  # a rule without a handle
def test_coexist_nft(text: str) -> None:
    runner = _Runner(text)
    try:
        status = coexist.forward_status(runner, "vmm-br0")
        coexist.diagnose(status, "vmm-br0")
        coexist.remove_docker_user_rules(runner, "vmm-br0")
    except VmmError:
        return
    assert all(isinstance(b, coexist.ForwardBlocker) for b in status.blockers)


@pytest.mark.parametrize(
    "text",
    [
        DEEP,
        HUGE_INT,
        '{"nftables": [{"table": "vmm"}]}',
        '{"nftables": [{"chain": {"family": "ip", "table": "vmm"}}]}',
        '{"nftables": [{"rule": {"family": "ip", "table": "vmm"}}]}',
        '{"nftables": [{"chain": {"family": "ip", "table": "vmm", "name": []}}]}',
    ],
    ids=["deep", "digits", "table-not-object", "chain-no-name", "rule-no-chain", "name-unhashable"],
)
def test_firewall_nft(text: str) -> None:
    runner = _Runner(text)
    try:
        firewall.table_exists(runner)
        firewall.summarize(firewall.current(runner))
    except VmmError:
        pass


@FUZZ
@given(st.lists(nft_items, max_size=4))
@example([{"chain": {"family": "ip", "table": "vmm", "name": "prerouting"}},
          {"rule": {"family": "ip", "table": "vmm", "chain": "prerouting", "expr": 5}}])
def test_firewall_summary_and_report(items: list[dict[str, Any]]) -> None:
    """What ``vmm network show`` makes of ``nft -j list table ip vmm`` (bad objects: see the
    xfail above, left out here)."""
    items = [
        i for i in items
        if not (isinstance(i.get("chain"), dict) and not isinstance(i["chain"].get("name"), str))
        and not (isinstance(i.get("rule"), dict) and not isinstance(i["rule"].get("chain"), str))
    ]
    data = {"nftables": items}
    chains = firewall.summarize(data)
    assert all(isinstance(c["rules"], list) for c in chains.values())
    assert report._dnat_count(data) >= 0
    assert report._has_masquerade(data) in (True, False)


# -- /proc -----------------------------------------------------------------------------

PROC_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
proc_cols = st.sampled_from([
    "0:", "0100007F:1F90", "00000000:0050", "00000000000000000000000000000000:0016", "0A", "07",
    "00000000:00000000", "00:00000000", "00000000", "0", "12345", "zz:zz", "1" * 40 + ":1", ":", "",
    "0100007F:" + "F" * 5000, "²", "-1",
]) | st.text(max_size=10)


@FUZZ
@given(
    st.lists(st.lists(proc_cols, min_size=8, max_size=14).map(" ".join), max_size=5).map("\n".join),
    st.sampled_from(["tcp", "udp"]),
)
def test_parse_proc_net(body: str, proto: str) -> None:
    for listener in listeners.parse_proc_net(PROC_HEADER + body, proto):
        assert isinstance(listener.port, int) and listener.port > 0 and isinstance(listener.addr, str)


@FUZZ
@given(st.binary(max_size=300) | st.lists(st.sampled_from(
    [b"1234", b" (", b")", b"\xff", b" ", b"R", b"Z", b"0", b"-1", b"\xd9\xa8", b"99999"]
), max_size=40).map(b"".join))
def test_parse_stat(raw: bytes) -> None:
    fields = liveness.parse_stat(raw)
    assert all(isinstance(f, str) for f in fields)
    start = liveness.start_time_in(fields)
    assert start is None or (isinstance(start, int) and start >= 0)


def test_liveness_with_a_command_name_that_is_not_utf8() -> None:
    """Any process may name itself with bytes that are not UTF-8 (prctl PR_SET_NAME): a pid
    that is reused by one must not crash ``vmm list`` (read_text() raised UnicodeDecodeError)."""
    code = (
        "import ctypes, sys, time; ctypes.CDLL(None).prctl(15, b'\\xff\\xfe) x 1 2', 0, 0, 0);"
        "print('ready', flush=True); time.sleep(30)"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            with open(f"/proc/{proc.pid}/stat", "rb") as f:
                assert b"\xff" in f.read()
            start = liveness.start_time_of(proc.pid)
            assert isinstance(start, int)
            assert liveness.is_alive(liveness.ProcessRef(proc.pid, start))
            assert not liveness.is_alive(liveness.ProcessRef(proc.pid, start + 1))
        finally:
            proc.kill()


def test_liveness_with_an_impossible_pid() -> None:
    """A record's pid of 10**300 is no process (its /proc path is too long: ENAMETOOLONG)."""
    assert liveness.start_time_of(10**300) is None
    assert not liveness.is_alive(liveness.ProcessRef(10**300, 1))


@FUZZ
@given(st.lists(st.sampled_from(["cpu MHz\t\t: ", "2400.000", "1e9", "0", "\n", "9" * 400, ".5", "x"])
                | st.text(max_size=20), max_size=8).map("".join))
@example("cpu MHz : " + "9" * 400 + "\n")  # float('9'*400) is finite; '9'*400 * 1000 is too
def test_parse_cpuinfo(text: str) -> None:
    khz = parse_cpuinfo_tsc_khz(text)
    assert khz is None or (isinstance(khz, int) and khz > 0)


@FUZZ
@given(st.text() | st.sampled_from(["Firecracker v1.11.0", "Firecracker v1.11.0-dev\n", "Firecracker v"]))
def test_parse_firecracker_version(text: str) -> None:
    v = parse_version(text)
    assert v is None or v[0].isdigit()


# -- hypervisor answers -------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
@example(DEEP.encode())
@example(HUGE_INT.encode())
@example(b"\xff\xfe")
def test_firecracker_api_answers(raw: bytes) -> None:
    with contextlib.suppress(VmmError):
        assert isinstance(FirecrackerApi._decode_object("GET", "/", raw), dict)
    assert isinstance(FirecrackerApi._fault_message(raw), str)


class _QmpFile:
    """The client's end of a QMP socket: canned lines to read, writes dropped."""

    def __init__(self, lines: bytes):
        self._in = io.BytesIO(lines)

    def readline(self, limit: int = -1) -> bytes:
        return self._in.readline(limit)

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


qmp_replies = st.one_of(
    objects(["return", "error", "event", "id"], json_values | objects(["class", "desc"])).map(
        lambda d: {**d, "id": 1} if "id" not in d else d
    ),
    json_values,
)


@FUZZ
@given(st.lists(qmp_replies.map(json.dumps), max_size=3).map(lambda lines: "\n".join(lines) + "\n") | st.text())
@example(DEEP + "\n")
@example('{"id": 1, "error": "boom"}\n')
@example('{"id": 1, "error": ["x"]}\n')
def test_qmp_answers(lines: str) -> None:
    client = QmpClient(os.devnull)  # type: ignore[arg-type]
    client._file = _QmpFile(lines.encode(errors="surrogateescape"))  # type: ignore[assignment]
    with contextlib.suppress(VmmError):
        client.execute("query-status")
