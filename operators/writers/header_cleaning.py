"""Source headers checked before anything is copied into an output: an invalid value is blanked, never copied.

Real scanners and PACS write values that no validator accepts (PatientSex ``0000``, PatientBirthDate ``***``, a
500-character description, an empty first SpecificCharacterSet value). Copied as they are, they make highdicom
refuse to build the SEG or dciodvfy fail the synthetic series after all the work is done. Every top-level text
attribute of each source header is validated against its value representation (pydicom's own rules) and the few
enumerated ones against their values; an invalid one is written empty (allowed for type 2 and 3 attributes) and
named in a warning (the keyword only: values may be patient data).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import replace

from highdicom.enum import SpecificCharacterSetValues
from pydicom import Dataset, config
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.valuerep import DSfloat, validate_value

from operators.study import SliceRef, Volume

__all__ = ["clean_header", "clean_volume", "output_character_set"]

logger = logging.getLogger(__name__)

#: Text value representations whose values are checked (UIDs are checked by the loader; sequences are kept).
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"})
#: Enumerated values (PS3.3) that highdicom and dciodvfy enforce.
_ENUMERATED: dict[str, frozenset[str]] = {"PatientSex": frozenset({"M", "F", "O"})}
#: Attributes that are never blanked (the writers need them; the loader and volume builder checked them).
_WRITABLE = frozenset(value.value for value in SpecificCharacterSetValues)
_KEEP = frozenset({"SpecificCharacterSet", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"})


def output_character_set(value: str | Sequence[str] | None) -> tuple[str | list[str] | None, str | None]:
    """The SpecificCharacterSet to write for a source's value, and a warning when it had to change.

    A valid value is kept. An empty first value of an ISO 2022 set (the default repertoire) is spelled out as
    ``ISO 2022 IR 6``, which highdicom requires. A valid set that highdicom cannot write (ISO 2022 IR 149,
    Korean) and an unknown one become ``ISO_IR 192`` (UTF-8), which can write every character read (the text
    of an unknown set was read as ISO 8859-1); only the unknown one is worth a warning.
    """
    if value in (None, ""):
        return None, None
    names = [str(v).strip() for v in ([value] if isinstance(value, str) else list(value))]
    if len(names) > 1 and names[0] == "":
        names[0] = "ISO 2022 IR 6"
    if all(name in _WRITABLE for name in names):
        return (names[0] if len(names) == 1 else names), None
    if all(name in python_encoding for name in names):  # valid, but highdicom cannot write it (e.g. Korean)
        return "ISO_IR 192", None
    return "ISO_IR 192", "SpecificCharacterSet of the source is not a known character set; outputs are written in UTF-8"


def _invalid(element: DataElement) -> bool:
    allowed = _ENUMERATED.get(element.keyword)
    values = element.value if element.VM > 1 else [element.value]
    if allowed is not None and any(str(v) not in allowed for v in values if v not in (None, "")):
        return True
    if element.VR in ("DS", "IS"):  # pydicom converted them already: the numbers must be finite
        try:
            return not all(math.isfinite(float(v)) for v in values if v not in (None, ""))
        except (TypeError, ValueError):
            return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for value in values:
                validate_value(element.VR, str(value) if element.VR == "PN" else value, config.RAISE)
    except (ValueError, TypeError):
        return True
    return False


def clean_header(source: Dataset) -> tuple[Dataset, list[str]]:
    """A copy of a source header whose invalid top-level text values are empty, and the keywords that were.

    The copy is shallow (elements not changed are shared with the source), so the source header stays as read.
    """
    cleaned = copy.copy(source)  # keeps the file meta and encodings; the element dict is shared, so:
    cleaned._dict = dict(source._dict)  # its own element dict: changes below never reach the source
    blanked: list[str] = []
    notes: list[str] = []
    charset, note = output_character_set(source.get("SpecificCharacterSet"))
    if note:
        notes.append(note)
        cleaned.SpecificCharacterSet = charset
    elif charset is not None and charset != source.get("SpecificCharacterSet"):
        cleaned.SpecificCharacterSet = charset
    for tag in list(source.keys()):
        try:
            element = source[tag]
        except (ValueError, TypeError, KeyError, LookupError):  # a value pydicom itself cannot convert
            keyword = keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
            if keyword in _KEEP:
                continue
            try:
                cleaned[tag] = DataElement(tag, dictionary_VR(tag), None)
            except KeyError:  # a private attribute: not copied by any writer
                del cleaned[tag]
            blanked.append(keyword)
            continue
        if element.VR not in _TEXT_VRS or element.keyword in _KEEP or element.value in (None, ""):
            continue
        if _invalid(element):
            cleaned[tag] = DataElement(tag, element.VR, None)
            blanked.append(element.keyword or str(tag))
    if blanked:
        notes.append(f"invalid values in the source header were left empty in the outputs: {', '.join(blanked)}")
    return cleaned, notes


def _slice_thickness(cleaned: Dataset, spacing_mm: float, notes: list[str]) -> None:
    """A classic slice without a usable SliceThickness gets the stack's slice spacing (required by the SEG's pixel
    measures and the MR image module when it is known)."""
    if "PerFrameFunctionalGroupsSequence" in cleaned or "SharedFunctionalGroupsSequence" in cleaned:
        return
    value = cleaned.get("SliceThickness")
    try:
        usable = value not in (None, "") and math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        usable = False
    if not usable:
        cleaned.SliceThickness = DSfloat(f"{spacing_mm:.6g}", auto_format=True)
        note = f"SliceThickness missing or invalid in the source; the slice spacing ({spacing_mm:.6g} mm) is written"
        if note not in notes:
            notes.append(note)


def clean_volume(volume: Volume) -> tuple[Volume, list[str]]:
    """The volume with every slice's header cleaned (:func:`clean_header`); warnings once per distinct problem."""
    cleaned_by_id: dict[int, Dataset] = {}
    notes: list[str] = []
    slices: list[SliceRef] = []
    spacing = float(volume.image.GetSpacing()[2])
    for ref in volume.slices:
        key = id(ref.dataset)
        if key not in cleaned_by_id:
            cleaned_by_id[key], found = clean_header(ref.dataset)
            notes.extend(note for note in found if note not in notes)
            _slice_thickness(cleaned_by_id[key], spacing, notes)
        slices.append(replace(ref, dataset=cleaned_by_id[key]))
    for note in notes:
        logger.warning("%s: %s", volume.series.label, note)
    return replace(volume, slices=slices), notes
