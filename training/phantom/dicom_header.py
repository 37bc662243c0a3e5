"""Header parts shared by the phantom's classic and enhanced MR writers: geometry, UIDs, times, common modules."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

from training.phantom.dicom_vendor import Code, VendorProfile
from training.phantom.types import Protocol, SimulatedSeries, StudyHeader

__all__ = [
    "LARMOR_MHZ_PER_T",
    "PixelFormat",
    "SeriesGeometry",
    "acquisition_duration_s",
    "code_item",
    "common_dataset",
    "ds_list",
    "ds_str",
    "dt_str",
    "instance_uid",
    "pixel_format",
    "series_geometry",
    "slice_datetimes",
    "tm_str",
]

logger = logging.getLogger(__name__)

#: Proton gyromagnetic ratio / 2 pi: ImagingFrequency (MHz) = 42.577 * B0 (T).
LARMOR_MHZ_PER_T = 42.577478518

_ORTHO_TOLERANCE = 1e-4


def ds_str(value: float) -> str:
    """Format a number as a Decimal String of at most 16 characters, without "-0" or 1e-17 noise."""
    cleaned = float(np.round(value, 10)) + 0.0
    return format_number_as_ds(cleaned)


def ds_list(values: np.ndarray | list[float] | tuple[float, ...]) -> list[str]:
    """Format several numbers as a multi-valued Decimal String."""
    return [ds_str(float(v)) for v in values]


def tm_str(value: dt.datetime | dt.time) -> str:
    """DICOM TM (HHMMSS.ffffff)."""
    return value.strftime("%H%M%S.%f")


def dt_str(value: dt.datetime) -> str:
    """DICOM DT (YYYYMMDDHHMMSS.ffffff), no time zone."""
    return value.strftime("%Y%m%d%H%M%S.%f")


def instance_uid(series_instance_uid: str, kind: str, index: int = 0) -> str:
    """Deterministic UID derived from the series UID: the same series gives the same SOP / organization UIDs."""
    return generate_uid(entropy_srcs=[series_instance_uid, kind, str(index)])


def code_item(code: Code) -> Dataset:
    """A Code Sequence Macro item."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


@dataclass(frozen=True)
class SeriesGeometry:
    """Acquisition geometry of one series in DICOM terms (LPS, mm)."""

    rows: int
    columns: int
    n_slices: int
    orientation: list[str]  # ImageOrientationPatient: row direction then column direction
    pixel_spacing: list[str]  # PixelSpacing: spacing between rows, then between columns
    spacing_between_slices: float
    positions: np.ndarray  # (n_slices, 3) ImagePositionPatient of each slice
    slice_locations: np.ndarray  # (n_slices,) position projected on the slice normal


def series_geometry(image: sitk.Image, label: str) -> SeriesGeometry:
    """Translate a SimpleITK image's origin, spacing and direction into per-slice DICOM geometry.

    Raises
    ------
    ValueError
        When the image is not 3D or its direction is not orthonormal (a sheared grid, e.g. gantry tilt, cannot
        be written as parallel slices).
    """
    if image.GetDimension() != 3:
        raise ValueError(f"{label}: image must be 3D. Found {image.GetDimension()}D.")
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHO_TOLERANCE):
        raise ValueError(f"{label}: direction cosines must be orthonormal. Found {direction.ravel().tolist()}.")
    row_dir, col_dir, slice_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row_dir, col_dir)  # orthonormal: the slice axis is +normal or -normal, never sheared
    columns, rows, n_slices = image.GetSize()
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    positions = origin[None, :] + np.arange(n_slices)[:, None] * spacing[2] * slice_dir[None, :]
    return SeriesGeometry(
        rows=rows,
        columns=columns,
        n_slices=n_slices,
        orientation=ds_list(np.concatenate([row_dir, col_dir])),
        pixel_spacing=ds_list([spacing[1], spacing[0]]),
        spacing_between_slices=float(spacing[2]),
        positions=positions,
        slice_locations=positions @ normal,
    )


@dataclass(frozen=True)
class PixelFormat:
    """Image Pixel module values shared by every slice of a series."""

    bits_stored: int
    window_center: str
    window_width: str


