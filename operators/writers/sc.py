"""Multi-frame grayscale Secondary Capture of the synthetic volume, for viewers that cannot show derived MR."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, MultiFrameGrayscaleWordSecondaryCaptureImageStorage, generate_uid

from operators.writers.content import (
    GADSYNTH_VERSION,
    SOFTWARE_NAME,
    ModelIdentity,
    check_series_options,
    derivation_description,
    ds_value,
    referenced_series_item,
    source_image_item,
    source_image_items,
    synthetic_header,
)
from operators.writers.enums import ConversionType, ImageTypeValue
from operators.writers.provenance import InputSeries, as_input_series, overlapping_slices, series_labels
from operators.writers.source import (
    check_same_grid,
    series_label,
    window_from_values,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from operators.study import Series, Volume

logger = logging.getLogger(__name__)

__all__ = ["burn_in_label", "default_sc_description", "patient_orientation", "write_secondary_capture"]

#: Text burned into the top-left corner of every frame.
LABEL_TEXT = "SYNTHETIC"

#: 5x7 glyphs of the letters in LABEL_TEXT ("#" = lit).
_GLYPHS: dict[str, tuple[str, ...]] = {
    "S": (".###.", "#...#", "#....", ".###.", "....#", "#...#", ".###."),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
}


def default_sc_description(model_name: str) -> str:
    """SeriesDescription of the Secondary Capture when the caller gives none."""
    return f"SYNTHETIC T1+C SC ({SOFTWARE_NAME} {model_name})"[:64]


def _label_bitmap() -> np.ndarray:
    rows = []
    for line in range(7):
        rows.append(".".join(_GLYPHS[char][line] for char in LABEL_TEXT))
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


def burn_in_label(frames: np.ndarray, *, foreground: int, background: int) -> bool:
    """Write "SYNTHETIC" into the top-left corner of every frame (in place), in a box of the background value.

    The glyphs scale with the image (one glyph pixel per 160 columns, at least 1). Returns False and leaves the
    frames unchanged when the image is too small for the label.
    """
    bitmap = _label_bitmap()
    scale = max(1, frames.shape[2] // 160)
    glyph = np.kron(bitmap, np.ones((scale, scale), dtype=bool))
    margin = scale
    height, width = glyph.shape[0] + 2 * margin, glyph.shape[1] + 2 * margin
    if height + 1 > frames.shape[1] or width + 1 > frames.shape[2]:
        return False
    box = np.where(np.pad(glyph, margin), foreground, background).astype(frames.dtype)
    frames[:, 1 : 1 + height, 1 : 1 + width] = box
    return True


def patient_orientation(direction: tuple[float, ...]) -> list[str]:
    """PatientOrientation (row direction, column direction) from an LPS direction matrix, e.g. ["L", "P"]."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    values = []
    for axis in (0, 1):
        vector = matrix[:, axis]
        letters = ""
        for index in np.argsort(-np.abs(vector)):
            if abs(vector[index]) < 1e-3:
                continue
            letters += ("LPH" if vector[index] > 0 else "RAF")[index]
        values.append(letters or "L")
    return values


