"""The shape docs/architecture.md describes, checked on the source: layers import downwards only,
no import circles, no source file over 500 lines, and programs are started from two places.

Imports are read with ``ast`` — module level and inside functions alike (a lazy import is still
a dependency); only imports under ``if TYPE_CHECKING:`` (they never run) and a script's
``if __name__ == "__main__":`` entry point are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[2] / "src"
MAX_LINES = 500

# Above the services: who may import the composition root and the services.
TOP = ("vmm.cli", "vmm.web", "vmm.__main__", "vmm.app", "vmm.services")
# The use cases that are not (yet) under vmm.services but are built on the composition root.
SERVICE_LIKE = ("vmm.autostart", "vmm.host.doctor", "vmm.host.checks", "vmm.host.leftovers")
# Where an external program may be started (anything else goes through vmm.runner.Runner):
SPAWNERS = {
    "vmm.runner": "the one runner of external programs",
    "vmm.host.process": "the hypervisor, detached in its own session/scope",
    "vmm.guest.nsinit": "pid 1 of the image sandbox, inside its namespaces (stdlib only)",
    "vmm.cli.vms": "`vmm ssh` replaces vmm with ssh (exec, no child)",
    "vmm.cli.fanout": "forks itself, one child per VM of `vmm start A B C` (no program run)",
}
SPAWN_CALLS = {
    ("subprocess", "run"), ("subprocess", "Popen"), ("subprocess", "call"),
    ("subprocess", "check_call"), ("subprocess", "check_output"), ("os", "system"),
    ("os", "fork"), ("os", "posix_spawn"), ("os", "posix_spawnp"), ("os", "popen"),
}  # fmt: skip


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "vmm").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines under ``if TYPE_CHECKING:`` (never run) or ``if __name__ == "__main__":`` (a
    script's entry point, not a dependency of the module)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and any(
            k in ast.unparse(node.test) for k in ("TYPE_CHECKING", "__name__ == '__main__'")
        ):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The vmm modules ``name`` imports at run time."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", 0) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("vmm"):
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) - {"vmm"} for name, path in mods.items()}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_nothing_imports_the_cli_or_the_web_server() -> None:
    """The two front ends (``vmm.cli``, ``vmm.web``) sit side by side on the services: neither
    imports the other (``vmm serve`` starts the server: cli.serve is its one entry)."""
    bad = [
        f"{m} imports {d}"
        for m, deps in graph().items()
        for d in deps
        if (_under(d, ("vmm.cli",)) and not _under(m, ("vmm.cli", "vmm.__main__")))
        or (_under(d, ("vmm.web",)) and not _under(m, ("vmm.web", "vmm.cli.serve")))
    ]
    assert bad == []


def test_nothing_below_the_services_imports_them() -> None:
    bad = [
        f"{m} imports {d}"
        for m, deps in graph().items()
        for d in deps
        if _under(d, ("vmm.app", "vmm.services")) and not _under(m, TOP + SERVICE_LIKE)
        and m != "vmm"  # the package's lazy ``from vmm import Vmm``
    ]
    assert bad == []


def test_no_import_circles() -> None:
    g = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert [" -> ".join(c) for c in cycles] == []


def test_no_source_file_over_500_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_programs_are_started_from_the_runner_and_the_process_module_only() -> None:
    bad = []
    for name, path in modules().items():
        if name in SPAWNERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                if isinstance(owner, ast.Name) and (owner.id, node.func.attr) in SPAWN_CALLS:
                    bad.append(f"{name}:{node.lineno} {owner.id}.{node.func.attr}")
                if isinstance(owner, ast.Name) and owner.id == "os" and node.func.attr.startswith(("exec", "spawn")):
                    bad.append(f"{name}:{node.lineno} os.{node.func.attr}")
    assert bad == []


def test_the_checks_see_what_they_look_for() -> None:
    """The checker itself: it finds a known lazy import, a known TYPE_CHECKING-only import is
    left out, and the spawners it exempts do spawn."""
    g = graph()
    assert "vmm.services.vms" in g["vmm.app"]  # imported inside Vmm.__init__
    assert "vmm.app" not in g["vmm.autostart"]  # only under TYPE_CHECKING there
    assert "vmm.cli.common" in g["vmm.cli.vms"]
    source = (SRC / "vmm" / "runner.py").read_text()
    assert "subprocess.run(" in source and "subprocess.Popen(" in source
