"""Every command is documented: it appears in the README's front page and in a docs/ page of the
manual (besides the generated docs/cli.md), and its --help has a runnable example."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from selectit.cli import main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
DOCS = Path(__file__).resolve().parents[2] / "docs"
#: The manual's pages, without the reference generated from the commands' own --help.
MANUAL = "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")) if p.name != "cli.md")


def all_commands(group: click.Group = main, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        found.append((full, command))
        if isinstance(command, click.Group):
            found.extend(all_commands(command, prefix=f"{full} "))
    return found


COMMANDS = all_commands()


@pytest.mark.parametrize("name", [name for name, _ in COMMANDS])
def test_command_is_in_the_readme(name: str) -> None:
    assert f"selectit {name}" in README, f"`selectit {name}` is not documented in README.md"


@pytest.mark.parametrize("name", [name for name, _ in COMMANDS])
def test_command_is_in_the_manual(name: str) -> None:
    assert f"selectit {name}" in MANUAL, f"`selectit {name}` is described in no docs/ page (docs/cli.md aside)"


@pytest.mark.parametrize("name", [name for name, _ in COMMANDS])
def test_help_has_a_runnable_example(name: str) -> None:
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`selectit {name} --help` has no example"
    example = result.output.split("Example", 1)[1]
    assert f"selectit {name.split()[0]}" in example, f"the example of `selectit {name}` does not run it"


def test_the_fusion_commands_share_one_set_of_knobs() -> None:
    """rank, select, export, report and sql: the same fusion options, with the library's defaults."""
    from selectit.contract import DEFAULT_ALPHA, DEFAULT_FORMULA, DEFAULT_TOP

    def knobs(name: str) -> dict[str, tuple[object, str | None]]:
        params = {p.name: p for p in main.commands[name].params}
        return {k: (params[k].default, params[k].help) for k in ("models", "prompt_set", "alpha", "formula", "weights")}

    first = knobs("rank")
    assert first["alpha"][0] == DEFAULT_ALPHA and first["formula"][0] == DEFAULT_FORMULA
    for name in ("select", "export", "report", "sql"):
        assert knobs(name) == first, name
    for name in ("report", "sql"):
        assert next(p for p in main.commands[name].params if p.name == "top").default == DEFAULT_TOP


def _cli_reference():  # noqa: ANN202 - the module scripts/cli_reference.py
    """scripts/cli_reference.py, imported by path (scripts/ is not a package and not in the wheel)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_up_to_date() -> None:
    """docs/cli.md is exactly what scripts/cli_reference.py generates from every command's --help."""
    ref = _cli_reference()
    written = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    assert written == ref.reference(), f"docs/cli.md is out of date with the commands' --help; run `{ref.REGENERATE}`"


def test_the_cli_reference_covers_every_command() -> None:
    ref = _cli_reference()
    assert [" ".join(path) for path, _ in ref.commands(main)] == [name for name, _ in COMMANDS]