def write_secondary_capture(
    source: Volume,
    synthetic: sitk.Image,
    out_path: Path,
    *,
    series_number: int,
    model: ModelIdentity,
    series_description: str | None = None,
    series_instance_uid: str | None = None,
    burn_in: bool = True,
    other_sources: Sequence[Series | InputSeries] = (),
) -> Path:
    """Write the synthetic volume as one Multi-frame Grayscale Word Secondary Capture, labelled synthetic.

    For viewers that cannot show derived MR. The header says the image is synthetic (ConversionType SYN,
    ImageType DERIVED\\SECONDARY, SeriesDescription, ImageComments, DerivationDescription) and, when the image is
    big enough, every frame carries the word "SYNTHETIC" in its top-left corner (``burn_in``; the label does not
    identify the patient, so BurnedInAnnotation stays NO). Frames follow the volume's slice order; the slice
    positions along the normal are in SliceLocationVector. Pixel values are the real-world values, shifted by
    RescaleIntercept when some are negative and scaled by RescaleSlope when the range exceeds 16 bits.

    Parameters
    ----------
    source:
        The ``t1_pre`` volume (patient, study and references).
    synthetic:
        The synthetic image on the source grid, in real-world values.
    out_path:
        File to write; its folder is created.
    series_number:
        SeriesNumber of the SC series (configured, never random).
    model:
        The model that produced the image.
    series_description:
        Defaults to ``SYNTHETIC T1+C SC (GadSynth <model>)``; must say "synthetic".
    series_instance_uid:
        Defaults to a new UID.
    burn_in:
        Burn the word "SYNTHETIC" into each frame.
    other_sources:
        The other series the model consumed (see ``write_synthetic_series``): named in DerivationDescription;
        their slices that overlap a ``t1_pre`` slice follow the ``t1_pre`` slices in the Source Image Sequence.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    TypeError
        When ``series_number`` is not an int.
    ValueError
        When the series number or description is invalid, the model identity is invalid, or the synthetic image
        is not on the source grid or has non-finite values.
    """
    description = series_description if series_description is not None else default_sc_description(model.name)
    check_series_options(series_number, description)
    label = series_label(source)
    check_same_grid(source, synthetic, "The synthetic image")
    values = sitk.GetArrayViewFromImage(synthetic).astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"The synthetic image for {label} has {int(np.sum(~np.isfinite(values)))} non-finite voxels.")

    intercept = min(0.0, float(np.floor(values.min())))
    span = float(values.max()) - intercept
    slope = 1.0 if span <= 65535 else span / 65535.0
    frames = np.clip(np.rint((values - intercept) / slope), 0, 65535).astype("<u2")
    center, width = window_from_values(values)
    if burn_in:
        top = int(np.clip(np.rint((center + width / 2 - intercept) / slope), 0, 65535))
        bottom = int(np.clip(np.rint((center - width / 2 - intercept) / slope), 0, 65535))
        if not burn_in_label(frames, foreground=top, background=bottom):
            logger.info("%s: image too small to burn in the SYNTHETIC label; the header still says it", label)

    ds = _header(source, model, series_number, description, series_instance_uid, as_input_series(other_sources))
    ds.NumberOfFrames = frames.shape[0]
    ds.FrameIncrementPointer = Tag("SliceLocationVector")
    spacing = synthetic.GetSpacing()
    ds.SliceLocationVector = [ds_value(k * spacing[2]) for k in range(frames.shape[0])]
    ds.PixelSpacing = [ds_value(spacing[1]), ds_value(spacing[0])]
    ds.PatientOrientation = patient_orientation(synthetic.GetDirection())
    ds.Rows, ds.Columns = frames.shape[1], frames.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = ds_value(intercept)
    ds.RescaleSlope = ds_value(slope)
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter = ds_value(center)
    ds.WindowWidth = ds_value(width)
    ds.PixelData = frames.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out_path, enforce_file_format=True)
    logger.info("Wrote synthetic Secondary Capture %s (%d frames) from %s", ds.SOPInstanceUID, frames.shape[0], label)
    return out_path


def _header(
    source: Volume,
    model: ModelIdentity,
    series_number: int,
    description: str,
    series_instance_uid: str | None,
    others: Sequence[InputSeries],
) -> Dataset:
    src = source.slices[0].dataset
    ds = synthetic_header(
        src,
        model,
        copied=("BodyPartExamined", "Laterality", "PatientPosition", "AnatomicalOrientationType"),
        sop_class_uid=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        modality="OT",
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        description=description,
    )
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime"):
        if keyword not in ds:
            setattr(ds, keyword, None)
    for keyword in ("ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword not in ds:
            setattr(ds, keyword, None)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    # SC Equipment: the image is synthetic, computed from MR.
    ds.ConversionType = ConversionType.SYNTHETIC_IMAGE.value
    ds.SecondaryCaptureDeviceManufacturer = SOFTWARE_NAME
    ds.SecondaryCaptureDeviceManufacturerModelName = model.name
    ds.SecondaryCaptureDeviceSoftwareVersions = [f"{SOFTWARE_NAME} {GADSYNTH_VERSION}"]
    ds.ImageType = [ImageTypeValue.DERIVED.value, ImageTypeValue.SECONDARY.value]
    ds.DerivationDescription = derivation_description(model, series_labels(source, others), "Not acquired.")
    ds.SourceImageSequence = [source_image_item(ref) for ref in source.slices]
    ds.ReferencedSeriesSequence = [referenced_series_item(source.series.series_instance_uid, source.slices)]
    for other in others:
        refs = [ref for overlap in overlapping_slices(source, other) for ref in overlap]
        if refs:
            ds.SourceImageSequence.extend(source_image_items(refs))
            ds.ReferencedSeriesSequence.append(referenced_series_item(other.series.series_instance_uid, refs))
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = str(src.get("LossyImageCompression", "00")) or "00"
    return ds
