"""Hostile variants of one small phantom study: what a PACS we have never seen may send (issue 10).

Each :class:`Variant` copies a base study and breaks it one way. ``expect`` is what a careful radiology engineer
wants from GadSynth: ``refuse`` (exit 2 with the series, attribute, expected and found), ``ok`` (exit 0, valid
outputs) or ``either`` (both are defensible). The generator is deterministic: the same list every time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, config, dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.uid import ImplicitVRLittleEndian

__all__ = ["BASES", "Variant", "all_variants", "make_base"]

#: Base studies by name: phantom options (small, seed 11) per base.
BASES: dict[str, dict[str, Any]] = {
    "classic": {},
    "jpeg-ls": {"transfer_syntax": "jpeg-ls"},
    "jpeg2000": {"transfer_syntax": "jpeg2000"},
    "rle": {"transfer_syntax": "rle"},
    "enhanced": {"output_format": "enhanced"},
}
SEED = 11

Mutation = Callable[[Path], None]


@dataclass(frozen=True)
class Variant:
    """One hostile input: a base study, a mutation of its DICOM folder, what GadSynth should do."""

    name: str
    klass: str
    expect: str  # "refuse", "ok" or "either"
    mutate: Mutation
    base: str = "classic"
    args: tuple[str, ...] = ()
    #: Where the output folder goes, relative to the variant's work folder (a variant may break it).
    output: str = "out"
    prepare_output: Mutation | None = None
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def make_base(name: str, root: Path) -> Path:
    """Generate a base study once (``root/<name>/dicom``) and return its DICOM folder."""
    from training.phantom import PhantomOptions, generate_study

    folder = root / name
    if not (folder / "dicom").is_dir():
        generate_study(PhantomOptions(seed=SEED, size="small", **BASES[name]), folder)
    return folder / "dicom"


# --- helpers that mutate a copied study --------------------------------------------------------------------------

_ROLE_FOLDERS = {
    "t1_pre": "002_",
    "t2": "003_",
    "flair": "004_",
    "adc": "006_",
    "t1_low_dose": "007_",
    "t1_standard_dose": "008_",
}


def series_dir(study: Path, role: str) -> Path:
    (folder,) = [p for p in study.iterdir() if p.is_dir() and p.name.startswith(_ROLE_FOLDERS[role])]
    return folder


def files(study: Path, role: str) -> list[Path]:
    return sorted(series_dir(study, role).glob("*.dcm"))


def _pick(paths: list[Path], which: str) -> list[Path]:
    return {"first": paths[:1], "middle": [paths[len(paths) // 2]], "all": paths}[which]


def _raw_set(ds: Dataset, keyword: str, value: str | bytes | None) -> None:
    """Write a value as a broken scanner does: raw, without pydicom's validation (None deletes the attribute)."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    if value is None:
        if tag in ds:
            del ds[tag]
        return
    vr = dictionary_VR(tag)
    if vr in ("US", "SS", "UL", "SL"):  # binary numbers: give pydicom the int
        number = int.from_bytes(value, "little", signed=vr in ("SS", "SL")) if isinstance(value, bytes) else value
        ds[tag] = DataElement(tag, vr, number, validation_mode=config.IGNORE)
        return
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    # the bytes as they are: pydicom neither converts nor checks a raw element when it writes it
    ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)


def _edit(study: Path, role: str, which: str, change: Callable[[Dataset], None]) -> None:
    previous = config.settings.reading_validation_mode, config.settings.writing_validation_mode
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        for path in _pick(files(study, role), which):
            ds = dcmread(path)
            change(ds)
            ds.save_as(path)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = previous


def set_attribute(role: str, which: str, keyword: str, value: str | bytes | None) -> Mutation:
    return lambda study: _edit(study, role, which, lambda ds: _raw_set(ds, keyword, value))


def set_attributes(role: str, which: str, values: dict[str, Any]) -> Mutation:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            _raw_set(ds, keyword, value)

    return lambda study: _edit(study, role, which, change)


def set_pixels(role: str, change: Callable[[np.ndarray], np.ndarray]) -> Mutation:
    """Replace a series' stored values (native little endian bases only)."""

    def apply(ds: Dataset) -> None:
        array = ds.pixel_array
        ds.PixelData = np.ascontiguousarray(change(array).astype(array.dtype)).tobytes()

    return lambda study: _edit(study, role, "all", apply)


