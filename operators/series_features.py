"""Features of a series that selection rules match: DICOM attributes (classic or Enhanced MR) and derived ones."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSfloat, PersonName

from operators.fast_header import first_frame_group, frame_positions
from operators.study import Series

__all__ = ["SeriesFeatures", "lookup", "series_features"]

logger = logging.getLogger(__name__)

_SIEMENS_SDI = "SIEMENS MR SDI 02"


def _plain(value: Any) -> Any:
    """A pydicom value as plain Python: numbers, strings or lists of them."""
    if isinstance(value, (MultiValue, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (DSfloat, float)):
        return float(value)
    if isinstance(value, (IS, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin-1", errors="replace").strip("\x00 ")
    return value


def lookup(ds: Dataset, keyword: str) -> Any:
    """A keyword's value at the top level, else in the shared, else in the first per-frame functional groups.

    A value pydicom cannot convert (a broken header) is None here: features only steer series selection, and a
    series that is used is read again, strictly, by the volume builder, which names what is wrong.
    """
    try:
        return _lookup(ds, keyword)
    except (ValueError, TypeError, KeyError, IndexError, LookupError, AttributeError):
        return None


def _lookup(ds: Dataset, keyword: str) -> Any:
    if keyword in ds:
        return _plain(ds[keyword].value)
    shared = ds.get("SharedFunctionalGroupsSequence")
    for group in (shared[0] if shared else None, first_frame_group(ds)):
        if group is None:
            continue
        for element in group:
            if element.VR == "SQ" and element.value and keyword in element.value[0]:
                return _plain(element.value[0][keyword].value)
    return None


def _siemens_private_image_type(ds: Dataset) -> tuple[list[str], list[str]]:
    """Siemens XA: ImageType (0021,1175) and algorithms (0021,1176) from the private group (0021,11FE) of frame 1."""
    found: dict[int, list[str]] = {0x75: [], 0x76: []}
    shared = ds.get("SharedFunctionalGroupsSequence")
    for group in (first_frame_group(ds), shared[0] if shared else None):
        if group is None:
            continue
        try:
            item = group.private_block(0x0021, _SIEMENS_SDI)[0xFE].value[0]
            inner = item.private_block(0x0021, _SIEMENS_SDI)
        except (KeyError, IndexError, TypeError, AttributeError):
            continue
        for offset in found:
            try:
                value = _plain(inner[offset].value)
            except KeyError:
                continue
            found[offset].extend(str(v) for v in (value if isinstance(value, list) else str(value).split("\\")))
    return found[0x75], found[0x76]


def _datetime(ds: Dataset) -> dt.datetime | None:
    """Acquisition time of an instance (AcquisitionDateTime, Acquisition / Series / Content date and time)."""
    stamp = lookup(ds, "AcquisitionDateTime") or lookup(ds, "FrameAcquisitionDateTime")
    candidates = [str(stamp)] if stamp else []
    for date_kw, time_kw in (
        ("AcquisitionDate", "AcquisitionTime"),
        ("SeriesDate", "SeriesTime"),
        ("ContentDate", "ContentTime"),
    ):
        date, time = ds.get(date_kw), ds.get(time_kw)
        if date and time:
            candidates.append(f"{date}{time}")
    for text in candidates:
        digits = text.split("+")[0].split("-")[0]
        main, _, fraction = digits.partition(".")
        try:
            moment = dt.datetime.strptime(main[:14].ljust(14, "0"), "%Y%m%d%H%M%S")
        except ValueError:
            continue
        return moment + dt.timedelta(microseconds=int((fraction + "000000")[:6]) if fraction.isdigit() else 0)
    return None


def inversion_prepared(ds: Dataset) -> bool | None:
    """Whether the series is inversion-prepared (MPRAGE, IR-FSPGR / BRAVO, 3D TFE with an inversion pulse): IR in
    ScanningSequence (or InversionRecovery YES in an Enhanced MR header) or a non-zero InversionTime (InversionTimes).

    None when the header says neither the scanning sequence nor an inversion time.
    """
    scanning = _scanning_sequence(ds)
    inversion = _inversion_time(ds)
    try:
        inverted = inversion is not None and float(inversion) > 0
    except (TypeError, ValueError):
        inverted = False
    if "IR" in scanning or inverted:
        return True
    return False if scanning else None


def _inversion_time(ds: Dataset) -> Any:
    """InversionTime, else the first of an Enhanced MR header's InversionTimes (None when neither is given)."""
    inversion = lookup(ds, "InversionTime")
    if inversion is None:
        times = lookup(ds, "InversionTimes")
        inversion = times[0] if isinstance(times, list) and times else times
    return inversion


