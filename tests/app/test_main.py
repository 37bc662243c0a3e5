"""`python -m app` as MAP runners call it: the SDK's options, the HOLOSCAN_* variables, exit codes 0/2/1."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from app.__main__ import USAGE_ERROR, _parser, main
from app.config import Settings
from app.run_cli import run
from operators.writers.enums import ReportStatus
from operators.writers.report import PipelineReport
from tests.conftest import REPO

MODELS = REPO / "models"

pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `main` passes to run_study (which is not run)."""
    seen: list[dict[str, Any]] = []

    def fake_run_study(input_path: Path, output_path: Path, *, settings: Settings, **options: Any) -> PipelineReport:
        seen.append({"input": input_path, "output": output_path, "settings": settings, **options})
        return PipelineReport(status=ReportStatus.OK)

    monkeypatch.setattr("app.runner.run_study", fake_run_study)
    return seen


def _report(folder: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((folder / "report.json").read_text())
    return report


class TestOptions:
    @pytest.mark.parametrize(
        ("name", "level"),
        [
            ("DEBUG", "DEBUG"),
            ("info", "INFO"),
            ("WARN", "WARNING"),
            ("warning", "WARNING"),
            ("Error", "ERROR"),
            ("CRITICAL", "CRITICAL"),
        ],
    )
    def test_the_sdk_log_levels(self, name: str, level: str) -> None:
        assert _parser().parse_args(["-l", name]).log_level == level
        assert _parser().parse_args(["--log-level", name]).log_level == level

    def test_the_sdk_options_are_accepted(self, tmp_path: Path) -> None:
        args = _parser().parse_args(
            ["-l", "WARN", "-w", str(tmp_path / "work"), "-t", "localhost:8001", "-i", "in", "-o", "out", "-m", "m"]
        )
        assert (args.workdir, args.triton_server_netloc) == (tmp_path / "work", "localhost:8001")
        assert (args.input, args.output, args.model) == (Path("in"), Path("out"), Path("m"))

    def test_help_documents_the_exit_codes(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_:
            main(["-l", "WARN", "-w", "/tmp/x", "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "--workdir" in out and "--log-level" in out
        assert "2 the study is not eligible" in out and "usage errors exit 1" in out

    @pytest.mark.parametrize("argv", [["--no-such-option"], ["-l", "LOUD"], ["-w"]])
    def test_usage_errors_exit_1_not_2(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == USAGE_ERROR == 1
        assert "usage: python -m app" in capsys.readouterr().err


class TestPathsFromSettings:
    def test_holoscan_variables(
        self, calls: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HOLOSCAN_INPUT_PATH", str(tmp_path / "in"))
        monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(tmp_path / "out"))
        monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(MODELS))
        assert main(["-l", "WARN", "-w", str(tmp_path / "work")]) == 0
        (call,) = calls
        assert (call["input"], call["output"], call["settings"].models_dir) == (
            tmp_path / "in",
            tmp_path / "out",
            MODELS,
        )
        assert call["settings"].log_level == "WARNING" and call["preview"] is False
        assert logging.getLogger().level == logging.WARNING

    def test_options_beat_the_variables(
        self, calls: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HOLOSCAN_INPUT_PATH", str(tmp_path / "in"))
        monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(tmp_path / "out"))
        monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(tmp_path / "no-models"))
        argv = ["-i", str(tmp_path / "i"), "-o", str(tmp_path / "o"), "-m", str(MODELS), "--model-name", "x"]
        assert main([*argv, "--preview"]) == 0
        (call,) = calls
        assert (call["input"], call["output"], call["settings"].models_dir) == (tmp_path / "i", tmp_path / "o", MODELS)
        assert call["settings"].model == "x" and call["preview"] is True

    def test_the_sdk_defaults_without_any_source(self, calls: list[dict[str, Any]]) -> None:
        assert main([]) == 0
        assert (calls[0]["input"], calls[0]["output"]) == (Path("input"), Path("output"))


class TestConfigurationErrors:
    """A bad installation is not the study's fault: exit 1, one line, report.json with status error."""

    def test_bad_map_models_folder(
        self, calls: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
    ) -> None:
        monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(tmp_path / "out"))
        monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(tmp_path / "no-models"))
        with caplog.at_level(logging.ERROR):
            assert main(["-i", str(tmp_path)]) == 1
        assert calls == []
        (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "models_dir must be an existing folder" in record.getMessage() and record.exc_info is None
        report = _report(tmp_path / "out")
        assert report["status"] == "error" and report["error"]["error"] == "ConfigurationError"
        assert "no-models" in report["error"]["message"]

    def test_bad_yaml_file(self, calls: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        config = tmp_path / "list.yaml"
        config.write_text("- 1\n")
        monkeypatch.setenv("GADSYNTH_CONFIG", str(config))
        assert main(["-o", str(tmp_path / "out")]) == 1
        assert "must hold a YAML mapping" in _report(tmp_path / "out")["error"]["message"]

    def test_gadsynth_run_bad_models_dir(self, tmp_path: Path) -> None:
        cli = typer.Typer()
        cli.command()(run)
        result = CliRunner().invoke(cli, [str(tmp_path), str(tmp_path / "out"), "--models-dir", str(tmp_path / "no")])
        assert (result.exit_code == 1 and result.exception is None) or isinstance(result.exception, SystemExit)
        assert _report(tmp_path / "out")["error"]["error"] == "ConfigurationError"


def test_missing_study_is_not_eligible_with_a_report(tmp_path: Path) -> None:
    """As a MAP runner calls it (-l WARN -w DIR): exit 2 and report.json, not an argparse error."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("GADSYNTH_", "HOLOSCAN_"))}
    argv = ["-l", "WARN", "-w", str(tmp_path / "work"), "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-m", "app", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr
    report = _report(tmp_path / "out")
    assert report["status"] == "not_eligible" and report["failed_stage"] == "load_study"
