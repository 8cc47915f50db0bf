"""Where this vmm comes from: the git commit of the checkout it runs from, if any.

Read from ``.git`` directly (HEAD, then the loose ref or ``packed-refs``), so ``vmm version``
needs no git binary; worktrees (``.git`` is a file naming the real git dir) are followed.
"""

from __future__ import annotations

import re
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def _git_dir(root: Path) -> Path | None:
    dotgit = root / ".git"
    if dotgit.is_dir():
        return dotgit
    if dotgit.is_file():
        m = re.match(r"gitdir:\s*(.+)", dotgit.read_text().strip())
        if m:
            path = Path(m.group(1))
            return path if path.is_absolute() else (root / path).resolve()
    return None


def git_commit(package_dir: Path | None = None) -> str | None:
    """The commit of the checkout this package runs from (``<checkout>/src/vmm``), else None.

    Only the src layout counts: an installed copy inside some other repository (a venv in a
    checkout) is not that repository's code.
    """
    pkg = (package_dir or Path(__file__).parent).resolve()
    if pkg.parent.name != "src":
        return None
    try:
        git = _git_dir(pkg.parent.parent)
        return _resolve_head(git) if git is not None else None
    except OSError:
        return None


def _resolve_head(git: Path) -> str | None:
    head = (git / "HEAD").read_text().strip()
    if _SHA.match(head):
        return head  # detached
    m = re.match(r"ref:\s*(\S+)", head)
    if not m:
        return None
    ref = m.group(1)
    common = git
    if (git / "commondir").is_file():
        common = (git / (git / "commondir").read_text().strip()).resolve()
    for base in (git, common):
        loose = base / ref
        if loose.is_file():
            value = loose.read_text().strip()
            return value if _SHA.match(value) else None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and _SHA.match(parts[0]):
                return parts[0]
    return None
