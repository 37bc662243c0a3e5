"""Errors raised for bad input DICOM: one hierarchy, messages that name series, attribute, expected and found."""

from __future__ import annotations

__all__ = [
    "CorruptFileError",
    "InconsistentGeometryError",
    "InputDicomError",
    "MultipleStudiesError",
    "NoMatchingSeriesError",
    "NoStudyError",
    "RegistrationError",
    "UnsupportedImageError",
    "UnsupportedTransferSyntaxError",
    "describe_series",
]


def describe_series(series_instance_uid: str | None, description: str | None = None) -> str:
    """Return the short series label used in every error and log line (UID and description, never patient data)."""
    uid = series_instance_uid or "<no SeriesInstanceUID>"
    return f"series {uid} ({description!r})" if description else f"series {uid}"


class InputDicomError(ValueError):
    """Base class of every error caused by the input study rather than by GadSynth.

    Front doors map it to exit code 2 (command line), HTTP 4xx (service) or a DIMSE failure status (DICOM node).

    Parameters
    ----------
    message:
        Human-readable explanation: which series, which attribute, what was expected and what was found.
    series_instance_uid:
        The series at fault, when there is one.
    attribute:
        The DICOM keyword at fault, when there is one.
    expected, found:
        What was expected and what was found, as text.
    """

    def __init__(
        self,
        message: str,
        *,
        series_instance_uid: str | None = None,
        attribute: str | None = None,
        expected: str | None = None,
        found: str | None = None,
    ) -> None:
        super().__init__(message)
        self.series_instance_uid = series_instance_uid
        self.attribute = attribute
        self.expected = expected
        self.found = found

    def to_dict(self) -> dict[str, str | None]:
        """Machine-readable form for report.json and HTTP error bodies."""
        return {
            "error": type(self).__name__,
            "message": str(self),
            "series_instance_uid": self.series_instance_uid,
            "attribute": self.attribute,
            "expected": self.expected,
            "found": self.found,
        }


class NoStudyError(InputDicomError):
    """The input holds no readable DICOM image study at all (empty folder, no MR, only non-image objects)."""


class NoMatchingSeriesError(InputDicomError):
    """No series fits a role the pipeline needs (e.g. no pre-contrast T1)."""


class InconsistentGeometryError(InputDicomError):
    """A series cannot be stacked into one 3D volume (missing slices, mixed orientation or size, tilt, one slice)."""


class UnsupportedTransferSyntaxError(InputDicomError):
    """Pixel data is encoded in a transfer syntax that no installed decoder handles."""


class CorruptFileError(InputDicomError):
    """A file of a selected series cannot be read completely (truncated transfer, damaged pixel data)."""


class UnsupportedImageError(InputDicomError):
    """A selected series holds pixels the pipeline cannot use (colour, more than one sample per pixel, ...)."""


class MultipleStudiesError(InputDicomError):
    """The input folder holds more than one study and none was named (``study_instance_uids`` lists them)."""

    study_instance_uids: list[str] = []  # noqa: RUF012 - set per instance by the loader


class RegistrationError(InputDicomError):
    """Two series could not be aligned (no convergence, or a quality figure below its threshold).

    What is at fault is the images' content, so ``attribute`` is PixelData unless a caller names another.
    """

    def __init__(self, message: str, **fields: str | None) -> None:
        fields.setdefault("attribute", "PixelData")
        super().__init__(message, **fields)
