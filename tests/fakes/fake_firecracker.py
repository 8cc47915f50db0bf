#!/usr/bin/env python3
"""A fake ``firecracker`` v1.11 for vmm's tests: the real CLI and API, and no VM behind them.

It serves the v1.11 API over HTTP/1.1 on the ``--api-sock`` Unix socket, validates every body
against the official spec (``fc_spec``), keeps the Not started -> Running (-> Paused) state
machine and answers like Firecracker: 204 for a successful PUT/PATCH, 200 + JSON for a GET,
400 + ``{"fault_message": ...}`` for anything rejected, including unknown paths and methods.
Where Firecracker's own wording is known (docs/firecracker.md, API conventions; api_server/
parsed_request.rs) the fault messages are exact; resource errors are close paraphrases.

Snapshots as in docs/firecracker.md, Snapshots: ``PUT /snapshot/create`` only while Paused
(the "memory file" is a JSON header, 4 MiB of written zeros and a hole up to the memory size;
the state file holds the configuration as JSON), ``PUT /snapshot/load`` only on a process where
nothing but the logger and metrics were configured, re-opening the drives and TAPs the snapshot
names; a failed load ends the process, as Firecracker's does.

Like the real one it opens kernel, initrd, drives and the logger file at PUT time, prints the
"guest" console to stdout on InstanceStart, exits 0 on SendCtrlAltDel, dies at once on SIGTERM,
and never deletes its API socket. It does not open TAP devices (the process tests run without
root networking); it checks only what Firecracker checks before opening them.

Knobs (environment variables) for failure tests:

  FAKE_FC_CRASH_AT_STARTUP=N       print an error and exit with code N before opening the socket
  FAKE_FC_STARTUP_DELAY=SECONDS    sleep this long before opening the socket
  FAKE_FC_IGNORE_CTRL_ALT_DEL=1    accept SendCtrlAltDel (204) but keep running (guest ignores it)
  FAKE_FC_IGNORE_SIGTERM=1         ignore SIGTERM, so only SIGKILL ends the process
  FAKE_FC_GUEST_PANIC_AFTER=SECONDS  the "guest" panics this long after InstanceStart; with
                                   panic=1 reboot=k that ends Firecracker (exit 0), as a guest
                                   that cannot mount its root filesystem does
  FAKE_FC_RECORD=PATH              append one JSON line per API request (method, path, body,
                                   status, response) to PATH
  FAKE_FC_SNAPSHOT_CREATE_FAIL=1   PUT /snapshot/create writes half of its files, then fails
                                   ("No space left on device"), as a full disk does
  FAKE_FC_LOAD_FAIL=1              PUT /snapshot/load fails; like Firecracker the process then
                                   exits (code 1) right after answering
  FAKE_FC_CHECK_TAP=0              do not require /sys/class/net/<host_dev_name> to exist (real
                                   Firecracker opens the TAP at PUT /network-interfaces and fails
                                   when it is missing; only tests of the process alone turn this off)

Test-only: never installed, never used outside tests/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import resource
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fc_spec  # this directory is not a package: the fake runs as a script

VERSION = fc_spec.FIRECRACKER_VERSION
CMDLINE_MAX_SIZE = 2048  # x86_64, including what Firecracker appends
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
ENOENT = "No such file or directory (os error 2)"

ONLY_BEFORE_BOOT = "The requested operation is not supported after starting the microVM."
ONLY_AFTER_BOOT = "The requested operation is not supported before starting the microVM."
LOAD_AFTER_CONFIG = (
    "Loading a microVM snapshot not allowed after configuring boot-specific resources."
)
MiB = 1024 * 1024
SERDE = "An error occurred when deserializing the json body of a request: {}."


class Fault(Exception):
    """A request Firecracker answers with 400 and this fault_message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class Exit(Exception):
    pass


def _os_error(exc: OSError) -> str:
    return f"{exc.strerror} (os error {exc.errno})"


def _check_id(tokens: list[str]) -> str:
    if not tokens or tokens[0] == "":
        raise Fault("The ID cannot be empty.")
    if not all(c == "_" or c.isalnum() for c in tokens[0]):
        raise Fault("API Resource IDs can only contain alphanumeric characters and underscores.")
    return tokens[0]


