"""What the writers read from the source volume: per-slice geometry and rescale, pixel format, grid, window."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom import Dataset
from pydicom.valuerep import DSfloat

from operators.errors import InconsistentGeometryError, InputDicomError, describe_series
from operators.writers.enums import PixelRepresentation

if TYPE_CHECKING:
    import SimpleITK as sitk

    from operators.study import SliceRef, Volume

logger = logging.getLogger(__name__)

__all__ = [
    "PixelFormat",
    "SliceGeometry",
    "check_same_grid",
    "frame_group_item",
    "pixel_format",
    "series_label",
    "series_uid_of",
    "slice_geometry",
    "slice_rescale",
    "to_stored_values",
    "window_from_values",
]


@dataclass(frozen=True)
class SliceGeometry:
    """Image Plane attributes of one source slice, as the source header wrote them (DS values kept verbatim)."""

    image_position: list[DSfloat]
    image_orientation: list[DSfloat]
    pixel_spacing: list[DSfloat]
    slice_thickness: DSfloat | None


@dataclass(frozen=True)
class PixelFormat:
    """Image Pixel attributes of the source series, which every synthetic slice keeps."""

    bits_allocated: int
    bits_stored: int
    high_bit: int
    representation: PixelRepresentation
    photometric_interpretation: str
    rows: int
    columns: int

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest stored value that BitsStored and PixelRepresentation allow."""
        if self.representation is PixelRepresentation.SIGNED:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1

    @property
    def dtype(self) -> np.dtype[Any]:
        """NumPy dtype of the stored pixels (little endian)."""
        kind = "i" if self.representation is PixelRepresentation.SIGNED else "u"
        return np.dtype(f"<{kind}{self.bits_allocated // 8}")


def series_label(volume: Volume) -> str:
    """Short label of a volume's series for logs and errors (UID and description, never patient data)."""
    return describe_series(volume.series.series_instance_uid, volume.series.description)


def frame_group_item(dataset: Dataset, frame_number: int | None, keyword: str) -> Dataset | None:
    """First item of a functional-group sequence for one frame: per-frame group first, then the shared group."""
    if frame_number is not None:
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
        if per_frame is not None and 1 <= frame_number <= len(per_frame):
            sequence = per_frame[frame_number - 1].get(keyword)
            if sequence:
                item: Dataset = sequence[0]
                return item
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared:
        sequence = shared[0].get(keyword)
        if sequence:
            shared_item: Dataset = sequence[0]
            return shared_item
    return None


def _required(container: Dataset | None, keyword: str, ref: SliceRef, series: str, where: str) -> Any:
    value = None if container is None else container.get(keyword)
    if value is None or value == "":
        raise InconsistentGeometryError(
            f"{series}: instance {ref.sop_instance_uid}"
            f"{'' if ref.frame_number is None else f' frame {ref.frame_number}'} has no {keyword} ({where}); "
            "the synthetic series copies the source geometry slice by slice.",
            series_instance_uid=series_uid_of(ref),
            attribute=keyword,
            expected=f"{keyword} present",
            found="missing",
        )
    return value


def series_uid_of(ref: SliceRef) -> str | None:
    """SeriesInstanceUID of the dataset a slice came from."""
    uid = ref.dataset.get("SeriesInstanceUID")
    return str(uid) if uid else None


def slice_geometry(ref: SliceRef, series: str) -> SliceGeometry:
    """Image Plane attributes of one source slice (top level for classic, functional groups for multi-frame).

    Raises
    ------
    InconsistentGeometryError
        When ImagePositionPatient, ImageOrientationPatient or PixelSpacing is missing for the slice.
    """
    ds = ref.dataset
    position: Dataset | None
    orientation: Dataset | None
    measures: Dataset | None
    if ref.frame_number is None:
        position, orientation, measures = ds, ds, ds
        where = "top level"
    else:
        position = frame_group_item(ds, ref.frame_number, "PlanePositionSequence")
        orientation = frame_group_item(ds, ref.frame_number, "PlaneOrientationSequence")
        measures = frame_group_item(ds, ref.frame_number, "PixelMeasuresSequence")
        where = "functional groups"
    ipp = _required(position, "ImagePositionPatient", ref, series, where)
    iop = _required(orientation, "ImageOrientationPatient", ref, series, where)
    spacing = _required(measures, "PixelSpacing", ref, series, where)
    thickness = None if measures is None else measures.get("SliceThickness")
    return SliceGeometry(
        image_position=list(ipp),
        image_orientation=list(iop),
        pixel_spacing=list(spacing),
        slice_thickness=thickness if thickness not in (None, "") else None,
    )


