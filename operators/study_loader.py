"""Study loader: a folder of DICOM files (searched recursively) -> one Study of image series; the rest is skipped."""

from __future__ import annotations

import logging
import os
import struct
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from tqdm import tqdm

from operators.errors import MultipleStudiesError, NoStudyError
from operators.fast_header import raw_int, raw_text, read_header
from operators.study import Instance, Series, SkippedFile, Study

__all__ = [
    "NON_IMAGE_SOP_CLASSES",
    "load_studies",
    "load_study",
]

logger = logging.getLogger(__name__)

#: SOP classes that carry no image we can use, even when they hold Rows / Columns (name for the skip note).
NON_IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.1.3.10": "DICOMDIR",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR Spectroscopy",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State",
    "1.3.12.2.1107.5.9.1": "Siemens CSA Non-Image",
}

#: Modalities that are never image series (structured reports, presentation states, key objects, raw data...).
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "RAW", "REG", "SEG", "RTSTRUCT", "PLAN", "FID"})

#: The header reader's offset for "this file has Pixel Data, at no fixed byte position" (deflated data sets).
PIXELS_AT_UNKNOWN_OFFSET = -1
_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
_PIXEL_TAG_BE = b"\x7f\xe0\x00\x10"
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError, struct.error)


def _iter_files(root: Path) -> Iterable[Path]:
    """Every regular file under `root` (or `root` itself), in a deterministic order.

    Symbolic links to folders are followed (as dcm2niix does: PACS exports and study archives use them), each real
    folder once, so a link back up the tree cannot loop.
    """
    if root.is_file():
        yield root
        return
    seen: set[str] = set()
    found: list[Path] = []
    for folder, folders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        folders.sort()
        found.extend(Path(folder) / name for name in files if (Path(folder) / name).is_file())
    yield from sorted(found)


def _looks_like_raw_dataset(path: Path) -> bool:
    """True for a DICOM data set written without preamble and meta header (starts with a group 0008 tag)."""
    with path.open("rb") as fp:
        head = fp.read(4)
    return head in (b"\x08\x00\x05\x00", b"\x08\x00\x08\x00", b"\x08\x00\x16\x00", b"\x08\x00\x00\x00")


def _read_header(path: Path) -> tuple[Dataset, int | None, bool]:
    """Read one file's header (no pixel data) and find where its Pixel Data element starts.

    Returns
    -------
    tuple
        The data set, the byte offset of (7FE0,0010) (None when the file has no Pixel Data element), and whether
        the file ended where reading stopped (no Pixel Data because the file is cut short, or has none).

    Raises
    ------
    pydicom.errors.InvalidDicomError
        When the file is not DICOM.
    """
    fast = read_header(path)
    if fast is not None:
        return fast[0], fast[1], fast[1] is None
    with path.open("rb") as fp:
        try:
            ds = dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError:
            if not _looks_like_raw_dataset(path):
                raise
            fp.seek(0)
            ds = dcmread(fp, stop_before_pixels=True, force=True)
            implicit, little = ds.original_encoding
            if not little:
                raise InvalidDicomError("Big endian data set without a meta header is not supported.") from None
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            # the data set is compressed: file positions mean nothing; read it whole to see whether it has pixels
            fp.seek(0)
            has_pixels = "PixelData" in dcmread(fp)
            return ds, (PIXELS_AT_UNKNOWN_OFFSET if has_pixels else None), False
        offset = fp.tell()
        tag = fp.read(4)
    if tag in (_PIXEL_TAG_LE, _PIXEL_TAG_BE):
        return ds, offset, False
    return ds, None, len(tag) < 4


