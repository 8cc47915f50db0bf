"""``vmm serve``: the web UI and the JSON API (``vmm.web``), and ``--set-password``.

The web stack (the ``web`` extra: Starlette, uvicorn, Jinja2) is imported here only, when the
command runs: no other command pays for it.
"""

from __future__ import annotations

import sys

from vmm.cli.common import app, require_root
from vmm.errors import VmmError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from vmm.cli.parser import SubParsers

DEFAULT_TOKEN_FILE = "/etc/vmm/api-token"
DEFAULT_PASSWORD_FILE = "/etc/vmm/web-password"


def _add_serve(sub: SubParsers) -> None:
    s = sub.add_parser(
        "serve",
        help="serve the web UI and the JSON API (on 127.0.0.1:8080 by default)",
        description="Serve a live web UI and a JSON API (/api/v1, described at "
        "/api/v1/openapi.json) over the same services as the CLI. Scripts authenticate with "
        "the bearer token in --token-file (made on first start, root's alone); browsers log "
        "in with the password set by --set-password.",
    )
    s.add_argument("--listen", default="127.0.0.1:8080", metavar="ADDR:PORT",
                   help="where to listen (default 127.0.0.1:8080; [::1]:8080 for IPv6)")
    s.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    s.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --listen address without TLS")
    s.add_argument("--token-file", default=DEFAULT_TOKEN_FILE, metavar="FILE",
                   help=f"the API token (default {DEFAULT_TOKEN_FILE})")
    s.add_argument("--password-file", default=DEFAULT_PASSWORD_FILE, metavar="FILE",
                   help=f"the browser password's hash (default {DEFAULT_PASSWORD_FILE})")
    s.add_argument("--set-password", action="store_true",
                   help="set the browser login password (asked on the terminal, or one line "
                   "from standard input) and exit")
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.set_defaults(handler=cmd_serve)


def _web_stack_missing() -> VmmError:
    return VmmError(
        "vmm serve needs the web extra (Starlette, uvicorn, Jinja2), which is not installed",
        hint="pip install 'vmm[web]' into vmm's venv (or apt-get install python3-starlette "
        "python3-uvicorn python3-jinja2 python3-wsproto)",
    )


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("New password for the web UI: ")
        if getpass.getpass("Again: ") != first:
            raise VmmError("the passwords differ: nothing changed")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_set_password(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vmm.web import auth

    path = Path(args.password_file)
    auth.set_password(path, _read_password())
    print(f"Password set ({path}, mode 0600). Running servers use it at the next login.")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    require_root()
    if args.set_password:
        return cmd_set_password(args)
    from pathlib import Path

    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise _web_stack_missing() from None
    from vmm.services import netreport
    from vmm.web import auth, server

    opts = server.Options(
        listen=args.listen,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        insecure=args.insecure,
        token_file=Path(args.token_file),
        password_file=Path(args.password_file),
        access_log=args.access_log,
    )
    m = app()
    context, made = server.build_context(
        m,
        opts,
        network_info=lambda: netreport.network_info(m.network, m.forwards),
        network_prune=lambda: netreport.prune(m.network),
    )
    web_app = server.build_app(context)
    print(f"Serving vmm on {opts.url}", flush=True)
    if not server.is_loopback(opts.host) and not opts.tls:
        print("warning: no TLS (--insecure): passwords and tokens cross the network in clear text",
              file=sys.stderr)
    print(f"API: {opts.url}api/v1 (token {'made in' if made else 'in'} {opts.token_file}):")
    print(f'  curl -H "Authorization: Bearer $(sudo cat {opts.token_file})" {opts.url}api/v1/vms')
    if auth.load_password_hash(opts.password_file) is None:
        print("Browser login: no password set yet: run 'sudo vmm serve --set-password'")
    else:
        print(f"Browser login: {opts.url}login with the password set by 'vmm serve --set-password'")
    sys.stdout.flush()
    server.serve(web_app, opts)
    return 0


COMMANDS = {"serve": _add_serve}