def _saturate_series(role: str, percentile: float) -> Mutation:
    """Every voxel of a series above its ``percentile`` set to that value: a receiver chain clipping the top."""

    def apply(study: Path) -> None:
        values = np.concatenate([dcmread(p).pixel_array.ravel() for p in files(study, role)])
        ceiling = np.percentile(values, percentile)
        _edit(
            study,
            role,
            "all",
            lambda ds: setattr(
                ds, "PixelData", np.minimum(ds.pixel_array, ceiling).astype(ds.pixel_array.dtype).tobytes()
            ),
        )

    return apply


def _wrapped_signed(role: str) -> Mutation:
    """Unsigned 16-bit values above 32767 declared signed: a site's export that wraps them negative."""

    def apply(ds: Dataset) -> None:
        array = ds.pixel_array.astype(np.int64)
        array = np.where(array > np.median(array), array + 32768, array)  # the brighter half above 32767
        ds.PixelData = np.clip(array, 0, 65535).astype(np.uint16).tobytes()
        ds.BitsStored, ds.HighBit = 16, 15
        _raw_set(ds, "PixelRepresentation", b"\x01\x00")

    return lambda study: _edit(study, role, "all", apply)


def _noise(array: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(array.tobytes()[:64])) % 2**32)
    return rng.integers(0, int(array.max()) + 1, array.shape)


def _shift(role: str, mm: float) -> Mutation:
    def change(ds: Dataset) -> None:
        ds.ImagePositionPatient = [float(v) + mm for v in ds.ImagePositionPatient]

    return lambda study: _edit(study, role, "all", change)


def _delete_files(role: str, keep: Callable[[int, int], bool]) -> Mutation:
    def apply(study: Path) -> None:
        paths = files(study, role)
        for index, path in enumerate(paths):
            if not keep(index, len(paths)):
                path.unlink()

    return apply


def _corrupt_bytes(role: str, which: str, where: float, count: int = 64) -> Mutation:
    """Overwrite bytes inside the pixel data of compressed files (fragments), keeping the file length."""

    def apply(study: Path) -> None:
        for path in _pick(files(study, role), which):
            data = bytearray(path.read_bytes())
            start = int(len(data) * where)
            data[start : start + count] = bytes((b ^ 0xA5) for b in data[start : start + count])
            path.write_bytes(bytes(data))

    return apply


def _truncate(role: str, which: str, fraction: float) -> Mutation:
    def apply(study: Path) -> None:
        for path in _pick(files(study, role), which):
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * fraction)])

    return apply


def _reuse_uids(study: Path) -> None:
    """The low-dose series reuses the pre-contrast's SOP Instance UIDs (one per slice)."""
    pre = [dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files(study, "t1_pre")]
    low = files(study, "t1_low_dose")

    def change_for(uid: str) -> Callable[[Dataset], None]:
        def change(ds: Dataset) -> None:
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid

        return change

    for path, uid in zip(low, pre, strict=False):
        ds = dcmread(path)
        change_for(uid)(ds)
        ds.save_as(path)


def _second_study(study: Path) -> None:
    """A second, complete study (another StudyInstanceUID) in the same folder."""
    from pydicom.uid import generate_uid

    copy = study / "zz_second"
    shutil.copytree(series_dir(study, "t1_pre"), copy / "a")
    shutil.copytree(series_dir(study, "t1_low_dose"), copy / "b")
    uid = generate_uid(entropy_srcs=["gadsynth hostile second study"])
    for path in copy.rglob("*.dcm"):
        ds = dcmread(path)
        ds.StudyInstanceUID = uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(path.parent)])
        ds.save_as(path)


def _empty(study: Path) -> None:
    for child in list(study.iterdir()):
        shutil.rmtree(child)


def _only_text(study: Path) -> None:
    _empty(study)
    (study / "notes.txt").write_text("not DICOM\n")
    (study / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))


def _zero_byte(role: str, which: str) -> Mutation:
    def apply(study: Path) -> None:
        for path in _pick(files(study, role), which):
            path.write_bytes(b"")

    return apply


def _symlinked(study: Path) -> None:
    for role in ("t1_pre", "t1_low_dose"):
        folder = series_dir(study, role)
        target = study.parent / f"elsewhere-{folder.name}"
        shutil.move(folder, target)
        os.symlink(target, folder, target_is_directory=True)