def pixel_format(array: np.ndarray, *, twelve_or_sixteen: bool = False) -> PixelFormat:
    """Bits stored (12 like most scanners, more when values need it) and a display window from robust percentiles.

    ``twelve_or_sixteen``: only 12 or 16 bits (the Enhanced MR IOD allows no other value)."""
    largest = int(array.max(initial=0))
    bits = max(12, largest.bit_length())
    if twelve_or_sixteen and bits > 12:
        bits = 16
    sample = array[:: max(1, array.shape[0] // 32), ::2, ::2]  # a robust window does not need every voxel
    low, high = np.percentile(sample, [1.0, 99.5])
    width = max(float(high - low), 1.0)
    return PixelFormat(
        bits_stored=bits, window_center=ds_str(round(float(low) + width / 2)), window_width=ds_str(round(width))
    )


def acquisition_duration_s(protocol: Protocol, rows: int, n_slices: int, parallel_factor: float) -> float:
    """Scan time the protocol would take: 3D TR x phase lines (x partitions for GRE), 2D TR x lines / echo train."""
    tr_s = protocol.repetition_time_ms / 1000.0
    if protocol.scanning_sequence.startswith("EP"):
        return round(tr_s * 4 + 10.0, 3)  # b0 + 3 diffusion directions, plus adjustment
    lines = rows / parallel_factor
    if protocol.mr_acquisition_type == "3D":
        if "IR" in protocol.scanning_sequence.split("\\"):  # MPRAGE: one partition loop per TR
            return round(tr_s * lines, 3)
        return round(tr_s * lines * n_slices, 3)
    return round(tr_s * lines / max(protocol.echo_train_length, 1), 3)


def slice_datetimes(protocol: Protocol, study: StudyHeader, n_slices: int) -> list[dt.datetime]:
    """Acquisition time of each slice: one time for a 3D volume, interleaved within one TR for 2D multi-slice."""
    start = dt.datetime.combine(study.study_date, protocol.acquisition_time)
    if protocol.mr_acquisition_type == "3D":
        return [start] * n_slices
    step = dt.timedelta(milliseconds=protocol.repetition_time_ms / max(n_slices, 1))
    order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))  # interleaved: odd slices first
    times = [start] * n_slices
    for rank, k in enumerate(order):
        times[k] = start + rank * step
    return times


def _patient_age(birth_date: str, study_date: dt.date) -> str:
    born = dt.datetime.strptime(birth_date, "%Y%m%d").date()
    years = study_date.year - born.year - ((study_date.month, study_date.day) < (born.month, born.day))
    return f"{max(years, 0):03d}Y"


def common_dataset(
    series: SimulatedSeries,
    study: StudyHeader,
    profile: VendorProfile,
    *,
    sop_class_uid: str,
    content_time: dt.datetime,
    geometry: SeriesGeometry,
    fmt: PixelFormat,
) -> Dataset:
    """Modules every image of the series shares: SOP Common, Patient, Study, Series, Frame of Reference,
    Equipment and the fixed part of Image Pixel (with the image size). Per-slice and IOD-specific attributes are
    added by the writers."""
    protocol = series.protocol
    bits_stored = fmt.bits_stored
    series_start = dt.datetime.combine(study.study_date, protocol.acquisition_time)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate = content_time.strftime("%Y%m%d")
    ds.InstanceCreationTime = tm_str(content_time)
    ds.SOPClassUID = sop_class_uid
    ds.StudyDate = study.study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = content_time.strftime("%Y%m%d")
    ds.StudyTime = tm_str(study.study_time)
    ds.SeriesTime = tm_str(series_start)
    ds.ContentTime = tm_str(content_time)
    ds.AccessionNumber = study.accession_number
    ds.Modality = "MR"
    ds.Manufacturer = profile.manufacturer
    ds.InstitutionName = study.institution_name
    ds.ReferringPhysicianName = ""
    ds.StationName = profile.station_name
    ds.StudyDescription = profile.study_description
    ds.SeriesDescription = protocol.description
    ds.ManufacturerModelName = profile.model
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    ds.PatientAge = _patient_age(study.patient_birth_date, study.study_date)
    ds.PatientSize = ds_str(study.patient_size_m)
    ds.PatientWeight = ds_str(study.patient_weight_kg)
    ds.BodyPartExamined = "HEAD"
    ds.MRAcquisitionType = protocol.mr_acquisition_type
    ds.MagneticFieldStrength = ds_str(study.field_strength_t)
    ds.DeviceSerialNumber = profile.device_serial_number
    ds.SoftwareVersions = profile.software_versions.split("\\")
    ds.ProtocolName = protocol.description
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.StudyID = study.accession_number[-16:] or "1"
    ds.SeriesNumber = protocol.series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geometry.rows
    ds.Columns = geometry.columns
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    return ds
