from __future__ import annotations

from pathlib import Path

import pytest

from vmm.errors import ConflictError, RecordError, ValidationError
from vmm.guest import mountfs, mounts
from vmm.models import VM, Mount

pytestmark = pytest.mark.unit


def test_parse_spec_defaults_to_rw() -> None:
    m = mounts.parse_mount_spec("/srv/code:code")
    assert (m.host_path, m.tag, m.read_only, m.label) == ("/srv/code", "code", False, "vmm-code")
    assert mounts.parse_mount_spec("/srv/code/:c_1-X:ro").read_only
    assert mounts.parse_mount_spec("/srv/code:c:rw").host_path == "/srv/code"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/a:b:c:d", "expected /host/path:tag[:ro|rw]"),
        ("/a", "expected /host/path:tag[:ro|rw]"),
        ("/a:", "the tag is missing"),
        ("/a::ro", "the tag is missing"),
        (":tag", "the host path is missing"),
        ("/a:tag:rx", "mode 'rx' is not ro or rw"),
        ("rel/dir:tag", "is not absolute"),
        ("/a:bad.tag", "tag 'bad.tag' is not valid"),
        ("/a:" + "x" * 33, "is not valid"),
    ],
)
def test_parse_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        mounts.parse_mount_spec(spec)
    assert message in err.value.brief
    assert "\n" not in err.value.brief


def test_parse_mounts_checks_dirs_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    md = tmp_path / "mounts"
    ok = mounts.parse_mounts([f"{tmp_path}:a", f"{tmp_path}:b:ro"], vm_name="vm1", mounts_dir=md)
    assert [m.image_path for m in ok] == [str(md / "vm1-a.ext4"), str(md / "vm1-b.ext4")]
    for specs, message in [
        ([f"{tmp_path}/missing:a"], "does not exist"),
        ([f"{tmp_path}/file:a"], "is not a directory"),
        ([f"{tmp_path}:a", f"{tmp_path}:a:ro"], "duplicate mount tag 'a'"),
    ]:
        with pytest.raises(ValidationError, match=message):
            mounts.parse_mounts(specs, vm_name="vm1", mounts_dir=md)


def test_labels_fit_ext4_and_stay_distinct() -> None:
    assert mounts.label_for("code") == "vmm-code"
    assert mounts.label_for("x" * 12) == "vmm-" + "x" * 12
    long_a, long_b = mounts.label_for("project-alpha-one"), mounts.label_for("project-alpha-two")
    assert len(long_a) <= 16 and len(long_b) <= 16 and long_a != long_b
    assert mounts.label_for("project-alpha-one") == long_a  # deterministic


def test_image_clash_between_vms() -> None:
    other = VM(name="a-b", id="1", ip="", mounts=[Mount("/x", "c", image_path="/m/a-b-c.ext4")])
    mine = [Mount("/y", "b-c", image_path="/m/a-b-c.ext4")]
    with pytest.raises(ConflictError, match="share its image file"):
        mounts.check_image_clash(mine, [other])
    mounts.check_image_clash([Mount("/y", "d", image_path="/m/a-d.ext4")], [other])


def test_fstab_lines_by_label_with_nofail() -> None:
    ro = Mount("/h", "code", read_only=True, label="vmm-code")
    rw = Mount("/h2", "data", label="vmm-data")
    assert mounts.fstab_line(ro) == "LABEL=vmm-code\t/mnt/code\text4\tro,nofail,x-systemd.device-timeout=10s\t0\t0"
    assert mounts.fstab_line(rw).split("\t")[3].startswith("rw,nofail")