def _junk_files(study: Path) -> None:
    (study / "DICOMDIR").write_bytes(b"\0" * 132)
    (study / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (series_dir(study, "t1_pre") / "README").write_text("export from PACS\n")


def _noop(study: Path) -> None:
    return None


def _relabel_standard(study: Path) -> None:
    """The low-dose series (10 ml, about 1.9 x standard for 53.8 kg) described as the standard dose."""
    _edit(study, "t1_low_dose", "all", lambda ds: _raw_set(ds, "ContrastBolusVolume", "10"))
    _edit(study, "t1_low_dose", "all", lambda ds: _raw_set(ds, "SeriesDescription", "t1_mprage_sag_p2_iso_KM"))


def _output_file_parent(work: Path) -> None:
    (work / "blocker").write_text("a file where the output folder's parent should be\n")


def _output_not_empty(work: Path) -> None:
    (work / "out").mkdir(parents=True, exist_ok=True)
    (work / "out" / "report.json").write_text('{"earlier": "run"}\n')


# --- the variants -----------------------------------------------------------------------------------------------

_NEEDED = ("t1_pre", "t1_low_dose")
_NOT_NEEDED = ("t2", "flair", "t1_standard_dose")

_GEOMETRY: list[tuple[str, str, str | bytes | None]] = [
    ("ipp-empty", "ImagePositionPatient", ""),
    ("ipp-missing", "ImagePositionPatient", None),
    ("ipp-text", "ImagePositionPatient", "abc\\1\\2"),
    ("ipp-nan", "ImagePositionPatient", "nan\\0\\0"),
    ("ipp-two-values", "ImagePositionPatient", "1\\2"),
    ("iop-zero", "ImageOrientationPatient", "0\\0\\0\\0\\0\\0"),
    ("iop-parallel", "ImageOrientationPatient", "0\\1\\0\\0\\1\\0"),
    ("iop-nan", "ImageOrientationPatient", "0\\1\\0\\0\\0\\nan"),
    ("pixel-spacing-zero", "PixelSpacing", "0\\0"),
    ("pixel-spacing-negative", "PixelSpacing", "-4\\4"),
    ("pixel-spacing-nan", "PixelSpacing", "nan\\4"),
    ("pixel-spacing-text", "PixelSpacing", "four\\four"),
    ("rescale-slope-text", "RescaleSlope", "steep"),
    ("rescale-slope-nan", "RescaleSlope", "nan"),
    ("rescale-slope-zero", "RescaleSlope", "0"),
    ("rescale-intercept-nan", "RescaleIntercept", "nan"),
    ("rows-zero", "Rows", b"\x00\x00"),
    ("rows-missing", "Rows", None),
]
_OPTIONAL_GEOMETRY: list[tuple[str, str, str | bytes | None]] = [
    ("slice-thickness-missing", "SliceThickness", None),
    ("slice-thickness-nan", "SliceThickness", "nan"),
    ("slice-thickness-text", "SliceThickness", "thin"),
]
_CONTRAST: list[tuple[str, dict[str, str | None], str]] = [
    ("bolus-volume-nan", {"ContrastBolusVolume": "nan"}, "refuse"),
    ("bolus-volume-inf", {"ContrastBolusVolume": "inf"}, "refuse"),
    ("bolus-volume-negative", {"ContrastBolusVolume": "-5"}, "refuse"),
    ("bolus-volume-1e6", {"ContrastBolusVolume": "1e6"}, "refuse"),
    ("weight-0.001", {"PatientWeight": "0.001"}, "refuse"),
    ("weight-nan", {"PatientWeight": "nan"}, "refuse"),
    ("weight-1000", {"PatientWeight": "1000"}, "refuse"),
    (
        "concentration-text",
        {"ContrastBolusIngredientConcentration": "strong", "ContrastBolusAgent": "contrast"},
        "refuse",
    ),
    ("field-negative", {"MagneticFieldStrength": "-3"}, "refuse"),
    ("field-1e9", {"MagneticFieldStrength": "1e9"}, "refuse"),
    ("field-nan", {"MagneticFieldStrength": "nan"}, "refuse"),
    ("field-text", {"MagneticFieldStrength": "strong"}, "refuse"),
    ("dose-18000x", {"ContrastBolusVolume": "100", "PatientWeight": "1.1"}, "refuse"),
    # unknown, not nonsense: the low-dose model needs the dose, so the study is refused with "give the dose"
    ("weight-zero-means-unknown", {"PatientWeight": "0"}, "refuse"),
    ("bolus-volume-missing", {"ContrastBolusVolume": None, "ContrastBolusTotalDose": None}, "refuse"),
]
_CHARSETS: list[tuple[str, str, str]] = [
    ("utf8", "ISO_IR 192", "山田^太郎"),
    ("iso2022-jp-katakana", "ISO 2022 IR 13\\ISO 2022 IR 87", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎"),
    ("iso2022-jp", "ISO 2022 IR 6\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎"),
    ("iso2022-kr", "\\ISO 2022 IR 149", "Hong^Gildong=홍^길동"),
    ("gb18030", "GB18030", "Wang^XiaoDong=王^小东"),
    ("latin1", "ISO_IR 100", "Müller^Jürgen"),
    ("cyrillic", "ISO_IR 144", "Иванов^Иван"),
    ("greek", "ISO_IR 126", "Παπαδόπουλος^Γιώργος"),
]
_PATIENT: list[tuple[str, str, str]] = [
    ("patient-sex-0000", "PatientSex", "0000"),
    ("patient-sex-lowercase", "PatientSex", "male"),
    ("birth-date-stars", "PatientBirthDate", "***"),
    ("birth-date-impossible", "PatientBirthDate", "20231345"),
    ("patient-age-garbage", "PatientAge", "old"),
    ("patient-name-500", "PatientName", "A" * 500),
    ("study-description-500", "StudyDescription", "x" * 500),
    ("institution-300", "InstitutionName", "y" * 300),
    ("study-date-garbage", "StudyDate", "yesterday"),
    ("accession-too-long", "AccessionNumber", "1234567890123456789012"),
]


def _charset_mutation(charset: str, name: str) -> Mutation:
    def apply(study: Path) -> None:
        def change(ds: Dataset) -> None:
            names = charset.split("\\") if "\\" in charset else charset
            ds[0x00080005] = DataElement(0x00080005, "CS", names, validation_mode=config.IGNORE)
            ds.PatientName = name
            ds.StudyDescription = f"{name.split('=')[-1]} MRT"

        for role in _ROLE_FOLDERS:
            _edit(study, role, "all", change)

    return apply


def _unknown_charset(study: Path) -> None:
    def change(ds: Dataset) -> None:
        ds[0x00080005] = DataElement(0x00080005, "CS", "ISO_IR 999", validation_mode=config.IGNORE)
        ds[0x00100010] = DataElement(0x00100010, "PN", b"Smith^John", validation_mode=config.IGNORE)

    for role in _ROLE_FOLDERS:
        _edit(study, role, "all", change)


def _all_series(keyword: str, value: str) -> Mutation:
    def apply(study: Path) -> None:
        for role in _ROLE_FOLDERS:
            _edit(study, role, "all", lambda ds: _raw_set(ds, keyword, value))

    return apply


def _variants() -> Iterator[Variant]:
    for slug, keyword, value in _GEOMETRY:
        for role in _NEEDED:
            for which in ("middle", "all"):
                yield Variant(
                    f"{slug}/{role}/{which}", "geometry", "refuse", set_attribute(role, which, keyword, value)
                )
        for role in _NOT_NEEDED:
            yield Variant(f"{slug}/{role}/all", "geometry", "ok", set_attribute(role, "all", keyword, value))
    for slug, keyword, value in _OPTIONAL_GEOMETRY:
        for role in (*_NEEDED, "t2"):
            yield Variant(f"{slug}/{role}/all", "geometry", "either", set_attribute(role, "all", keyword, value))
    yield Variant(
        "rows-65535/t1_pre",
        "sizes",
        "refuse",
        set_attributes("t1_pre", "all", {"Rows": b"\xff\xff", "Columns": b"\xff\xff"}),
    )
    yield Variant(
        "rows-65535/t1_low_dose", "sizes", "refuse", set_attributes("t1_low_dose", "all", {"Rows": b"\xff\xff"})
    )
    yield Variant("columns-4096/t1_pre", "sizes", "refuse", set_attribute("t1_pre", "all", "Columns", b"\x00\x10"))
    yield Variant(
        "frames-1e9/t1_pre", "sizes", "refuse", set_attribute("t1_pre", "middle", "NumberOfFrames", "999999999")
    )
    for role in ("t1_pre", "t1_low_dose", "t2"):
        yield Variant(
            f"rows-mismatch/{role}",
            "sizes",
            "refuse" if role in _NEEDED else "ok",
            set_attribute(role, "middle", "Rows", b"\x20\x00"),
        )
    for slug, values, expect in _CONTRAST:
        yield Variant(f"{slug}/t1_low_dose", "contrast", expect, set_attributes("t1_low_dose", "all", values))
        yield Variant(f"{slug}/t1_standard_dose", "contrast", "ok", set_attributes("t1_standard_dose", "all", values))
    for slug, charset, name in _CHARSETS:
        yield Variant(f"charset-{slug}", "charset", "ok", _charset_mutation(charset, name))
        yield Variant(f"charset-{slug}/enhanced", "charset", "ok", _charset_mutation(charset, name), base="enhanced")
    yield Variant("charset-unknown", "charset", "ok", _unknown_charset)
    for slug, keyword, value in _PATIENT:
        yield Variant(f"{slug}/all-series", "patient", "ok", _all_series(keyword, value))
        yield Variant(f"{slug}/t1_pre-only", "patient", "ok", set_attribute("t1_pre", "all", keyword, value))
        yield Variant(f"{slug}/enhanced", "patient", "ok", _all_series(keyword, value), base="enhanced")
    yield from _structure_variants()
    yield from _pixel_variants()
    yield from _file_variants()
    yield from _output_variants()


def _structure_variants() -> Iterator[Variant]:
    for mm in (500.0, 250.0):
        yield Variant(f"moved-{mm:g}mm/t1_low_dose", "structure", "refuse", _shift("t1_low_dose", mm))
    yield Variant("moved-250mm/t2", "structure", "ok", _shift("t2", 250.0))
    for role in _NEEDED:
        yield Variant(
            f"missing-middle-slice/{role}", "structure", "refuse", _delete_files(role, lambda i, n: i != n // 2)
        )
        yield Variant(f"one-slice-left/{role}", "structure", "refuse", _delete_files(role, lambda i, n: i == n // 2))
        # every other slice gone: still one regular stack, at twice the spacing (usable, or refused: both fine)
        yield Variant(f"half-the-slices/{role}", "structure", "either", _delete_files(role, lambda i, n: i % 2 == 0))
        yield Variant(f"series-removed/{role}", "structure", "refuse", _delete_files(role, lambda i, n: False))
    for role in _NOT_NEEDED:
        yield Variant(f"missing-middle-slice/{role}", "structure", "ok", _delete_files(role, lambda i, n: i != n // 2))
    yield Variant("reused-sop-uids/t1_low_dose", "structure", "refuse", _reuse_uids)
    yield Variant(
        "other-patient/t1_low_dose",
        "structure",
        "refuse",
        set_attribute("t1_low_dose", "all", "PatientID", "OTHER-PATIENT-77"),
    )
    yield Variant(
        "other-patient-one-slice/t1_low_dose",
        "structure",
        "refuse",
        set_attribute("t1_low_dose", "middle", "PatientID", "OTHER-PATIENT-77"),
    )
    yield Variant(
        "modality-ct/t1_low_dose", "structure", "refuse", set_attribute("t1_low_dose", "all", "Modality", "CT")
    )
    yield Variant("modality-ct/t2", "structure", "ok", set_attribute("t2", "all", "Modality", "CT"))
    yield Variant(
        "study-uid-missing/t1_pre", "structure", "refuse", set_attribute("t1_pre", "all", "StudyInstanceUID", None)
    )
    yield Variant("study-uid-missing/t2", "structure", "either", set_attribute("t2", "all", "StudyInstanceUID", None))
    yield Variant(
        "series-uid-missing/t1_low_dose",
        "structure",
        "refuse",
        set_attribute("t1_low_dose", "all", "SeriesInstanceUID", None),
    )
    yield Variant("two-studies", "structure", "refuse", _second_study)
    yield Variant("two-studies-named", "structure", "ok", _second_study, args=("--study", "__FIRST_STUDY__"))
    yield Variant("empty-folder", "structure", "refuse", _empty)
    yield Variant("no-dicom", "structure", "refuse", _only_text)
    yield Variant("symlinked-series", "structure", "ok", _symlinked)
    yield Variant("junk-beside-the-study", "structure", "ok", _junk_files)
    yield Variant("low-dose-relabelled-standard", "structure", "refuse", _relabel_standard)
    yield Variant(
        "low-dose-axial",
        "structure",
        "refuse",
        set_attribute("t1_low_dose", "all", "ImageOrientationPatient", "1\\0\\0\\0\\1\\0"),
    )
    yield Variant("clean", "structure", "ok", _noop)
    yield Variant("clean/enhanced", "structure", "ok", _noop, base="enhanced")


def _pixel_variants() -> Iterator[Variant]:
    changes: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = [
        ("all-zero", lambda a: np.zeros_like(a)),
        ("constant", lambda a: np.full_like(a, 417)),
        ("noise-only", _noise),
        ("saturated", lambda a: np.full_like(a, np.iinfo(a.dtype).max if a.dtype.kind in "iu" else 1)),
    ]
    for slug, change in changes:
        for role in _NEEDED:
            yield Variant(f"{slug}/{role}", "pixels", "refuse", set_pixels(role, change))
        yield Variant(f"{slug}/t2", "pixels", "ok", set_pixels("t2", change))
    for role in _NEEDED:
        yield Variant(f"top-40-percent-saturated/{role}", "pixels", "refuse", _saturate_series(role, 60.0))
        yield Variant(f"negative-slope/{role}", "pixels", "refuse", set_attribute(role, "all", "RescaleSlope", "-1"))
        yield Variant(f"wrapped-signed/{role}", "pixels", "refuse", _wrapped_signed(role))
    for base in ("jpeg-ls", "jpeg2000", "rle"):
        for role in _NEEDED:
            for where in (0.5, 0.9):
                yield Variant(
                    f"corrupt-{base}-{where:g}/{role}",
                    "pixels",
                    "either",
                    _corrupt_bytes(role, "middle", where),
                    base=base,
                )
        yield Variant(f"truncated-{base}/t1_pre", "pixels", "refuse", _truncate("t1_pre", "middle", 0.6), base=base)
        yield Variant(f"clean-{base}", "pixels", "ok", _noop, base=base)


def _file_variants() -> Iterator[Variant]:
    for role in (*_NEEDED, "t2"):
        expect = "refuse" if role in _NEEDED else "ok"
        yield Variant(f"zero-byte-file/{role}", "files", expect, _zero_byte(role, "middle"))
        yield Variant(f"truncated-file/{role}", "files", expect, _truncate(role, "middle", 0.5))
        yield Variant(f"truncated-header/{role}", "files", expect, _truncate(role, "middle", 0.02))
    yield Variant("deflated-syntax/t1_pre", "files", "ok", _deflate("t1_pre"))
    yield Variant("no-meta-header/t1_pre", "files", "ok", _strip_meta("t1_pre"))


def _deflate(role: str) -> Mutation:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    def apply(study: Path) -> None:
        for path in files(study, role):
            ds = dcmread(path)
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            ds.save_as(path, enforce_file_format=True)

    return apply


def _strip_meta(role: str) -> Mutation:
    def apply(study: Path) -> None:
        for path in files(study, role):
            ds = dcmread(path)
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
            data = path.read_bytes()
            if data[128:132] == b"DICM":  # drop preamble and meta header: a raw data set
                meta_length = int.from_bytes(data[140:144], "little")
                path.write_bytes(data[144 + meta_length :])

    return apply


def _output_variants() -> Iterator[Variant]:
    yield Variant("output-not-empty", "output", "refuse", _noop, prepare_output=_output_not_empty)
    yield Variant(
        "output-under-a-file", "output", "refuse", _noop, output="blocker/out", prepare_output=_output_file_parent
    )
    yield Variant("log-level-warn-and-workdir", "output", "ok", _noop, args=("-l", "WARN", "-w", "__WORK__/wd"))


def all_variants() -> list[Variant]:
    """Every variant, in a fixed order; names are unique."""
    variants = list(_variants())
    names = [v.name for v in variants]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"variant names are not unique: {sorted(duplicates)}")
    return variants
