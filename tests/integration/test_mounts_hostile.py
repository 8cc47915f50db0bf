"""Mount handling with awkward but legal input: a data dir with a space, a guest fstab that is
not UTF-8 (the guest owns that file: any bytes are possible)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_ext4
from tests.integration.test_mounts import RUNNER, guest_mounts, guest_writes, tree
from vmm.guest import ext4, mounts, mountsync
from vmm.store import Store

pytestmark = pytest.mark.integration


def test_pull_with_spaces_in_the_paths(tmp_path: Path) -> None:
    store = Store(tmp_path / "vm data")
    host = tree(tmp_path / "host dir")
    vm = guest_mounts(store, host)
    images = mountsync.MountImages(store, RUNNER)
    images.prepare(vm)
    store.save(vm)
    guest_writes(Path(vm.mounts[0].image_path or ""), "/from-guest.txt", b"hello\n")
    _, target = images.pull("vm1", "code", to=tmp_path / "pulled copy")
    assert (target / "from-guest.txt").read_text() == "hello\n"
    images.pull("vm1", "code")  # into the host dir (its path has a space too)
    assert (host / "from-guest.txt").read_text() == "hello\n"


def test_a_guest_fstab_that_is_not_utf8_is_kept_byte_for_byte(tmp_path: Path) -> None:
    rootfs = tmp_path / "root.ext4"
    etc = tmp_path / "tree" / "etc"
    etc.mkdir(parents=True)
    own = b"# caf\xe9 (latin-1)\n/dev/vda / ext4 rw 0 1\n"
    (etc / "fstab").write_bytes(own)
    make_ext4(rootfs, 64, tmp_path / "tree")
    ms = [mounts.parse_mount_spec("/h:code")]
    for _ in range(2):  # every start rewrites vmm's block
        mounts.write_fstab(RUNNER, rootfs, ms)
    raw = (ext4.read_file(RUNNER, rootfs, "/etc/fstab") or "").encode(errors="surrogateescape")
    assert raw.startswith(own) and raw.count(b"LABEL=vmm-code") == 1
