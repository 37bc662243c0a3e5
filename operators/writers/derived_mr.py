"""Synthetic post-contrast series as MR Image Storage, derived slice by slice from the t1_pre series."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from operators.writers.content import (
    SOFTWARE_NAME,
    ModelIdentity,
    check_series_options,
    copy_attributes,
    derivation_description,
    ds_value,
    referenced_series_item,
    source_image_item,
    source_image_items,
    synthetic_header,
)
from operators.writers.enums import ImageTypeValue
from operators.writers.provenance import InputSeries, as_input_series, overlapping_slices, series_labels
from operators.writers.source import (
    PixelFormat,
    check_same_grid,
    frame_group_item,
    pixel_format,
    series_label,
    slice_geometry,
    slice_rescale,
    to_stored_values,
    window_from_values,
)

if TYPE_CHECKING:
    from operators.study import Series, SliceRef, Volume

logger = logging.getLogger(__name__)

PIXEL_DATA = Tag("PixelData")

__all__ = ["SYNTHETIC_IMAGE_TYPE", "default_series_description", "write_synthetic_series"]

#: ImageType of every synthetic MR slice: DERIVED\SECONDARY\OTHER\SYNTHETIC (value 3 is required for MR).
SYNTHETIC_IMAGE_TYPE: tuple[ImageTypeValue, ...] = (
    ImageTypeValue.DERIVED,
    ImageTypeValue.SECONDARY,
    ImageTypeValue.OTHER,
    ImageTypeValue.SYNTHETIC,
)

#: Series-level attributes of the source acquisition that stay true for the derived series.
_SERIES_KEYWORDS: tuple[str, ...] = (
    "Laterality",
    "PatientPosition",
    "BodyPartExamined",
    "AnatomicalOrientationType",
    "RequestAttributesSequence",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
)

#: MR Image module attributes copied from a classic (single-frame) MR source.
_MR_KEYWORDS: tuple[str, ...] = (
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "SequenceName",
    "AngioFlag",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "NumberOfAverages",
    "ImagingFrequency",
    "ImagedNucleus",
    "EchoNumbers",
    "MagneticFieldStrength",
    "SpacingBetweenSlices",
    "NumberOfPhaseEncodingSteps",
    "EchoTrainLength",
    "PercentSampling",
    "PercentPhaseFieldOfView",
    "PixelBandwidth",
    "ReceiveCoilName",
    "TransmitCoilName",
    "AcquisitionMatrix",
    "InPlanePhaseEncodingDirection",
    "FlipAngle",
    "VariableFlipAngleFlag",
    "SAR",
    "dBdt",
)

#: Type 2 attributes that must be present (possibly empty) in every instance.
_TYPE2_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PositionReferenceIndicator",
    "ScanOptions",
    "MRAcquisitionType",
    "EchoTime",
    "EchoTrainLength",
    "RepetitionTime",
)

#: MR Image attributes an Enhanced MR source keeps in its functional groups: (sequence, keyword, MR keyword, type).
_FRAME_VALUES: tuple[tuple[str, str, str, Callable[[Any], Any]], ...] = (
    ("MRTimingAndRelatedParametersSequence", "RepetitionTime", "RepetitionTime", ds_value),
    ("MRTimingAndRelatedParametersSequence", "FlipAngle", "FlipAngle", ds_value),
    ("MRTimingAndRelatedParametersSequence", "EchoTrainLength", "EchoTrainLength", int),
    ("MREchoSequence", "EffectiveEchoTime", "EchoTime", ds_value),
    ("MRImagingModifierSequence", "TransmitterFrequency", "ImagingFrequency", ds_value),
    ("MRImagingModifierSequence", "PixelBandwidth", "PixelBandwidth", ds_value),
    ("MRAveragesSequence", "NumberOfAverages", "NumberOfAverages", ds_value),
)
_SOURCE_LOSSY_KEYWORDS = ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod")


def default_series_description(model_name: str) -> str:
    """SeriesDescription used when the caller gives none: ``SYNTHETIC T1+C (GadSynth <model>)``."""
    return f"SYNTHETIC T1+C ({SOFTWARE_NAME} {model_name})"


def write_synthetic_series(
    source: Volume,
    synthetic: sitk.Image,
    out_dir: Path,
    *,
    series_number: int,
    model: ModelIdentity,
    series_description: str | None = None,
    series_instance_uid: str | None = None,
    other_sources: Sequence[Series | InputSeries] = (),
    kind: Literal["synthetic", "uncertainty"] = "synthetic",
) -> list[Path]:
    """Write a synthetic image as an MR Image Storage series derived from its source series, one file per slice.

    Every slice keeps the source slice's geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
    SliceThickness), Frame of Reference, patient and study attributes, and the source's pixel format (BitsStored,
    PixelRepresentation, per-slice rescale). Values are converted to stored values with the source rescale,
    rounded and clipped to the stored range. Enhanced (multi-frame) MR sources are supported: the geometry comes
    from the functional groups and each slice references its source frame.

    Parameters
    ----------
    source:
        The ``t1_pre`` volume; ``source.slices[k]`` is the source of slice k.
    synthetic:
        The synthetic image on the source grid, in the source intensity scale (real-world values).
    out_dir:
        Folder for the series; created if missing and must not already hold DICOM files.
    series_number:
        SeriesNumber of the new series (configured, never random).
    model:
        The model that produced the image (Contributing Equipment, DerivationDescription, ImageComments).
    series_description:
        Defaults to ``SYNTHETIC T1+C (GadSynth <model>)``; must contain the word "synthetic".
    series_instance_uid:
        Defaults to a new UID.
    other_sources:
        The other series the model consumed (e.g. the low-dose T1), as :class:`InputSeries` with their role and
        registration transform (a plain ``Series`` is taken as not moved). Named in DerivationDescription; each
        slice's Source Image Sequence and Referenced Series Sequence name the ``t1_pre`` slice and the slices of
        each of them that overlap it (see :mod:`operators.writers.provenance`).
    kind:
        ``"uncertainty"``: the image is the per-voxel standard deviation of a synthetic image (ImageType value 5
        UNCERTAINTY, its own ImageComments and DerivationDescription, no pixel-addition derivation code).

    Returns
    -------
    list[pathlib.Path]
        The files written, in slice order.

    Raises
    ------
    TypeError
        When ``series_number`` is not an int.
    ValueError
        When the series number is outside 0 to 2**31-1, the description is longer than 64 characters or does
        not say "synthetic", the model identity is invalid, the synthetic image is not on the source grid or has
        non-finite values, the source has no slices, or ``out_dir`` already holds DICOM files.
    InputDicomError
        When the source's pixel format or geometry cannot be reproduced (see ``pixel_format``, ``slice_geometry``).
    """
    description = series_description if series_description is not None else default_series_description(model.name)
    check_series_options(series_number, description)
    label = series_label(source)
    if not source.slices or len(source.slices) != source.image.GetSize()[2]:
        raise ValueError(
            f"{label}: the volume has {source.image.GetSize()[2]} slices but {len(source.slices)} slice references."
        )
    check_same_grid(source, synthetic, "The synthetic image")
    values = sitk.GetArrayViewFromImage(synthetic)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"The synthetic image for {label} has {int(np.sum(~np.isfinite(values)))} non-finite voxels.")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.glob("*.dcm")):
        raise ValueError(f"{out_dir} already holds DICOM files; write each synthetic series to a new folder.")
    out_dir.mkdir(parents=True, exist_ok=True)

    first = source.slices[0].dataset
    fmt = pixel_format(first, label)
    geometries = [slice_geometry(ref, label) for ref in source.slices]  # every check before the first file
    rescales = np.array([slice_rescale(ref) for ref in source.slices], dtype=np.float64)
    stored, clipped, written = to_stored_values(values, rescales[:, 0], rescales[:, 1], fmt)
    if written != fmt:
        logger.info(
            "%s: the synthetic image exceeds the source's %d stored bits; written with %d",
            label,
            fmt.bits_stored,
            written.bits_stored,
        )
        fmt = written
    if clipped:
        logger.warning(
            "%s: %d synthetic voxels (%.3f %%) fell outside the stored range %s of the source and were clipped",
            label,
            clipped,
            100.0 * clipped / stored.size,
            fmt.stored_range,
        )
    center, width = window_from_values(values)
    series_uid = series_instance_uid or generate_uid()
    inputs = as_input_series(other_sources)
    template = _template(source, model, fmt, series_uid, series_number, description, center, width, inputs)
    if kind == "uncertainty":
        _as_uncertainty(template, source, model, inputs)
    used = [(other.series.series_instance_uid, overlapping_slices(source, other)) for other in inputs]
    keep_rescale = not np.allclose(rescales, [1.0, 0.0])  # MR has no Modality LUT module: write it only if needed
    keep_slice_location = source.slices[0].frame_number is None and "SliceLocation" in first

    paths: list[Path] = []
    for index, (ref, geometry) in enumerate(zip(source.slices, geometries, strict=True)):
        ds = Dataset(dict(template))
        sop_uid = generate_uid()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = geometry.image_position
        ds.ImageOrientationPatient = geometry.image_orientation
        ds.PixelSpacing = geometry.pixel_spacing
        if geometry.slice_thickness is not None:
            ds.SliceThickness = geometry.slice_thickness
        if keep_slice_location:
            ds.SliceLocation = ref.dataset.SliceLocation
        if keep_rescale:
            ds.RescaleIntercept = ds_value(rescales[index, 1])
            ds.RescaleSlope = ds_value(rescales[index, 0])
        others = [(series_uid, overlaps[index]) for series_uid, overlaps in used]
        ds.SourceImageSequence, ds.ReferencedSeriesSequence = _references(source, ref, others)
        ds.add_new(PIXEL_DATA, "OB" if fmt.bits_allocated == 8 else "OW", stored[index].tobytes())
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = out_dir / f"IM{index + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info(
        "Wrote synthetic series %s (#%d %r) with %d slices derived from %s",
        series_uid,
        series_number,
        description,
        len(paths),
        label,
    )
    return paths


def _template(
    source: Volume,
    model: ModelIdentity,
    fmt: PixelFormat,
    series_uid: str,
    series_number: int,
    description: str,
    center: float,
    width: float,
    other_sources: Sequence[InputSeries],
) -> Dataset:
    """Every attribute that is the same for all slices of the synthetic series."""
    first_ref = source.slices[0]
    src = first_ref.dataset
    ds = synthetic_header(
        src,
        model,
        copied=(*_SERIES_KEYWORDS, *_SOURCE_LOSSY_KEYWORDS),
        sop_class_uid=MRImageStorage,
        modality="MR",
        series_instance_uid=series_uid,
        series_number=series_number,
        description=description,
    )
    if first_ref.frame_number is None:
        copy_attributes(src, ds, _MR_KEYWORDS)
    else:
        _mr_attributes_from_enhanced(src, first_ref.frame_number, ds)
    if not ds.get("ScanningSequence"):
        ds.ScanningSequence = "RM"
    if not ds.get("SequenceVariant"):
        ds.SequenceVariant = "NONE"
    if "IR" in list(np.atleast_1d(ds.ScanningSequence)) and "InversionTime" not in ds:
        ds.InversionTime = None
    for keyword in _TYPE2_KEYWORDS:
        if keyword not in ds:
            setattr(ds, keyword, None)
    ds.ImageType = [member.value for member in SYNTHETIC_IMAGE_TYPE]
    ds.DerivationDescription = _derivation_description(source, model, other_sources)
    ds.DerivationCodeSequence = [_pixel_addition_code()]
    if "LossyImageCompression" not in ds:
        ds.LossyImageCompression = "00"

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = fmt.photometric_interpretation
    ds.Rows, ds.Columns = fmt.rows, fmt.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = fmt.bits_allocated, fmt.bits_stored, fmt.high_bit
    ds.PixelRepresentation = fmt.representation.code
    ds.WindowCenter = ds_value(center)
    ds.WindowWidth = ds_value(width)
    ds.WindowCenterWidthExplanation = "GADSYNTH AUTO"
    return ds


#: ImageType value 5 and the notice of an uncertainty map (``kind="uncertainty"``).
UNCERTAINTY_IMAGE_TYPE = "UNCERTAINTY"


def _as_uncertainty(ds: Dataset, source: Volume, model: ModelIdentity, other_sources: Sequence[InputSeries]) -> None:
    """Relabel a synthetic-series template as the uncertainty map of the synthetic image."""
    ds.ImageType = [*(member.value for member in SYNTHETIC_IMAGE_TYPE), UNCERTAINTY_IMAGE_TYPE]
    ds.ImageComments = (
        f"UNCERTAINTY MAP of a SYNTHETIC IMAGE computed by {SOFTWARE_NAME} with model {model.name} {model.version}: "
        "each pixel is the predicted standard deviation of the synthetic contrast-enhanced T1 at that voxel, in "
        "the source image's intensity units. Research use only, not for diagnosis."
    )[:10240]
    labels = series_labels(source, other_sources)
    ds.DerivationDescription = derivation_description(
        model, labels, "Per-voxel standard deviation of the synthetic image (see the model's uncertainty.json)."
    )
    del ds.DerivationCodeSequence


def _derivation_description(source: Volume, model: ModelIdentity, other_sources: Sequence[InputSeries]) -> str:
    labels = series_labels(source, other_sources)
    return derivation_description(model, labels, "Not acquired; no standard dose of contrast agent was given.")


def _references(
    source: Volume, ref: SliceRef, others: Sequence[tuple[str, Sequence[SliceRef]]]
) -> tuple[list[Dataset], list[Dataset]]:
    """Source Image Sequence and Referenced Series Sequence of one slice: its t1_pre slice, then each other
    input's overlapping slices (a series none of whose slices overlaps this one is not named for it)."""
    images = [source_image_item(ref)]
    series = [referenced_series_item(source.series.series_instance_uid, [ref])]
    for series_uid, refs in others:
        if refs:
            images.extend(source_image_items(refs))
            series.append(referenced_series_item(series_uid, refs))
    return images, series


