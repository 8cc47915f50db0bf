"""Host integration commands: service, autostart, autostop, completion.

``autostop`` and the bare ``autostart`` are run by vmm.service and ``__complete`` by the shell
completion scripts: they are registered without ``help=`` so ``vmm --help`` does not list them
(argparse 3.11 prints ``==SUPPRESS==`` for ``help=argparse.SUPPRESS``).
"""

from __future__ import annotations

import os
import sys
import threading

from vmm.cli.common import app, help_of, load_config, print_json, require_root
from vmm.errors import VmmError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from vmm.autostart import Outcome
    from vmm.cli.parser import SubParsers
    from vmm.host.systemd import Service


# -- parsers ----------------------------------------------------------------------------------


def _add_service(sub: SubParsers) -> None:
    s = sub.add_parser(
        "service", help="install the systemd unit that starts/stops VMs with the host"
    )
    s_sub = s.add_subparsers(title="commands", metavar="COMMAND")
    si = s_sub.add_parser("install", help="write and enable vmm.service")
    si.add_argument(
        "--vmm", metavar="PATH", help="the vmm executable the unit runs (default: this one)"
    )
    si.add_argument(
        "--unit-dir", metavar="DIR", help="where to write it (default /etc/systemd/system)"
    )
    si.add_argument(
        "--no-enable", dest="enable", action="store_false", help="only write the unit file"
    )
    si.add_argument(
        "--print", dest="print_only", action="store_true", help="print the unit, change nothing"
    )
    si.add_argument(
        "--web", action="store_true",
        help="install vmm-web.service instead: the web UI and API ('vmm serve') at boot",
    )
    si.set_defaults(handler=cmd_service_install)
    su = s_sub.add_parser(
        "uninstall", help="disable and remove vmm.service (running VMs keep running)"
    )
    su.add_argument("--unit-dir", metavar="DIR", help="default /etc/systemd/system")
    su.add_argument(
        "--web", action="store_true",
        help="remove vmm-web.service instead, stopping the server (VMs keep running)",
    )
    su.set_defaults(handler=cmd_service_uninstall)
    st = s_sub.add_parser(
        "status", help="whether vmm.service is installed, current, enabled, active"
    )
    st.add_argument("--unit-dir", metavar="DIR", help="default /etc/systemd/system")
    st.add_argument("--json", action="store_true")
    st.add_argument("--web", action="store_true", help="about vmm-web.service instead")
    st.set_defaults(handler=cmd_service_status)
    s.set_defaults(handler=help_of(s))


def _add_autostart(sub: SubParsers) -> None:
    # Bare ``vmm autostart`` is the boot action (hidden); ``enable|disable NAME`` is for users.
    a = sub.add_parser(
        "autostart",
        description="'vmm autostart enable|disable NAME' flags a VM to start when the host boots "
        "(with vmm.service installed: 'vmm service install'). Bare 'vmm autostart' is what the "
        "service runs at boot: it starts the VMs selected by the config's autostart_policy.",
    )
    a_sub = a.add_subparsers(title="commands", metavar="COMMAND")
    for verb, on in (("enable", True), ("disable", False)):
        v = a_sub.add_parser(verb, help=f"{verb} starting VM NAME at boot")
        v.add_argument("name")
        v.set_defaults(handler=cmd_autostart_flag, enabled=on)
    a.set_defaults(handler=cmd_autostart)


def _add_autostop(sub: SubParsers) -> None:
    a = sub.add_parser("autostop", description="stop every running VM gracefully, in parallel")
    a.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="graceful wait per VM (default 30)"
    )
    a.set_defaults(handler=cmd_autostop)


def _add_completion(sub: SubParsers) -> None:
    c = sub.add_parser("completion", help="print a shell completion script (bash, zsh, fish)")
    c.add_argument("shell", choices=("bash", "zsh", "fish"))
    c.set_defaults(handler=cmd_completion)


def _add_complete(sub: SubParsers) -> None:
    c = sub.add_parser("__complete")
    c.add_argument("kind", choices=("vms", "images", "kernels", "commands"))
    c.set_defaults(handler=cmd_complete)


# -- service ----------------------------------------------------------------------------------


