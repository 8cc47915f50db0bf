"""Fixtures for the web tests: one ``vmm serve`` per test module (in its own network
namespace, with the fake firecracker and a fake kernel + small ext4 image as ``default``)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VmmEnv, remove_test_dir, use_fake_firecracker
from tests.netns import NetNS, require_netns
from tests.web.harness import Server


def make_server(
    *,
    extra: list[str] | None = None,
    password: bool = True,
    setup: Callable[[VmmEnv, Path], None] = use_fake_firecracker,
) -> Iterator[Server]:
    require_netns()
    root = Path("/tmp") / f"vmmw{secrets.token_hex(3)}"
    root.mkdir(mode=0o755)
    env = VmmEnv(root=root, config=root / "config.json", data_dir=root / "data")
    ns = NetNS().create()
    server = Server(env, ns, root, extra=extra)
    try:
        setup(env, root / "fake")
        if password:
            server.set_password()
        server.start()
        yield server
    finally:
        server.stop()
        ns.delete()
        remove_test_dir(root)


@pytest.fixture
def browser() -> Iterator[Any]:
    from tests.web.browsing import chromium

    yield from chromium()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from make_server()


@pytest.fixture
def fresh_server() -> Iterator[Server]:
    """A server of the test's own (for tests that change its state: rate limits, sessions)."""
    yield from make_server()


@pytest.fixture
def bucket(server: Server, tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A fake Firecracker CI bucket in the module's server's namespace (its rootfs, 3 MiB, sent
    slowly: about 1.5 s, so the download's live line shows); the base URL and the objects."""
    from tests.web.bucket import ROOTFS, bucket_files, serve_bucket

    files = bucket_files(tmp_path, rootfs_mb=3)
    with serve_bucket(server.ns, files, slow={ROOTFS}) as url:
        yield url, files
