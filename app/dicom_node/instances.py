"""What the node reads from a received instance: its identity, whether it is routed, and whether GadSynth made it.

A PACS that forwards everything it receives sends our own results back; they are recognised here on receipt and
never become (part of) a job, so a forwarding loop cannot start. An instance is ours when any of these holds:

* its ImageType holds ``SYNTHETIC`` (every synthetic MR series we write);
* its Manufacturer is ``GadSynth`` (the synthetic series, the SEG and the SR, whose equipment is ours);
* an item of its Contributing Equipment Sequence names the manufacturer ``GadSynth``;
* its SeriesNumber is in ``dicom_own_series_numbers`` and it is not an ORIGINAL image (so that a scanner series
  that happens to carry such a number is still taken).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset

__all__ = [
    "MR_STORAGE_CLASSES",
    "OUR_MANUFACTURER",
    "InstanceFacts",
    "clean_uid",
    "own_output_reason",
    "read_facts",
]

#: The storage classes the pipeline routes (the rest is kept but not routed).
MR_STORAGE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    }
)
OUR_MANUFACTURER = "GadSynth"

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def clean_uid(uid: str) -> str:
    """A UID as a file name (only digits and dots survive, as pynetdicom's storescp does)."""
    return re.sub(r"[^\d.]", "_", uid)[:64]


@dataclass(frozen=True)
class InstanceFacts:
    """The attributes of one received instance that the node needs (never patient data)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str

    @property
    def routed(self) -> bool:
        """Whether its storage class is one the pipeline reads (MR images)."""
        return self.sop_class_uid in MR_STORAGE_CLASSES


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


def _uid(dataset: Dataset, keyword: str) -> str | None:
    value = _text(dataset, keyword)
    return value if _UID.match(value) and len(value) <= 64 else None


def read_facts(dataset: Dataset) -> InstanceFacts | str:
    """The facts of a received dataset, or why it cannot be taken (a missing or malformed UID).

    Raises
    ------
    Exception
        Whatever pydicom raises for an element it cannot decode (it decodes lazily); the caller answers 0xC210.
    """
    uids = {k: _uid(dataset, k) for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")}
    missing = [k for k, v in uids.items() if v is None]
    if missing:
        return f"no valid {', '.join(missing)}"
    number: int | None
    try:
        raw = dataset.get("SeriesNumber")
        number = int(raw) if raw not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return InstanceFacts(
        sop_class_uid=uids["SOPClassUID"] or "",
        sop_instance_uid=uids["SOPInstanceUID"] or "",
        study_instance_uid=uids["StudyInstanceUID"] or "",
        series_instance_uid=uids["SeriesInstanceUID"] or "",
        modality=_text(dataset, "Modality")[:16],
        series_number=number,
        series_description=_text(dataset, "SeriesDescription")[:64],
    )


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().upper() for v in value.split("\\")]
    try:
        return [str(v).strip().upper() for v in value]
    except TypeError:
        return [str(value).strip().upper()]


def own_output_reason(dataset: Dataset, facts: InstanceFacts, series_numbers: tuple[int, int]) -> str | None:
    """Why this instance is GadSynth's own output (see the module docstring), or None when it is not."""
    image_type = _values(dataset.get("ImageType"))
    if "SYNTHETIC" in image_type:
        return "ImageType holds SYNTHETIC"
    if _text(dataset, "Manufacturer").lower() == OUR_MANUFACTURER.lower():
        return f"Manufacturer is {OUR_MANUFACTURER}"
    if "ContributingEquipmentSequence" in dataset:
        for item in dataset.ContributingEquipmentSequence:
            if _text(item, "Manufacturer").lower() == OUR_MANUFACTURER.lower():
                return f"Contributing Equipment names {OUR_MANUFACTURER}"
    first, last = series_numbers
    number = facts.series_number
    if number is not None and first <= number <= last and (not image_type or image_type[0] != "ORIGINAL"):
        return f"derived series numbered {number} (GadSynth writes {first}-{last})"
    return None
