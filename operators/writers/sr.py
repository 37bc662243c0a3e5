"""Comprehensive 3D SR (TID 1500 Measurement Report) of one run: model, input series, enhancing volume, warnings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage, generate_uid

from operators.roles import Role
from operators.writers.content import (
    GADSYNTH_VERSION,
    PATIENT_STUDY_KEYWORDS,
    SOFTWARE_NAME,
    ModelIdentity,
    check_series_options,
    copy_attributes,
    software_versions,
    synthesizing_equipment,
    synthetic_notice,
)
from operators.writers.provenance import InputSeries, as_input_series
from operators.writers.seg import ENHANCEMENT_CATEGORY, ENHANCEMENT_TYPE
from operators.writers.source import series_label

if TYPE_CHECKING:
    from operators.study import Series, Volume

logger = logging.getLogger(__name__)

__all__ = [
    "INPUT_SERIES_CONCEPT",
    "MAX_WARNINGS",
    "QUALITATIVE_EVALUATIONS",
    "ROLE_MEANINGS",
    "TRACKING_LABEL",
    "WARNING_PREFIX",
    "default_sr_description",
    "enhancing_volume_ml",
    "write_report_sr",
]

#: TID 1500 row 12: the container of document-level qualitative evaluations (CODE and TEXT items).
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: Concept name of the TEXT item naming each input series, valued ``<role> (<meaning>): <SeriesInstanceUID>``.
#: Standard codes only: a private coding scheme would be legal but every use of it is a dciodvfy warning.
INPUT_SERIES_CONCEPT: Code = codes.DCM.SourceSeriesForImageProcessingOperation
#: What each role means, in the text of its input series item.
ROLE_MEANINGS: dict[Role, str] = {
    Role.T1_PRE: "pre-contrast T1-weighted",
    Role.T1_LOW_DOSE: "low-dose contrast-enhanced T1-weighted",
    Role.T1_STANDARD_DOSE: "standard-dose contrast-enhanced T1-weighted",
    Role.T2: "T2-weighted",
    Role.FLAIR: "FLAIR",
    Role.ADC: "apparent diffusion coefficient",
    Role.T1_MAP: "T1 map",
}
#: Each warning of the run is one Comment TEXT item starting with this.
WARNING_PREFIX = "Warning: "
#: Human-readable tracking identifier of the one measurement group.
TRACKING_LABEL = "Predicted contrast enhancement (synthetic)"
#: Most warnings listed one by one; the rest are counted in one more item (report.json has them all).
MAX_WARNINGS = 50

_MILLILITER = Code("ml", "UCUM", "milliliter")


def default_sr_description(model_name: str) -> str:
    """SeriesDescription of the SR when the caller gives none: ``GADSYNTH REPORT (SYNTHETIC CONTRAST, <model>)``."""
    return f"GADSYNTH REPORT (SYNTHETIC CONTRAST, {model_name})"[:64]


def enhancing_volume_ml(source: Volume, mask: np.ndarray) -> float:
    """Volume of the voxels set in ``mask`` (on the source grid), in millilitres."""
    spacing = source.image.GetSpacing()
    return float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0


def write_report_sr(
    source: Volume,
    out_path: Path,
    *,
    series_number: int,
    model: ModelIdentity,
    seg_path: Path,
    enhancement_mask: np.ndarray,
    synthetic_files: Sequence[Path] = (),
    other_sources: Sequence[Series | InputSeries] = (),
    warnings: Sequence[str] = (),
    series_description: str | None = None,
    series_instance_uid: str | None = None,
) -> Path:
    """Write the run's report as a Comprehensive 3D SR, TID 1500 "Imaging Measurement Report".

    The document holds: the observer device (GadSynth and the model); one volumetric measurement group (TID 1411)
    tracked as "Predicted contrast enhancement (synthetic)" that references segment 1 of the SEG, names the
    algorithm (model name, version, sha256 and GadSynth's version; TID 4019) and gives the enhancing volume in ml;
    and a "Qualitative Evaluations" container with the synthetic notice, the SeriesInstanceUID of each input
    series by role, the synthetic series' UID and the run's warnings (TEXT items). Patient and study come from the
    source; the evidence lists the input series, the synthetic series and the SEG. The document is complete,
    preliminary and unverified: a machine's result that nobody has signed.

    Parameters
    ----------
    source:
        The ``t1_pre`` volume (patient, study, and the grid of the mask).
    out_path:
        File to write; its folder is created.
    series_number:
        SeriesNumber of the SR series (configured, never random).
    model:
        The model that produced the prediction.
    seg_path:
        The enhancement SEG of this run (written by :func:`operators.writers.seg.write_enhancement_seg`).
    enhancement_mask:
        The mask the SEG holds, shaped like the source volume (slice, row, column); gives the volume.
    synthetic_files:
        The files of the synthetic series (listed as evidence; its UID is named in the document).
    other_sources:
        The other series the model consumed, with their roles (see ``write_synthetic_series``).
    warnings:
        The run's warnings, listed one per TEXT item (at most ``MAX_WARNINGS``, then a count).
    series_description:
        Defaults to ``GADSYNTH REPORT (SYNTHETIC CONTRAST, <model>)``; must say "synthetic".
    series_instance_uid:
        Defaults to a new UID.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    TypeError
        When ``series_number`` is not an int or the mask is not a boolean NumPy array.
    ValueError
        When the series number or description is invalid, the mask's shape differs from the volume's, or
        ``seg_path`` is not a Segmentation of the source's study.
    """
    description = series_description if series_description is not None else default_sr_description(model.name)
    check_series_options(series_number, description)
    label = series_label(source)
    if not isinstance(enhancement_mask, np.ndarray) or enhancement_mask.dtype != np.bool_:
        found = enhancement_mask.dtype if isinstance(enhancement_mask, np.ndarray) else type(enhancement_mask).__name__
        raise TypeError(f"The enhancement mask must be a boolean NumPy array. Found {found}.")
    size = source.image.GetSize()
    if enhancement_mask.shape != (size[2], size[1], size[0]):
        raise ValueError(
            f"The enhancement mask for {label} must have shape {(size[2], size[1], size[0])} (slice, row, col). "
            f"Found {enhancement_mask.shape}."
        )
    seg = dcmread(seg_path, stop_before_pixels=True)
    if seg.get("SOPClassUID") != SegmentationStorage or seg.get("StudyInstanceUID") != source.series.study_instance_uid:
        raise ValueError(
            f"{seg_path} must be a Segmentation of study {source.series.study_instance_uid}. Found SOP class "
            f"{seg.get('SOPClassUID')!r} in study {seg.get('StudyInstanceUID')!r}."
        )
    inputs = as_input_series(other_sources)
    synthetic = [dcmread(p, stop_before_pixels=True, specific_tags=_EVIDENCE_KEYWORDS) for p in synthetic_files]
    volume_ml = enhancing_volume_ml(source, enhancement_mask)

    content = _content(source, model, seg, inputs, synthetic, warnings, volume_ml)
    sr = hd.sr.Comprehensive3DSR(
        evidence=_evidence(source, inputs, synthetic, seg),
        content=content[0],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=SOFTWARE_NAME,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=description,
        manufacturer_model_name=model.name,
        device_serial_number=model.sha256[:16],
        contributing_equipment=[synthesizing_equipment(model)],
    )
    copy_attributes(source.slices[0].dataset, sr, PATIENT_STUDY_KEYWORDS)
    sr.add_new(0x00181020, "LO", software_versions(model))  # SoftwareVersions: GadSynth, then the model
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out_path, enforce_file_format=True)
    logger.info(
        "Wrote report SR %s (enhancing volume %.3f ml, %d warnings) for %s",
        sr.SOPInstanceUID,
        volume_ml,
        len(warnings),
        label,
    )
    return out_path


_EVIDENCE_KEYWORDS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
#: Equipment attributes highdicom reads from the first evidence item to describe the acquisition equipment.
_EQUIPMENT_KEYWORDS = (
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "DeviceSerialNumber",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "InstitutionAddress",
    "StationName",
)
#: Type 2 patient and study attributes highdicom reads from the first evidence item.
_TYPE2_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _reference(sop_class_uid: str, sop_instance_uid: str, study_uid: str, series_uid: str) -> Dataset:
    item = Dataset()
    item.SOPClassUID = sop_class_uid
    item.SOPInstanceUID = sop_instance_uid
    item.StudyInstanceUID = study_uid
    item.SeriesInstanceUID = series_uid
    return item


def _evidence(
    source: Volume, inputs: Sequence[InputSeries], synthetic: Sequence[Dataset], seg: Dataset
) -> list[Dataset]:
    """Evidence: first a header of the source (patient, study and scanner for highdicom), then every instance of
    the input series, the synthetic series and the SEG."""
    first = source.slices[0]
    study_uid, series_uid = source.series.study_instance_uid, source.series.series_instance_uid
    header = _reference(first.sop_class_uid, first.sop_instance_uid, study_uid, series_uid)
    copy_attributes(first.dataset, header, (*PATIENT_STUDY_KEYWORDS, *_EQUIPMENT_KEYWORDS))
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in header:
            setattr(header, keyword, None)
    evidence = [header]
    evidence += [_reference(r.sop_class_uid, r.sop_instance_uid, study_uid, series_uid) for r in source.slices]
    for other in inputs:
        series = other.series
        evidence += [
            _reference(i.sop_class_uid, i.sop_instance_uid, series.study_instance_uid, series.series_instance_uid)
            for i in series.instances
        ]
    evidence += [_reference(*(str(ds[k].value) for k in _EVIDENCE_KEYWORDS)) for ds in (*synthetic, seg)]
    return evidence


def _content(
    source: Volume,
    model: ModelIdentity,
    seg: Dataset,
    inputs: Sequence[InputSeries],
    synthetic: Sequence[Dataset],
    warnings: Sequence[str],
    volume_ml: float,
) -> hd.sr.MeasurementReport:
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"{SOFTWARE_NAME} {model.name}"[:64],
        version=model.version,
        parameters=[f"model_sha256={model.sha256}", f"gadsynth_version={GADSYNTH_VERSION}"],
        manufacturer=SOFTWARE_NAME,
    )
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=TRACKING_LABEL),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(source.series.series_instance_uid),
        ),
        finding_category=ENHANCEMENT_CATEGORY,
        finding_type=ENHANCEMENT_TYPE,
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)],
        measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=round(volume_ml, 4), unit=_MILLILITER)],
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[SOFTWARE_NAME, model.name, model.version, model.sha256]),
        name=f"{SOFTWARE_NAME} {GADSYNTH_VERSION}",
        manufacturer_name=SOFTWARE_NAME,
        model_name=model.name,
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        ),
        procedure_reported=codes.LN.BrainMRI,
        imaging_measurements=[group],
    )
    report[0].ContentSequence.append(_qualitative_evaluations(source, model, inputs, synthetic, warnings))
    return report


def _text(name: hd.sr.CodedConcept | Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _qualitative_evaluations(
    source: Volume,
    model: ModelIdentity,
    inputs: Sequence[InputSeries],
    synthetic: Sequence[Dataset],
    warnings: Sequence[str],
) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: the synthetic notice, the input series by role, then the warnings (all TEXT items)."""
    notice = synthetic_notice(model)
    if synthetic:
        series_uid = synthetic[0].SeriesInstanceUID
        notice += f" The enhancing volume is that of the enhancement predicted for synthetic series {series_uid}."
    items = [_text(codes.DCM.Comment, notice)]
    for role, uid in [(source.role or Role.T1_PRE, source.series.series_instance_uid)] + [
        (other.role, other.series.series_instance_uid) for other in inputs
    ]:
        what = "input" if role is None else f"{role.value} ({ROLE_MEANINGS[role]})"
        items.append(_text(INPUT_SERIES_CONCEPT, f"{what}: {uid}"))
    unique = list(dict.fromkeys(w.strip() for w in warnings if w.strip()))
    items += [_text(codes.DCM.Comment, WARNING_PREFIX + warning) for warning in unique[:MAX_WARNINGS]]
    if len(unique) > MAX_WARNINGS:
        items.append(_text(codes.DCM.Comment, f"{WARNING_PREFIX}{len(unique) - MAX_WARNINGS} more: see report.json"))
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS,
        is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container