def _skip_reason(ds: Dataset, pixel_offset: int | None) -> str | None:
    """Why a readable DICOM file is not an image instance we keep, or None when it is one."""
    meta = getattr(ds, "file_meta", None)
    sop_class = raw_text(ds, 0x00080016) or (raw_text(meta, 0x00020002) if meta is not None else None) or ""
    if sop_class in NON_IMAGE_SOP_CLASSES:
        return f"not an image: {NON_IMAGE_SOP_CLASSES[sop_class]}"
    if not sop_class or not raw_text(ds, 0x00080018):
        return "no SOPClassUID / SOPInstanceUID"
    if sop_class in NON_IMAGE_SOP_CLASSES:
        return f"not an image: {NON_IMAGE_SOP_CLASSES[sop_class]}"
    modality = (raw_text(ds, 0x00080060) or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return f"not an image: Modality {modality} ({UID(sop_class).name})"
    image_type = [v.strip().upper() for v in (raw_text(ds, 0x00080008) or "").split("\\")]
    if "CSA REPORT" in image_type or "CSA NON-IMAGE" in image_type:
        return "not an image: Siemens CSA report"
    if "Rows" not in ds or "Columns" not in ds:
        return f"not an image: no Rows / Columns ({UID(sop_class).name})"
    if pixel_offset is None:
        return "no Pixel Data element"
    return None


def _series_of(ds: Dataset) -> tuple[str, str]:
    return raw_text(ds, 0x0020000D) or "", raw_text(ds, 0x0020000E) or ""


def _new_series(ds: Dataset) -> Series:
    try:
        number = raw_int(ds, 0x00200011)
    except ValueError:
        number = None  # a malformed SeriesNumber does not stop the series from being used
    return Series(
        series_instance_uid=raw_text(ds, 0x0020000E) or "",
        study_instance_uid=raw_text(ds, 0x0020000D) or "",
        modality=(raw_text(ds, 0x00080060) or "").upper(),
        series_number=number,
        description=str(ds.get("SeriesDescription", "") or ds.get("ProtocolName", "") or ""),
    )


def _log_skipped(skipped: list[SkippedFile]) -> None:
    """One log line per reason with its count (paths, which may carry names, only at DEBUG level)."""
    counts: dict[str, int] = defaultdict(int)
    for item in skipped:
        counts[item.reason.split(" (")[0]] += 1
        logger.debug("Skipped %s: %s", item.path, item.reason)
    for reason, count in sorted(counts.items()):
        logger.info("Skipped %d file(s): %s", count, reason)


def load_studies(path: Path, *, progress: bool = False) -> list[Study]:
    """Load every image study found under a folder.

    Files are read header-only (pixels are read later, only for the series that are used). Files that are not
    DICOM, non-image objects (SR, presentation states, Siemens Phoenix documents, raw data, ...) and duplicate SOP
    instances are skipped, logged and listed in ``Study.skipped`` (of every study returned).

    Parameters
    ----------
    path:
        A folder (searched recursively) or a single file.
    progress:
        Show a progress bar on standard error.

    Returns
    -------
    list of Study
        Studies in StudyInstanceUID order, each with its series ordered by SeriesNumber then SeriesInstanceUID.

    Raises
    ------
    NoStudyError
        When the path does not exist or holds no DICOM image at all.
    """
    path = Path(path)
    if not path.exists():
        raise NoStudyError(f"Input {path} does not exist.", attribute="path", expected="a folder", found="nothing")
    files = list(_iter_files(path))
    skipped: list[SkippedFile] = []
    first_path: dict[str, Path] = {}
    series_by_uid: dict[tuple[str, str], Series] = {}
    for file in tqdm(files, desc="reading headers", unit="file", disable=not progress):
        try:
            ds, offset, at_end = _read_header(file)
        except InvalidDicomError:
            empty = file.stat().st_size == 0
            skipped.append(SkippedFile(file, "empty file (0 bytes)" if empty else "not DICOM"))
            continue
        except _READ_ERRORS as exc:
            skipped.append(SkippedFile(file, f"unreadable DICOM ({type(exc).__name__}: {exc})"))
            continue
        reason = _skip_reason(ds, offset)
        if reason is not None:
            if at_end and not reason.startswith("not an image"):
                reason += " (the file ends early: truncated?)"
            skipped.append(SkippedFile(file, reason))
            continue
        sop_uid = raw_text(ds, 0x00080018) or ""
        if sop_uid in first_path:
            note = f"duplicate SOP instance {sop_uid} (kept {first_path[sop_uid]})"
            logger.info("Dropped a duplicate of SOP instance %s (kept the first copy)", sop_uid)
            skipped.append(SkippedFile(file, note))
            continue
        first_path[sop_uid] = file
        key = _series_of(ds)
        if not key[1]:
            skipped.append(SkippedFile(file, "no SeriesInstanceUID"))
            continue
        if key not in series_by_uid:
            series_by_uid[key] = _new_series(ds)
        series_by_uid[key].instances.append(
            Instance(
                path=file,
                sop_instance_uid=sop_uid,
                sop_class_uid=raw_text(ds, 0x00080016) or "",
                transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)),
                dataset=ds,
                pixel_data_offset=None if offset == PIXELS_AT_UNKNOWN_OFFSET else offset,
            )
        )
    _log_skipped(skipped)
    if not series_by_uid:
        reasons = sorted({s.reason.split(" (")[0] for s in skipped})
        raise NoStudyError(
            f"No DICOM image found under {path}: {len(files)} files examined"
            + (f", skipped as {', '.join(reasons)}." if reasons else "."),
            attribute="PixelData",
            expected="at least one DICOM image",
            found=f"{len(files)} files, none an image",
        )
    by_study: dict[str, list[Series]] = defaultdict(list)
    for (study_uid, _), series in series_by_uid.items():
        by_study[study_uid].append(series)
    studies = []
    for study_uid in sorted(by_study):
        series_list = sorted(
            by_study[study_uid], key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid)
        )
        studies.append(Study(study_instance_uid=study_uid, series=series_list, skipped=list(skipped)))
        logger.info(
            "Study %s: %d image series, %d instances",
            study_uid,
            len(series_list),
            sum(len(s.instances) for s in series_list),
        )
    return studies


