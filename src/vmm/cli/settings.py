"""Config and version commands."""

from __future__ import annotations

from vmm.cli.common import (
    app,
    help_of,
    load_config,
    print_json,
    require_root,
    table,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from vmm.cli.parser import SubParsers


def _add_config(sub: SubParsers) -> None:
    cfg = sub.add_parser("config", help="show or initialise the config file")
    cfg_sub = cfg.add_subparsers(title="commands", metavar="COMMAND")
    ci = cfg_sub.add_parser("init", help="write the default config file")
    ci.add_argument("--force", action="store_true", help="overwrite an existing file")
    ci.add_argument(
        "--system",
        action="store_true",
        help="write root's /etc/vmm/config.json (the only place root takes data_dir, the engine "
        "binaries and the network from) instead of your own file",
    )
    ci.set_defaults(handler=cmd_config_init)
    cs = cfg_sub.add_parser("show", help="each setting with where it came from")
    cs.add_argument("--json", action="store_true")
    cs.set_defaults(handler=cmd_config_show)
    cfg.set_defaults(handler=help_of(cfg))


def _add_version(sub: SubParsers) -> None:
    v = sub.add_parser("version", help="vmm's version and the engines found")
    v.add_argument("--json", action="store_true")
    v.set_defaults(handler=cmd_version)


def cmd_config_init(args: argparse.Namespace) -> int:
    from vmm.config import config_path, system_config_path, write_default_config

    if args.system:
        require_root()
    path = system_config_path() if args.system else config_path()
    cfg = write_default_config(path, force=args.force, system=args.system)
    from vmm.config import detect_engine

    _engine, why = detect_engine()
    print(f"Wrote {path} (engine {cfg.engine}: {why}; host_interface {cfg.host_interface})")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_config()
    rows = cfg.rows()
    if args.json:
        print_json({k: {"value": v, "source": s} for k, v, s in rows})
        return 0
    suffix = "" if cfg.file_exists else " (not present: all defaults)"
    print(f"config file: {cfg.path}{suffix}")
    table(["KEY", "VALUE", "SOURCE"], [[k, v, s] for k, v, s in rows[1:]])
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from vmm import __version__

    m = app()
    from vmm.engines import registry

    engines: dict[str, str | None] = {}
    for name in registry.names():
        try:
            engines[name] = m.engine(name).version()
        except Exception:
            engines[name] = None
    from vmm.buildinfo import git_commit

    commit = git_commit()
    if args.json:
        print_json({"vmm": __version__, "commit": commit, "engines": engines})
    else:
        print(f"vmm {__version__}" + (f" (commit {commit[:12]})" if commit else ""))
        for name, ver in engines.items():
            print(f"{name}: {ver or 'not found'}")
    return 0


COMMANDS = {
    "config": _add_config,
    "version": _add_version,
}
