"""Fast DICOM header reading: little-endian headers parsed into pydicom raw elements, and raw attribute access.

pydicom spends most of a header read on per-element bookkeeping. For the common case (a Part 10 file whose data
set is little endian, explicit or implicit VR) `read_header` walks the elements with ``struct`` and hands pydicom
the same ``RawDataElement`` objects its own reader makes, so values (sequences included) are converted lazily by
pydicom as usual. Anything unusual (big endian, deflate, no meta header, an undefined length that is not a
sequence, a header cut short) returns None and the caller falls back to ``pydicom.dcmread``.
"""

from __future__ import annotations

import logging
import struct
import warnings
from pathlib import Path
from typing import Literal

from pydicom import Dataset
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.charset import default_encoding as DEFAULT_ENCODING
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

__all__ = [
    "dataset_encodings",
    "first_frame_group",
    "frame_positions",
    "raw_int",
    "raw_numbers",
    "raw_text",
    "read_header",
]

logger = logging.getLogger(__name__)

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_FIRST_READ = 64 * 1024
_unpack = struct.unpack_from
#: Value representations whose bytes are text in the data set's SpecificCharacterSet (PS3.5 6.1.2.3).
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_TEXT_DELIMITERS = {0x5C, 0x0D, 0x0A, 0x09, 0x0C}  # backslash, CR, LF, TAB, FF: as pydicom decodes text
_PN_DELIMITERS = {0x5E, 0x3D, 0x5C}  # caret, equals, backslash
_Elements = dict[BaseTag, DataElement | RawDataElement]

#: US / UL attributes read by `raw_int` from implicit-VR files (which carry no VR).
_BINARY_INT_TAGS = frozenset({0x00280002, 0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280103})


class _Short(Exception):
    """The buffer ended before the element did: read more of the file."""


