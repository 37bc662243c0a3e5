"""One settings object for every front door (environment prefix GADSYNTH_, optional YAML file, MAP variables)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

__all__ = ["CONFIG_VARIABLE", "LOG_LEVELS", "MAP_VARIABLES", "MapPaths", "Settings", "load_settings", "output_folder"]

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"
#: Environment variable naming the optional YAML settings file.
CONFIG_VARIABLE = "GADSYNTH_CONFIG"


#: The MAP variables that MONAI Deploy / Holoscan runners set, and the field each fills.
MAP_VARIABLES = {
    "input_path": "HOLOSCAN_INPUT_PATH",
    "output_path": "HOLOSCAN_OUTPUT_PATH",
    "models_dir": "HOLOSCAN_MODEL_PATH",
}
#: Log level names accepted (the MONAI Deploy SDK's, case-insensitive, and Python's) and the Python level each means.
LOG_LEVELS = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARNING",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
    "CRITICAL": "CRITICAL",
}


class _MapVariables(PydanticBaseSettingsSource):
    """The ``HOLOSCAN_*`` variables of :data:`MAP_VARIABLES`, keyed by field name (empty ones are ignored)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = MAP_VARIABLES.get(field_name)
        value = os.environ.get(variable) if variable else None
        return value or None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {name: self.get_field_value(info, name)[0] for name, info in self.settings_cls.model_fields.items()}
        return {name: value for name, value in found.items() if value is not None}


class _Sources(BaseSettings):
    """The sources of every settings class here, highest first (see :class:`Settings`)."""

    model_config = SettingsConfigDict(env_prefix="GADSYNTH_", env_ignore_empty=True, extra="ignore")
    #: Whether the YAML file named by GADSYNTH_CONFIG is a source.
    read_config_file: ClassVar[bool] = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings, _MapVariables(settings_cls))
        config = os.environ.get(CONFIG_VARIABLE)
        if config and cls.read_config_file:
            sources += (YamlConfigSettingsSource(settings_cls, yaml_file=Path(config)),)
        return sources


class MapPaths(_Sources):
    """The MAP's study and output folders alone, from the same sources as :class:`Settings`.

    Lets a front door find where to write report.json when the full settings cannot be built.
    """

    input_path: Path | None = Field(default=None, description="The MAP's study folder (python -m app without -i).")
    output_path: Path | None = Field(default=None, description="The MAP's output folder (python -m app without -o).")


class _MapPathsWithoutFile(MapPaths):
    """MapPaths from every source but the YAML file (for when that file is what is wrong)."""

    read_config_file: ClassVar[bool] = False


class Settings(MapPaths):
    """GadSynth run-time configuration.

    Sources, highest first:

    1. explicit keyword arguments (command-line options; :func:`load_settings`);
    2. the environment, ``GADSYNTH_<FIELD>`` (e.g. ``GADSYNTH_MODELS_DIR``);
    3. the MAP variables ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH``, which set
       ``input_path``, ``output_path`` and ``models_dir`` (so a ``GADSYNTH_`` variable beats the MAP's);
    4. the YAML file named by ``GADSYNTH_CONFIG`` (keys are field names);
    5. the defaults.

    Every value is validated once, after the sources are merged: a missing default models folder does not matter
    when another source names one.
    """

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
    sr_series_number: int = Field(default=9005, ge=1, le=2**31 - 1)
    uncertainty_series_number: int = Field(default=9006, ge=1, le=2**31 - 1)
    uncertainty: bool = Field(
        default=True,
        description="Write the synthetic image's per-voxel uncertainty (a derived MR series) and a 'Low confidence' "
        "SEG segment, for models whose folder has an uncertainty.json.",
    )
    write_beyond_standard_dose: bool = False
    write_secondary_capture: bool = False
    write_sr: bool = Field(default=True, description="Write the report as a DICOM SR (TID 1500) beside the SEG.")
    # Inference.
    providers: list[str] | None = Field(
        default=None, description="ONNX Runtime providers in order; None = TensorRT > CUDA > CPU as available."
    )
    intra_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime threads; 0 lets it choose.")
    tta: bool = Field(default=False, description="8-way flip test-time augmentation (slow on CPU).")
    brain_crop: bool = Field(
        default=True,
        description="Run the network on the brain's bounding box (plus margin and context) only; False = the whole "
        "volume, as models trained on whole 4 mm heads (ce-lowdose-v1 up to 1.1.0) were evaluated.",
    )
    ood_action: Literal["mark", "refuse", "off"] = Field(
        default="mark",
        description="What to do with a study whose inputs are outside the model's validated range (its ood.json): "
        "'mark' produces the result and marks it in report.json, the log, the series descriptions, the SR and the "
        "status page; 'refuse' rejects the study before inference; 'off' does not assess it.",
    )
    ood_threshold: float | None = Field(
        default=None,
        gt=0.0,
        description="Input distribution score above which a study is outside the validated range; None = the "
        "threshold in the model's ood.json.",
    )
    min_working_spacing_mm: float = Field(
        default=1.0,
        gt=0.0,
        le=10.0,
        description="Finest spacing the pipeline works at: finer T1s (e.g. 0.5 mm) run on a grid this coarse and the "
        "contrast signal comes back to the source grid (memory and time bounded, detail of the source kept).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Python log level; the SDK's names are accepted (WARN means WARNING)."
    )

    @field_validator("models_dir")
    @classmethod
    def _models_dir_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"models_dir must be an existing folder of models. Found {str(value)!r}.")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_name(cls, value: object) -> object:
        return LOG_LEVELS.get(value.upper(), value) if isinstance(value, str) else value


def _check_config_file() -> None:
    """A clear error for a GADSYNTH_CONFIG that is missing, unreadable or not a YAML mapping (pydantic-settings
    would ignore a missing file and crash on the others)."""
    config = os.environ.get(CONFIG_VARIABLE)
    if not config:
        return
    path = Path(config)
    if not path.is_file():
        raise ValueError(f"{CONFIG_VARIABLE} names {config!r}, which is not a file.")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{CONFIG_VARIABLE} {config!r} cannot be read as YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{CONFIG_VARIABLE} {config!r} must hold a YAML mapping. Found {type(loaded).__name__}.")


def load_settings(**overrides: Any) -> Settings:
    """Build the settings: explicit overrides > ``GADSYNTH_*`` > ``HOLOSCAN_*`` > YAML file > defaults.

    Raises
    ------
    ValueError
        When the YAML file named by ``GADSYNTH_CONFIG`` is missing, unreadable or not a mapping.
    pydantic.ValidationError
        When a value is invalid (e.g. ``models_dir`` is not a folder), after all sources are merged.
    """
    _check_config_file()
    return Settings(**overrides)


def output_folder(**overrides: Any) -> Path | None:
    """The output folder the same sources name (``output_path``), for a report when :func:`load_settings` fails
    (without the YAML file when that is what fails); None when they name none."""
    try:
        _check_config_file()
        return MapPaths(**overrides).output_path
    except (ValidationError, ValueError):
        pass
    try:
        return _MapPathsWithoutFile(**overrides).output_path
    except ValidationError:
        return None
