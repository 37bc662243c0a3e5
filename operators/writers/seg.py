"""DICOM SEG (highdicom) of the predicted contrast enhancement, referencing the source series' instances or frames."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from operators.writers.content import (
    GADSYNTH_VERSION,
    SOFTWARE_NAME,
    ModelIdentity,
    check_series_options,
    synthesizing_equipment,
)
from operators.writers.source import (
    series_label,
)

if TYPE_CHECKING:
    from operators.study import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "ENHANCEMENT_CATEGORY",
    "ENHANCEMENT_TYPE",
    "LOW_CONFIDENCE_LABEL",
    "SEGMENT_LABEL",
    "default_seg_description",
    "segment_description",
    "write_enhancement_seg",
]

#: Segment label of the enhancement segment (segment 1).
SEGMENT_LABEL = "Predicted contrast enhancement"
#: Segment label of the low-confidence segment (segment 2, written when an uncertainty map is given).
LOW_CONFIDENCE_LABEL = "Low confidence"
#: Segmented property category (CID 7150) and type (CID 7151) of the segment.
ENHANCEMENT_CATEGORY: Code = codes.SCT.MorphologicallyAbnormalStructure
ENHANCEMENT_TYPE: Code = Code("C113842", "NCIt", "Enhancing Lesion")
#: The low-confidence region is no anatomy: a spatial concept with GadSynth's own (private, "99") type code.
LOW_CONFIDENCE_CATEGORY: Code = Code("309825002", "SCT", "Spatial and Relational Concept")
LOW_CONFIDENCE_TYPE: Code = Code("LOWCONF", "99GADSYNTH", "Low confidence region of a synthetic image")


def default_seg_description(model_name: str) -> str:
    """SeriesDescription of the SEG when the caller gives none."""
    return f"PREDICTED ENHANCEMENT SEG ({SOFTWARE_NAME} {model_name})"[:64]


def segment_description(model: ModelIdentity, *, low_confidence: bool = False) -> hd.seg.SegmentDescription:
    """Segment 1, predicted contrast enhancement, or segment 2, where the synthetic image's uncertainty is high;
    both found automatically by GadSynth and the model."""
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"{SOFTWARE_NAME} {model.name}"[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=model.version,
        source=SOFTWARE_NAME,
        parameters={"model_sha256": model.sha256, "gadsynth_version": GADSYNTH_VERSION},
    )
    number, label, category, kind = (
        (2, LOW_CONFIDENCE_LABEL, LOW_CONFIDENCE_CATEGORY, LOW_CONFIDENCE_TYPE)
        if low_confidence
        else (1, SEGMENT_LABEL, ENHANCEMENT_CATEGORY, ENHANCEMENT_TYPE)
    )
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def write_enhancement_seg(
    source: Volume,
    mask: np.ndarray,
    out_path: Path,
    *,
    series_number: int,
    model: ModelIdentity,
    series_description: str | None = None,
    series_instance_uid: str | None = None,
    omit_empty_frames: bool = True,
    low_confidence: np.ndarray | None = None,
) -> Path:
    """Write a binary DICOM SEG with the segment "Predicted contrast enhancement" on the source grid, and a second
    segment "Low confidence" (where the synthetic image's uncertainty exceeds its threshold) when given.

    The SEG references the source series: each frame names its source instance (classic sources) or its source
    frame (one Enhanced MR instance). A mask with no voxel set still gives a valid SEG: highdicom then keeps every
    frame (all empty) because a SEG must hold at least one frame.

    Parameters
    ----------
    source:
        The ``t1_pre`` volume the mask lies on.
    mask:
        Boolean array shaped like ``sitk.GetArrayFromImage(source.image)``: (slice, row, column).
    out_path:
        File to write; its folder is created.
    series_number:
        SeriesNumber of the SEG series (configured, never random).
    model:
        The model that produced the prediction (algorithm identification and Contributing Equipment).
    series_description:
        Defaults to ``PREDICTED ENHANCEMENT SEG (GadSynth <model>)``.
    series_instance_uid:
        Defaults to a new UID.
    omit_empty_frames:
        Leave out frames with no voxel set (highdicom's default).
    low_confidence:
        Boolean array like ``mask``: segment 2. None: the SEG has the enhancement segment only.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    TypeError
        When ``mask`` is not a boolean NumPy array or ``series_number`` is not an int.
    ValueError
        When the mask's shape differs from the volume's, the series number is out of range, the model identity
        is invalid, or the slices come from more than one multi-frame instance (highdicom references exactly one).
    """
    label = series_label(source)
    description = series_description or default_seg_description(model.name)
    check_series_options(series_number, description, must_say_synthetic=False)
    size = source.image.GetSize()
    expected = (size[2], size[1], size[0])
    named = {"enhancement": mask} if low_confidence is None else {"enhancement": mask, "low-confidence": low_confidence}
    for what, array in named.items():
        if not isinstance(array, np.ndarray) or array.dtype != np.bool_:
            found = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise TypeError(f"The {what} mask must be a boolean NumPy array. Found {found}.")
        if array.shape != expected:
            raise ValueError(
                f"The {what} mask for {label} must have shape {expected} (slice, row, col). Found {array.shape}."
            )
    segments = [segment_description(model)]
    stacked = mask
    if low_confidence is not None:
        segments.append(segment_description(model, low_confidence=True))
        stacked = np.stack([mask, low_confidence], axis=-1)
    source_images, pixel_array = _sources_and_frames(source, stacked, label)

    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=SOFTWARE_NAME,
        manufacturer_model_name=model.name,
        software_versions=f"{SOFTWARE_NAME} {GADSYNTH_VERSION}",
        device_serial_number=model.sha256[:16],
        content_label="ENHANCEMENT",
        content_description=f"Predicted contrast enhancement, {SOFTWARE_NAME} {model.name} {model.version}"[:64],
        content_creator_name=None,
        omit_empty_frames=omit_empty_frames and bool(stacked.any()),
        series_description=description,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        # highdicom describes the scanner of source_images[0] itself: GadSynth is the only item to add.
        contributing_equipment=[synthesizing_equipment(model)],
    )
    if low_confidence is not None:  # the private scheme of the low-confidence type code, declared as DICOM asks
        scheme = Dataset()
        scheme.CodingSchemeDesignator = LOW_CONFIDENCE_TYPE.scheme_designator
        scheme.CodingSchemeName = f"{SOFTWARE_NAME} local codes"
        scheme.CodingSchemeResponsibleOrganization = SOFTWARE_NAME
        seg.CodingSchemeIdentificationSequence = [scheme]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out_path, enforce_file_format=True)
    logger.info(
        "Wrote enhancement SEG %s (%d frames, %d voxels set) referencing %s",
        seg.SOPInstanceUID,
        int(seg.NumberOfFrames),
        int(mask.sum()),
        label,
    )
    return out_path


def _sources_and_frames(source: Volume, mask: np.ndarray, label: str) -> tuple[list[Dataset], np.ndarray]:
    """highdicom's source images and the mask frames in their order (instances, or frames of one instance)."""
    frame_numbers = [ref.frame_number for ref in source.slices]
    if all(number is None for number in frame_numbers):
        return [ref.dataset for ref in source.slices], mask
    instances = {ref.sop_instance_uid for ref in source.slices}
    if len(instances) != 1 or any(number is None for number in frame_numbers):
        raise ValueError(
            f"{label}: a SEG can reference the frames of exactly one multi-frame instance; the volume's slices come "
            f"from {len(instances)} instances."
        )
    dataset = source.slices[0].dataset
    n_frames = int(dataset.get("NumberOfFrames", 1))
    frames = np.zeros((n_frames, *mask.shape[1:]), dtype=bool)  # mask: (slices, rows, cols[, segments])
    for index, number in enumerate(frame_numbers):
        if number is None or not 1 <= number <= n_frames:
            raise ValueError(f"{label}: slice {index} refers to frame {number} of an instance with {n_frames} frames.")
        frames[number - 1] = mask[index]
    return [_with_shared_plane_groups(dataset, label)], frames


def _with_shared_plane_groups(dataset: Dataset, label: str) -> Dataset:
    """The header with PixelMeasures and PlaneOrientation in the shared functional group, where highdicom reads them.

    Scanners (e.g. Siemens XA) may repeat both in every per-frame group; when every frame has the same values they
    are copied into the shared group of a shallow copy (the caller's dataset is not changed).

    Raises
    ------
    ValueError
        When the frames disagree on pixel spacing or orientation (not one stack).
    """
    shared_items = dataset.get("SharedFunctionalGroupsSequence") or [Dataset()]
    shared = shared_items[0]
    missing = [k for k in ("PixelMeasuresSequence", "PlaneOrientationSequence") if k not in shared]
    if not missing:
        return dataset
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    new_shared = Dataset(dict(shared))
    for keyword in missing:
        attribute = "PixelSpacing" if keyword == "PixelMeasuresSequence" else "ImageOrientationPatient"
        values = {tuple(item[keyword][0].get(attribute, ())) for item in per_frame if keyword in item}
        if len(values) != 1:
            raise ValueError(
                f"{label}: the frames have {len(values)} different {attribute} values; a SEG needs one stack."
            )
        new_shared[keyword] = per_frame[0][keyword]
    patched = Dataset(dict(dataset))
    patched.SharedFunctionalGroupsSequence = [new_shared]
    return patched