class FakeVmm:
    """The VMM state and the request handlers; one lock serialises them like Firecracker's
    single VMM thread does."""

    def __init__(self, instance_id: str, validator: fc_spec.SpecValidator):
        self.id = instance_id
        self.validator = validator
        self.lock = threading.Lock()
        self.state = "Not started"
        self.exit_code: int | None = None
        self.boot_source: dict[str, Any] | None = None
        self.machine_config: dict[str, Any] = {
            "vcpu_count": 1,
            "mem_size_mib": 128,
            "smt": False,
            "track_dirty_pages": False,
            "huge_pages": "None",
        }
        self.drives: list[dict[str, Any]] = []
        self.nets: list[dict[str, Any]] = []
        self.vsock: dict[str, Any] | None = None
        self.entropy: dict[str, Any] | None = None
        self.mmds_config: dict[str, Any] | None = None
        self.mmds: dict[str, Any] | None = None
        self.metrics_path: str | None = None
        self.log_path: str | None = None
        self.record_path = os.environ.get("FAKE_FC_RECORD")
        self._sockets: list[Any] = []
        # A boot-specific resource was configured: a snapshot can no longer be loaded.
        self.boot_configured = False

    # -- logging ------------------------------------------------------------------------------

    def log(self, message: str, level: str = "INFO") -> None:
        if self.log_path is None:
            return
        stamp = datetime.datetime.now().isoformat(timespec="microseconds")
        with contextlib.suppress(OSError), open(self.log_path, "a") as f:
            f.write(f"{stamp} [{self.id}:fc_api] {level} {message}\n")

    def record(self, entry: dict[str, Any]) -> None:
        if self.record_path:
            with open(self.record_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    # -- HTTP entry point ---------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: bytes | None) -> tuple[int, Any]:
        path = urlsplit(raw_path).path
        with self.lock:
            try:
                status, payload = 200, self.route(method, path, body)
                if payload is None:
                    status = 204
                    self.log("The request was executed successfully. Status code: 204 No Content.")
            except Fault as fault:
                status, payload = fault.status, {"fault_message": fault.message}
                self.log(
                    f"Received Error. Status code: 400 Bad Request. Message: {fault.message}",
                    "ERROR",
                )
            decoded: Any = None
            if body is not None:
                try:
                    decoded = json.loads(body)
                except ValueError:
                    decoded = body.decode(errors="replace")
            self.record(
                {
                    "method": method,
                    "path": path,
                    "body": decoded,
                    "status": status,
                    "response": payload,
                }
            )
            return status, payload

    def route(self, method: str, path: str, body: bytes | None) -> Any:
        # Firecracker routes on the first path segment (parsed_request.rs), and so do we.
        tokens = path.lstrip("/").split("/")
        if tokens and tokens[-1] == "" and len(tokens) > 1:
            tokens.pop()  # Rust's split_terminator drops one trailing empty piece
        first, rest = (tokens[0] if tokens else ""), tokens[1:]
        self.log(f'The API server received a {method.capitalize()} request on "{path}".')
        if method == "GET" and body is None:
            if first == "":
                return self.instance_info()
            if first == "version":
                return {"firecracker_version": VERSION}
            if first == "vm" and rest[:1] == ["config"]:
                return self.full_config()
            if first == "machine-config":
                return dict(self.machine_config)
            if first == "mmds":
                return self.mmds if self.mmds is not None else {}
            if first == "balloon":
                raise Fault("The fake firecracker does not implement the balloon device.")
        if method == "GET" and body is not None:
            raise Fault("GET request cannot have a body.")
        if method == "PUT" and body is not None:
            handler = PUT_ROUTES.get(first)
            if handler is not None:
                result = handler(self, body, rest)
                if first in BOOT_SPECIFIC or (first == "mmds" and rest[:1] == ["config"]):
                    self.boot_configured = True
                return result
        if method == "PUT" and body is None:
            raise Fault("Empty PUT request.")
        if method == "PATCH" and first == "balloon":
            raise Fault("The fake firecracker does not implement the balloon device.")
        if method == "PATCH" and body is not None:
            handler = PATCH_ROUTES.get(first)
            if handler is not None:
                result = handler(self, body, rest)
                if first == "machine-config":
                    self.boot_configured = True
                return result
        if method == "PATCH" and body is None:
            raise Fault("Empty PATCH request.")
        raise Fault(f"Invalid request method and/or path: {method} {first}.")

    # -- parsing (Firecracker's API thread: serde, ids) ---------------------------------------

    def parse(self, definition: str, body: bytes, *, partial: bool = False) -> dict[str, Any]:
        try:
            value = json.loads(body)
        except ValueError as exc:
            raise Fault(SERDE.format(exc)) from None
        for error in self.validator.errors(definition, value):
            if partial and error.validator == "required":
                continue
            raise Fault(SERDE.format(fc_spec.describe_error(error)))
        # serde reads null into Option<T>: treat it as absent.
        return {k: v for k, v in value.items() if v is not None}

    def parse_with_id(
        self, definition: str, body: bytes, rest: list[str], key: str, *, partial: bool = False
    ) -> dict[str, Any]:
        path_id = _check_id(rest)
        value = self.parse(definition, body, partial=partial)
        if value.get(key) != path_id:
            raise Fault("The id from the path does not match the id from the body!")
        return value

    # -- phase (Firecracker's VMM thread) -----------------------------------------------------

    def pre_boot(self) -> None:
        if self.state != "Not started":
            raise Fault(ONLY_BEFORE_BOOT)

    def post_boot(self) -> None:
        if self.state == "Not started":
            raise Fault(ONLY_AFTER_BOOT)

    # -- GET ------------------------------------------------------------------------------------

    def instance_info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "vmm_version": VERSION,
            "app_name": "Firecracker",
        }

    def full_config(self) -> dict[str, Any]:
        boot = None
        if self.boot_source is not None:
            boot = {
                "kernel_image_path": self.boot_source["kernel_image_path"],
                "initrd_path": self.boot_source.get("initrd_path"),
            }
            if "boot_args" in self.boot_source:
                boot["boot_args"] = self.boot_source["boot_args"]
        drives = [
            {
                "drive_id": d["drive_id"],
                "partuuid": d.get("partuuid"),
                "is_root_device": d["is_root_device"],
                "cache_type": d.get("cache_type", "Unsafe"),
                "is_read_only": d.get("is_read_only", False),
                "path_on_host": d.get("path_on_host"),
                "rate_limiter": d.get("rate_limiter"),
                "io_engine": d.get("io_engine", "Sync"),
                "socket": d.get("socket"),
            }
            for d in self.drives
        ]
        nets = [
            {
                "iface_id": n["iface_id"],
                "host_dev_name": n["host_dev_name"],
                "guest_mac": n.get("guest_mac"),
                "rx_rate_limiter": n.get("rx_rate_limiter"),
                "tx_rate_limiter": n.get("tx_rate_limiter"),
            }
            for n in self.nets
        ]
        # Firecracker 1.11 exports neither logger nor metrics in /vm/config.
        return {
            "balloon": None,
            "drives": drives,
            "boot-source": boot,
            "cpu-config": None,
            "logger": None,
            "machine-config": dict(self.machine_config),
            "metrics": None,
            "mmds-config": self.mmds_config,
            "network-interfaces": nets,
            "vsock": self.vsock,
            "entropy": self.entropy,
        }

    # -- PUT / PATCH ----------------------------------------------------------------------------

    def put_actions(self, body: bytes, rest: list[str]) -> None:
        action = self.parse("InstanceActionInfo", body)["action_type"]
        if action == "InstanceStart":
            self.pre_boot()
            self.start()
        elif action == "SendCtrlAltDel":
            self.post_boot()
            if os.environ.get("FAKE_FC_IGNORE_CTRL_ALT_DEL") == "1":
                self.log("Ctrl+Alt+Del sent; the guest ignores it.")
            else:
                self.console("reboot: Restarting system\n")
                self.exit_code = 0
        else:  # FlushMetrics
            self.post_boot()

    def put_boot_source(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse("BootSource", body)
        self.pre_boot()
        try:
            open(cfg["kernel_image_path"], "rb").close()
        except OSError as exc:
            raise Fault(
                f"Boot source error: The kernel file cannot be opened: {_os_error(exc)}"
            ) from None
        if "initrd_path" in cfg:
            try:
                open(cfg["initrd_path"], "rb").close()
            except OSError as exc:
                raise Fault(
                    "Boot source error: The initrd file cannot be opened due to invalid "
                    f"path or invalid permissions. {_os_error(exc)}"
                ) from None
        if len(cfg.get("boot_args", "").encode()) >= CMDLINE_MAX_SIZE:
            raise Fault(
                "Boot source error: The kernel command line is invalid: "
                "Command line string is too large"
            )
        self.boot_source = cfg

    def put_drive(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse_with_id("Drive", body, rest, "drive_id")
        self.pre_boot()
        position = next(
            (i for i, d in enumerate(self.drives) if d["drive_id"] == cfg["drive_id"]), None
        )
        has_root = bool(self.drives) and self.drives[0]["is_root_device"]
        if cfg["is_root_device"] and has_root and position != 0:
            raise Fault("Drive config error: A root block device already exists!")
        if "socket" in cfg:
            raise Fault("The fake firecracker does not implement vhost-user-block drives.")
        if "path_on_host" not in cfg:
            raise Fault(
                "Drive config error: Unable to create the virtio block device: "
                "path_on_host is required for a virtio block device"
            )
        read_only = cfg.get("is_read_only", False)
        try:
            open(cfg["path_on_host"], "rb" if read_only else "r+b").close()
        except OSError as exc:
            raise Fault(
                "Drive config error: Unable to create the virtio block device: Virtio "
                f"backend error: Error manipulating the backing file: {_os_error(exc)} "
                f"{cfg['path_on_host']}"
            ) from None
        if position is None and cfg["is_root_device"]:
            self.drives.insert(0, cfg)
        elif position is None:
            self.drives.append(cfg)
        else:
            self.drives[position] = cfg
            if cfg["is_root_device"] and position != 0:
                self.drives[0], self.drives[position] = self.drives[position], self.drives[0]

    def patch_drive(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse_with_id("PartialDrive", body, rest, "drive_id")
        self.post_boot()
        drive = next((d for d in self.drives if d["drive_id"] == cfg["drive_id"]), None)
        if drive is None:
            raise Fault("Drive config error: Invalid block device ID!")
        if "path_on_host" in cfg:
            if not os.path.exists(cfg["path_on_host"]):
                raise Fault(f"Drive config error: The update operation failed: {ENOENT}")
            drive["path_on_host"] = cfg["path_on_host"]
        if "rate_limiter" in cfg:
            drive["rate_limiter"] = cfg["rate_limiter"]

    def put_net(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse_with_id("NetworkInterface", body, rest, "iface_id")
        mac = cfg.get("guest_mac")
        if mac is not None and not MAC_RE.match(mac):
            raise Fault(SERDE.format(f"invalid MAC address `{mac}`"))
        self.pre_boot()
        others = [n for n in self.nets if n["iface_id"] != cfg["iface_id"]]
        if mac is not None and any(n.get("guest_mac", "").lower() == mac.lower() for n in others):
            raise Fault(f"Network config error: The MAC address is already in use: {mac}")
        tap = cfg["host_dev_name"]
        if any(n["host_dev_name"] == tap for n in others):
            raise Fault("Network config error: The host device name is already in use.")
        if len(tap.encode()) > 15 or (
            os.environ.get("FAKE_FC_CHECK_TAP", "1") != "0" and not Path("/sys/class/net", tap).exists()
        ):
            raise Fault(
                "Network config error: Could not create the network device: Open tap "
                f"device failed: Invalid TUN/TAP Backend provided by {tap}. Check our "
                "documentation on setting up the network devices."
            )
        for i, n in enumerate(self.nets):
            if n["iface_id"] == cfg["iface_id"]:
                self.nets[i] = cfg
                return
        self.nets.append(cfg)

    def patch_net(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse_with_id("PartialNetworkInterface", body, rest, "iface_id")
        self.post_boot()
        for n in self.nets:
            if n["iface_id"] == cfg["iface_id"]:
                n.update({k: v for k, v in cfg.items() if k != "iface_id"})
                return
        raise Fault(
            f"Network config error: Invalid network interface ID - not found: {cfg['iface_id']}"
        )

    def put_machine_config(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse("MachineConfiguration", body)
        self.pre_boot()
        # PUT resets every field not given to its default (firecracker.yaml).
        new = {"smt": False, "track_dirty_pages": False, "huge_pages": "None", **cfg}
        self.machine_config = self.check_machine_config(new)

    def patch_machine_config(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse("MachineConfiguration", body, partial=True)
        self.pre_boot()
        self.machine_config = self.check_machine_config({**self.machine_config, **cfg})

    @staticmethod
    def check_machine_config(cfg: dict[str, Any]) -> dict[str, Any]:
        vcpus = cfg["vcpu_count"]
        if vcpus < 1 or vcpus > 32 or (cfg["smt"] and vcpus > 1 and vcpus % 2):
            raise Fault(
                "Machine config error: The vCPU number is invalid! The vCPU number can "
                "only be 1 or an even number when SMT is enabled."
            )
        if cfg["mem_size_mib"] <= 0:
            raise Fault("Machine config error: The memory size (MiB) is invalid.")
        if cfg["huge_pages"] == "2M" and cfg["mem_size_mib"] % 2:
            raise Fault(
                "Machine config error: The memory size (MiB) must be a multiple of the "
                "huge page size."
            )
        return cfg

    def put_logger(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse("Logger", body)
        self.pre_boot()
        if "log_path" in cfg:
            # v1.11 opens the file O_RDWR|O_NONBLOCK without O_CREAT: it must exist.
            try:
                os.close(os.open(cfg["log_path"], os.O_RDWR | os.O_NONBLOCK))
            except OSError as exc:
                raise Fault(f"Logger error: Failed to open target file: {_os_error(exc)}") from None
            self.log_path = cfg["log_path"]
            self.log(f"Running Firecracker v{VERSION}")

    def put_metrics(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse("Metrics", body)
        self.pre_boot()
        if self.metrics_path is not None:
            raise Fault("Metrics error: Reinitialization of metrics not allowed.")
        try:
            os.close(os.open(cfg["metrics_path"], os.O_RDWR | os.O_NONBLOCK))
        except OSError as exc:
            raise Fault(f"Metrics error: Failed to open target file: {_os_error(exc)}") from None
        self.metrics_path = cfg["metrics_path"]

    def put_vsock(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse("Vsock", body)
        self.pre_boot()
        if os.path.exists(cfg["uds_path"]):
            raise Fault(
                "Vsock config error: Cannot create backend for vsock device: "
                'UnixBind(Os { code: 98, kind: AddrInUse, message: "Address in use" })'
            )
        import socket  # the vsock backend binds its Unix socket at PUT time

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(cfg["uds_path"])
        sock.listen()
        self._sockets.append(sock)
        self.vsock = cfg

    def put_entropy(self, body: bytes, rest: list[str]) -> None:
        cfg = self.parse("EntropyDevice", body)
        self.pre_boot()
        self.entropy = cfg

    def put_mmds(self, body: bytes, rest: list[str]) -> None:
        if rest[:1] == ["config"]:
            cfg = self.parse("MmdsConfig", body)
            self.pre_boot()
            known = {n["iface_id"] for n in self.nets}
            if not set(cfg["network_interfaces"]) <= known:
                raise Fault(
                    "MMDS config error: The list of network interface IDs provided "
                    "contains at least one ID that does not correspond to any existing "
                    "network interface."
                )
            self.mmds_config = {"version": "V1", "ipv4_address": "169.254.169.254", **cfg}
            return
        if rest:
            raise Fault("Invalid request method and/or path: PUT mmds.")
        self.mmds = self.parse_mmds(body)

    def patch_mmds(self, body: bytes, rest: list[str]) -> None:
        self.mmds = _merge_patch(self.mmds if self.mmds is not None else {}, self.parse_mmds(body))

    def parse_mmds(self, body: bytes) -> dict[str, Any]:
        try:
            value = json.loads(body)
        except ValueError as exc:
            raise Fault(SERDE.format(exc)) from None
        if not isinstance(value, dict):
            raise Fault("The MMDS data store content must be a JSON object.")
        return value

    def patch_vm(self, body: bytes, rest: list[str]) -> None:
        state = self.parse("Vm", body)["state"]
        self.post_boot()
        self.state = "Paused" if state == "Paused" else "Running"

    # -- snapshots ------------------------------------------------------------------------------

    def put_snapshot(self, body: bytes, rest: list[str]) -> None:
        if rest == ["create"]:
            return self.snapshot_create(self.parse("SnapshotCreateParams", body))
        if rest == ["load"]:
            return self.snapshot_load(self.parse("SnapshotLoadParams", body))
        raise Fault(f"Invalid request method and/or path: PUT snapshot/{'/'.join(rest)}.")

    def snapshot_state(self) -> dict[str, Any]:
        return {
            "firecracker_version": VERSION,
            "machine_config": self.machine_config,
            "boot_source": self.boot_source,
            "drives": self.drives,
            "nets": self.nets,
            "vsock": self.vsock,
            "entropy": self.entropy,
        }

    def snapshot_create(self, cfg: dict[str, Any]) -> None:
        self.post_boot()
        if self.state != "Paused":
            raise Fault("Create snapshot error: Cannot save the microVM state: the microVM "
                        "must be paused first.")
        if cfg.get("snapshot_type", "Full") != "Full":
            raise Fault("Create snapshot error: Diff snapshots need track_dirty_pages.")
        fail = os.environ.get("FAKE_FC_SNAPSHOT_CREATE_FAIL") == "1"
        try:
            # Firecracker opens both with create + truncate: an existing file keeps its mode.
            with open(cfg["snapshot_path"], "wb") as f:
                f.write(json.dumps(self.snapshot_state()).encode())
            with open(cfg["mem_file_path"], "wb") as f:
                f.write(json.dumps({"fake_memory": self.id}).encode().ljust(4096, b" "))
                if fail:
                    raise OSError(28, "No space left on device")
                f.write(b"\0" * (4 * MiB))  # written zeros (the real dump writes every page)
                f.truncate(self.machine_config["mem_size_mib"] * MiB)
        except OSError as exc:
            raise Fault(
                f"Create snapshot error: Cannot write memory file: {_os_error(exc)}"
            ) from None
        self.log("Snapshot created")

    def snapshot_load(self, cfg: dict[str, Any]) -> None:
        self.pre_boot()
        if self.boot_configured:
            raise Fault(LOAD_AFTER_CONFIG)
        if ("mem_backend" in cfg) == ("mem_file_path" in cfg):
            raise Fault("Load snapshot error: exactly one of mem_backend and mem_file_path "
                        "must be given.")
        try:
            self.load_or_fail(cfg)
        except Fault:
            self.exit_code = 1  # Firecracker ends the process after a failed load
            raise
        self.log("Snapshot loaded")

    def load_or_fail(self, cfg: dict[str, Any]) -> None:
        backend = cfg.get("mem_backend") or {"backend_type": "File",
                                              "backend_path": cfg["mem_file_path"]}
        if backend["backend_type"] != "File":
            raise Fault("Load snapshot error: the fake firecracker has no Uffd backend.")
        if os.environ.get("FAKE_FC_LOAD_FAIL") == "1":
            raise Fault("Load snapshot error: Failed to restore from snapshot: Failed to get "
                        "snapshot state from file: Failed to load snapshot state from file: "
                        "Snapshot file is smaller than CRC length. (fake, FAKE_FC_LOAD_FAIL)")
        try:
            with open(cfg["snapshot_path"], "rb") as f:
                state = json.loads(f.read())
            mem_size = os.stat(backend["backend_path"]).st_size
        except (OSError, ValueError) as exc:
            raise Fault(f"Load snapshot error: Failed to restore from snapshot: {exc}") from None
        if state.get("firecracker_version") != VERSION:
            raise Fault("Load snapshot error: Failed to restore from snapshot: Invalid "
                        f"snapshot version {state.get('firecracker_version')!r}")
        if mem_size != state["machine_config"]["mem_size_mib"] * MiB:
            raise Fault("Load snapshot error: Failed to restore from snapshot: the memory file "
                        "does not match the snapshot's memory size")
        for drive in state["drives"]:
            try:
                open(drive["path_on_host"], "r+b").close()
            except OSError as exc:
                raise Fault("Load snapshot error: Failed to restore from snapshot: Block "
                            f"device error: {_os_error(exc)} {drive['path_on_host']}") from None
        for net in state["nets"]:
            tap = net["host_dev_name"]
            if os.environ.get("FAKE_FC_CHECK_TAP", "1") != "0" and not Path("/sys/class/net", tap).exists():
                raise Fault("Load snapshot error: Failed to restore from snapshot: Open tap "
                            f"device failed: Invalid TUN/TAP Backend provided by {tap}.")
        self.machine_config = state["machine_config"]
        self.boot_source = state["boot_source"]
        self.drives, self.nets = state["drives"], state["nets"]
        self.vsock, self.entropy = state["vsock"], state["entropy"]
        self.state = "Running" if cfg.get("resume_vm") else "Paused"
        self.console("\n[fake] resumed from a snapshot\nfake-guest login: ")

    def not_implemented(self, body: bytes, rest: list[str]) -> None:
        raise Fault("The fake firecracker does not implement this request.")

    # -- boot -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.boot_source is None:
            raise Fault("Start microvm error: Cannot start microvm without kernel configuration.")
        cmdline = self.kernel_cmdline()
        if len(cmdline.encode()) >= CMDLINE_MAX_SIZE:
            raise Fault(
                "Start microvm error: Error while loading the kernel command line: "
                "Command line string is too large"
            )
        self.state = "Running"
        self.log("Successfully started microvm")
        self.console(
            f"[    0.000000] Linux version 6.1.0-fake (fake firecracker {VERSION})\n"
            f"[    0.000000] Command line: {cmdline}\n"
            f"[    0.000000] Memory: {self.machine_config['mem_size_mib']}MiB, "
            f"CPUs: {self.machine_config['vcpu_count']}\n"
            "fake-guest login: "
        )
        panic_after = os.environ.get("FAKE_FC_GUEST_PANIC_AFTER")
        if panic_after:
            threading.Timer(float(panic_after), self.guest_panics).start()

    def guest_panics(self) -> None:
        self.console(
            "\n[    1.234567] VFS: Unable to mount root fs on unknown-block(0,0)\n"
            "[    1.234568] Kernel panic - not syncing: VFS: Unable to mount root fs\n"
            "[    2.234568] Rebooting in 1 seconds..\n"
        )
        self.log("Vmm is stopping. exit_code=0 (guest reboot after a panic)")
        sys.stdout.flush()
        os._exit(0)

    def kernel_cmdline(self) -> str:
        """boot_args plus what Firecracker appends: root= for the root drive, one
        virtio_mmio.device= per virtio device."""
        assert self.boot_source is not None
        parts = [
            self.boot_source.get(
                "boot_args",
                "reboot=k panic=1 pci=off nomodule "
                "8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.nopnp "
                "i8042.dumbkbd",
            )
        ]
        if self.drives and self.drives[0]["is_root_device"]:
            root = self.drives[0]
            target = f"PARTUUID={root['partuuid']}" if "partuuid" in root else "/dev/vda"
            parts.append(f"root={target} {'ro' if root.get('is_read_only') else 'rw'}")
        devices = (
            len(self.drives)
            + len(self.nets)
            + (self.vsock is not None)
            + (self.entropy is not None)
        )
        for i in range(devices):
            parts.append(f"virtio_mmio.device=4K@{0xD0000000 + i * 0x1000:#x}:{5 + i}")
        return " ".join(p for p in parts if p)

    def console(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch (PATCH /mmds)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


BOOT_SPECIFIC = {"boot-source", "drives", "network-interfaces", "machine-config", "vsock",
                 "entropy", "balloon", "cpu-config"}


PUT_ROUTES = {
    "actions": FakeVmm.put_actions,
    "boot-source": FakeVmm.put_boot_source,
    "drives": FakeVmm.put_drive,
    "network-interfaces": FakeVmm.put_net,
    "machine-config": FakeVmm.put_machine_config,
    "logger": FakeVmm.put_logger,
    "metrics": FakeVmm.put_metrics,
    "vsock": FakeVmm.put_vsock,
    "entropy": FakeVmm.put_entropy,
    "mmds": FakeVmm.put_mmds,
    "balloon": FakeVmm.not_implemented,
    "cpu-config": FakeVmm.not_implemented,
    "snapshot": FakeVmm.put_snapshot,
}
PATCH_ROUTES = {
    "drives": FakeVmm.patch_drive,
    "network-interfaces": FakeVmm.patch_net,
    "machine-config": FakeVmm.patch_machine_config,
    "mmds": FakeVmm.patch_mmds,
    "vm": FakeVmm.patch_vm,
}


# -- HTTP -------------------------------------------------------------------------------------


class ApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    vmm: FakeVmm
    exit_requested: threading.Event


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Firecracker API"
    sys_version = ""
    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the Unix-socket client address breaks the default, and stderr is the console

    def do_GET(self) -> None:
        self.serve("GET")

    def do_PUT(self) -> None:
        self.serve("PUT")

    def do_PATCH(self) -> None:
        self.serve("PATCH")

    def do_POST(self) -> None:
        self.reply(400, {"fault_message": "Unsupported HTTP method."})

    do_DELETE = do_HEAD = do_OPTIONS = do_POST

    def serve(self, method: str) -> None:
        if self.headers.get("Transfer-Encoding"):
            self.reply(400, {"fault_message": "Transfer encoding is not supported."})
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else None
        vmm = self.server.vmm
        status, payload = vmm.handle(method, self.path, body)
        self.reply(status, payload)
        if vmm.exit_code is not None:
            self.server.exit_requested.set()

    def reply(self, status: int, payload: Any) -> None:
        self.send_response(status)
        if payload is None:
            self.end_headers()
        else:
            data = json.dumps(payload).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        self.wfile.flush()


# -- CLI --------------------------------------------------------------------------------------


class ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"Arguments parsing error: {message}\n")
        sys.exit(153)  # FcExitCode::ArgParsing


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgParser(prog="firecracker", add_help=False, allow_abbrev=False)
    p.add_argument("--api-sock", default="/run/firecracker.socket")
    p.add_argument("--id", default="anonymous-instance")
    p.add_argument("--config-file")
    p.add_argument("--no-api", action="store_true")
    p.add_argument("--log-path")
    p.add_argument("--level", default="Info")
    p.add_argument("--module")
    p.add_argument("--show-level", action="store_true")
    p.add_argument("--show-log-origin", action="store_true")
    p.add_argument("--metrics-path")
    p.add_argument("--metadata")
    p.add_argument("--boot-timer", action="store_true")
    p.add_argument("--http-api-max-payload-size", type=int)
    p.add_argument("--mmds-size-limit", type=int)
    p.add_argument("--seccomp-filter")
    p.add_argument("--no-seccomp", action="store_true")
    p.add_argument("--version", action="store_true")
    p.add_argument("--snapshot-version", action="store_true")
    p.add_argument("--describe-snapshot")
    return p.parse_args(argv)


def panic(message: str) -> None:
    """Firecracker is built with panic=abort: a panic ends in SIGABRT."""
    sys.stderr.write(f"thread 'main' panicked at src/firecracker/src/main.rs: {message}\n")
    sys.stderr.flush()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.abort()


def apply_config_file(vmm: FakeVmm, path: str) -> None:
    """--config-file: configure from one JSON document, then start (exit 152 on error)."""
    with open(path, "rb") as f:
        config = json.load(f)
    allowed = {
        "boot-source",
        "drives",
        "machine-config",
        "network-interfaces",
        "vsock",
        "balloon",
        "entropy",
        "logger",
        "metrics",
        "mmds-config",
        "cpu-config",
    }
    unknown = set(config) - allowed
    if unknown or "boot-source" not in config or "drives" not in config:
        raise Fault(f"unknown or missing keys in the config file: {sorted(unknown)}")

    def put(handler: Any, value: Any, rest: list[str] | None = None) -> None:
        handler(vmm, json.dumps(value).encode(), rest or [])

    if "logger" in config:
        put(FakeVmm.put_logger, config["logger"])
    if "metrics" in config:
        put(FakeVmm.put_metrics, config["metrics"])
    if "machine-config" in config:
        put(FakeVmm.put_machine_config, config["machine-config"])
    put(FakeVmm.put_boot_source, config["boot-source"])
    for drive in config["drives"]:
        put(FakeVmm.put_drive, drive, [str(drive.get("drive_id", ""))])
    for nic in config.get("network-interfaces", []):
        put(FakeVmm.put_net, nic, [str(nic.get("iface_id", ""))])
    if "vsock" in config:
        put(FakeVmm.put_vsock, config["vsock"])
    if "entropy" in config:
        put(FakeVmm.put_entropy, config["entropy"])
    if "mmds-config" in config:
        put(FakeVmm.put_mmds, config["mmds-config"], ["config"])
    for key in ("balloon", "cpu-config"):
        if key in config:
            raise Fault(f"The fake firecracker does not implement {key}.")
    vmm.start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        print(f"Firecracker v{VERSION}")
        return 0
    if not fc_spec.INSTANCE_ID_RE.match(args.id):
        panic(f"Invalid instance ID: {args.id!r}")
    if os.environ.get("FAKE_FC_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    delay = float(os.environ.get("FAKE_FC_STARTUP_DELAY") or 0)
    if delay > 0:
        time.sleep(delay)
    crash = os.environ.get("FAKE_FC_CRASH_AT_STARTUP")
    if crash:
        sys.stderr.write(
            "Error creating the Kvm object: Error(13) (fake crash at startup, "
            "FAKE_FC_CRASH_AT_STARTUP)\n"
        )
        sys.stderr.write(f"Firecracker exiting with error. exit_code={int(crash)}\n")
        return int(crash)

    vmm = FakeVmm(args.id, fc_spec.SpecValidator(nullable_optionals=True))
    if args.log_path:
        try:
            os.close(os.open(args.log_path, os.O_RDWR | os.O_NONBLOCK))
        except OSError as exc:
            sys.stderr.write(f"Failed to initialize logger: {_os_error(exc)}\n")
            return 1
        vmm.log_path = args.log_path
        vmm.log(f"Running Firecracker v{VERSION}")
    if args.no_api and not args.config_file:
        sys.stderr.write("Arguments parsing error: --no-api requires --config-file\n")
        return 153

    server: ApiServer | None = None
    if not args.no_api:
        try:
            server = ApiServer(args.api_sock, ApiHandler)
        except OSError:
            sys.stderr.write(
                f"Failed to open the API socket at: {args.api_sock}. Check that it "
                "is not already used.\n"
            )
            return 1
        server.vmm = vmm
        server.exit_requested = threading.Event()

    if args.config_file:
        try:
            apply_config_file(vmm, args.config_file)
        except (Fault, OSError, ValueError) as exc:
            sys.stderr.write(f"Configuration for VMM from one single json failed: {exc}\n")
            return 152

    if server is None:
        signal.pause()  # --no-api: run until a signal ends us
        return 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.exit_requested.wait()
    vmm.log(f"Firecracker exiting successfully. exit_code={vmm.exit_code}")
    sys.stdout.flush()
    os._exit(vmm.exit_code or 0)  # like Firecracker: the API socket file stays behind


if __name__ == "__main__":
    sys.exit(main())
