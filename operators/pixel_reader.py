"""Pixel reading: stored values of one instance, straight from the file when uncompressed, else via pydicom."""

from __future__ import annotations

import logging
import struct
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from operators.errors import CorruptFileError, UnsupportedImageError, UnsupportedTransferSyntaxError
from operators.fast_header import raw_int
from operators.study import Instance, Series

__all__ = ["check_decodable", "native_dtype", "number_of_frames", "read_pixels", "rows_columns"]

logger = logging.getLogger(__name__)

_NATIVE_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: What pydicom and the decoder plugins raise on damaged pixel data.
_DECODE_ERRORS = (ValueError, RuntimeError, EOFError, OSError, struct.error, AttributeError, KeyError, TypeError)


def number_of_frames(ds: Dataset) -> int:
    """NumberOfFrames of an instance (1 for single-frame objects)."""
    return raw_int(ds, 0x00280008) or 1


def rows_columns(ds: Dataset) -> tuple[int, int]:
    """Rows and Columns of an instance (0 when absent)."""
    return raw_int(ds, 0x00280010) or 0, raw_int(ds, 0x00280011) or 0


def native_dtype(ds: Dataset) -> np.dtype[Any] | None:
    """Little-endian NumPy type of the stored values (BitsAllocated, PixelRepresentation); None if unusual."""
    bits = raw_int(ds, 0x00280100) or 16
    signed = raw_int(ds, 0x00280103) == 1
    if bits not in (8, 16, 32):
        return None
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")


def check_decodable(series: Series, instance: Instance) -> None:
    """Check that an installed decoder handles the instance's transfer syntax.

    Raises
    ------
    UnsupportedTransferSyntaxError
        When none does; the message names the series, the transfer syntax and what to export instead.
    """
    uid = UID(instance.transfer_syntax_uid)
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise UnsupportedTransferSyntaxError(
            f"{series.label}: instance {instance.sop_instance_uid} is encoded as {uid} ({uid.name}), which no "
            "installed decoder handles. Export the study uncompressed, or as JPEG, JPEG-LS, JPEG 2000 or RLE.",
            series_instance_uid=series.series_instance_uid,
            attribute="TransferSyntaxUID",
            expected="a transfer syntax with an installed decoder",
            found=f"{uid} ({uid.name})",
        )


def _read_native(
    series: Series, instance: Instance, dtype: np.dtype[Any], count: int, buffer: np.ndarray | None = None
) -> np.ndarray | None:
    """Read uncompressed little-endian pixels straight from the file; None when the element is not as expected.

    When `buffer` has the right dtype and size, the pixels are read into it (no new allocation).
    """
    offset = instance.pixel_data_offset
    if offset is None:
        return None
    implicit = UID(instance.transfer_syntax_uid) == ImplicitVRLittleEndian
    expected = count * dtype.itemsize
    with instance.path.open("rb") as fp:
        fp.seek(offset)
        header = fp.read(8 if implicit else 12)
        if len(header) < (8 if implicit else 12) or header[:4] != b"\xe0\x7f\x10\x00":
            return None
        length = struct.unpack("<I", header[4:8] if implicit else header[8:12])[0]
        if length == 0xFFFFFFFF:
            return None
        if length < expected:  # before allocating: a header can claim any size
            raise _truncated(series, instance, expected, length)
        if buffer is not None and buffer.dtype == dtype and buffer.size == count and buffer.flags.c_contiguous:
            got = fp.readinto(buffer.data.cast("B"))
            data = buffer if got == expected else buffer.reshape(-1)[: got // dtype.itemsize]
        else:
            data = np.fromfile(fp, dtype=dtype, count=count)
    if data.size * dtype.itemsize < expected:
        raise _truncated(series, instance, expected, data.size * dtype.itemsize)
    return data


def _truncated(series: Series, instance: Instance, expected: int, found: int) -> CorruptFileError:
    return CorruptFileError(
        f"{series.label}: instance {instance.sop_instance_uid} holds {found} bytes of pixel data, "
        f"expected {expected} (Rows x Columns x NumberOfFrames x BitsAllocated / 8): the file is truncated, or "
        "those attributes are wrong. Send the series again.",
        series_instance_uid=series.series_instance_uid,
        attribute="PixelData",
        expected=f"{expected} bytes",
        found=f"{found} bytes",
    )


def read_pixels(series: Series, instance: Instance, buffer: np.ndarray | None = None) -> np.ndarray:
    """Stored pixel values of one instance as an array of shape (frames, rows, columns).

    Uncompressed little-endian data is read straight from the file (into `buffer` when its dtype and size fit,
    so a caller can reuse one buffer for many slices); everything else is decoded by pydicom with the installed
    plugins (pylibjpeg, libjpeg, openjpeg, rle, pyjpegls).

    Raises
    ------
    UnsupportedTransferSyntaxError
        When no installed decoder handles the instance's transfer syntax.
    UnsupportedImageError
        When the instance holds more than one sample per pixel (colour).
    CorruptFileError
        When the pixel data is truncated or cannot be decoded.
    """
    ds = instance.dataset
    check_decodable(series, instance)
    samples = raw_int(ds, 0x00280002) or 1
    if samples != 1:
        raise UnsupportedImageError(
            f"{series.label}: SamplesPerPixel is {samples}; only greyscale images (1 sample per pixel) are used.",
            series_instance_uid=series.series_instance_uid,
            attribute="SamplesPerPixel",
            expected="1",
            found=str(samples),
        )
    frames, (rows, columns) = number_of_frames(ds), rows_columns(ds)
    dtype = native_dtype(ds)
    if UID(instance.transfer_syntax_uid) in _NATIVE_LE and dtype is not None:
        data = _read_native(series, instance, dtype, frames * rows * columns, buffer)
        if data is not None:
            return data.reshape(frames, rows, columns)
    try:
        full = dcmread(instance.path)
        # decoders raise many kinds of error on damaged data; a wrong size is damage too
        return np.asarray(full.pixel_array).reshape(frames, rows, columns)
    except BaseException as exc:
        # The Rust decoders (pylibjpeg-rle) panic on some damaged fragments: pyo3's PanicException derives from
        # BaseException, so it would pass every `except Exception` up the stack and end the process.
        if not isinstance(exc, _DECODE_ERRORS) and type(exc).__name__ != "PanicException":
            raise
        text = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CorruptFileError(
            f"{series.label}: cannot decode the pixel data of instance {instance.sop_instance_uid}: {text}. "
            "The file is damaged; send the series again.",
            series_instance_uid=series.series_instance_uid,
            attribute="PixelData",
            expected=f"{frames} decodable frame(s) of {rows}x{columns}",
            found=f"{type(exc).__name__}: {text}",
        ) from exc
