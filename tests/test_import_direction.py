"""Imports run one way: training -> app -> operators; app reaches training only where the CLI registers commands."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

#: The modules of app/ that register training commands (phantom, train, evaluate, bench) on the command line.
CLI_REGISTRATION = {"app/cli.py"}


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_operators_import_neither_app_nor_training() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(_imported(path) & {"app", "training"})
        for path in sorted((REPO / "operators").rglob("*.py"))
        if _imported(path) & {"app", "training"}
    }
    assert offenders == {}


def test_app_imports_training_only_to_register_commands() -> None:
    offenders = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "app").rglob("*.py")
        if "training" in _imported(path) and str(path.relative_to(REPO)) not in CLI_REGISTRATION
    )
    assert offenders == []


def test_operators_import_no_holoscan() -> None:
    """The stage types and functions live in modules without Holoscan; only app/app.py (the MAP) imports it."""
    offenders = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "operators").rglob("*.py")
        if _imported(path) & {"monai", "holoscan"}
    )
    assert offenders == []
