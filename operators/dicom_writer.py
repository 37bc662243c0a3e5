"""DICOM writer: the synthetic series, the enhancement SEG and an optional Secondary Capture into the output folder."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec
from pydicom.uid import MRImageStorage, MultiFrameGrayscaleWordSecondaryCaptureImageStorage, SegmentationStorage

from operators.roles import Role
from operators.study import Series, Volume
from operators.writers import (
    ModelIdentity,
    OutputEntry,
    OutputKind,
    write_enhancement_seg,
    write_secondary_capture,
    write_synthetic_series,
)
from operators.writers.content import SOFTWARE_NAME

logger = logging.getLogger(__name__)

__all__ = [
    "DicomWriterOperator",
    "WriterInputs",
    "WriterSettings",
    "as_model_identity",
    "resolve_inputs",
    "write_outputs",
]

#: Where each output lands inside the output folder.
SYNTHETIC_DIR = "synthetic_t1c"
SYNTHETIC_PLUS_DIR = "synthetic_t1c_plus"
SEG_FILE = Path("seg") / "enhancement_seg.dcm"
SC_FILE = Path("sc") / "synthetic_t1c_sc.dcm"


@dataclass(frozen=True)
class WriterSettings:
    """What to write and under which series numbers (configured, never random); mirrors ``app.config.Settings``."""

    synthetic_series_number: int = 9001
    beyond_dose_series_number: int = 9002
    seg_series_number: int = 9003
    sc_series_number: int = 9004
    write_beyond_standard_dose: bool = False
    write_secondary_capture: bool = False
    synthetic_series_description: str | None = None
    burn_in_sc_label: bool = True


def as_model_identity(model: ModelIdentity | Mapping[str, Any]) -> ModelIdentity:
    """Model information as a ModelIdentity, from one or from a mapping with name, version and sha256.

    Raises
    ------
    TypeError
        When ``model`` is neither.
    ValueError
        When the mapping lacks a key or a value is invalid (see ``ModelIdentity``).
    """
    if isinstance(model, ModelIdentity):
        return model
    if isinstance(model, Mapping):
        missing = [key for key in ("name", "version", "sha256") if key not in model]
        if missing:
            raise ValueError(f"Model information lacks {missing}. Found keys {sorted(model)}.")
        return ModelIdentity(str(model["name"]), str(model["version"]), str(model["sha256"]))
    raise TypeError(f"Model information must be a ModelIdentity or a mapping. Found {type(model).__name__}.")


def write_outputs(
    source: Volume,
    synthetic: sitk.Image,
    out_dir: Path,
    *,
    model: ModelIdentity,
    settings: WriterSettings | None = None,
    enhancement_mask: np.ndarray | None = None,
    synthetic_plus: sitk.Image | None = None,
    other_sources: Sequence[Series] = (),
) -> list[OutputEntry]:
    """Write every DICOM output of one run into ``out_dir`` and list them for report.json.

    Writes the synthetic series (always), the beyond-standard-dose series (when given and enabled), the
    enhancement SEG (when a mask is given) and the Secondary Capture (when enabled).

    Raises
    ------
    TypeError, ValueError, InputDicomError
        As the writers do (see ``write_synthetic_series``, ``write_enhancement_seg``, ``write_secondary_capture``).
    """
    settings = settings or WriterSettings()
    out_dir = Path(out_dir)
    outputs: list[OutputEntry] = []

    files = write_synthetic_series(
        source,
        synthetic,
        out_dir / SYNTHETIC_DIR,
        series_number=settings.synthetic_series_number,
        series_description=settings.synthetic_series_description,
        other_sources=other_sources,
        model_name=model.name,
        model_version=model.version,
        model_sha256=model.sha256,
    )
    outputs.append(_entry(OutputKind.SYNTHETIC_SERIES, out_dir / SYNTHETIC_DIR, files, MRImageStorage))

    if synthetic_plus is not None and settings.write_beyond_standard_dose:
        files = write_synthetic_series(
            source,
            synthetic_plus,
            out_dir / SYNTHETIC_PLUS_DIR,
            series_number=settings.beyond_dose_series_number,
            series_description=f"SYNTHETIC T1+C BEYOND DOSE ({SOFTWARE_NAME} {model.name})"[:64],
            other_sources=other_sources,
            model_name=model.name,
            model_version=model.version,
            model_sha256=model.sha256,
        )
        outputs.append(_entry(OutputKind.SYNTHETIC_PLUS_SERIES, out_dir / SYNTHETIC_PLUS_DIR, files, MRImageStorage))

    if enhancement_mask is not None:
        path = write_enhancement_seg(
            source,
            enhancement_mask,
            out_dir / SEG_FILE,
            series_number=settings.seg_series_number,
            model_name=model.name,
            model_version=model.version,
            model_sha256=model.sha256,
        )
        outputs.append(_entry(OutputKind.SEGMENTATION, path, [path], SegmentationStorage))

    if settings.write_secondary_capture:
        path = write_secondary_capture(
            source,
            synthetic,
            out_dir / SC_FILE,
            series_number=settings.sc_series_number,
            burn_in=settings.burn_in_sc_label,
            model_name=model.name,
            model_version=model.version,
            model_sha256=model.sha256,
        )
        outputs.append(
            _entry(OutputKind.SECONDARY_CAPTURE, path, [path], MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
        )
    return outputs


def _entry(kind: OutputKind, path: Path, files: Sequence[Path], sop_class_uid: str) -> OutputEntry:
    """Describe one output from the first file's header (series UID and number)."""
    from pydicom import dcmread

    header = dcmread(files[0], stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SeriesNumber"])
    return OutputEntry(
        kind=kind,
        path=str(path),
        series_instance_uid=str(header.SeriesInstanceUID),
        series_number=int(header.SeriesNumber),
        sop_class_uid=sop_class_uid,
        n_files=len(files),
    )


@dataclass
class WriterInputs:
    """What the writer needs from one run, whatever shape the upstream operators sent it in."""

    source: Volume
    synthetic: sitk.Image
    synthetic_plus: sitk.Image | None = None
    enhancement_mask: np.ndarray | None = None
    model: ModelIdentity | Mapping[str, Any] | None = None
    other_sources: list[Series] = field(default_factory=list)


def resolve_inputs(
    source: Any,
    synthetic: Any,
    *,
    synthetic_plus: sitk.Image | None = None,
    enhancement_mask: np.ndarray | None = None,
    model: ModelIdentity | Mapping[str, Any] | None = None,
) -> WriterInputs:
    """Accept what the upstream operators emit, so that ``add_flow`` needs no adapter.

    ``source`` may be the t1_pre ``Volume``, a ``dict[Role, Volume]`` (series-to-volume output) or an object with a
    ``reference`` Volume and ``volumes`` dict (registration output; the other volumes' series are then named in
    DerivationDescription). ``synthetic`` may be a SimpleITK image or an object with ``synthetic`` and optionally
    ``beyond``, ``mask`` and ``model`` (post-processing output); explicit arguments take precedence over those.

    Raises
    ------
    TypeError
        When ``source`` or ``synthetic`` is none of these.
    ValueError
        When a role dict has no t1_pre volume.
    """
    volumes: Mapping[Any, Any] = {}
    if isinstance(source, Volume):
        volume = source
    elif isinstance(getattr(source, "reference", None), Volume):
        volume = source.reference
        volumes = getattr(source, "volumes", {}) or {}
    elif isinstance(source, Mapping):
        volumes = source
        if Role.T1_PRE not in source:
            raise ValueError(f"The writer needs the t1_pre volume. Found roles {sorted(str(r) for r in source)}.")
        volume = source[Role.T1_PRE]
    else:
        raise TypeError(
            f"Port 'source' must carry a Volume, a dict of volumes or a registered study. Found {source!r}."
        )
    others = [v.series for role, v in volumes.items() if role != Role.T1_PRE and isinstance(v, Volume)]
    if isinstance(synthetic, sitk.Image):
        image = synthetic
    elif isinstance(getattr(synthetic, "synthetic", None), sitk.Image):
        image = synthetic.synthetic
        synthetic_plus = synthetic_plus if synthetic_plus is not None else getattr(synthetic, "beyond", None)
        if enhancement_mask is None:
            enhancement_mask = getattr(synthetic, "mask", None)
        model = model if model is not None else getattr(synthetic, "model", None)
    else:
        raise TypeError(f"Port 'synthetic' must carry a SimpleITK image or a synthetic result. Found {synthetic!r}.")
    return WriterInputs(volume, image, synthetic_plus, enhancement_mask, model, others)


class DicomWriterOperator(Operator):  # type: ignore[misc]  # Operator comes from an untyped package
    """Writes the DICOM outputs of one run: synthetic MR series, enhancement SEG, optional Secondary Capture.

    Named inputs:
        source: the t1_pre Volume, or the series-to-volume ``dict[Role, Volume]``, or the registered study
            (headers, geometry and references of the source series).
        synthetic: SimpleITK image (synthetic standard-dose T1+C on the t1_pre grid in the source intensity scale),
            or the post-processing result, whose ``beyond``, ``mask`` and ``model`` then feed the ports below.
        synthetic_plus: optional SimpleITK image, beyond-standard-dose synthetic (written when enabled).
        enhancement_mask: optional bool array (slice, row, col) on the t1_pre grid, written as a SEG.
        model: optional ModelIdentity or mapping with name / version / sha256; overrides the constructor's model.

    Named output:
        written: list[OutputEntry], one per series or file written (for report.json).

    File output:
        ``<output_folder>/synthetic_t1c/IM#####.dcm``, ``synthetic_t1c_plus/``, ``seg/enhancement_seg.dcm`` and
        ``sc/synthetic_t1c_sc.dcm``.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        output_folder: Path,
        model: ModelIdentity | None = None,
        settings: WriterSettings | None = None,
        **kwargs: Any,
    ) -> None:
        self.input_name_source = "source"
        self.input_name_synthetic = "synthetic"
        self.input_name_synthetic_plus = "synthetic_plus"
        self.input_name_mask = "enhancement_mask"
        self.input_name_model = "model"
        self.output_name_written = "written"
        self.output_folder = Path(output_folder)
        self._model = model
        self._settings = settings or WriterSettings()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name_source)
        spec.input(self.input_name_synthetic)
        spec.input(self.input_name_synthetic_plus).condition(ConditionType.NONE)
        spec.input(self.input_name_mask).condition(ConditionType.NONE)
        spec.input(self.input_name_model).condition(ConditionType.NONE)
        spec.output(self.output_name_written).condition(ConditionType.NONE)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        inputs = resolve_inputs(
            op_input.receive(self.input_name_source),
            op_input.receive(self.input_name_synthetic),
            synthetic_plus=op_input.receive(self.input_name_synthetic_plus),
            enhancement_mask=op_input.receive(self.input_name_mask),
            model=op_input.receive(self.input_name_model),
        )
        model = inputs.model if inputs.model is not None else self._model
        if model is None:
            raise ValueError("DicomWriterOperator needs model information: pass model= or send it on port 'model'.")
        written = write_outputs(
            inputs.source,
            inputs.synthetic,
            self.output_folder,
            model=as_model_identity(model),
            settings=self._settings,
            enhancement_mask=inputs.enhancement_mask,
            synthetic_plus=inputs.synthetic_plus,
            other_sources=inputs.other_sources,
        )
        op_output.emit(written, self.output_name_written)