def _element_header(data: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, header size) of the element at `pos`."""
    if pos + 8 > len(data):
        raise _Short
    group, element = _unpack("<HH", data, pos)
    tag = (group << 16) | element
    if implicit or group == 0xFFFE:
        return tag, None, _unpack("<I", data, pos + 4)[0], 8
    vr = data[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _Short
        return tag, vr, _unpack("<I", data, pos + 8)[0], 12
    return tag, vr, _unpack("<H", data, pos + 6)[0], 8


def _skip_sequence(data: bytes, pos: int, implicit: bool) -> int:
    """Position just after the Sequence Delimitation Item of an undefined-length sequence starting at `pos`."""
    while True:
        tag, _, length, size = _element_header(data, pos, True)
        pos += size
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise ValueError(f"expected an item tag, found {tag:08X}")
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # undefined-length item: elements until the Item Delimitation Item
            tag, vr, length, size = _element_header(data, pos, implicit)
            pos += size
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                if vr not in (None, b"SQ"):
                    raise ValueError(f"undefined length for VR {vr!r}")
                pos = _skip_sequence(data, pos, implicit)
            else:
                pos += length
        if pos > len(data):
            raise _Short


def _parse(data: bytes, implicit: bool, start: int) -> tuple[_Elements, int | None, int]:
    """Raw elements of the data set from `start` up to Pixel Data; (elements, pixel offset or None, end)."""
    elements: _Elements = {}
    pos = start
    while pos < len(data):
        tag, vr, length, size = _element_header(data, pos, implicit)
        if tag in _PIXEL_TAGS:
            return elements, pos if tag == 0x7FE00010 else None, pos
        value_start = pos + size
        if length == _UNDEFINED:
            # An undefined-length UN in explicit VR is a sequence encoded in implicit VR: left to pydicom.
            is_sequence = vr == b"SQ" or (vr is None and _is_sequence(tag))
            if not is_sequence:
                raise ValueError(f"undefined length for ({tag >> 16:04X},{tag & 0xFFFF:04X}) VR {vr!r}")
            end = _skip_sequence(data, value_start, implicit)
            value = data[value_start : end - 8]  # without the Sequence Delimitation Item
            length = len(value)
            vr = b"SQ"
        else:
            end = value_start + length
            if end > len(data):
                raise _Short
            value = data[value_start:end]
        key = BaseTag(tag)
        elements[key] = RawDataElement(
            key, vr.decode("ascii") if vr else None, length, value, value_start, implicit, True, True, False
        )
        pos = end
    return elements, None, pos


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _is_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return True  # private undefined-length element in implicit VR: a sequence (PS3.5 7.5.1)


def _parse_file(path: Path, data: bytes, at_eof: bool) -> tuple[FileDataset, int | None] | None:
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    meta: _Elements = {}
    pos = 132
    while pos + 8 <= len(data) and _unpack("<H", data, pos)[0] == 0x0002:
        tag, vr, length, size = _element_header(data, pos, False)
        if length == _UNDEFINED or pos + size + length > len(data):
            return None
        value = data[pos + size : pos + size + length]
        key = BaseTag(tag)
        meta[key] = RawDataElement(
            key, vr.decode("ascii") if vr else None, length, value, pos + size, False, True, True, False
        )
        pos += size + length
    syntax_element = meta.get(BaseTag(0x00020010))
    if syntax_element is None or not isinstance(syntax_element.value, bytes):
        return None
    syntax = UID(syntax_element.value.decode("ascii").rstrip("\x00 "))
    if syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian) or not syntax.is_transfer_syntax:
        return None
    implicit = syntax == ImplicitVRLittleEndian
    elements, pixel_offset, end = _parse(data, implicit, pos)
    if pixel_offset is None and (end < len(data) or not at_eof):
        if end >= len(data):
            raise _Short
        return None  # float pixel data or another unusual layout: let pydicom read it
    file_meta = FileMetaDataset(meta)
    ds = FileDataset(str(path), Dataset(elements), preamble=data[:128], file_meta=file_meta, is_implicit_VR=implicit)
    ds.set_original_encoding(implicit, True, _python_encodings(ds.get_item(0x00080005), path))
    return ds, pixel_offset


def _python_encodings(charset: DataElement | RawDataElement | None, path: Path) -> list[str]:
    """Python codecs for a raw SpecificCharacterSet, as pydicom's own reader converts it.

    An unknown character set is logged and read as ISO 8859-1: most real names stay readable, and nothing that
    routes a study depends on them.
    """
    if charset is None or not charset.value:
        return [DEFAULT_ENCODING]
    raw = charset.value
    text = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    names = [name.strip("\x00 ") for name in text.split("\\")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return convert_encodings(names)
    except LookupError:
        logger.warning("%s: unknown SpecificCharacterSet %r; text attributes read as ISO 8859-1", path.name, text)
        return [DEFAULT_ENCODING]


def dataset_encodings(ds: Dataset) -> list[str]:
    """The Python codecs of a data set's SpecificCharacterSet (ISO 8859-1 when it is unknown)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            charset = ds._character_set
    except LookupError:
        return [DEFAULT_ENCODING]
    return [charset] if isinstance(charset, str) else list(charset)


def read_header(path: Path) -> tuple[FileDataset, int | None] | None:
    """The header of a Part 10 little-endian file (everything before Pixel Data) and the Pixel Data offset.

    Returns
    -------
    tuple or None
        The data set (values converted lazily by pydicom) and the byte offset of the (7FE0,0010) element (None
        when the file has none), or None when the file is not one this reader handles (use ``pydicom.dcmread``).
    """
    chunk = _FIRST_READ
    with path.open("rb") as fp:
        data = fp.read(chunk)
        at_eof = len(data) < chunk
        while True:
            try:
                return _parse_file(path, data, at_eof)
            except _Short:
                if at_eof:
                    return None  # the file ends inside an element: truncated; pydicom will say how
                chunk *= 4
                more = fp.read(chunk)
                at_eof = len(more) < chunk
                data += more
            except (ValueError, struct.error, UnicodeDecodeError) as exc:
                logger.debug("Fast header reader declined %s: %s", path, exc)
                return None


_PER_FRAME = 0x52009230
_IPP_EXPLICIT = b"\x20\x00\x32\x00DS"


def _raw_per_frame(ds: Dataset) -> tuple[RawDataElement, bytes] | None:
    element = ds.get_item(_PER_FRAME)
    if isinstance(element, RawDataElement) and isinstance(element.value, bytes):
        return element, element.value
    return None