def test_merge_fstab_keeps_the_guests_lines_and_replaces_vmms_block() -> None:
    guest = "# guest's own\n/dev/vda / ext4 rw 0 1\n"
    m = [Mount("/h", "code", label="vmm-code")]
    once = mounts.merge_fstab(guest, m)
    assert once is not None and once.startswith(guest)
    assert once.count(mounts.FSTAB_BEGIN) == 1 and "LABEL=vmm-code" in once
    assert mounts.merge_fstab(once, m) is None  # already right: nothing to write
    changed = mounts.merge_fstab(once, [Mount("/h", "other", label="vmm-other")])
    assert changed is not None and "vmm-code" not in changed and changed.count(mounts.FSTAB_END) == 1
    assert changed.startswith(guest)
    removed = mounts.merge_fstab(once, [])
    assert removed == guest
    assert mounts.merge_fstab(guest, []) is None
    assert mounts.merge_fstab(None, m) == "\n".join(
        [mounts.FSTAB_BEGIN, mounts.fstab_line(m[0]), mounts.FSTAB_END]
    ) + "\n"


def test_drives_are_read_only_for_ro_mounts() -> None:
    ms = [Mount("/a", "a-1", read_only=True, image_path="/d/mounts/v-a-1.ext4"), Mount("/b", "b", image_path="/d/mounts/v-b.ext4")]
    drives = mounts.drives(ms)
    assert [(d.drive_id, str(d.path), d.read_only, d.root) for d in drives] == [
        ("mount0", "/d/mounts/v-a-1.ext4", True, False),
        ("mount1", "/d/mounts/v-b.ext4", False, False),
    ]


def test_image_size_and_mkfs_argv() -> None:
    scan = mountfs.TreeScan("x", 100 * mountfs.MiB, 1000)
    ro = mountfs.image_size(scan, read_only=True)
    rw = mountfs.image_size(scan, read_only=False)
    assert 110 * mountfs.MiB < ro < 140 * mountfs.MiB and ro % mountfs.MiB == 0
    assert rw >= ro + mountfs.RW_HEADROOM
    argv = mountfs.mkfs_argv(Path("/i"), Path("/s"), label="vmm-a", read_only=True, inodes=5000)
    assert argv == ["mkfs.ext4", "-q", "-F", "-L", "vmm-a", "-N", "5000", "-d", "/s",
                    "-O", "^has_journal", "/i"]
    assert "^has_journal" not in mountfs.mkfs_argv(Path("/i"), Path("/s"), label="l", read_only=False, inodes=1)


def test_scan_tree_sees_content_modes_and_links_not_times(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "f"
    f.write_text("a")
    base = mountfs.scan_tree(tmp_path).digest
    import os

    os.utime(f, (1, 1))
    assert mountfs.scan_tree(tmp_path).digest == base
    f.write_text("b")
    assert mountfs.scan_tree(tmp_path).digest != base
    f.write_text("a")
    f.chmod(0o600)
    assert mountfs.scan_tree(tmp_path).digest != base
    f.chmod(0o644)
    assert mountfs.scan_tree(tmp_path).digest == base
    (tmp_path / "l").symlink_to("d/f")
    assert mountfs.scan_tree(tmp_path).digest != base
    (tmp_path / "l").unlink()
    (tmp_path / "lost+found").mkdir()  # ext4's own directory is not content
    assert mountfs.scan_tree(tmp_path).digest == base


def _record(mounts_raw: list[object]) -> dict[str, object]:
    return {"name": "v", "id": "12345678", "state": "created", "ip": "172.16.0.2",
            "schema_version": 1, "mounts": mounts_raw}


def test_record_decoding_old_and_new_mounts() -> None:
    old = VM.from_dict(_record([{"host_path": "/h", "tag": "t", "read_only": True, "image_path": None}]), "x")
    assert old.mounts[0].label is None and old.mounts[0].read_only
    full = Mount("/h", "t", False, "/d/v-t.ext4", "vmm-t", "1:2:3:4:1:2c6", "ab", "2025-01-01")
    again = VM.from_dict(_record([full.to_dict()]), "x")
    assert again.mounts == [full]
    with pytest.raises(RecordError):
        VM.from_dict(_record([{"host_path": "/h", "tag": "t", "bogus": 1}]), "x")
    with pytest.raises(RecordError):
        VM.from_dict(_record([{"host_path": "/h", "tag": "t", "read_only": "yes"}]), "x")
    with pytest.raises(RecordError):
        VM.from_dict(_record([{"host_path": "/h"}]), "x")
