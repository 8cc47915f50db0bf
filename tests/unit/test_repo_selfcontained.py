"""The repository stands alone: nothing in it reads a path outside the clone.

Users and contributors clone vmm and have nothing beside it (.ci/run proves it by running the
suite in a fresh clone); this test keeps such paths from coming back in the first place.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "tests" / "data" / "firecracker" / "v1.11.0" / "firecracker.yaml"
SPEC_SHA256 = "aeb3163f875f8da99178274fd3db5388d7e850c65606ec531ecd7674fb8e239c"

# Written in pieces so that this file does not match itself.
LEAVING = [
    re.compile(r"\.\./" + r"shared\b"),  # the directory beside a developer's checkout
    re.compile(r"\bparent\s*/\s*[\"']" + "sha" + r"red[\"']"),  # REPO.parent / the dir
    re.compile(r"(?<![\w.])shared/" + r"(docs|firecracker|seed)/"),  # citations of it
    re.compile(r"(?<![\w/])/" + r"work/"),  # the machine the project was written on
    # someone's real home directory (made-up example users are fine)
    re.compile(r"(?<![\w/])/" + r"home/(?!(me|user|alice|bob|nobody-here)/)[a-z_][\w-]*/"),
]
CHECKED_SUFFIXES = {".py", ".sh", ".toml", ".md", ".txt", ".service", ".cfg", ".json", ""}


def tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    files = [REPO / name for name in out.split("\0") if name]
    return [f for f in files if f.suffix in CHECKED_SUFFIXES and f.is_file()]


def test_no_path_leaves_the_repository() -> None:
    hits = []
    files = tracked_files()
    assert len(files) > 50, "git ls-files found too little: is this a clone?"
    for path in files:
        if path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(p.search(line) for p in LEAVING):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)


def test_the_patterns_catch_what_they_are_for() -> None:
    bad = [
        'DEFAULT = REPO.parent / "sha' + 'red" / "firecracker"',
        "see ../" + "shared/docs/testing.md",
        "(shared/" + "docs/firecracker.md §1)",
        "cp /" + "work/main/x .",
        "key = /" + "home/dev1/.ssh/id_ed25519",
    ]
    good = [
        "a shared guest",
        "shared by the spec tests",
        "/var/lib/vmm",
        "shared_dir/docs/",
        "e.g. --mount /" + "home/me/code:code:ro",
    ]
    assert all(any(p.search(s) for p in LEAVING) for s in bad)
    assert not any(p.search(s) for p in LEAVING for s in good)


def test_the_firecracker_spec_is_the_official_one() -> None:
    """tests/data/firecracker/v1.11.0/README.md records where the copy comes from."""
    assert hashlib.sha256(SPEC.read_bytes()).hexdigest() == SPEC_SHA256
    assert SPEC_SHA256 in (SPEC.parent / "README.md").read_text()
