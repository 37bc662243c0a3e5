"""One settings object for every front door (environment prefix GADSYNTH_, optional YAML file, MAP variables)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

__all__ = ["CONFIG_VARIABLE", "Settings", "load_settings"]

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"
#: Environment variable naming the optional YAML settings file.
CONFIG_VARIABLE = "GADSYNTH_CONFIG"


def _aliases(field: str, *extra: str) -> AliasChoices:
    """A field set by its name (keyword or YAML key), by GADSYNTH_<FIELD>, then by the extra variables, in order."""
    return AliasChoices(field, f"GADSYNTH_{field.upper()}", *extra)


class Settings(BaseSettings):
    """GadSynth run-time configuration.

    Sources, highest first: explicit keyword arguments (command-line options), the environment
    (``GADSYNTH_<FIELD>``; the MAP variables ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH`` and
    ``HOLOSCAN_MODEL_PATH`` set ``input_path``, ``output_path`` and ``models_dir`` when the GADSYNTH_ variable is
    not set), the YAML file named by ``GADSYNTH_CONFIG``, then the defaults. Every value is validated once, after
    the sources are merged.
    """

    model_config = SettingsConfigDict(env_prefix="GADSYNTH_", env_ignore_empty=True, extra="ignore")

    models_dir: Path = Field(
        default=REPO_MODELS,
        validation_alias=_aliases("models_dir", "HOLOSCAN_MODEL_PATH"),
        description="Folder holding one sub-folder per model.",
    )
    input_path: Path | None = Field(
        default=None,
        validation_alias=_aliases("input_path", "HOLOSCAN_INPUT_PATH"),
        description="The MAP's study folder (python -m app without -i).",
    )
    output_path: Path | None = Field(
        default=None,
        validation_alias=_aliases("output_path", "HOLOSCAN_OUTPUT_PATH"),
        description="The MAP's output folder (python -m app without -o).",
    )
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
    min_working_spacing_mm: float = Field(
        default=1.0,
        gt=0.0,
        le=10.0,
        description="Finest spacing the pipeline works at: finer T1s (e.g. 0.5 mm) run on a grid this coarse and the "
        "contrast signal comes back to the source grid (memory and time bounded, detail of the source kept).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("models_dir")
    @classmethod
    def _models_dir_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"models_dir must be an existing folder of models. Found {str(value)!r}.")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        config = os.environ.get(CONFIG_VARIABLE)
        if config:
            sources += (YamlConfigSettingsSource(settings_cls, yaml_file=Path(config)),)
        return sources


def _check_config_file() -> None:
    """A clear error for a GADSYNTH_CONFIG that is not a YAML mapping (pydantic-settings would ignore or crash)."""
    config = os.environ.get(CONFIG_VARIABLE)
    if not config:
        return
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"{CONFIG_VARIABLE} names {config!r}, which is not a file.")
    loaded = yaml.safe_load(path.read_text())
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{CONFIG_VARIABLE} {config!r} must hold a YAML mapping. Found {type(loaded).__name__}.")


def load_settings(**overrides: Any) -> Settings:
    """Build the settings: explicit overrides > environment > YAML file (``GADSYNTH_CONFIG``) > defaults.

    Raises
    ------
    ValueError
        When the YAML file is missing or not a mapping.
    pydantic.ValidationError
        When a value is invalid (e.g. ``models_dir`` is not a folder), after all sources are merged.
    """
    _check_config_file()
    return Settings(**overrides)