def slice_rescale(ref: SliceRef) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of one source slice; (1, 0) when the header has none."""
    if ref.frame_number is None:
        container: Dataset | None = ref.dataset
    else:
        container = frame_group_item(ref.dataset, ref.frame_number, "PixelValueTransformationSequence")
    if container is None:
        return 1.0, 0.0
    slope = container.get("RescaleSlope")
    intercept = container.get("RescaleIntercept")
    return (1.0 if slope in (None, "") else float(slope)), (0.0 if intercept in (None, "") else float(intercept))


def pixel_format(dataset: Dataset, series: str) -> PixelFormat:
    """Image Pixel attributes of the source, checked to be a grayscale integer image the writers can reproduce.

    Raises
    ------
    InputDicomError
        When SamplesPerPixel is not 1, PhotometricInterpretation is not MONOCHROME1/2, BitsAllocated is not 8
        or 16, or BitsStored / Rows / Columns are missing or out of range.
    """
    uid = dataset.get("SeriesInstanceUID")

    def bad(keyword: str, expected: str, found: object) -> InputDicomError:
        return InputDicomError(
            f"{series}: {keyword} is {found!r}, expected {expected}; GadSynth writes grayscale integer images only.",
            series_instance_uid=str(uid) if uid else None,
            attribute=keyword,
            expected=expected,
            found=repr(found),
        )

    samples = dataset.get("SamplesPerPixel", 1)
    if samples != 1:
        raise bad("SamplesPerPixel", "1", samples)
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise bad("PhotometricInterpretation", "MONOCHROME1 or MONOCHROME2", photometric)
    allocated = dataset.get("BitsAllocated")
    if allocated not in (8, 16):
        raise bad("BitsAllocated", "8 or 16", allocated)
    stored = dataset.get("BitsStored")
    if not isinstance(stored, int) or not 1 <= stored <= allocated:
        raise bad("BitsStored", f"1 to {allocated}", stored)
    representation = PixelRepresentation.from_code(int(dataset.get("PixelRepresentation", 0)))
    rows, columns = dataset.get("Rows"), dataset.get("Columns")
    if not rows or not columns:
        raise bad("Rows" if not rows else "Columns", "a positive integer", rows if not rows else columns)
    return PixelFormat(
        bits_allocated=int(allocated),
        bits_stored=int(stored),
        high_bit=int(stored) - 1,
        representation=representation,
        photometric_interpretation=photometric,
        rows=int(rows),
        columns=int(columns),
    )


def to_stored_values(
    values: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray, fmt: PixelFormat
) -> tuple[np.ndarray, int, PixelFormat]:
    """Convert real-world values (slice, row, col) to stored pixel values of the source format.

    Applies the inverse of each slice's rescale and rounds to the nearest integer. Values beyond the range that the
    source's BitsStored allows widen BitsStored (and HighBit) up to BitsAllocated rather than being clipped: a
    synthetic contrast-enhanced image is brighter than the pre-contrast it is written like (a 12-bit GE source
    clipped 4-11 % of the lesion contrast at 4095). What still falls outside the allocated range is clipped.
    Returns the stored array, the number of clipped voxels and the pixel format written.
    """
    if np.all(slopes == 1.0) and np.all(intercepts == 0.0):
        rounded = np.rint(values, dtype=np.float32)
    else:
        slope = slopes.astype(np.float32)[:, None, None]
        intercept = intercepts.astype(np.float32)[:, None, None]
        rounded = np.rint((values.astype(np.float32) - intercept) / slope)
    low, high = fmt.stored_range
    if rounded.size and (float(rounded.min()) < low or float(rounded.max()) > high):
        fmt = dataclasses.replace(fmt, bits_stored=fmt.bits_allocated, high_bit=fmt.bits_allocated - 1)
        low, high = fmt.stored_range
    clipped = int(np.count_nonzero((rounded < low) | (rounded > high)))
    np.clip(rounded, low, high, out=rounded)
    return rounded.astype(fmt.dtype), clipped, fmt


def window_from_values(values: np.ndarray, *, max_samples: int = 2_000_000) -> tuple[float, float]:
    """Window centre and width that show the data: from the minimum to the 99.5th percentile of the foreground.

    The foreground is every voxel above 5 % of the range between the minimum and the 99.9th percentile, so that
    a large dark background does not squeeze the window. Subsamples big volumes for speed.
    """
    flat = values.ravel()
    if flat.size > max_samples:
        flat = flat[:: int(np.ceil(flat.size / max_samples))]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.5, 1.0
    low = float(flat.min())
    top = float(np.percentile(flat, 99.9))
    foreground = flat[flat > low + 0.05 * (top - low)]
    high = float(np.percentile(foreground, 99.5)) if foreground.size else top
    width = max(high - low, 1.0)
    return low + width / 2.0, width


def check_same_grid(source: Volume, image: sitk.Image, what: str) -> None:
    """Check that an image lies on the source volume's grid (size, spacing, origin, direction).

    Raises
    ------
    ValueError
        When any of them differs; the message gives both values.
    """
    reference = source.image
    label = series_label(source)
    if tuple(image.GetSize()) != tuple(reference.GetSize()):
        raise ValueError(
            f"{what} must lie on the grid of {label}: size {image.GetSize()} != source size {reference.GetSize()}."
        )
    checks = (
        ("spacing", image.GetSpacing(), reference.GetSpacing(), 1e-4),
        ("origin", image.GetOrigin(), reference.GetOrigin(), 1e-3),
        ("direction", image.GetDirection(), reference.GetDirection(), 1e-4),
    )
    for name, found, expected, tolerance in checks:
        if not np.allclose(found, expected, rtol=0.0, atol=tolerance):
            raise ValueError(
                f"{what} must lie on the grid of {label}: {name} {tuple(found)} != source {name} {tuple(expected)}."
            )