def _service(args: argparse.Namespace) -> Service:
    from pathlib import Path

    from vmm.host.systemd import UNIT_DIR, UNIT_NAME, WEB_UNIT_NAME, Service

    unit_name = WEB_UNIT_NAME if getattr(args, "web", False) else UNIT_NAME
    return Service(unit_dir=Path(args.unit_dir) if args.unit_dir else UNIT_DIR, unit_name=unit_name)


def cmd_service_install(args: argparse.Namespace) -> int:
    from vmm.host.systemd import default_spec, render_unit, render_web_unit

    load_config()  # a unit that runs vmm with a broken config would fail at every boot
    vmm_bin = os.path.abspath(args.vmm) if args.vmm else None
    text = (render_web_unit if args.web else render_unit)(default_spec(vmm_bin))
    if args.print_only:
        print(text, end="")
        return 0
    if not args.unit_dir:
        require_root()
    svc = _service(args)
    for line in svc.install(text, enable=args.enable):
        print(line)
    return 0


def cmd_service_uninstall(args: argparse.Namespace) -> int:
    if not args.unit_dir:
        require_root()
    svc = _service(args)
    # vmm.service stays up (stopping it stops every VM); the web server goes with its unit
    for line in svc.uninstall(stop=args.web):
        print(line)
    return 0


def cmd_service_status(args: argparse.Namespace) -> int:
    from vmm.host.systemd import default_spec, render_unit, render_web_unit

    svc = _service(args)
    try:
        expected: str | None = (render_web_unit if args.web else render_unit)(default_spec())
    except VmmError:
        expected = None
    st = svc.status(expected)
    if args.json:
        print_json(st.to_dict())
        return 0 if st.installed else 1
    install = "vmm service install --web" if args.web else "vmm service install"
    if not st.installed:
        print(
            f"{svc.unit_name}: not installed ({st.unit_path}); install it with: sudo {install}"
        )
        return 1
    print(
        f"{svc.unit_name}: installed ({st.unit_path})"
        + ("" if st.up_to_date else f", differs from '{install} --print'")
    )
    print(f"enabled: {'yes' if st.enabled else 'no'}")
    print(f"active: {st.active if st.active is not None else 'unknown (systemd is not running)'}")
    return 0


# -- autostart / autostop ------------------------------------------------------------------------


def _printer() -> Callable[[Outcome], None]:
    lock = threading.Lock()

    def on_done(o: Outcome) -> None:
        with lock:
            print(o.line(), file=sys.stdout if o.ok else sys.stderr, flush=True)

    return on_done


def _summary(outcomes: list[Outcome], verb: str) -> int:
    failed = [o.name for o in outcomes if not o.ok]
    if not outcomes:
        print(f"no VMs to {verb}")
    if failed:
        print(f"error: {len(failed)} VM(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_autostart(args: argparse.Namespace) -> int:
    require_root()
    from vmm import autostart

    outcomes = autostart.autostart(app(), on_done=_printer())
    return _summary(outcomes, "start")


def cmd_autostop(args: argparse.Namespace) -> int:
    require_root()
    from vmm import autostart

    outcomes = autostart.autostop(app(), timeout=args.timeout, on_done=_printer())
    return _summary(outcomes, "stop")


def cmd_autostart_flag(args: argparse.Namespace) -> int:
    require_root()
    from vmm import autostart

    m = app()
    vm = autostart.set_flag(m, args.name, args.enabled)
    state = "will start" if vm.autostart else "will not start"
    print(f"VM {vm.name} {state} when the host boots")
    if vm.autostart and m.config.autostart_policy != "flagged":
        print(
            f"note: autostart_policy is {m.config.autostart_policy!r}: the flag is used only with 'flagged'",
            file=sys.stderr,
        )
    return 0


# -- completion ------------------------------------------------------------------------------------


def cmd_completion(args: argparse.Namespace) -> int:
    from vmm.cli.completion import script

    print(script(args.shell), end="")
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    from vmm.cli.completion import names

    for n in names(args.kind, load_config().data_path):
        print(n)
    return 0


COMMANDS = {
    "service": _add_service,
    "autostart": _add_autostart,
    "autostop": _add_autostop,
    "completion": _add_completion,
    "__complete": _add_complete,
}
