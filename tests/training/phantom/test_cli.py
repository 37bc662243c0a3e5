"""`gadsynth phantom`: help, a small run, and bad input (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli

RUNNER = CliRunner()


class TestPhantomCommand:
    def test_help_lists_every_option(self) -> None:
        result = RUNNER.invoke(cli, ["phantom", "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        for option in ("--seed", "--out", "--size", "--field-strength", "--agent", "--dose", "--roles", "--vendor",
                       "--t1-orientation", "--t1-sequence", "--resolution", "--noise", "--noise-spatially-varying",
                       "--bias", "--lesion-count", "--lesion-kinds", "--lesion", "--motion", "--motion-mm",
                       "--output-format", "--transfer-syntax", "--save-series-truth", "--no-dicom"):  # fmt: skip
            assert option in result.output, option

    def test_small_run_writes_truth(self, tmp_path: Path) -> None:
        args = ["phantom", "--seed", "11", "--out", str(tmp_path), "--size", "small", "--no-dicom"]
        args += ["--roles", "t1_pre,t1_low_dose,t1_standard_dose", "--lesion", "metastasis:15", "--vendor", "philips"]
        result = RUNNER.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert f"Phantom study written to {tmp_path}" in result.output
        params = json.loads((tmp_path / "truth" / "params.json").read_text())
        assert params["options"]["vendor"] == "philips"
        assert [lesion["type"] for lesion in params["lesions"]] == ["metastasis"]
        assert (tmp_path / "truth" / "y_sd.nii.gz").exists()
        assert not (tmp_path / "dicom").exists()

    def test_bad_option_exits_2(self, tmp_path: Path) -> None:
        result = RUNNER.invoke(cli, ["phantom", "--seed", "1", "--out", str(tmp_path), "--vendor", "canon"])
        assert result.exit_code == 2
        assert "vendor must be one of ['siemens', 'ge', 'philips']. Found 'canon'" in result.output

    def test_bad_lesion_exits_2(self, tmp_path: Path) -> None:
        result = RUNNER.invoke(cli, ["phantom", "--seed", "1", "--out", str(tmp_path), "--lesion", "cyst"])
        assert result.exit_code == 2
        assert "Unknown lesion kind 'cyst'" in result.output
