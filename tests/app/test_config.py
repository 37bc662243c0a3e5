"""Settings: one object, sources in a documented order, the MAP variables, and a non-editable install layout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import load_settings, output_folder
from tests.conftest import REPO

MODELS = REPO / "models"

pytestmark = pytest.mark.usefixtures("clean_environment")


def _models(folder: Path) -> Path:
    """A models folder with one model in it."""
    shutil.copytree(MODELS / "ce-baseline-linear", folder / "ce-baseline-linear")
    return folder


class TestSources:
    def test_override_beats_environment_beats_yaml(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        config = tmp_path / "gadsynth.yaml"
        config.write_text("synthetic_series_number: 7001\nseg_series_number: 7003\ntta: true\n")
        monkeypatch.setenv("GADSYNTH_CONFIG", str(config))
        monkeypatch.setenv("GADSYNTH_SEG_SERIES_NUMBER", "8003")
        settings = load_settings(tta=False)
        assert (settings.synthetic_series_number, settings.seg_series_number, settings.tta) == (7001, 8003, False)

    def test_each_source_in_its_place(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """option > GADSYNTH_* > HOLOSCAN_* > YAML > default, one source removed at a time."""
        option, ours, maps, yaml = (_models(tmp_path / name) for name in ("option", "ours", "map", "yaml"))
        config = tmp_path / "gadsynth.yaml"
        config.write_text(f"models_dir: {yaml}\ninput_path: {yaml}\n")
        monkeypatch.setenv("GADSYNTH_CONFIG", str(config))
        monkeypatch.setenv("GADSYNTH_MODELS_DIR", str(ours))
        monkeypatch.setenv("GADSYNTH_INPUT_PATH", str(ours))
        monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(maps))
        monkeypatch.setenv("HOLOSCAN_INPUT_PATH", str(maps))
        settings = load_settings(models_dir=option, input_path=option)
        assert (settings.models_dir, settings.input_path) == (option, option)
        assert (load_settings().models_dir, load_settings().input_path) == (ours, ours)
        monkeypatch.delenv("GADSYNTH_MODELS_DIR")
        monkeypatch.delenv("GADSYNTH_INPUT_PATH")
        assert (load_settings().models_dir, load_settings().input_path) == (maps, maps)
        monkeypatch.delenv("HOLOSCAN_MODEL_PATH")
        monkeypatch.delenv("HOLOSCAN_INPUT_PATH")
        assert (load_settings().models_dir, load_settings().input_path) == (yaml, yaml)
        monkeypatch.delenv("GADSYNTH_CONFIG")
        assert (load_settings().models_dir, load_settings().input_path) == (MODELS, None)

    def test_unprefixed_variables_are_not_settings(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A field name alone in the environment (MODELS_DIR, INPUT_PATH) is someone else's variable."""
        monkeypatch.setenv("MODELS_DIR", str(tmp_path / "missing"))
        monkeypatch.setenv("INPUT_PATH", str(tmp_path))
        settings = load_settings()
        assert (settings.models_dir, settings.input_path) == (MODELS, None)

    def test_empty_variables_are_unset(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GADSYNTH_MODELS_DIR", "")
        monkeypatch.setenv("HOLOSCAN_MODEL_PATH", "")
        monkeypatch.setenv("GADSYNTH_CONFIG", "")
        assert load_settings().models_dir == MODELS

    @pytest.mark.parametrize(("name", "level"), [("warn", "WARNING"), ("Critical", "CRITICAL"), ("debug", "DEBUG")])
    def test_log_level_takes_the_sdk_names(self, name: str, level: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("GADSYNTH_LOG_LEVEL", name)
        assert load_settings().log_level == level

    def test_unknown_log_level_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="log_level"):
            load_settings(log_level="LOUD")

    @pytest.mark.parametrize(
        ("name", "text", "error", "message"),
        [
            ("list.yaml", "- 1\n- 2\n", ValueError, r"list\.yaml' must hold a YAML mapping\. Found list"),
            ("nope.yaml", None, ValueError, r"nope\.yaml', which is not a file"),
            ("broken.yaml", "tta: [true\n", ValueError, r"broken\.yaml' cannot be read as YAML"),
            ("zero.yaml", "seg_series_number: 0\n", ValidationError, "seg_series_number"),
        ],
    )
    def test_bad_yaml_is_named(
        self,
        name: str,
        text: str | None,
        error: type[Exception],
        message: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Not a mapping, missing, not YAML, a wrong value: a clear error, never a silent default."""
        if text is not None:
            (tmp_path / name).write_text(text)
        monkeypatch.setenv("GADSYNTH_CONFIG", str(tmp_path / name))
        with pytest.raises(error, match=message):
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

    def test_models_dir_is_validated_after_merging(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(ValidationError, match="models_dir must be an existing folder"):
            load_settings(models_dir=tmp_path / "missing")
        monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(tmp_path / "missing"))  # a bad lower source, overridden
        assert load_settings(models_dir=MODELS).models_dir == MODELS


class TestOutputFolder:
    """Where report.json goes when the settings cannot be built."""

    def test_from_the_map_variable_when_the_models_folder_is_bad(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(tmp_path / "out"))
        monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(tmp_path / "missing"))
        with pytest.raises(ValidationError):
            load_settings()
        assert output_folder() == tmp_path / "out"
        assert output_folder(output_path=tmp_path / "option") == tmp_path / "option"

    def test_without_the_yaml_file_when_it_is_bad(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        assert output_folder() is None
        monkeypatch.setenv("GADSYNTH_CONFIG", str(tmp_path / "nope.yaml"))
        assert output_folder() is None
        monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(tmp_path / "out"))  # the other sources still count
        assert output_folder() == tmp_path / "out"
        assert output_folder(output_path=tmp_path / "option") == tmp_path / "option"


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