def _scanning_sequence(ds: Dataset) -> list[str]:
    value = lookup(ds, "ScanningSequence")
    if value:
        return [str(v).upper() for v in (value if isinstance(value, list) else [value])]
    derived: list[str] = []
    echo = str(lookup(ds, "EchoPulseSequence") or "").upper()
    derived += {"GRADIENT": ["GR"], "SPIN": ["SE"], "BOTH": ["SE", "GR"]}.get(echo, [])
    if str(lookup(ds, "InversionRecovery") or "").upper() == "YES":
        derived.append("IR")
    if str(lookup(ds, "EchoPlanarPulseSequence") or "").upper() == "YES":
        derived.append("EP")
    return derived


def _point(value: Any) -> list[float] | None:
    """Three finite coordinates, or None for a missing or broken ImagePositionPatient."""
    try:
        point = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return point if len(point) == 3 and all(np.isfinite(point)) else None


def _positions(series: Series) -> np.ndarray:
    """Slice positions of a series that can be read (the volume builder refuses the others, if it is used)."""
    points: list[list[float] | None] = []
    for instance in series.instances:
        ds = instance.dataset
        try:
            fast = frame_positions(ds)
            if fast is not None:
                points.extend(fast)
                continue
            per_frame = ds.get("PerFrameFunctionalGroupsSequence")
            if per_frame:
                for item in per_frame:
                    plane = item.get("PlanePositionSequence")
                    if plane and "ImagePositionPatient" in plane[0]:
                        points.append(_point(plane[0].ImagePositionPatient))
            elif "ImagePositionPatient" in ds:
                points.append(_point(ds.ImagePositionPatient))
        except (ValueError, TypeError, KeyError, IndexError):
            continue
    good = [p for p in points if p is not None]
    return np.asarray(good, dtype=np.float64).reshape(-1, 3)


def _orientation(iop: Any) -> str | None:
    if not isinstance(iop, list) or len(iop) != 6:
        return None
    try:
        vectors = np.asarray(iop, dtype=float)
    except (TypeError, ValueError):
        return None
    if not np.all(np.isfinite(vectors)):
        return None
    normal = np.abs(np.cross(vectors[:3], vectors[3:]))
    if not normal.any():
        return None
    axis = int(np.argmax(normal))
    if normal[axis] < 0.8:
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[axis]


def _frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _voxel_volume(pixel: Any, depth: Any) -> float | None:
    """Voxel volume in mm^3, or None when the spacings are missing or not positive finite numbers."""
    if not isinstance(pixel, list) or len(pixel) != 2 or not depth:
        return None
    try:
        volume = float(pixel[0]) * float(pixel[1]) * float(depth)
    except (TypeError, ValueError):
        return None
    return volume if np.isfinite(volume) and volume > 0 else None


