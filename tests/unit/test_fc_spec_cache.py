"""The fake firecracker reads the spec through a marshal copy (speed); the copy must be exactly
the official YAML, and a damaged copy must not be trusted."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fakes"))

import fc_spec


def test_the_json_copy_is_the_yaml(tmp_path: Path) -> None:
    spec = tmp_path / "firecracker.yaml"
    spec.write_bytes(fc_spec.spec_path().read_bytes())
    first = fc_spec._parsed(spec)  # parses the YAML, writes the copy
    copies = list(tmp_path.glob(".firecracker.*.marshal"))
    assert len(copies) == 1
    assert fc_spec._parsed(spec) == first == fc_spec.parse_yaml(spec.read_text())
    copies[0].write_bytes(b"\x00damaged")
    assert fc_spec._parsed(spec) == first  # parsed again, not trusted
