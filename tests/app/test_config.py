"""Settings: one object, sources in a documented order, the MAP variables, and a non-editable install layout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import load_settings
from tests.conftest import REPO

MODELS = REPO / "models"


class TestSources:
    def test_override_beats_environment_beats_yaml(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        config = tmp_path / "gadsynth.yaml"
        config.write_text("synthetic_series_number: 7001\nseg_series_number: 7003\ntta: true\n")
        monkeypatch.setenv("GADSYNTH_CONFIG", str(config))
        monkeypatch.setenv("GADSYNTH_SEG_SERIES_NUMBER", "8003")
        settings = load_settings(tta=False)
        assert (settings.synthetic_series_number, settings.seg_series_number, settings.tta) == (7001, 8003, False)

    def test_yaml_must_be_a_mapping(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        config = tmp_path / "list.yaml"
        config.write_text("- 1\n- 2\n")
        monkeypatch.setenv("GADSYNTH_CONFIG", str(config))
        with pytest.raises(ValueError, match=r"must hold a YAML mapping\. Found list"):
            load_settings()

    def test_missing_yaml_is_named(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GADSYNTH_CONFIG", str(tmp_path / "nope.yaml"))
        with pytest.raises(ValueError, match=r"nope\.yaml', which is not a file"):
            load_settings()

    def test_holoscan_variables(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        shutil.copytree(MODELS / "ce-baseline-linear", tmp_path / "models" / "ce-baseline-linear")
        monkeypatch.setenv("HOLOSCAN_INPUT_PATH", str(tmp_path / "in"))
        monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(tmp_path / "out"))
        monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(tmp_path / "models"))
        settings = load_settings()
        assert (settings.input_path, settings.output_path) == (tmp_path / "in", tmp_path / "out")
        assert settings.models_dir == tmp_path / "models"
        monkeypatch.setenv("GADSYNTH_MODELS_DIR", str(MODELS))  # ours wins over the MAP's
        assert load_settings().models_dir == MODELS
        assert load_settings(models_dir=tmp_path / "models").models_dir == tmp_path / "models"  # and the option

    def test_models_dir_is_validated_after_merging(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="models_dir must be an existing folder"):
            load_settings(models_dir=tmp_path / "missing")


class TestInstalledLayout:
    def test_override_works_when_the_default_models_folder_is_missing(self, tmp_path: Path) -> None:
        """As in a wheel install: the packages without the repository's models/ beside them."""
        site = tmp_path / "site"
        for package in ("app", "operators"):
            shutil.copytree(REPO / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
        code = (
            "from pathlib import Path; from app.config import load_settings, REPO_MODELS; "
            "assert not REPO_MODELS.exists(), REPO_MODELS; "
            f"print(load_settings(models_dir=Path({str(MODELS)!r})).models_dir)"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GADSYNTH_", "HOLOSCAN_"))}
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(site)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == str(MODELS)
