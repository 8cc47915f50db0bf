"""Which Debian package has each program vmm runs: one table (``tools.txt``, beside this file),
read by ``scripts/lib/common.sh`` to install them, by the tests to check it covers the code, and
here for the one install hint a missing program gets (``ToolMissing``)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

TABLE = Path(__file__).with_name("tools.txt")


@cache
def packages() -> dict[str, str]:
    """program → Debian package (optional programs without a package are left out)."""
    out: dict[str, str] = {}
    try:
        lines = TABLE.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and not line.startswith("#") and fields[0] != "-" and fields[1] != "-":
            out[fields[0]] = fields[1]
    return out


def install_hint(program: str) -> str:
    """How to get ``program`` (by its base name), for the error when it is missing."""
    name = Path(program).name
    package = packages().get(name)
    if package:
        return f"apt-get install {package}"
    return f"install the package that provides {name}"
