"""Small synthetic classic MR series for ingest tests: headers as scanners write them, pixels we know exactly."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: Acquisition parameters of typical brain series (TR, TE, TI ms; flip deg; scanning sequence; 2D/3D).
PROTOCOLS: dict[str, dict[str, object]] = {
    "t1_mprage": {"tr": 2300.0, "te": 2.98, "ti": 900.0, "flip": 9.0, "seq": ["GR", "IR"], "acq": "3D"},
    "t1_gre": {"tr": 7.0, "te": 3.0, "ti": None, "flip": 8.0, "seq": ["GR"], "acq": "3D"},
    "t1_se": {"tr": 550.0, "te": 10.0, "ti": None, "flip": 90.0, "seq": ["SE"], "acq": "2D"},
    "t2": {"tr": 5000.0, "te": 100.0, "ti": None, "flip": 150.0, "seq": ["SE"], "acq": "2D"},
    "flair": {"tr": 9000.0, "te": 90.0, "ti": 2500.0, "flip": 150.0, "seq": ["SE", "IR"], "acq": "2D"},
    "bold": {"tr": 2000.0, "te": 30.0, "ti": None, "flip": 80.0, "seq": ["EP"], "acq": "2D"},
    "dwi": {"tr": 5000.0, "te": 80.0, "ti": None, "flip": 90.0, "seq": ["EP"], "acq": "2D"},
}


@dataclass
class SeriesSpec:
    """What to write: protocol, geometry and header extras of one synthetic series."""

    description: str = "T1 MPRAGE"
    protocol: str = "t1_mprage"
    series_number: int = 1
    slices: int = 10
    rows: int = 12
    columns: int = 14
    spacing: tuple[float, float, float] = (1.0, 1.2, 2.0)  # column (x), row (y), slice spacing in mm
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    origin: tuple[float, float, float] = (-10.0, -12.0, -8.0)
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    modality: str = "MR"
    time: dt.datetime = dt.datetime(2024, 3, 1, 9, 0, 0)
    contrast_ml: float | None = None
    agent: str = "Gadovist (gadobutrol)"
    weight_kg: float = 80.0
    field_strength: float = 3.0
    slope: float = 1.0
    intercept: float = 0.0
    study_uid: str = field(default_factory=generate_uid)
    frame_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    seed: int = 0


def stored_values(spec: SeriesSpec) -> np.ndarray:
    """The stored pixel values the series gets, shape (slices, rows, columns), uint16 (distinct per slice)."""
    rng = np.random.default_rng(spec.seed)
    base = rng.integers(0, 1000, size=(spec.rows, spec.columns), dtype=np.uint16)
    return np.stack([base + np.uint16(10 * k) for k in range(spec.slices)])


def slice_positions(spec: SeriesSpec) -> np.ndarray:
    """ImagePositionPatient of every slice, in slice order (shape (slices, 3))."""
    row = np.asarray(spec.orientation[:3], float)
    col = np.asarray(spec.orientation[3:], float)
    normal = np.cross(row, col)
    return np.asarray(spec.origin, float) + np.outer(np.arange(spec.slices) * spec.spacing[2], normal)


def write_series(
    folder: Path,
    spec: SeriesSpec,
    *,
    positions: Sequence[Sequence[float]] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write one classic MR series (one file per slice, files named in reverse slice order). Returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    protocol = PROTOCOLS[spec.protocol]
    pixels = stored_values(spec)
    where = slice_positions(spec) if positions is None else np.asarray(positions, float)
    paths = []
    for k in range(spec.slices):
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = spec.study_uid, spec.series_uid
        ds.FrameOfReferenceUID = spec.frame_uid
        ds.Modality = spec.modality
        ds.PatientName, ds.PatientID = "Test^Ingest", "INGEST01"
        ds.PatientWeight = spec.weight_kg
        ds.SeriesNumber, ds.InstanceNumber = spec.series_number, k + 1
        ds.SeriesDescription = spec.description
        ds.ImageType = list(spec.image_type)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = spec.time.strftime("%Y%m%d")
        ds.StudyTime = "080000"
        ds.SeriesTime = ds.AcquisitionTime = spec.time.strftime("%H%M%S")
        ds.ScanningSequence = protocol["seq"]
        ds.SequenceVariant = ["SK", "SP"]
        ds.MRAcquisitionType = protocol["acq"]
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = protocol["tr"], protocol["te"], protocol["flip"]
        if protocol["ti"] is not None:
            ds.InversionTime = protocol["ti"]
        ds.MagneticFieldStrength = spec.field_strength
        if spec.contrast_ml is not None:
            ds.ContrastBolusAgent = spec.agent
            ds.ContrastBolusVolume = spec.contrast_ml
        ds.SliceThickness = spec.spacing[2]
        ds.PixelSpacing = [spec.spacing[1], spec.spacing[0]]
        ds.ImageOrientationPatient = [float(v) for v in spec.orientation]
        ds.ImagePositionPatient = [round(float(v), 4) for v in where[k]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = spec.rows, spec.columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = spec.slope, spec.intercept
        big_endian = UID(transfer_syntax) == ExplicitVRBigEndian
        ds.PixelData = pixels[k].astype(">u2" if big_endian else "<u2").tobytes()
        if UID(transfer_syntax).is_compressed:
            ds.compress(UID(transfer_syntax), pixels[k], generate_instance_uid=False)
        path = folder / f"IM{spec.slices - k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
