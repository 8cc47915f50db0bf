"""Errors → exit codes and messages in ``vmm.cli.main`` (handlers swapped for ones that fail)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from vmm import cli
from vmm.errors import ValidationError

pytestmark = pytest.mark.unit


def run_with(
    handler: Callable[[object], int], monkeypatch: pytest.MonkeyPatch, *, debug: bool = False
) -> int:
    monkeypatch.setattr(cli, "_fast_list_args", lambda argv: cli.Namespace(handler=handler, debug=debug))
    return cli.main(["list"])


def test_vmm_error_is_one_line_with_hint(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def handler(_args: object) -> int:
        raise ValidationError("bad thing", hint="do this")

    assert run_with(handler, monkeypatch) == 1
    assert capsys.readouterr().err == "error: bad thing\nhint: do this\n"


def test_unexpected_errors_have_no_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def boom(_args: object) -> int:
        raise KeyError("x")

    assert run_with(boom, monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: internal error (KeyError") and "Traceback" not in err

    def denied(_args: object) -> int:
        raise PermissionError(13, "Permission denied", "/var/lib/vmm/vms")

    assert run_with(denied, monkeypatch) == 1
    assert capsys.readouterr().err.startswith("error: Permission denied: /var/lib/vmm/vms")


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_args: object) -> int:
        raise KeyError("x")

    with pytest.raises(KeyError):
        run_with(boom, monkeypatch, debug=True)


def test_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["create"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hint: see 'vmm create --help'" in err


@pytest.mark.parametrize("command", [None, *__import__("vmm.cli.parser", fromlist=["x"]).COMMAND_MODULES])
def test_every_command_has_help(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"] if command else ["--help"])
    assert exc.value.code == 0
    assert "usage: vmm" in capsys.readouterr().out


def test_console_script_entry_point() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "vmm"]
    assert ep.load() is cli.main
