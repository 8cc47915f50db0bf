"""``vmm ssh``: the system ssh client pointed at a VM.

Host keys go to a vmm-owned known_hosts file keyed by the VM's id (``HostKeyAlias``), never to
the user's own: addresses are reused by later VMs, and a reused address must not trip ssh's
"REMOTE HOST IDENTIFICATION HAS CHANGED" check — nor pollute ~/.ssh/known_hosts.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmm.config import invoking_user_home, invoking_user_ids
from vmm.runner import Runner

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


def identity_files(vm_key_path: str | None, home: Path | None = None) -> list[Path]:
    """The private key matching the VM's ``--ssh-key`` (same path without .pub) when it exists,
    else the invoking user's usual keys (SUDO_USER's under sudo)."""
    if vm_key_path:
        p = Path(vm_key_path)
        private = p.with_suffix("") if p.suffix == ".pub" else p
        if private.is_file():
            return [private]
    ssh_dir = (home or invoking_user_home()) / ".ssh"
    return [ssh_dir / k for k in DEFAULT_KEYS if (ssh_dir / k).is_file()]


def become_invoking_user() -> None:
    """Under sudo, drop to SUDO_USER for good before touching their files: ``vmm ssh`` then
    reads their keys and writes their known_hosts as them, so root never writes through a path
    in a user's home (a symbolic link there could point anywhere)."""
    ids = invoking_user_ids()
    if ids is None:
        return
    import pwd

    uid, gid = ids
    os.initgroups(pwd.getpwuid(uid).pw_name, gid)
    os.setgid(gid)
    os.setuid(uid)
    os.environ["HOME"] = pwd.getpwuid(uid).pw_dir


def known_hosts_file(home: Path | None = None) -> Path:
    return (home or invoking_user_home()) / ".config" / "vmm" / "known_hosts"


def ensure_known_hosts(path: Path) -> None:
    """Create the file (and its directory) as the current user (see ``become_invoking_user``)."""
    for d in (path.parent.parent, path.parent):
        if not d.exists():
            d.mkdir(mode=0o700, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))


def ssh_argv(
    *,
    ip: str,
    vm_id: str,
    user: str,
    identities: list[Path],
    known_hosts: Path,
    command: list[str],
    connect_timeout: int = 10,
) -> list[str]:
    argv = [
        "ssh",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", f"HostKeyAlias=vmm-{vm_id}",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    for key in identities:
        argv += ["-i", str(key)]
    argv.append(f"{user}@{ip}")
    if command:
        argv.append("--")
        argv += command
    return argv


# -- vmm's own key: how ``vmm stop`` reaches a guest that ignores the power button ------------

POWER_KEY_NAME = "vmm_power_ed25519"
# The only thing vmm's key may do in a guest (sshd's forced command): power it off or reboot it.
POWER_COMMAND = (
    "case $SSH_ORIGINAL_COMMAND in "
    "poweroff) systemctl poweroff || poweroff -f ;; "
    "reboot) systemctl reboot || reboot -f ;; "
    "*) echo vmm: this key may only power the guest off >&2; exit 1 ;; "
    "esac"
)


def power_key(runner: Runner, data_dir: Path) -> tuple[Path, str]:
    """vmm's own SSH key (made once, root's alone): the private key's path and the public key.

    ``vmm stop`` uses it when the guest ignores the ACPI power button and Ctrl-Alt-Del (a
    kernel without the button driver, ctrl-alt-del.target masked): ``poweroff`` over SSH is
    still a clean shutdown, where SIGTERM would leave a dirty filesystem."""
    import fcntl
    import tempfile

    from vmm.store import scratch_prefix

    d = data_dir / "ssh"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    key = d / POWER_KEY_NAME
    pub = key.with_name(key.name + ".pub")
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel first starts make one key, not a mix of two
        if not (key.is_file() and pub.is_file()):
            with tempfile.TemporaryDirectory(prefix=scratch_prefix("keygen"), dir=d) as tmp:
                new = Path(tmp) / POWER_KEY_NAME
                runner.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmm-power", "-f", str(new)],
                    timeout=30,
                    hint="apt-get install openssh-client",
                )
                os.replace(new.with_name(new.name + ".pub"), pub)
                os.replace(new, key)  # the private key last: its presence means both are there
    return key, pub.read_text().strip()


def power_key_line(public_key: str) -> str:
    """The authorized_keys line for vmm's key: a forced command, no shell, no forwarding."""
    return f'restrict,command="{POWER_COMMAND}" {public_key}'


def power_argv(*, ip: str, key: Path, command: str, connect_timeout: int = 5) -> list[str]:
    """ssh as root with vmm's key, never prompting; host keys are not kept (nothing secret is
    sent: the worst an impostor learns is that vmm wanted a guest to power off)."""
    return [
        "ssh",
        "-i", str(key),
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "LogLevel=ERROR",
        f"root@{ip}",
        command,
    ]  # fmt: skip


def ssh_banner(ip: str, port: int = 22, timeout: float = 2.0) -> bool:
    """True when something at ip:port answers with an SSH identification line."""
    import socket

    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False
