"""OCI image layouts and ``docker save`` archives: their layers, in order, applied to a tree.

The JSON is someone else's: every field is checked for its type, blobs are named only by a
sha256 digest, and each layer goes through ``vmm.guest.archives``' checked extraction.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from vmm.errors import ValidationError
from vmm.guest.archives import extract_tar, member_path


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
        raise ValidationError(f"OCI layout {layout}: unsupported digest {digest!r}")
    p = layout / "blobs" / algo / hexd
    if not p.is_file():
        raise ValidationError(f"OCI layout {layout}: blob {digest} is missing")
    return p


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise ValidationError(f"cannot read {what} {path}: {type(exc).__name__}") from None


def _objects(value: Any, what: str) -> list[dict[str, Any]]:
    """``value`` as a list of JSON objects, or a clear error (the input is someone else's)."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValidationError(f"{what} is not a list of objects")
    return value


def _digest_of(desc: dict[str, Any], what: str) -> str:
    digest = desc.get("digest")
    if not isinstance(digest, str):
        raise ValidationError(f"{what} has no digest")
    return digest


def _platform_ok(desc: dict[str, Any]) -> bool:
    plat = desc.get("platform") or {}
    if not isinstance(plat, dict):
        return False
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    return not plat or (plat.get("os") in (None, "linux") and plat.get("architecture") in (None, arch))


def oci_layers(layout: Path, ref: str | None) -> list[Path]:
    """The layer blobs of the image ``ref`` (or the only/first image) in an OCI layout."""
    if not (layout / "oci-layout").is_file() or not (layout / "index.json").is_file():
        raise ValidationError(f"{layout} is not an OCI image layout (no oci-layout / index.json)")
    index = _json(layout / "index.json", "OCI index")
    if not isinstance(index, dict):
        raise ValidationError(f"OCI index {layout / 'index.json'} is not an object")
    manifests = _objects(index.get("manifests") or [], "the OCI index's manifests")
    if ref is not None:
        manifests = [
            m for m in manifests
            if isinstance(m.get("annotations"), dict)
            and m["annotations"].get("org.opencontainers.image.ref.name") == ref
        ]
        if not manifests:
            raise ValidationError(f"OCI layout {layout} has no image named {ref!r}")
    for _depth in range(4):
        candidates = [m for m in manifests if _platform_ok(m)]
        if not candidates:
            raise ValidationError(f"OCI layout {layout} has no image for this platform")
        desc = candidates[0]
        doc = _json(_blob(layout, _digest_of(desc, "an OCI manifest entry")), "OCI manifest")
        if not isinstance(doc, dict):
            raise ValidationError(f"an OCI manifest in {layout} is not an object")
        if "layers" in doc:
            layers = _objects(doc["layers"], "an OCI manifest's layers")
            return [_blob(layout, _digest_of(layer, "an OCI layer")) for layer in layers]
        manifests = _objects(doc.get("manifests") or [], "an OCI index's manifests")
    raise ValidationError(f"OCI layout {layout}: nested indexes too deep")


def apply_layers(layers: list[Path], tree: Path) -> None:
    for layer in layers:
        extract_tar(layer, tree, layer=True)


def apply_oci_layout(layout: Path, ref: str | None, tree: Path) -> None:
    apply_layers(oci_layers(layout, ref), tree)


def apply_docker_archive(archive: Path, tree: Path) -> None:
    """``docker save`` output: manifest.json lists each image's layer tars in order."""
    manifest = archive / "manifest.json"
    if not manifest.is_file():
        if (archive / "oci-layout").is_file():
            apply_oci_layout(archive, None, tree)
            return
        raise ValidationError("not a docker-archive (no manifest.json): make it with 'docker save'")
    entries = _json(manifest, "docker-archive manifest")
    if not isinstance(entries, list) or not entries:
        raise ValidationError("docker-archive manifest.json lists no image")
    if not isinstance(entries[0], dict):
        raise ValidationError("docker-archive manifest.json: the image entry is not an object")
    names = entries[0].get("Layers") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValidationError("docker-archive manifest.json: Layers is not a list of file names")
    layers = []
    for name in names:
        p = archive / member_path(name)
        if not p.is_file():
            raise ValidationError(f"docker-archive: layer {name} is missing")
        layers.append(p)
    apply_layers(layers, tree)
