"""DICOM writer: the synthetic series, the enhancement SEG, the report SR and an optional Secondary Capture."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.uid import (
    Comprehensive3DSRStorage,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SegmentationStorage,
)

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
from operators.writers.derived_mr import default_series_description
from operators.writers.header_cleaning import clean_volume
from operators.writers.provenance import InputSeries, as_input_series
from operators.writers.sc import default_sc_description
from operators.writers.sr import write_report_sr

logger = logging.getLogger(__name__)

__all__ = [
    "SC_FILE",
    "SEG_FILE",
    "SR_FILE",
    "SYNTHETIC_DIR",
    "SYNTHETIC_PLUS_DIR",
    "UNCERTAINTY_DIR",
    "UNVALIDATED_WORD",
    "WriterSettings",
    "write_outputs",
]

#: Where each output lands inside the output folder.
SYNTHETIC_DIR = "synthetic_t1c"
SYNTHETIC_PLUS_DIR = "synthetic_t1c_plus"
SEG_FILE = Path("seg") / "enhancement_seg.dcm"
SC_FILE = Path("sc") / "synthetic_t1c_sc.dcm"
SR_FILE = Path("sr") / "report_sr.dcm"
UNCERTAINTY_DIR = "uncertainty"

#: Words added to the series descriptions of a study outside the model's validated range (operators.ood).
UNVALIDATED_WORD = "UNVALIDATED"


@dataclass(frozen=True)
class WriterSettings:
    """What to write and under which series numbers (configured, never random); mirrors ``app.config.Settings``."""

    synthetic_series_number: int = 9001
    beyond_dose_series_number: int = 9002
    seg_series_number: int = 9003
    sc_series_number: int = 9004
    sr_series_number: int = 9005
    uncertainty_series_number: int = 9006
    write_beyond_standard_dose: bool = False
    write_secondary_capture: bool = False
    write_sr: bool = True
    synthetic_series_description: str | None = None
    burn_in_sc_label: bool = True


def write_outputs(
    source: Volume,
    synthetic: sitk.Image,
    out_dir: Path,
    *,
    model: ModelIdentity,
    settings: WriterSettings | None = None,
    enhancement_mask: np.ndarray | None = None,
    synthetic_plus: sitk.Image | None = None,
    other_sources: Sequence[Series | InputSeries] = (),
    warnings: list[str] | None = None,
    uncertainty: sitk.Image | None = None,
    low_confidence: np.ndarray | None = None,
    outside_validated_range: bool = False,
) -> list[OutputEntry]:
    """Write every DICOM output of one run into ``out_dir`` and list them for report.json.

    Writes the synthetic series (always), the beyond-standard-dose series (when given and enabled), the
    enhancement SEG (when a mask is given), the Secondary Capture (when enabled) and, last, the report as a
    Comprehensive 3D SR (when enabled and a mask is given: it measures the SEG). The source headers are cleaned
    first (:func:`operators.writers.header_cleaning.clean_volume`): invalid values are written empty and named in
    ``warnings``.

    ``other_sources`` are the series the model consumed besides ``source`` (the ``t1_pre``), exactly those
    (:func:`operators.writers.provenance.input_series` gives them from the registration): every output derives
    from them and names them. ``warnings`` holds the run's warnings so far, which the SR lists; the writers'
    own are appended to it.

    ``uncertainty`` (the synthetic image's per-voxel standard deviation on the source grid, source units) is written
    as a derived MR series and ``low_confidence`` as the SEG's second segment. ``outside_validated_range`` (the
    study's inputs are unlike the model's training data, :mod:`operators.ood`) puts "UNVALIDATED" into the series
    descriptions of the images.

    Raises
    ------
    TypeError, ValueError, InputDicomError
        As the writers do (see ``write_synthetic_series``, ``write_enhancement_seg``, ``write_secondary_capture``,
        ``write_report_sr``).
    """
    settings = settings or WriterSettings()
    inputs = as_input_series(other_sources)
    out_dir = Path(out_dir)
    source, notes = clean_volume(source)
    if warnings is None:
        warnings = []
    warnings.extend(notes)
    outputs: list[OutputEntry] = []

    def described(text: str) -> str:
        return _unvalidated(text) if outside_validated_range else text

    synthetic_files = write_synthetic_series(
        source,
        synthetic,
        out_dir / SYNTHETIC_DIR,
        series_number=settings.synthetic_series_number,
        series_description=described(settings.synthetic_series_description or default_series_description(model.name)),
        other_sources=inputs,
        model=model,
    )
    outputs.append(_entry(OutputKind.SYNTHETIC_SERIES, out_dir / SYNTHETIC_DIR, synthetic_files, MRImageStorage))

    if synthetic_plus is not None and settings.write_beyond_standard_dose:
        files = write_synthetic_series(
            source,
            synthetic_plus,
            out_dir / SYNTHETIC_PLUS_DIR,
            series_number=settings.beyond_dose_series_number,
            series_description=described(f"SYNTHETIC T1+C BEYOND DOSE ({SOFTWARE_NAME} {model.name})"[:64]),
            other_sources=inputs,
            model=model,
        )
        outputs.append(_entry(OutputKind.SYNTHETIC_PLUS_SERIES, out_dir / SYNTHETIC_PLUS_DIR, files, MRImageStorage))

    if uncertainty is not None:
        files = write_synthetic_series(
            source,
            uncertainty,
            out_dir / UNCERTAINTY_DIR,
            series_number=settings.uncertainty_series_number,
            series_description=described(f"SYNTHETIC UNCERTAINTY SD ({SOFTWARE_NAME} {model.name})"[:64]),
            other_sources=inputs,
            model=model,
            kind="uncertainty",
        )
        outputs.append(_entry(OutputKind.UNCERTAINTY_SERIES, out_dir / UNCERTAINTY_DIR, files, MRImageStorage))

    seg_path: Path | None = None
    if enhancement_mask is not None:
        seg_path = path = write_enhancement_seg(
            source,
            enhancement_mask,
            out_dir / SEG_FILE,
            series_number=settings.seg_series_number,
            model=model,
            low_confidence=low_confidence,
        )
        outputs.append(_entry(OutputKind.SEGMENTATION, path, [path], SegmentationStorage))

    if settings.write_secondary_capture:
        path = write_secondary_capture(
            source,
            synthetic,
            out_dir / SC_FILE,
            series_number=settings.sc_series_number,
            series_description=described(default_sc_description(model.name)),
            burn_in=settings.burn_in_sc_label,
            model=model,
            other_sources=inputs,
        )
        outputs.append(
            _entry(OutputKind.SECONDARY_CAPTURE, path, [path], MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
        )

    if settings.write_sr and seg_path is not None and enhancement_mask is not None:  # the SR measures the SEG
        path = write_report_sr(
            source,
            out_dir / SR_FILE,
            series_number=settings.sr_series_number,
            model=model,
            seg_path=seg_path,
            enhancement_mask=enhancement_mask,
            synthetic_files=synthetic_files,
            other_sources=inputs,
            warnings=list(warnings),
        )
        outputs.append(_entry(OutputKind.STRUCTURED_REPORT, path, [path], Comprehensive3DSRStorage))
    return outputs


def _unvalidated(description: str) -> str:
    """``SYNTHETIC ...`` -> ``SYNTHETIC UNVALIDATED ...`` within the 64 characters of SeriesDescription."""
    head, _, tail = description.partition(" ")
    return f"{head} {UNVALIDATED_WORD} {tail}".strip()[:64]


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
