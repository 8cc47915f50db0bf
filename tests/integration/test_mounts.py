"""Mount images for real (mkfs.ext4 -d, debugfs rdump), without booting a guest.

The guest's side is simulated on the image itself: ``debugfs ssv mnt_count`` is what a guest's
rw mount does to the superblock without changing any file, and ``debugfs write`` is a guest
that wrote a file.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import VmmEnv, make_ext4, register_artifacts
from vmm.errors import ConflictError, ValidationError
from vmm.guest import ext4, mountfs, mounts, mountsync
from vmm.models import VM
from vmm.runner import Runner
from vmm.store import Store

pytestmark = pytest.mark.integration

RUNNER = Runner()


def tree(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "bin.dat").write_bytes(os.urandom(200_000))
    (root / "empty").mkdir()
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "secret").write_text("s")
    (root / "secret").chmod(0o600)
    (root / "link").symlink_to("src/pkg/mod.py")
    os.link(root / "secret", root / "hardlink")
    return root


def guest_mounts(store: Store, host: Path, *, read_only: bool = False, tag: str = "code") -> VM:
    ms = mounts.parse_mounts(
        [f"{host}:{tag}:{'ro' if read_only else 'rw'}"], vm_name="vm1", mounts_dir=store.mounts_dir
    )
    vm = VM(name="vm1", id="12345678", ip="172.16.0.2", mounts=ms)
    store.ensure_dirs()
    store.save(vm)
    return vm


def guest_writes(image: Path, path: str, content: bytes) -> None:
    ext4.write_files(RUNNER, image, [ext4.GuestFile(path, content)])


def guest_mounts_without_changes(image: Path) -> None:
    subprocess.run(["debugfs", "-w", "-R", "ssv mnt_count 7", str(image)], check=True, capture_output=True)


def test_image_content_matches_the_host_tree(tmp_path: Path) -> None:
    host = tree(tmp_path / "host")
    m = mounts.parse_mount_spec(f"{host}:code")
    image = tmp_path / "m.ext4"
    scan = mountfs.build_image(RUNNER, m, image)
    assert scan.digest == mountfs.image_digest(RUNNER, image, tmp_path / "scratch")
    label = subprocess.run(["e2label", str(image)], capture_output=True, text=True, check=True).stdout
    assert label.strip() == "vmm-code"
    assert image.stat().st_size >= mountfs.RW_HEADROOM  # rw: room for the guest's writes
    assert image.stat().st_blocks * 512 < 64 * 1024 * 1024  # ... which costs no disk (sparse)
    out = tmp_path / "out"
    out.mkdir()
    mountfs.rdump(RUNNER, image, out)
    assert (out / "link").readlink() == Path("src/pkg/mod.py")
    assert (out / "secret").stat().st_mode & 0o777 == 0o600
    assert (out / "empty").is_dir() and not (out / "lost+found").exists()


def test_ro_image_has_no_journal_and_fits_many_small_files(tmp_path: Path) -> None:
    host = tmp_path / "many"
    for i in range(3000):
        d = host / f"d{i % 30}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_text(str(i))
    m = mounts.parse_mount_spec(f"{host}:many:ro")
    image = tmp_path / "ro.ext4"
    scan = mountfs.build_image(RUNNER, m, image)
    assert scan.entries == 3030
    features = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True).stdout
    assert "has_journal" not in features
    assert scan.digest == mountfs.image_digest(RUNNER, image, tmp_path / "scratch")


def test_start_rebuilds_unless_the_guest_changed_the_image(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    host = tree(tmp_path / "host")
    vm = guest_mounts(store, host)
    images = mountsync.MountImages(store, RUNNER)
    assert images.prepare(vm) == []
    m = vm.mounts[0]
    image = Path(m.image_path or "")
    assert m.stamp and m.fingerprint and not images.guest_changed(m)

    # the guest mounted it rw but changed nothing: rebuilt, with the host's new file
    guest_mounts_without_changes(image)
    (host / "new-on-host").write_text("h")
    assert not images.guest_changed(m)
    assert images.prepare(vm) == []
    assert ext4.read_file(RUNNER, image, "/new-on-host") == "h"

    # the guest wrote a file: the image is kept, with a note, and sync is refused
    guest_writes(image, "/src/from-guest.txt", b"guest data\n")
    (host / "later-on-host").write_text("h")
    assert images.guest_changed(m)
    notes = images.prepare(vm)
    assert len(notes) == 1 and "'code'" in notes[0] and "mount pull" in notes[0]
    assert ext4.read_file(RUNNER, image, "/src/from-guest.txt") == "guest data\n"
    assert ext4.read_file(RUNNER, image, "/later-on-host") is None
    store.save(vm)
    with pytest.raises(ConflictError, match="changed mount 'code'"):
        images.sync("vm1", "code")
    # --force discards the guest's file
    images.sync("vm1", "code", force=True)
    assert ext4.read_file(RUNNER, image, "/src/from-guest.txt") is None
    assert ext4.read_file(RUNNER, image, "/later-on-host") == "h"
    assert not images.guest_changed(store.load("vm1").mounts[0])


def test_ro_mounts_are_always_rebuilt(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    host = tree(tmp_path / "host")
    vm = guest_mounts(store, host, read_only=True)
    images = mountsync.MountImages(store, RUNNER)
    images.prepare(vm)
    (host / "run.sh").write_text("changed\n")
    assert images.prepare(vm) == []
    assert ext4.read_file(RUNNER, Path(vm.mounts[0].image_path or ""), "/run.sh") == "changed\n"


def test_pull_into_host_dir_and_elsewhere(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    host = tree(tmp_path / "host")
    vm = guest_mounts(store, host)
    images = mountsync.MountImages(store, RUNNER)
    with pytest.raises(Exception, match="no image yet"):
        images.pull("vm1", "code")
    images.prepare(vm)
    store.save(vm)
    image = Path(vm.mounts[0].image_path or "")
    guest_writes(image, "/src/pkg/mod.py", b"x = 2\n")
    guest_writes(image, "/notes/todo.txt", b"from guest\n")
    subprocess.run(["debugfs", "-w", "-R", "rm /bin.dat", str(image)], check=True, capture_output=True)

    # --to: a new directory gets the guest's files; a non-empty one is refused
    _, target = images.pull("vm1", "code", to=tmp_path / "copy")
    assert (target / "notes" / "todo.txt").read_text() == "from guest\n"
    with pytest.raises(ConflictError, match="is not empty"):
        images.pull("vm1", "code", to=tmp_path / "copy")
    images.pull("vm1", "code", to=tmp_path / "copy", force=True)

    # the host changed since the image was built: pulling over it is refused ...
    (host / "host-edit").write_text("mine")
    with pytest.raises(ConflictError, match="changed since the mount image was built"):
        images.pull("vm1", "code")
    assert (host / "bin.dat").exists()
    (host / "host-edit").unlink()
    # ... and allowed once it is back: the host dir becomes the guest's copy
    images.pull("vm1", "code")
    assert (host / "src" / "pkg" / "mod.py").read_text() == "x = 2\n"
    assert (host / "notes" / "todo.txt").read_text() == "from guest\n"
    assert not (host / "bin.dat").exists()
    assert (host / "link").is_symlink() and (host / "secret").stat().st_mode & 0o777 == 0o600
    assert not (host / "lost+found").exists()
    m = store.load("vm1").mounts[0]
    assert not images.guest_changed(m)  # image and host agree: a sync needs no --force
    images.sync("vm1", "code")
    assert list(store.mounts_dir.glob(".*")) == []  # no staging dirs left behind


def test_cli_mount_spec_errors_are_one_line(vmm_env: VmmEnv, tmp_path: Path) -> None:
    vmm_env.write_config(engine="qemu", accel="tcg")
    register_artifacts(vmm_env, tmp_path)
    (tmp_path / "f").write_text("x")
    for spec, message in [
        ("/a:b:c:d", "expected /host/path:tag[:ro|rw]"),
        (f"{tmp_path}", "expected /host/path:tag[:ro|rw]"),
        (f"{tmp_path}:", "the tag is missing"),
        (f"{tmp_path}:t:rwx", "is not ro or rw"),
        ("relative:t", "is not absolute"),
        (f"{tmp_path}/nope:t", "does not exist"),
        (f"{tmp_path}/f:t", "is not a directory"),
        (f"{tmp_path}:bad/tag", "is not valid"),
    ]:
        p = vmm_env.run("create", "v1", "--mount", spec)
        assert p.returncode == 1, (spec, p.stderr)
        first = p.stderr.splitlines()[0]
        assert first.startswith("error: ") and message in first, (spec, p.stderr)
    dup = vmm_env.run("create", "v1", "--mount", f"{tmp_path}:t", "--mount", f"{tmp_path}:t:ro")
    assert dup.returncode == 1 and "duplicate mount tag 't'" in dup.stderr
    assert not (vmm_env.data_dir / "vms" / "v1.json").exists()


def test_cli_create_list_delete(vmm_env: VmmEnv, tmp_path: Path) -> None:
    vmm_env.write_config(engine="qemu", accel="tcg")
    register_artifacts(vmm_env, tmp_path)
    host = tree(tmp_path / "host")
    vmm_env.run("create", "v1", "--mount", f"{host}:code:ro", "--mount", f"{host}/src:src", check=True)
    listed = vmm_env.run("mount", "list", "v1", check=True).stdout
    assert "/mnt/code" in listed and "ro" in listed and "not built" in listed
    bad = vmm_env.run("mount", "sync", "v1", "nope")
    assert bad.returncode == 1 and "has no mount 'nope'" in bad.stderr and "code, src" in bad.stderr
    sync = vmm_env.run("mount", "sync", "v1", "src", check=True)
    assert "Rebuilt mount src" in sync.stdout
    assert (vmm_env.data_dir / "mounts" / "v1-src.ext4").is_file()
    nothing = vmm_env.run("mount", "list", "v2")
    assert nothing.returncode == 1 and "does not exist" in nothing.stderr
    vmm_env.run("delete", "v1", check=True)
    assert list((vmm_env.data_dir / "mounts").iterdir()) == []


def test_fstab_written_into_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "root.ext4"
    etc = tmp_path / "tree" / "etc"
    etc.mkdir(parents=True)
    (etc / "fstab").write_text("/dev/vda / ext4 rw 0 1\n")
    make_ext4(rootfs, 64, tmp_path / "tree")
    ms = [mounts.parse_mount_spec("/h:code:ro"), mounts.parse_mount_spec("/h:data")]
    mounts.write_fstab(RUNNER, rootfs, ms)
    mounts.write_fstab(RUNNER, rootfs, ms)  # idempotent: existing mount points are not re-made
    text = ext4.read_file(RUNNER, rootfs, "/etc/fstab") or ""
    assert text.startswith("/dev/vda / ext4 rw 0 1\n") and text.count("LABEL=vmm-") == 2
    assert ext4.existing(RUNNER, rootfs, ["/mnt/code", "/mnt/data"]) == {"/mnt/code", "/mnt/data"}
    fsck = subprocess.run(["e2fsck", "-fn", str(rootfs)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_missing_host_dir_at_start(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    host = tree(tmp_path / "host")
    vm = guest_mounts(store, host)
    images = mountsync.MountImages(store, RUNNER)
    images.prepare(vm)
    os.rename(host, tmp_path / "moved")
    notes = images.prepare(vm)
    assert "is missing" in notes[0]
    Path(vm.mounts[0].image_path or "").unlink()
    with pytest.raises(ValidationError, match="does not exist"):
        images.prepare(vm)
