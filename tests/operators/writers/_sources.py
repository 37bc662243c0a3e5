"""Sources for the writer tests: a classic MR series written here, the real Enhanced MR T1w, dciodvfy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from operators.roles import Role
from operators.series_to_volume import build_volume
from operators.study import Volume
from operators.study_loader import load_study

ENHANCED_T1W = Path("dcm_qa_xa30") / "In" / "5_anat-T1w_acq-tfl"


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def write_classic_series(
    out_dir: Path,
    *,
    signed: bool,
    n_slices: int = 8,
    rows: int = 24,
    columns: int = 20,
    rescale: tuple[float, float] = (1.0, 0.0),
    bits_stored: int = 12,
    seed: int = 0,
    gap: float = 2.5,
    shift_mm: float = 0.0,
    study_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_description: str = "t1_mprage_sag_p2_iso",
    series_number: int = 3,
) -> list[Path]:
    """Write an oblique axial classic MR series (files in shuffled order, as a PACS might deliver them).

    ``gap`` is the slice spacing (mm) and ``shift_mm`` moves the whole stack along its normal; series written with
    the same ``study_instance_uid`` and ``frame_of_reference_uid`` belong to one study (e.g. a t1_pre and its
    low-dose series).
    """
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rotation = _rotation(np.array([1.0, 0.3, 0.2]), 17.0)
    row_dir, col_dir, normal = rotation[:, 0], rotation[:, 1], rotation[:, 2]
    spacing = (0.9, 1.1)  # (row spacing, column spacing) as PixelSpacing writes them
    origin = np.array([-12.3, 40.1, -7.7]) + normal * shift_mm
    study_uid, series_uid = study_instance_uid or generate_uid(), generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    low = -(2 ** (bits_stored - 1)) if signed else 0
    high = 2 ** (bits_stored - 1) - 1 if signed else 2**bits_stored - 1
    yy, xx = np.mgrid[0:rows, 0:columns]
    paths = []
    for k in rng.permutation(n_slices):
        stored = (yy * 37 + xx * 11 + int(k) * 101) % (high - low) + low
        stored = np.clip(stored + rng.integers(-3, 4, size=stored.shape), low, high)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyDate = "20240102"
        ds.SeriesDate = "20240102"
        ds.AcquisitionDate = "20240102"
        ds.ContentDate = "20240102"
        ds.StudyTime = "101500"
        ds.SeriesTime = "102000"
        ds.AcquisitionTime = "102001"
        ds.ContentTime = "102002"
        ds.AccessionNumber = "ACC123"
        ds.Modality = "MR"
        ds.Manufacturer = "SIEMENS"
        ds.InstitutionName = "Test Hospital"
        ds.ReferringPhysicianName = "Doe^Jane"
        ds.StationName = "MRC1"
        ds.StudyDescription = "BRAIN^ROUTINE"
        ds.SeriesDescription = series_description
        ds.ManufacturerModelName = "Skyra"
        ds.PatientName = "Phantom^Writer"
        ds.PatientID = "PID-0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.PatientAge = "054Y"
        ds.PatientWeight = 70
        ds.BodyPartExamined = "HEAD"
        ds.ScanningSequence = ["GR", "IR"]
        ds.SequenceVariant = ["SK", "SP", "MP"]
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.SequenceName = "*tfl3d1_16ns"
        ds.AngioFlag = "N"
        ds.SliceThickness = gap
        ds.RepetitionTime = 1900
        ds.EchoTime = 2.3
        ds.InversionTime = 900
        ds.NumberOfAverages = 1
        ds.ImagingFrequency = 123.2
        ds.ImagedNucleus = "1H"
        ds.EchoNumbers = 1
        ds.MagneticFieldStrength = 3
        ds.EchoTrainLength = 1
        ds.PixelBandwidth = 200
        ds.SoftwareVersions = "syngo MR E11"
        ds.FlipAngle = 9
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = int(k) + 1
        position = origin + normal * gap * int(k)
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = round(float(position @ normal), 4)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.PixelSpacing = list(spacing)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if rescale != (1.0, 0.0):
            ds.RescaleSlope, ds.RescaleIntercept = rescale[0], rescale[1]
            ds.RescaleType = "US"
        ds.WindowCenter, ds.WindowWidth = 500, 1000
        ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def read_every_element(path: Path) -> Dataset:
    """Read a file and decode every element, so that strict validation (the autouse fixture) sees each value."""
    dataset = pydicom.dcmread(path)
    for element in dataset.iterall():
        _ = element.value
    _ = dataset.pixel_array
    return dataset


def dciodvfy_errors(tool: str, path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy on one file; return its Error lines and its Warning lines."""
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")], [line for line in lines if line.startswith("Warning")]


def synthetic_from(volume: Volume, *, gain: float = 1.3, offset: float = 5.0) -> sitk.Image:
    """A stand-in synthetic image on the volume's grid: the source scaled and shifted (float32)."""
    image = sitk.Cast(volume.image, sitk.sitkFloat32) * gain + offset
    image.CopyInformation(volume.image)
    return image


def load_volume(folder: Path, role: Role | None = Role.T1_PRE) -> Volume:
    """The one series under a folder as a volume, through the real loader and volume builder."""
    study = load_study(folder)
    if len(study.series) != 1:
        raise ValueError(f"{folder} holds {len(study.series)} series, expected 1")
    return build_volume(study.series[0], role)
