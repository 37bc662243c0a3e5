"""Write one simulated series as DICOM: classic MR Image Storage (a file per slice) or one Enhanced MR object."""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import SimpleITK as sitk
from pydicom import dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

from training.phantom.dicom_enhanced import enhanced_dataset
from training.phantom.dicom_header import (
    LARMOR_MHZ_PER_T,
    PixelFormat,
    SeriesGeometry,
    acquisition_duration_s,
    code_item,
    common_dataset,
    ds_list,
    ds_str,
    instance_uid,
    pixel_format,
    series_geometry,
    slice_datetimes,
    tm_str,
)
from training.phantom.dicom_vendor import (
    GADOLINIUM_MG_PER_MMOL,
    INTRAVENOUS_ROUTE,
    VendorProfile,
    agent_product,
    vendor_profile,
)
from training.phantom.types import OutputFormat, SimulatedSeries, StudyHeader, TransferSyntaxName

__all__ = ["TRANSFER_SYNTAXES", "write_series"]

logger = logging.getLogger(__name__)

#: Lossless transfer syntaxes the exporter writes, by the names used on the command line.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit-le": ExplicitVRLittleEndian,
    "implicit-le": ImplicitVRLittleEndian,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}

#: Smallest rows / columns openjpeg encodes with its default 6 resolution levels.
_J2K_MIN_SIZE = 32

#: ImageType of an ADC map when the protocol does not give a DERIVED one (Siemens VE11 style).
_ADC_IMAGE_TYPE = ("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM")


def _label(series: SimulatedSeries) -> str:
    return f"series {series.series_instance_uid} ({series.protocol.description!r})"


def _validate(series: SimulatedSeries, output_format: str, transfer_syntax: str) -> None:
    """Check every input before any work is done; raise with what was expected and what was found."""
    label = _label(series)
    if output_format not in get_args(OutputFormat):
        raise ValueError(
            f"{label}: output_format must be one of {list(get_args(OutputFormat))}. Found {output_format!r}."
        )
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f"{label}: transfer_syntax must be one of {list(TRANSFER_SYNTAXES)}. Found {transfer_syntax!r}."
        )
    if not isinstance(series.image, sitk.Image):
        raise TypeError(f"{label}: image must be a SimpleITK image. Found {type(series.image).__name__}.")
    if series.image.GetPixelID() != sitk.sitkUInt16:
        raise TypeError(f"{label}: image pixel type must be UInt16. Found {series.image.GetPixelIDTypeAsString()}.")
    columns, rows = series.image.GetSize()[:2]
    if transfer_syntax == "jpeg2000" and min(rows, columns) < _J2K_MIN_SIZE:
        raise ValueError(
            f"{label}: JPEG 2000 needs at least {_J2K_MIN_SIZE} rows and columns (openjpeg's 6 resolution levels). "
            f"Found {rows} x {columns}; use jpeg-ls or rle for smaller images."
        )
    protocol = series.protocol
    if "IR" in protocol.scanning_sequence.split("\\") and protocol.inversion_time_ms is None:
        raise ValueError(
            f"{label}: ScanningSequence {protocol.scanning_sequence!r} includes IR but inversion_time_ms is None."
        )
    if len(protocol.description) > 64:
        raise ValueError(
            f"{label}: SeriesDescription must be at most 64 characters. Found {len(protocol.description)}."
        )
    if series.slice_thickness_mm <= 0:
        raise ValueError(f"{label}: slice_thickness_mm must be positive. Found {series.slice_thickness_mm}.")
    if protocol.contrast is not None:
        agent_product(protocol.contrast.agent)  # KeyError naming the known agents


def _classic_image_type(series: SimulatedSeries) -> list[str]:
    image_type = list(series.protocol.image_type) or ["ORIGINAL", "PRIMARY", "M", "ND"]
    if series.protocol.role == "adc" and image_type[0] != "DERIVED":
        return list(_ADC_IMAGE_TYPE)
    return image_type


