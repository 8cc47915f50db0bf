"""The ASGI application and how it is served (uvicorn): where it listens, TLS, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from pathlib import Path

from vmm.errors import UsageError, ValidationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from typing import Any

    from starlette.applications import Starlette

    from vmm.app import Vmm
    from vmm.web.common import Context

DEFAULT_LISTEN = "127.0.0.1:8080"
STATIC = Path(__file__).parent / "static"
SHUTDOWN_WAIT = 20.0  # seconds running jobs get to finish when the server stops


class Options:
    def __init__(
        self,
        *,
        listen: str = DEFAULT_LISTEN,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        insecure: bool = False,
        token_file: Path,
        password_file: Path,
        access_log: bool = False,
    ):
        self.host, self.port = parse_listen(listen)
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.insecure = insecure
        self.token_file = token_file
        self.password_file = password_file
        self.access_log = access_log
        check_exposure(self)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT``; a bare ``PORT`` is on 127.0.0.1); HOST is an IP address
    or ``localhost``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") if host.startswith("[") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--listen wants an IP address and a port, got {text!r}",
                         hint="e.g. --listen 127.0.0.1:8080 or --listen [::1]:8080") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen: invalid port in {text!r}", hint="a port between 1 and 65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def check_exposure(opts: Options) -> None:
    """Loopback by default; any other address only with TLS, or with --insecure said out loud."""
    if (opts.tls_cert is None) != (opts.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    for what, path in (("--tls-cert", opts.tls_cert), ("--tls-key", opts.tls_key)):
        if path is not None and not path.is_file():
            raise ValidationError(f"{what} {path} is not a readable file")
    if not is_loopback(opts.host) and not opts.tls and not opts.insecure:
        raise UsageError(
            f"refusing to serve on {opts.host} without TLS: the password, the session cookie and "
            "the API token would cross the network in clear text",
            hint="give --tls-cert and --tls-key, or --insecure if the network is trusted "
            "(or put the server behind a TLS proxy on 127.0.0.1)",
        )


def build_app(context: Context) -> Starlette:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    from vmm.web import api, api_build, api_extra, api_host, ui, ui_host, ui_images
    from vmm.web.security import Guard

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await context.watcher.start()
        try:
            yield
        finally:
            await context.watcher.stop()
            running = context.jobs.running()
            if running:  # let a start finish its critical section (or unwind) before exiting
                await asyncio.to_thread(
                    lambda: [j.done.wait(SHUTDOWN_WAIT / len(running)) for j in running]
                )

    routes = [
        *api.ROUTES,
        *api_host.ROUTES,
        *api_extra.ROUTES,
        *api_build.ROUTES,
        *ui.ROUTES,
        *ui_host.ROUTES,
        *ui_images.ROUTES,
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(Guard, context=lambda: context, login_page=ui.login_page_bytes)],
    )
    app.state.vmm = context
    return app


def build_context(
    vmm: Vmm,
    opts: Options,
    *,
    network_info: Callable[[], dict[str, Any]],
    network_prune: Callable[[], dict[str, Any]],
) -> tuple[Context, bool]:
    """The server's state; also whether the token file was just made."""
    from vmm.host import process
    from vmm.web.auth import RateLimit, Sessions, load_or_create_token
    from vmm.web.common import Context
    from vmm.web.events import Hub, Watcher
    from vmm.web.jobs import Jobs

    token, made = load_or_create_token(opts.token_file)
    hub = Hub()
    context = Context(
        vmm, hub=hub, watcher=Watcher(vmm, hub, reap=process.reap), jobs=Jobs(hub), token=token,
        password_file=opts.password_file, sessions=Sessions(), ratelimit=RateLimit(), tls=opts.tls,
        network_info=network_info, network_prune=network_prune,
    )  # fmt: skip
    return context, made


def serve(app: Starlette, opts: Options) -> None:
    """Run until SIGINT or SIGTERM (uvicorn's handlers: a graceful stop)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=opts.host,
        port=opts.port,
        ssl_certfile=str(opts.tls_cert) if opts.tls_cert else None,
        ssl_keyfile=str(opts.tls_key) if opts.tls_key else None,
        ws="wsproto",
        http="h11",
        loop="asyncio",
        lifespan="on",
        proxy_headers=False,  # the rate limit counts the real peer, never X-Forwarded-For
        server_header=False,
        access_log=opts.access_log,
        log_level="info" if opts.access_log else "warning",
        limit_concurrency=512,
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run()