class SeriesFeatures(dict[str, Any]):
    """Features of one series; a key that was not derived up front is looked up as a DICOM keyword on first use."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__()
        self._dataset = dataset

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self:
            if keyword_for_tag(tag_for_keyword(key) or 0) != key:
                return default
            self[key] = lookup(self._dataset, key)
        value = super().get(key, default)
        return default if value is None else value


def series_features(series: Series, *, normalized_markers: Sequence[str] = ("NORM",)) -> SeriesFeatures:
    """The attributes rules are matched against, for one series.

    Derived features (beside any DICOM keyword found by `lookup`): ``ImageType`` (union of ImageType, FrameType
    and Siemens' private per-frame ImageType), ``Normalized`` (a marker such as NORM in it), ``NumberOfInstances``,
    ``NumberOfFrames``, ``NumberOfSlices`` (distinct slice positions), ``NumberOfVolumes`` (frames per position),
    ``ScanningSequence`` (derived from EchoPulseSequence / InversionRecovery / EchoPlanarPulseSequence for
    Enhanced MR), ``EchoTime`` / ``InversionTime`` (EffectiveEchoTime / InversionTimes), ``SequenceName``
    (or PulseSequenceName), ``Orientation`` (AXIAL, CORONAL, SAGITTAL or OBLIQUE), ``SliceSpacing``,
    ``VoxelVolume`` (mm^3), ``ContrastBolusAgent`` (text or code meaning), ``AcquisitionDateTime``
    (a datetime) and ``AfterContrast`` (set by the selector).
    """
    ds = series.first
    features = SeriesFeatures(ds)
    for keyword in (
        "Modality",
        "SeriesDescription",
        "ProtocolName",
        "MRAcquisitionType",
        "RepetitionTime",
        "FlipAngle",
        "SliceThickness",
        "PixelSpacing",
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "SequenceVariant",
        "MagneticFieldStrength",
        "FrameOfReferenceUID",
        "StudyInstanceUID",
        "TimeOfFlightContrast",
        "ComplexImageComponent",
        "DiffusionBValue",
        "PatientWeight",
        "ContrastBolusVolume",
        "ContrastBolusTotalDose",
        "ContrastBolusIngredientConcentration",
        "ImageOrientationPatient",
        "Manufacturer",
    ):
        features[keyword] = lookup(ds, keyword)
    features["SeriesDescription"] = series.description
    image_type: list[str] = []
    private_type, algorithms = _siemens_private_image_type(ds)
    for value in (lookup(ds, "ImageType"), lookup(ds, "FrameType"), private_type):
        for item in value if isinstance(value, list) else ([value] if value else []):
            if str(item).upper() not in image_type:
                image_type.append(str(item).upper())
    features["ImageType"] = image_type
    features["Normalized"] = any(m.upper() in image_type for m in normalized_markers) or any(
        v.upper().startswith("NORMALIZEALGO") for v in algorithms
    )
    echo = lookup(ds, "EchoTime")
    features["EchoTime"] = echo if echo is not None else lookup(ds, "EffectiveEchoTime")
    inversion = _inversion_time(ds)
    features["InversionTime"] = inversion if inversion not in (0, 0.0) else None
    features["SequenceName"] = lookup(ds, "SequenceName") or lookup(ds, "PulseSequenceName")
    features["ScanningSequence"] = _scanning_sequence(ds)
    agent = lookup(ds, "ContrastBolusAgent")
    if not agent:
        codes = ds.get("ContrastBolusAgentSequence")
        agent = str(codes[0].get("CodeMeaning", "")) if codes else None
    features["ContrastBolusAgent"] = agent or None
    codes = ds.get("ContrastBolusAgentSequence")
    for keyword in ("ContrastBolusVolume", "ContrastBolusTotalDose", "ContrastBolusIngredientConcentration"):
        if features[keyword] is None and codes and keyword in codes[0]:
            features[keyword] = _plain(codes[0][keyword].value)
    positions = _positions(series)
    frames = sum(_frame_count(i.dataset) for i in series.instances)
    distinct = len(np.unique(np.round(positions, 2), axis=0)) if len(positions) else 0
    features["NumberOfInstances"] = len(series.instances)
    features["NumberOfFrames"] = frames
    features["NumberOfSlices"] = distinct
    # frames whose position could be read: a broken one is the volume builder's to report, not a second volume
    features["NumberOfVolumes"] = int(np.ceil(min(frames, len(positions)) / distinct)) if distinct else 1
    features["Orientation"] = _orientation(features["ImageOrientationPatient"])
    spacing = None
    if distinct > 1 and features["Orientation"] is not None:
        iop = np.asarray(features["ImageOrientationPatient"], float)
        along = np.sort(np.unique(np.round(positions @ np.cross(iop[:3], iop[3:]), 3)))
        spacing = float((along[-1] - along[0]) / (len(along) - 1)) if len(along) > 1 else None
    features["SliceSpacing"] = spacing
    features["VoxelVolume"] = _voxel_volume(features["PixelSpacing"], spacing or features["SliceThickness"])
    features["AcquisitionDateTime"] = _datetime(ds)
    features["AfterContrast"] = False
    return features