def _scan_options(series: SimulatedSeries) -> list[str] | str:
    given = series.extra.get("scan_options")
    if isinstance(given, str):
        return given.split("\\") if given else ""
    scanning = series.protocol.scanning_sequence.split("\\")
    options = []
    if "EP" in scanning:
        options.extend(["PFP", "FS"])
    return options or ""


def _add_classic_contrast(ds: Dataset, series: SimulatedSeries) -> None:
    """Contrast/Bolus module (post-contrast series only): free text for humans, codes for machines."""
    contrast = series.protocol.contrast
    if contrast is None:
        return
    product = agent_product(contrast.agent)
    ds.ContrastBolusAgent = product.label
    ds.ContrastBolusAgentSequence = Sequence([code_item(product.code)])
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusAdministrationRouteSequence = Sequence([code_item(INTRAVENOUS_ROUTE)])
    ds.ContrastBolusVolume = ds_str(contrast.volume_ml)
    ds.ContrastBolusStartTime = contrast.start_time.strftime("%H%M%S")
    ds.ContrastBolusTotalDose = ds_str(contrast.volume_ml)
    ds.ContrastBolusIngredient = "GADOLINIUM"
    ds.ContrastBolusIngredientConcentration = ds_str(contrast.concentration_mmol_per_ml * GADOLINIUM_MG_PER_MMOL)


def _classic_template(
    series: SimulatedSeries,
    study: StudyHeader,
    profile: VendorProfile,
    geometry: SeriesGeometry,
    fmt: PixelFormat,
    content_time: dt.datetime,
) -> Dataset:
    """Everything that is the same on every slice of a classic MR series."""
    protocol = series.protocol
    ds = common_dataset(
        series, study, profile, sop_class_uid=MRImageStorage, content_time=content_time, geometry=geometry, fmt=fmt
    )
    ds.ImageType = _classic_image_type(series)
    ds.ScanningSequence = protocol.scanning_sequence.split("\\")
    ds.SequenceVariant = protocol.sequence_variant.split("\\")
    ds.ScanOptions = _scan_options(series)
    ds.SequenceName = protocol.sequence_name
    ds.AngioFlag = "N"
    ds.SliceThickness = ds_str(series.slice_thickness_mm)
    ds.RepetitionTime = ds_str(protocol.repetition_time_ms)
    ds.EchoTime = ds_str(protocol.echo_time_ms)
    if "IR" in protocol.scanning_sequence.split("\\") and protocol.inversion_time_ms is not None:
        ds.InversionTime = ds_str(protocol.inversion_time_ms)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = ds_str(LARMOR_MHZ_PER_T * study.field_strength_t)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.SpacingBetweenSlices = ds_str(geometry.spacing_between_slices)
    phase_along_rows = not protocol.scanning_sequence.startswith("EP")
    phase_steps = geometry.columns if phase_along_rows else geometry.rows
    ds.NumberOfPhaseEncodingSteps = phase_steps
    ds.EchoTrainLength = protocol.echo_train_length
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = ds_str(protocol.pixel_bandwidth_hz)
    ds.ReceiveCoilName = profile.receive_coil
    ds.TransmitCoilName = "Body"
    # frequency rows \ frequency columns \ phase rows \ phase columns
    ds.AcquisitionMatrix = (
        [geometry.rows, 0, 0, phase_steps] if phase_along_rows else [0, geometry.columns, phase_steps, 0]
    )
    ds.InPlanePhaseEncodingDirection = "ROW" if phase_along_rows else "COL"
    ds.FlipAngle = ds_str(protocol.flip_angle_deg)
    ds.VariableFlipAngleFlag = "N"
    ds.SAR = "0.3"
    ds.dBdt = "0"
    ds.PixelSpacing = geometry.pixel_spacing
    ds.ImageOrientationPatient = geometry.orientation
    ds.WindowCenter = fmt.window_center
    ds.WindowWidth = fmt.window_width
    _add_classic_contrast(ds, series)
    return ds


