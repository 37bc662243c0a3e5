"""The data that flows between the pipeline's operators: studies, series, role selection and volumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from operators.roles import Role

if TYPE_CHECKING:
    import SimpleITK as sitk
    from pydicom import Dataset

__all__ = [
    "ContrastInfo",
    "Instance",
    "Selection",
    "Series",
    "SeriesDecision",
    "SkippedFile",
    "SliceRef",
    "Study",
    "Volume",
]


@dataclass
class Instance:
    """One DICOM file of an image series; ``dataset`` holds the header only (pixel data is read on demand).

    ``pixel_data_offset`` is the byte offset of the (7FE0,0010) Pixel Data element in the file when the loader
    knows it; the volume builder then reads native (uncompressed) pixels without parsing the header again.
    """

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    dataset: Dataset
    pixel_data_offset: int | None = None


@dataclass
class Series:
    """One image series: its identifying attributes and its instances (in file order until volume building)."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    series_number: int | None
    description: str
    instances: list[Instance] = field(default_factory=list)

    @property
    def first(self) -> Dataset:
        """Header of the first instance (attributes that are the same for the whole series)."""
        return self.instances[0].dataset

    @property
    def label(self) -> str:
        """Short label for logs and errors: number, description and UID, never patient data."""
        return f"#{self.series_number} {self.description!r} ({self.series_instance_uid})"


@dataclass
class SkippedFile:
    """A file the loader did not use, and why (not DICOM, not an image, duplicate, unreadable)."""

    path: Path
    reason: str


@dataclass
class Study:
    """All image series of one study found under an input folder."""

    study_instance_uid: str
    series: list[Series] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


@dataclass
class SeriesDecision:
    """Why a series got a role, or why it got none: one line per series in `gadsynth inspect` and report.json."""

    series_instance_uid: str
    series_number: int | None
    description: str
    role: Role | None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "description": self.description,
            "role": self.role.value if self.role else None,
            "reasons": list(self.reasons),
        }


@dataclass
class ContrastInfo:
    """Contrast conditions of a post-contrast series; they feed the model's condition vector.

    ``dose`` is relative to the standard dose (0.1 mmol/kg = 1.0). ``source`` says where each value came from
    ("header", "rules", "request" or "default").
    """

    dose: float | None
    agent: str | None
    field_strength_t: float
    r1: float | None
    source: str = "header"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dose": self.dose,
            "agent": self.agent,
            "field_strength_t": self.field_strength_t,
            "r1": self.r1,
            "source": self.source,
        }


@dataclass
class Selection:
    """The outcome of role selection for one study."""

    study: Study
    roles: dict[Role, Series]
    decisions: list[SeriesDecision]
    contrast: dict[Role, ContrastInfo] = field(default_factory=dict)
    #: Series whose headers say a contrast agent was given (ContrastBolusAgent), whatever role they got.
    contrast_series: list[str] = field(default_factory=list)
    #: Things report.json must show (values read from the headers that could not be used as they were).
    warnings: list[str] = field(default_factory=list)


@dataclass
class SliceRef:
    """The source of one slice of a volume: which instance (and frame, for multi-frame objects) it came from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None
    dataset: Dataset


@dataclass
class Volume:
    """A series rebuilt as a 3D image.

    ``image`` is float32 with origin, spacing and direction in LPS patient coordinates (SimpleITK convention);
    index k of the image's third axis is ``slices[k]``.
    """

    role: Role | None
    series: Series
    image: sitk.Image
    slices: list[SliceRef]
