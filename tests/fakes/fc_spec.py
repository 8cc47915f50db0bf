"""Firecracker's official v1.11 API spec as JSON Schema: shared by the spec tests and the fake.

Swagger 2.0 keeps its schemas under ``definitions`` and points at them with
``$ref: "#/definitions/X"``; JSON Schema draft 7 resolves that layout as it is, so the
conversion only has to add what the YAML does not say but Firecracker does:

- ``additionalProperties: false`` on every object that declares ``properties``: every
  Firecracker config struct is ``#[serde(deny_unknown_fields)]``, so one unknown key is a 400.
  Objects without ``properties`` (``MmdsContentsObject``, the ``CpuConfig`` maps) are free-form
  by design and stay open.
- optionally, ``null`` for optional properties: serde reads ``null`` into ``Option<T>``, so the
  real server accepts it. The fake needs that leniency to answer like Firecracker; the body
  tests stay strict (vmm never sends ``null``).

Test-only code: it needs PyYAML and jsonschema, which vmm itself must not depend on.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

FIRECRACKER_VERSION = "1.11.0"

# tests/fakes/fc_spec.py -> <repo>; the spec is test data inside the repository.
REPO = Path(__file__).resolve().parents[2]
DEFAULT_SPEC_PATH = REPO / "tests" / "data" / "firecracker" / "v1.11.0" / "firecracker.yaml"

# Firecracker's own id rules (docs/firecracker.md, "Identifiers").
API_ID_RE = re.compile(r"^[A-Za-z0-9_]+$")  # drive_id, iface_id (path and body)
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")  # the process --id


class SpecMissing(RuntimeError):
    pass


def spec_path() -> Path:
    """Where the spec is: ``$VMM_FC_SPEC`` if set, else ``tests/data/firecracker/v1.11.0/``."""
    override = os.environ.get("VMM_FC_SPEC")
    return Path(override) if override else DEFAULT_SPEC_PATH


def _yaml_12_loader() -> Any:
    """SafeLoader without YAML 1.1's ``yes/no/on/off`` booleans: the Logger level enum has a
    value ``Off`` that PyYAML would otherwise turn into ``False``. (PyYAML is imported only when
    the JSON copy of the spec has to be made.)"""
    import yaml

    class Yaml12Loader(yaml.SafeLoader):  # type: ignore[misc]  # (no PyYAML stubs)
        pass

    Yaml12Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Yaml12Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )
    return Yaml12Loader


def parse_yaml(text: str) -> dict[str, Any]:
    import yaml

    spec: dict[str, Any] = yaml.load(text, Loader=_yaml_12_loader())  # a SafeLoader subclass
    return spec


@cache
def load_spec(path: Path | None = None) -> dict[str, Any]:
    path = path or spec_path()
    if not path.is_file():
        raise SpecMissing(
            f"Firecracker API spec not found at {path}: the spec tests and the fake firecracker "
            "need tests/data/firecracker/v1.11.0/firecracker.yaml "
            "(or VMM_FC_SPEC pointing at it)"
        )
    spec = _parsed(path)
    if spec.get("swagger") != "2.0" or str(spec["info"]["version"]) != FIRECRACKER_VERSION:
        raise SpecMissing(f"{path} is not the Firecracker {FIRECRACKER_VERSION} swagger spec")
    return spec


def _parsed(path: Path) -> dict[str, Any]:
    """The YAML parsed, through a copy next to it keyed by the YAML's sha256: parsing the YAML
    costs the fake firecracker ~50 ms of CPU at every start (50 parallel starts in the
    benchmarks would measure the fake rather than vmm); the copy loads in under a millisecond.
    ``marshal``, not JSON: the spec has integer keys (response codes) that JSON would turn into
    strings; marshal only rebuilds data. The YAML stays the source."""
    import hashlib
    import marshal

    raw = path.read_bytes()
    cache = path.with_name(f".{path.stem}.{hashlib.sha256(raw).hexdigest()[:16]}.marshal")
    try:
        cached = marshal.loads(cache.read_bytes())
        if isinstance(cached, dict):
            return cached
    except (OSError, ValueError, EOFError, TypeError):
        pass
    spec = parse_yaml(raw.decode())
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(marshal.dumps(spec))
        os.replace(tmp, cache)
    except OSError:  # a read-only checkout: parse every time
        with contextlib.suppress(OSError):
            tmp.unlink()
    return spec


def _walk_objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk_objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_objects(value)


def json_schema_definitions(spec: dict[str, Any], *, nullable_optionals: bool) -> dict[str, Any]:
    """The spec's ``definitions`` as draft-7 JSON Schema, closed like ``deny_unknown_fields``."""
    definitions: dict[str, Any] = copy.deepcopy(spec["definitions"])
    for node in list(_walk_objects(definitions)):
        props = node.get("properties")
        if node.get("type") == "object" and isinstance(props, dict):
            node["additionalProperties"] = False
            if nullable_optionals:
                required = set(node.get("required", ()))
                for name, prop in props.items():
                    if name not in required:
                        props[name] = {"anyOf": [{"type": "null"}, prop]}
    return definitions


