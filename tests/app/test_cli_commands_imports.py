"""The subcommand modules never import the CLI entry point (``trafficcast.app.cli`` imports them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trafficcast.app.commands

COMMANDS_DIR = Path(trafficcast.app.commands.__file__).parent
COMMAND_MODULES = sorted(COMMANDS_DIR.glob("*.py"))


def imports_of_app_cli(source: str) -> list[str]:
    """The statements of ``source`` (anywhere, functions included) that import ``trafficcast.app.cli``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name == "trafficcast.app.cli"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module == "trafficcast.app.cli":
                found.append("from trafficcast.app.cli import ...")
            elif node.module == "app" and any(alias.name == "cli" for alias in node.names):
                found.append("from app import cli")
    return found


@pytest.mark.parametrize(
    "source",
    [
        "import trafficcast.app.cli",
        "import os, trafficcast.app.cli as cli",
        "from trafficcast.app.cli import main",
        "from app import cli",
        "def run():\n    from trafficcast.app.cli import _describe\n",
    ],
)
def test_the_check_sees_every_form_of_importing_app_cli(source: str) -> None:
    assert len(imports_of_app_cli(source)) == 1


def test_the_check_ignores_other_app_modules() -> None:
    assert imports_of_app_cli("import trafficcast.app.registry\nfrom trafficcast.app.commands.common import describe") == []


def test_no_subcommand_module_imports_app_cli() -> None:
    assert {p.name for p in COMMAND_MODULES} >= {"common.py", "retrain_cmd.py", "registry_cmd.py"}
    offenders = {
        p.name: found
        for p in COMMAND_MODULES
        if (found := imports_of_app_cli(p.read_text(encoding="utf-8")))
    }
    assert offenders == {}
