"""Enumerated values (DICOM vocabulary and report vocabulary) used by the writers."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ConversionType",
    "ImageTypeValue",
    "OutputKind",
    "PixelRepresentation",
    "ReportStatus",
]


class ImageTypeValue(StrEnum):
    """Values written to ImageType (0008,0008) of the synthetic series."""

    DERIVED = "DERIVED"
    SECONDARY = "SECONDARY"
    #: Value 3 (required in MR images): a defined term that claims no particular reconstruction.
    OTHER = "OTHER"
    #: Value 4 of every GadSynth image: the pixels were computed, not acquired.
    SYNTHETIC = "SYNTHETIC"


class PixelRepresentation(StrEnum):
    """PixelRepresentation (0028,0103), by name; the DICOM value is ``int(member.code)``."""

    UNSIGNED = "UNSIGNED"
    SIGNED = "SIGNED"

    @property
    def code(self) -> int:
        """The integer DICOM writes (0 unsigned, 1 two's complement)."""
        return 1 if self is PixelRepresentation.SIGNED else 0

    @classmethod
    def from_code(cls, value: int) -> PixelRepresentation:
        """Convert the DICOM integer at the boundary.

        Raises
        ------
        ValueError
            When the value is neither 0 nor 1.
        """
        if value not in (0, 1):
            raise ValueError(f"PixelRepresentation must be 0 (unsigned) or 1 (signed). Found {value!r}.")
        return cls.SIGNED if value == 1 else cls.UNSIGNED


class ConversionType(StrEnum):
    """ConversionType (0008,0064) of the Secondary Capture: SYN says the image is synthetic."""

    SYNTHETIC_IMAGE = "SYN"
    WORKSTATION = "WSD"


class ReportStatus(StrEnum):
    """Outcome of one pipeline run as recorded in report.json (and mapped to the exit code by the app)."""

    OK = "ok"
    NOT_ELIGIBLE = "not_eligible"
    ERROR = "error"


class OutputKind(StrEnum):
    """What an output file or folder listed in report.json holds."""

    SYNTHETIC_SERIES = "synthetic_series"
    SYNTHETIC_PLUS_SERIES = "synthetic_plus_series"
    UNCERTAINTY_SERIES = "uncertainty_series"
    SEGMENTATION = "segmentation"
    SECONDARY_CAPTURE = "secondary_capture"
    STRUCTURED_REPORT = "structured_report"
    REPORT = "report"
    PREVIEW = "preview"