def _pixel_addition_code() -> Dataset:
    """DerivationCodeSequence item: the synthetic image is the source plus a predicted contrast signal."""
    from pydicom.sr.codedict import codes

    code = codes.DCM.PixelByPixelAddition
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _mr_attributes_from_enhanced(src: Dataset, frame_number: int, ds: Dataset) -> None:
    """Map the Enhanced MR functional groups of one frame to classic MR Image module attributes."""
    echo_pulse = str(src.get("EchoPulseSequence", ""))
    modifier = frame_group_item(src, frame_number, "MRModifierSequence")
    inversion = modifier is not None and modifier.get("InversionRecovery") == "YES"
    scanning = {"GRADIENT": ["GR"], "SPIN": ["SE"], "BOTH": ["SE", "GR"]}.get(echo_pulse, ["RM"])
    if inversion:
        scanning = ["IR", *scanning]
    ds.ScanningSequence = scanning if len(scanning) > 1 else scanning[0]
    variant: list[str] = []
    if src.get("SegmentedKSpaceTraversal") not in (None, "", "SINGLE"):
        variant.append("SK")
    if src.get("SpoilingPresent") not in (None, "", "NONE"):  # enhanced MR uses "RF", "GRADIENT" or "RF_AND_GRADIENT"
        variant.append("SP")
    if inversion:
        variant.append("MP")
    if src.get("OversamplingPhase") not in (None, "", "NONE"):
        variant.append("OSP")
    ds.SequenceVariant = variant if len(variant) > 1 else (variant[0] if variant else "NONE")
    ds.ScanOptions = None
    copy_attributes(src, ds, ("MRAcquisitionType", "MagneticFieldStrength"))
    if src.get("PulseSequenceName"):
        ds.SequenceName = str(src.PulseSequenceName)[:16]
    for sequence, keyword, target, convert in _FRAME_VALUES:
        item = frame_group_item(src, frame_number, sequence)
        if item is not None and item.get(keyword) is not None:
            setattr(ds, target, convert(item.get(keyword)))
    if inversion and modifier is not None and modifier.get("InversionTimes"):
        ds.InversionTime = ds_value(float(np.atleast_1d(modifier.InversionTimes)[0]))
    if src.get("ResonantNucleus"):
        ds.ImagedNucleus = str(src.ResonantNucleus)