class SpecValidator:
    """Validates request bodies against the definitions of the v1.11 spec."""

    def __init__(self, spec: dict[str, Any] | None = None, *, nullable_optionals: bool = False):
        self.spec = spec if spec is not None else load_spec()
        self.definitions = json_schema_definitions(self.spec, nullable_optionals=nullable_optionals)
        self._validators: dict[str, jsonschema.Draft7Validator] = {}

    def validator(self, definition: str) -> jsonschema.Draft7Validator:
        if definition not in self.definitions:
            raise KeyError(f"no definition {definition!r} in the Firecracker spec")
        if definition not in self._validators:
            schema = {"$ref": f"#/definitions/{definition}", "definitions": self.definitions}
            jsonschema.Draft7Validator.check_schema(schema)
            self._validators[definition] = jsonschema.Draft7Validator(schema)
        return self._validators[definition]

    def errors(self, definition: str, body: Any) -> list[jsonschema.ValidationError]:
        return sorted(self.validator(definition).iter_errors(body), key=lambda e: list(e.path))

    def validate(self, definition: str, body: Any) -> None:
        """Raise ``jsonschema.ValidationError`` (the first one) if ``body`` does not conform."""
        errors = self.errors(definition, body)
        if errors:
            raise errors[0]

    # -- paths --------------------------------------------------------------------------------

    def operation(self, method: str, path: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """The spec's path template, path parameters and operation object for a request."""
        for template, ops in self.spec["paths"].items():
            params = _match_template(template, path)
            if params is not None and method.lower() in ops:
                return template, params, ops[method.lower()]
        raise KeyError(f"{method} {path} is not an operation of the Firecracker spec")

    def body_definition(self, method: str, path: str) -> str:
        """The definition a request body must follow, e.g. ``PUT /drives/x`` -> ``Drive``."""
        _, _, op = self.operation(method, path)
        for param in op.get("parameters", ()):
            if param.get("in") == "body":
                ref: str = param["schema"]["$ref"]
                return ref.rsplit("/", 1)[-1]
        raise KeyError(f"{method} {path} takes no body in the Firecracker spec")


def _match_template(template: str, path: str) -> dict[str, str] | None:
    pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    m = re.fullmatch(pattern, path)
    return None if m is None else m.groupdict()


def describe_error(error: jsonschema.ValidationError) -> str:
    """A schema violation worded the way serde reports it inside Firecracker's fault_message."""
    where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    where = " at $" + where if where else ""
    validator = error.validator
    if validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        expected = ", ".join(f"`{k}`" for k in allowed)
        return f"unknown field `{extra[0] if extra else '?'}`, expected one of {expected}{where}"
    if validator == "required":
        missing = re.search(r"'([^']+)' is a required property", error.message)
        return f"missing field `{missing.group(1) if missing else '?'}`{where}"
    if validator == "enum":
        expected = ", ".join(f"`{v}`" for v in error.validator_value)
        return f"unknown variant `{error.instance}`, expected one of {expected}{where}"
    if validator in ("type", "anyOf"):
        return f"invalid type: {error.instance!r}{where}: {error.message}"
    return f"{error.message}{where}"