def _file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def _set_pixels(ds: Dataset, pixels: np.ndarray, transfer_syntax: UID) -> None:
    """Native pixel data as little-endian OW, or compressed losslessly by pydicom's encoders."""
    if transfer_syntax.is_compressed:
        ds.compress(transfer_syntax, pixels, generate_instance_uid=False)
    else:
        ds["PixelData"] = DataElement(0x7FE00010, "OW", np.ascontiguousarray(pixels, dtype="<u2").tobytes())


#: Attributes that differ between the slices of a classic series; everything else comes from the template.
_SLICE_KEYWORDS = ("SOPInstanceUID", "AcquisitionTime", "InstanceNumber", "ImagePositionPatient", "SliceLocation")
_PIXEL_MODULE = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)


class _SliceFileEncoder:
    """Writes the files of a series that share one template dataset.

    The template is encoded once, in segments between the per-slice tags; each file is its file meta, then those
    segments interleaved with its own few encoded elements. This gives the same bytes as
    ``dcmwrite(path, merged, enforce_file_format=True)`` (a test checks it) at a fraction of the cost, since
    pydicom's writer then only encodes the handful of attributes that change from slice to slice.
    """

    def __init__(self, template: Dataset, slice_tags: list[BaseTag], transfer_syntax: UID) -> None:
        self._implicit = transfer_syntax == ImplicitVRLittleEndian
        self._tags = sorted(slice_tags)
        self._encoding = template.get("SpecificCharacterSet", "ISO_IR 6")
        groups = [Dataset() for _ in range(len(self._tags) + 1)]
        for element in template:
            groups[bisect.bisect_right(self._tags, element.tag)].add(element)
        self._segments = [self._encode(group) for group in groups]

    def _encode(self, ds: Dataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = self._implicit
        write_dataset(fp, ds, parent_encoding=self._encoding)
        return bytes(fp.getvalue())

    def write(self, path: Path, file_meta: FileMetaDataset, slice_elements: Dataset) -> None:
        """Write one file: `slice_elements` holds exactly the per-slice tags given at construction."""
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, file_meta, enforce_standard=True)
        parts = [bytes(fp.getvalue())]
        for segment, tag in zip(self._segments, self._tags, strict=False):
            parts.append(segment)
            parts.append(self._encode(Dataset({tag: slice_elements[tag]})))
        parts.append(self._segments[-1])
        path.write_bytes(b"".join(parts))


def _slice_pixels(template: Dataset, pixels: np.ndarray, transfer_syntax: UID) -> DataElement:
    """Pixel Data element of one slice, compressed through `Dataset.compress` when the syntax asks for it."""
    ds = Dataset({Tag(keyword): template[keyword] for keyword in _PIXEL_MODULE})
    _set_pixels(ds, pixels, transfer_syntax)
    return ds["PixelData"]


@dataclass(frozen=True)
class _SeriesFiles:
    """What the classic and the enhanced writer both need: the series, its exam and equipment, where and in which
    transfer syntax to write it, its pixels and geometry, and when it was acquired."""

    series: SimulatedSeries
    study: StudyHeader
    profile: VendorProfile
    out_dir: Path
    transfer_syntax: UID
    array: np.ndarray
    geometry: SeriesGeometry
    fmt: PixelFormat
    times: list[dt.datetime]  # acquisition time of each slice
    duration_s: float  # acquisition duration of the series


def _write_classic(job: _SeriesFiles) -> list[Path]:
    series, geometry, transfer_syntax = job.series, job.geometry, job.transfer_syntax
    content_time = job.times[0] + dt.timedelta(seconds=job.duration_s)
    template = _classic_template(series, job.study, job.profile, geometry, job.fmt, content_time)
    encoder = _SliceFileEncoder(template, [Tag(k) for k in (*_SLICE_KEYWORDS, "PixelData")], transfer_syntax)
    paths = []
    for k in range(geometry.n_slices):
        ds = Dataset()
        ds.SOPInstanceUID = instance_uid(series.series_instance_uid, "sop", k + 1)
        ds.AcquisitionTime = tm_str(job.times[k])
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = ds_list(geometry.positions[k])
        ds.SliceLocation = ds_str(float(geometry.slice_locations[k]))
        ds["PixelData"] = _slice_pixels(template, job.array[k], transfer_syntax)
        path = job.out_dir / f"IM{k + 1:04d}.dcm"
        encoder.write(path, _file_meta(MRImageStorage, ds.SOPInstanceUID, transfer_syntax), ds)
        paths.append(path)
    return paths