def first_frame_group(ds: Dataset) -> Dataset | None:
    """Item 1 of PerFrameFunctionalGroupsSequence, without converting the whole sequence when it is still raw.

    Enhanced MR headers hold one functional-group item per frame; selection needs only the first one, and pydicom
    would otherwise build every item of every series. None when the data set has no per-frame groups.
    """
    found = _raw_per_frame(ds)
    if found is None:
        groups = ds.get("PerFrameFunctionalGroupsSequence")
        return groups[0] if groups else None
    raw, data = found
    try:
        tag, _, length, size = _element_header(data, 0, True)
        if tag != _ITEM:
            return None
        end = size + length if length != _UNDEFINED else _item_end(data, size, raw.is_implicit_VR)
    except (ValueError, struct.error, _Short):
        return None
    from pydicom.values import convert_SQ

    items = convert_SQ(data[:end], raw.is_implicit_VR, True, dataset_encodings(ds), raw.value_tell)
    return items[0] if len(items) else None


def _item_end(data: bytes, pos: int, implicit: bool) -> int:
    """Position after the Item Delimitation Item of an undefined-length item whose elements start at `pos`."""
    while True:
        tag, _, length, size = _element_header(data, pos, implicit)
        pos += size
        if tag == _ITEM_END:
            return pos
        pos = _skip_sequence(data, pos, implicit) if length == _UNDEFINED else pos + length


def frame_positions(ds: Dataset) -> list[list[float]] | None:
    """ImagePositionPatient of every frame, read from the raw per-frame groups without converting them.

    Returns None when the sequence is already converted, implicit VR, or the positions found do not number
    NumberOfFrames (then use pydicom).
    """
    found = _raw_per_frame(ds)
    frames = raw_int(ds, 0x00280008)
    if found is None or found[0].is_implicit_VR or not frames:
        return None
    data = found[1]
    positions = []
    pos = data.find(_IPP_EXPLICIT)
    while pos >= 0:
        length = _unpack("<H", data, pos + 6)[0]
        try:
            positions.append([float(v) for v in data[pos + 8 : pos + 8 + length].decode("ascii").split("\\")])
        except (UnicodeDecodeError, ValueError):
            return None
        pos = data.find(_IPP_EXPLICIT, pos + 8 + length)
    if len(positions) != frames or any(len(p) != 3 for p in positions):
        return None
    return positions


def raw_text(ds: Dataset, tag: int) -> str | None:
    """A text attribute (UI, CS, LO, SH, IS, DS...) straight from the raw bytes, skipping pydicom's conversion.

    Reading a few attributes of hundreds of headers is several times faster this way; values that pydicom has
    already converted are returned as text too. None when the attribute is absent or empty.
    """
    element = ds.get_item(tag)
    if element is None:
        return None
    value = element.value
    if isinstance(value, bytes):
        vr = element.VR or _dictionary_vr(tag)
        if vr in _CHARSET_VRS:
            text = decode_bytes(value, dataset_encodings(ds), _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS)
        else:
            text = value.decode("latin-1")
        text = text.strip("\x00 ")
    elif value is None:
        return None
    elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value).strip("\x00 ")
    return text or None


def raw_numbers(ds: Dataset, tag: int) -> list[float] | None:
    """A DS / IS attribute as floats, parsed from the raw bytes (see `raw_text`); None when absent or empty."""
    text = raw_text(ds, tag)
    if text is None:
        return None
    return [float(part) for part in text.split("\\")]


def raw_int(ds: Dataset, tag: int) -> int | None:
    """A US / SS / UL / IS attribute as int from the raw bytes (see `raw_text`); None when absent or empty."""
    element = ds.get_item(tag)
    if element is None or element.value is None:
        return None
    value = element.value
    if isinstance(value, bytes):
        vr = element.VR or ("US" if tag in _BINARY_INT_TAGS else "IS")
        if vr in ("US", "SS", "UL", "SL"):
            size = 2 if vr in ("US", "SS") else 4
            if len(value) < size:
                return None
            order: Literal["little", "big"] = "little" if getattr(element, "is_little_endian", True) else "big"
            return int.from_bytes(value[:size], order, signed=vr in ("SS", "SL"))
        text = value.decode("latin-1").strip("\x00 ")
        return int(float(text.split("\\")[0])) if text else None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return int(value[0]) if len(value) else None
    return int(value) if value != "" else None
