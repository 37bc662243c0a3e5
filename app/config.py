"""One settings object for every front door (environment prefix GADSYNTH_, optional YAML file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "load_settings"]

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"


class Settings(BaseSettings):
    """GadSynth run-time configuration.

    Every field can be set with an environment variable ``GADSYNTH_<FIELD>`` (e.g. ``GADSYNTH_MODELS_DIR``) or
    in a YAML file named by ``GADSYNTH_CONFIG``. The MAP variables ``HOLOSCAN_INPUT_PATH``,
    ``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH`` are honoured by the MAP entry point.
    """

    model_config = SettingsConfigDict(env_prefix="GADSYNTH_", env_ignore_empty=True, extra="ignore")

    models_dir: Path = Field(default=REPO_MODELS, description="Folder holding one sub-folder per model.")
    model: str | None = Field(default=None, description="Model folder name; None picks by the roles the study has.")
    selection_rules: Path | None = Field(
        default=None, description="Series-selection rules (JSON); None uses the rules shipped in the package."
    )
    # Output series numbers: fixed and configurable, never random.
    synthetic_series_number: int = Field(default=9001, ge=1, le=2**31 - 1)
    beyond_dose_series_number: int = Field(default=9002, ge=1, le=2**31 - 1)
    seg_series_number: int = Field(default=9003, ge=1, le=2**31 - 1)
    sc_series_number: int = Field(default=9004, ge=1, le=2**31 - 1)
    write_beyond_standard_dose: bool = False
    write_secondary_capture: bool = False
    # Inference.
    providers: list[str] | None = Field(
        default=None, description="ONNX Runtime providers in order; None = TensorRT > CUDA > CPU as available."
    )
    intra_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime threads; 0 lets it choose.")
    tta: bool = Field(default=False, description="8-way flip test-time augmentation (slow on CPU).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("models_dir")
    @classmethod
    def _models_dir_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"models_dir must be an existing folder of models. Found {str(value)!r}.")
        return value


def load_settings(**overrides: Any) -> Settings:
    """Build the settings: YAML file (``GADSYNTH_CONFIG``) < environment < explicit overrides."""
    file_values: dict[str, Any] = {}
    config_path = os.environ.get("GADSYNTH_CONFIG")
    if config_path:
        loaded = yaml.safe_load(Path(config_path).read_text())
        if not isinstance(loaded, dict):
            raise ValueError(
                f"GADSYNTH_CONFIG {config_path!r} must hold a YAML mapping. Found {type(loaded).__name__}."
            )
        file_values = loaded
    env_settings = Settings()
    merged = {**file_values, **env_settings.model_dump(exclude_unset=True), **overrides}
    return Settings(**merged)
