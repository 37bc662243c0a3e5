"""What the phantom's physics hands to its DICOM exporter: one simulated series with its protocol and geometry."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

import SimpleITK as sitk

__all__ = ["ContrastHeader", "Protocol", "SimulatedSeries", "StudyHeader"]

Vendor = Literal["siemens", "ge", "philips"]
OutputFormat = Literal["classic", "enhanced"]
TransferSyntaxName = Literal["explicit-le", "implicit-le", "jpeg-ls", "jpeg2000", "rle"]


@dataclass(frozen=True)
class ContrastHeader:
    """Contrast administration as it appears in the header of a post-contrast series.

    ``volume_ml`` is the cumulative volume injected before this series started; ``dose`` is relative to the
    standard dose (0.1 mmol/kg = 1.0) and is what the series was simulated with.
    """

    agent: str  # generic name, e.g. "gadobutrol"; the exporter writes the vendor's brand name too
    volume_ml: float
    dose: float
    concentration_mmol_per_ml: float
    start_time: dt.time


@dataclass(frozen=True)
class Protocol:
    """Acquisition parameters of one series, written to the header as the scanner would."""

    role: str  # operators.roles.Role value: the truth the selector is tested against
    description: str  # vendor-flavoured SeriesDescription / ProtocolName
    series_number: int
    sequence_name: str  # e.g. "*tfl3d1_16ns", "*fl3d1", "*tse2d1_15", "*tir2d1_21", "ep_b1000t"
    mr_acquisition_type: Literal["2D", "3D"]
    scanning_sequence: str  # e.g. "GR", "GR\\IR", "SE", "SE\\IR", "EP"
    sequence_variant: str  # e.g. "SP\\SK", "SK\\SP\\MP", "SK\\SP\\OSP"
    repetition_time_ms: float
    echo_time_ms: float
    inversion_time_ms: float | None
    flip_angle_deg: float
    image_type: tuple[str, ...]  # e.g. ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")
    acquisition_time: dt.time
    contrast: ContrastHeader | None = None  # None on every pre-contrast series
    echo_train_length: int = 1
    pixel_bandwidth_hz: float = 200.0


@dataclass(frozen=True)
class StudyHeader:
    """Patient, study and equipment attributes shared by every series of one simulated exam (all synthetic)."""

    patient_name: str
    patient_id: str
    patient_birth_date: str  # YYYYMMDD
    patient_sex: Literal["M", "F", "O"]
    patient_weight_kg: float
    patient_size_m: float
    study_instance_uid: str
    frame_of_reference_uid: str
    study_date: dt.date
    study_time: dt.time
    accession_number: str
    vendor: Vendor
    field_strength_t: float
    institution_name: str = "GadSynth Phantom Hospital"


@dataclass
class SimulatedSeries:
    """One simulated series ready to be written as DICOM.

    ``image`` is a SimpleITK image of pixel type UInt16 whose origin, spacing and direction (LPS, SimpleITK
    convention) are the acquisition geometry: index (i, j, k) = (column, row, slice), so
    ImageOrientationPatient = direction columns 0 and 1, ImagePositionPatient of slice k =
    origin + k * spacing[2] * direction column 2. ``sitk.GetArrayFromImage(image)[k]`` is slice k's pixel data.
    ``series_instance_uid`` is deterministic for a seed so that re-runs are reproducible.
    """

    protocol: Protocol
    image: sitk.Image
    series_instance_uid: str
    slice_thickness_mm: float
    extra: dict[str, object] = field(default_factory=dict)  # e.g. diffusion b-value for ADC