def load_study(path: Path, *, study_instance_uid: str | None = None, progress: bool = False) -> Study:
    """Load the one MR study found under a folder.

    Parameters
    ----------
    path:
        A folder (searched recursively) or a single file.
    study_instance_uid:
        Which study to take when the folder holds several.
    progress:
        Show a progress bar on standard error.

    Returns
    -------
    Study
        The study; series of other modalities stay in it (the selector rejects them with a reason).

    Raises
    ------
    NoStudyError
        When the folder is empty, holds no DICOM image, no MR image, or not the requested study.
    MultipleStudiesError
        When several studies hold MR images and `study_instance_uid` is not given.
    """
    studies = load_studies(path, progress=progress)
    mr_studies = [s for s in studies if any(series.modality == "MR" for series in s.series)]
    if study_instance_uid is not None:
        chosen = [s for s in mr_studies if s.study_instance_uid == study_instance_uid]
        if not chosen:
            raise NoStudyError(
                f"No MR study {study_instance_uid} under {path}. Found: {[s.study_instance_uid for s in mr_studies]}",
                attribute="StudyInstanceUID",
                expected=study_instance_uid,
                found=", ".join(s.study_instance_uid for s in mr_studies) or "none",
            )
        return chosen[0]
    if not mr_studies:
        modalities = sorted({series.modality or "<none>" for s in studies for series in s.series})
        raise NoStudyError(
            f"No MR image series under {path}: found only Modality {', '.join(modalities)}.",
            attribute="Modality",
            expected="MR",
            found=", ".join(modalities),
        )
    if len(mr_studies) > 1:
        uids = [s.study_instance_uid for s in mr_studies]
        error = MultipleStudiesError(
            f"{path} holds {len(uids)} MR studies ({', '.join(uids)}): put one study per folder, or name the "
            "study to use (gadsynth run --study UID, python -m app --study UID; gadsynth inspect lists them).",
            attribute="StudyInstanceUID",
            expected="one study",
            found=", ".join(uids),
        )
        error.study_instance_uids = uids
        raise error
    for other in studies:
        if other is not mr_studies[0]:
            logger.info("Ignored study %s: no MR image series", other.study_instance_uid)
    return mr_studies[0]
