"""Reading a posted study from an HTTP request body, streamed to the spool as it arrives.

Three encodings: ``multipart/form-data`` (one file per part, as browsers and ``curl -F`` send), ``application/zip``
and ``multipart/related; type="application/dicom"`` (the DICOMweb STOW-RS body); a lone ``application/dicom`` file
is taken too. Each part becomes one file of an :class:`~app.service.spool.Incoming` study.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.service.spool import Incoming, Instance, PartWriter, UploadError, extract_zip

__all__ = ["PartOutcome", "Received", "media_type", "receive_body"]


@dataclass(frozen=True)
class PartOutcome:
    """What became of one part: its instance, or why it was refused."""

    label: str
    instance: Instance | None = None
    problem: str | None = None
    #: A zip member that is not DICOM (a DICOMDIR, a README): left out without refusing the study.
    skipped: bool = False


@dataclass
class Received:
    parts: list[PartOutcome] = field(default_factory=list)

    @property
    def refused(self) -> list[PartOutcome]:
        return [p for p in self.parts if p.instance is None and not p.skipped]

    @property
    def skipped(self) -> list[PartOutcome]:
        return [p for p in self.parts if p.skipped]


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    value, params = parse_options_header(content_type or "")
    return value.decode("latin-1").lower(), {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in params.items()
    }


class _PartSink:
    """python-multipart callbacks that write each part to its own spool file."""

    def __init__(self, incoming: Incoming, related: bool, received: Received) -> None:
        self.incoming, self.related, self.received = incoming, related, received
        self.index = 0
        self.headers: dict[str, str] = {}
        self._field = b""
        self._value = b""
        self.writer: PartWriter | None = None
        self.refusal: str | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self.index += 1
        self.headers, self.writer, self.refusal = {}, None, None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self.headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field, self._value = b"", b""

    def label(self) -> str:
        _, params = media_type(self.headers.get("content-disposition"))
        name = params.get("filename") or params.get("name")
        return f"part {self.index}" + (f" ({name!r})" if name else "")

    def headers_finished(self) -> None:
        part_type, _ = media_type(self.headers.get("content-type"))
        if self.related and part_type not in ("application/dicom", ""):
            self.refusal = f"has Content-Type {part_type!r}; only application/dicom parts are accepted"
            return
        self.writer = self.incoming.open()
        self.writer.label = self.label()

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.writer is not None:
            self.writer.write(data[start:end])

    def part_end(self) -> None:
        label = self.label()
        if self.writer is None:
            self.received.parts.append(PartOutcome(label, problem=self.refusal or "is empty"))
            return
        result = self.writer.close()
        self.writer = None
        if isinstance(result, str):
            self.received.parts.append(PartOutcome(label, problem=result))
        else:
            self.received.parts.append(PartOutcome(label, instance=result))

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


async def receive_body(
    content_type: str | None,
    body: AsyncIterator[bytes],
    incoming: Incoming,
    *,
    zip_max_bytes: int,
    zip_max_ratio: float,
    stow: bool = False,
) -> Received:
    """Stream a request body into ``incoming``.

    Raises
    ------
    UploadError
        415 for a content type that is none of the above (or not multipart/related for STOW-RS), 400 for a body
        that does not parse, 413 when the limits of ``incoming`` are passed.
    """
    kind, params = media_type(content_type)
    received = Received()
    if stow and (kind != "multipart/related" or params.get("type", "application/dicom").lower() != "application/dicom"):
        raise UploadError(
            415, f'STOW-RS takes multipart/related; type="application/dicom". Found Content-Type {content_type!r}.'
        )
    if kind in ("multipart/form-data", "multipart/related"):
        boundary = params.get("boundary")
        if not boundary:
            raise UploadError(400, f"Content-Type {kind} without a boundary parameter.")
        sink = _PartSink(incoming, related=kind == "multipart/related", received=received)
        parser = MultipartParser(boundary.encode("latin-1"), sink.callbacks())  # type: ignore[arg-type]
        try:
            async for chunk in body:
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as exc:
            sink.abort()
            raise UploadError(400, f"The multipart body does not parse: {exc}") from None
        except BaseException:
            sink.abort()
            raise
        if sink.writer is not None:  # the body ended inside a part
            sink.abort()
            raise UploadError(400, f"The multipart body ends inside {sink.label()} (no closing boundary).")
        return received
    if kind in ("application/zip", "application/x-zip-compressed"):
        with tempfile.NamedTemporaryFile(dir=incoming.folder.parent, suffix=".zip") as archive:
            size = 0
            async for chunk in body:
                size += len(chunk)
                if size > incoming.max_bytes:
                    raise UploadError(413, f"The zip is larger than the limit of {incoming.max_bytes} bytes.")
                archive.write(chunk)
            archive.flush()
            os.fsync(archive.fileno())
            skipped = extract_zip(
                Path(archive.name),
                incoming,
                max_bytes=zip_max_bytes,
                max_ratio=zip_max_ratio,
            )
        received.parts = [PartOutcome(i.label, instance=i) for i in incoming.instances]
        received.parts += [
            PartOutcome(f"zip member {name!r}", problem="is not a DICOM image (left out)", skipped=True)
            for name in skipped
        ]
        return received
    if kind == "application/dicom":
        writer = incoming.open()
        writer.label = "body"
        async for chunk in body:
            writer.write(chunk)
        result = writer.close()
        received.parts.append(
            PartOutcome("body", instance=result) if not isinstance(result, str) else PartOutcome("body", problem=result)
        )
        return received
    raise UploadError(
        415,
        "Unsupported Content-Type "
        f"{content_type!r}: send multipart/form-data (files), application/zip, or "
        'multipart/related; type="application/dicom".',
    )