def _write_enhanced(job: _SeriesFiles) -> list[Path]:
    ds = enhanced_dataset(
        job.series, job.study, job.profile, job.geometry, job.fmt, frame_times=job.times, duration_s=job.duration_s
    )
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, job.transfer_syntax)
    _set_pixels(ds, job.array, job.transfer_syntax)
    path = job.out_dir / "IM0001.dcm"
    dcmwrite(path, ds, enforce_file_format=True)
    return [path]


def write_series(
    series: SimulatedSeries,
    study: StudyHeader,
    out_dir: Path,
    *,
    output_format: OutputFormat = "classic",
    transfer_syntax: TransferSyntaxName = "explicit-le",
) -> list[Path]:
    """Write one simulated series into `out_dir` (created if needed) and return the files written.

    Headers carry the vendor flavour of ``study.vendor`` (`training.phantom.dicom_vendor`), the geometry of the
    SimpleITK image, and the contrast administration on post-contrast series only. UIDs derive from the series
    UID, so the same series always gives byte-identical files. Pixel data are lossless in every transfer syntax
    (compressed ones through pydicom's `Dataset.compress`).

    Parameters
    ----------
    series:
        Pixel data (UInt16 SimpleITK image whose geometry is the acquisition geometry), protocol and series UID.
        ``series.extra`` may carry ``"b_value"`` (s/mm^2, ADC) and ``"scan_options"`` (backslash-separated).
    study:
        Patient, study and equipment attributes shared by the exam; ``study.vendor`` picks the header flavour.
    out_dir:
        Folder for this series' files: ``IM0001.dcm`` ... (classic, one per slice) or ``IM0001.dcm`` (enhanced).
    output_format:
        ``"classic"`` MR Image Storage or ``"enhanced"`` Enhanced MR Image Storage (one multi-frame file).
    transfer_syntax:
        ``"explicit-le"``, ``"implicit-le"``, ``"jpeg-ls"``, ``"jpeg2000"`` or ``"rle"``; all lossless.

    Returns
    -------
    list[Path]
        The written files in slice order.

    Raises
    ------
    ValueError
        When the output format, transfer syntax or vendor is unknown; the image is not 3D or its direction is
        not orthonormal (no parallel slices); an IR sequence has no inversion time; the description is over 64
        characters; the slice thickness is not positive; or JPEG 2000 is asked for an image under 32 x 32.
    TypeError
        When the image is not a SimpleITK image of pixel type UInt16.
    KeyError
        When a post-contrast series names an unknown contrast agent.
    """
    _validate(series, output_format, transfer_syntax)
    label = _label(series)
    geometry = series_geometry(series.image, label)
    profile = vendor_profile(study.vendor, study.field_strength_t, output_format)
    array = sitk.GetArrayViewFromImage(series.image)
    protocol = series.protocol
    job = _SeriesFiles(
        series=series,
        study=study,
        profile=profile,
        out_dir=out_dir,
        transfer_syntax=TRANSFER_SYNTAXES[transfer_syntax],
        array=array,
        geometry=geometry,
        fmt=pixel_format(array, twelve_or_sixteen=output_format == "enhanced"),
        times=slice_datetimes(protocol, study, geometry.n_slices),
        duration_s=acquisition_duration_s(protocol, geometry.rows, geometry.n_slices, profile.parallel_factor),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (_write_enhanced if output_format == "enhanced" else _write_classic)(job)
    logger.info(
        "Wrote %s as %d %s file(s), %s, %d slices", label, len(paths), output_format, transfer_syntax, geometry.n_slices
    )
    return paths
