"""src/vmm/host/tools.txt lists every external program the code runs, and the test script
installs each one: a program the code starts but nobody installs fails on a fresh machine only.

The scan is static: argv lists in Python (a list literal passed to a run/popen-like call or
assigned to ``argv``, or one whose second item is an option) and command words in the shell
scripts. Programs vmm runs under a configurable name (``qemu_bin``, ``firecracker_bin``) are
listed by hand in the table too.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "src" / "vmm" / "host" / "tools.txt"
PROGRAM = re.compile(r"[a-z][a-z0-9._+-]*")

SPAWNERS = {
    "run", "popen", "Popen", "check_output", "check_call", "call", "_run", "run_checked",
    "run_debugfs", "stream", "execvp", "execv", "spawn", "_ip", "argv",
}
SHELL_BUILTINS = set(
    ["if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac", "in", "function", "return", "local", "export", "set", "unset", "shift", "exit", "trap", "source", "echo", "printf", "read", "cd", "pwd", "test", "true", "false", "break", "continue", "eval", "exec", "wait", "declare", "readonly", "command", "type", "hash", "getopts", "umask", "ulimit", "let", "alias", "builtin", "mapfile", "select", "time", "compgen"]
)
# Shell utilities every Debian system has (Essential: yes): the scripts need no entry for them.
ESSENTIAL = """basename chmod cut date dirname grep head id install ln mkdir mktemp mv od readlink realpath
sed sha256sum sort tail timeout touch tr truncate uname"""
# Command-line lists in the Python sources that are not argv of a program.
# tests/integration/test_image_build.py: package names; test_runner.py: a program that must not exist
PYTHON_NOT_PROGRAMS = {"x", "nft-not-here", "delete"}  # delete: a vmm command in an argv tuple


def table() -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in TABLE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        program, package, role = line.split()
        assert role in ("run", "test", "optional"), line
        if program != "-":
            assert program not in rows, f"{program} listed twice"
            rows[program] = (package, role)
    return rows


def _first_str(node: ast.AST) -> str | None:
    if isinstance(node, ast.List | ast.Tuple) and node.elts:
        first = node.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def programs_in_python(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        candidate = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in SPAWNERS:
                candidate = _first_str(node.args[0])
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in ("argv", "cmd") for t in node.targets
        ):
            candidate = _first_str(node.value)
        elif isinstance(node, ast.List | ast.Tuple) and len(node.elts) > 1:
            second = node.elts[1]
            if (
                isinstance(second, ast.Constant)
                and isinstance(second.value, str)
                and len(second.value) > 1
                and second.value.startswith("-")
            ):
                candidate = _first_str(node)
        if candidate and PROGRAM.fullmatch(candidate):
            found.add(candidate)
    return found - PYTHON_NOT_PROGRAMS


def _strip_quotes(code: str) -> str:
    """Quoted strings become ``""``; command substitutions inside double quotes are kept."""
    out, i, n = [], 0, len(code)
    while i < n:
        c = code[i]
        if c == "\\":
            out.append(code[i : i + 2])
            i += 2
        elif c == "'":
            end = code.find("'", i + 1)
            i = n if end < 0 else end + 1
            out.append("''")
        elif c == '"':
            i += 1
            subs = []
            while i < n and code[i] != '"':
                if code[i] == "\\":
                    i += 2
                elif code.startswith("$(", i):
                    depth, j = 0, i
                    while j < n:
                        depth += {"(": 1, ")": -1}.get(code[j], 0)
                        if depth == 0 and code[j] == ")":
                            break
                        j += 1
                    subs.append(code[i : j + 1])
                    i = j + 1
                else:
                    i += 1
            i += 1
            out.append('""' + " ".join(_strip_quotes(sub) for sub in subs))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _shell_code_lines(text: str) -> list[str]:
    """The script without comments, heredoc bodies and the text of quoted strings."""
    kept, heredoc = [], None
    for line in text.splitlines():
        if heredoc:
            if line.strip() == heredoc:
                heredoc = None
            continue
        m = re.search(r"<<-?\s*['\"]?([A-Za-z_]+)", line)
        if m:
            heredoc = m.group(1)
        if not line.lstrip().startswith("#"):
            kept.append(re.sub(r"(^|\s)#[^'\"]*$", "", line))
    code = _strip_quotes("\n".join(kept)).replace("\\\n", " ")  # continuation lines joined
    return code.replace("((", "(( ").splitlines()


def programs_in_shell(paths: list[Path]) -> set[str]:
    functions: set[str] = set()
    for p in paths:
        functions |= set(re.findall(r"^\s*([A-Za-z_][\w-]*)\s*\(\)", p.read_text(), re.M))
    found: set[str] = set()
    command_position = re.compile(
        r"(?:^|[;&|`]|(?<![=(])\(|\bthen\b|\bdo\b|\belse\b|\bexec\b|\bquietly\b|!)\s*"
        r"([a-z][a-z0-9._+-]*)(?=\s|$|;|\))"
    )
    for p in paths:
        for line in _shell_code_lines(p.read_text()):
            if re.match(r"^\s*[\w|*. -]+\)", line):  # a case pattern: "  --flag)"
                line = line.split(")", 1)[1]
            for m in command_position.finditer(line):
                word = m.group(1)
                if word not in SHELL_BUILTINS | functions:
                    found.add(word)
    return found


def shell_scripts() -> list[Path]:
    return sorted((REPO / "scripts").rglob("*.sh")) + [REPO / ".ci" / "run"]


def test_every_program_the_python_code_runs_is_listed() -> None:
    listed = table()
    missing = {}
    for root in ("src", "tests"):
        for path in (REPO / root).rglob("*.py"):
            for program in programs_in_python(path) - listed.keys():
                missing.setdefault(program, str(path.relative_to(REPO)))
    assert not missing, f"add these to {TABLE.relative_to(REPO)}: {missing}"


def test_every_program_the_scripts_run_is_listed() -> None:
    essential = set(ESSENTIAL.split())
    missing = programs_in_shell(shell_scripts()) - table().keys() - essential
    assert not missing, f"add these to {TABLE.relative_to(REPO)}: {sorted(missing)}"


def test_the_scanners_see_known_calls() -> None:
    """The scan itself must work: it finds calls that are known to be there."""
    assert {"ping", "sysctl"} <= programs_in_python(REPO / "tests" / "integration" / "test_network.py") | programs_in_python(REPO / "tests" / "netns.py")
    assert {"lz4", "zstd"} <= programs_in_python(REPO / "src" / "vmm" / "guest" / "bzimage.py")
    assert {"curl", "wget", "apt-get"} <= programs_in_shell([REPO / "scripts" / "install.sh"])


def test_engine_binaries_are_listed() -> None:
    listed = table()
    assert "qemu-system-x86_64" in listed and "firecracker" in listed


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the machine scripts/test.sh set up (root)")
def test_every_listed_program_is_installed() -> None:
    """After scripts/test.sh installed the packages, every non-optional program is on PATH:
    this catches a wrong package name in the table."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    absent = [
        f"{program} ({package})"
        for program, (package, role) in table().items()
        if role != "optional" and shutil.which(program, path=path) is None
    ]
    assert not absent, f"not installed: {absent}"
