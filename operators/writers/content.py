"""Header building blocks shared by the writers: model identity, equipment, references, copied attributes."""

from __future__ import annotations

import copy
import datetime as dt
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from highdicom import ContributingEquipment
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DSfloat

from operators import __version__ as GADSYNTH_VERSION

if TYPE_CHECKING:
    from operators.study import SliceRef

logger = logging.getLogger(__name__)

__all__ = [
    "GADSYNTH_VERSION",
    "PATIENT_STUDY_KEYWORDS",
    "SOFTWARE_NAME",
    "ModelIdentity",
    "check_series_options",
    "contributing_equipment",
    "copy_attributes",
    "derivation_description",
    "ds_value",
    "ensure_laterality",
    "now_da_tm",
    "referenced_series_item",
    "software_versions",
    "source_image_item",
    "source_image_items",
    "synthesizing_equipment",
    "synthetic_header",
    "synthetic_notice",
]

#: Manufacturer written in every GadSynth object (General Equipment and Contributing Equipment).
SOFTWARE_NAME = "GadSynth"

#: Patient, Patient Study, General Study and study-level attributes copied verbatim from the source series.
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "TimezoneOffsetFromUTC",
    # Patient
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    # Clinical trial subject / study
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "ClinicalTrialTimePointID",
    # General Study
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
    # Patient Study
    "PatientAge",
    "PatientSize",
    "PatientWeight",
)

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelIdentity:
    """The model that produced an output: written to Contributing Equipment, SEG algorithm identification, report.

    Raises
    ------
    ValueError
        When the name is empty, longer than 64 characters or contains a backslash; when the version is empty or
        longer than 64 characters; when ``sha256`` is not 64 lower-case hex digits.
    """

    name: str
    version: str
    sha256: str

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64 or "\\" in self.name:
            raise ValueError(f"Model name must be 1 to 64 characters without a backslash. Found {self.name!r}.")
        if not self.version or len(self.version) > 64 or "\\" in self.version:
            raise ValueError(f"Model version must be 1 to 64 characters without a backslash. Found {self.version!r}.")
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"Model sha256 must be 64 lower-case hex digits. Found {self.sha256!r}.")


def now_da_tm() -> tuple[str, str]:
    """Current local date and time as DICOM DA and TM strings."""
    now = dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def ds_value(value: float) -> DSfloat:
    """A float as a valid DS (at most 16 characters)."""
    return DSfloat(float(value), auto_format=True)


def check_series_options(series_number: int, description: str, *, must_say_synthetic: bool = True) -> None:
    """Check a configured series number and description before anything is built.

    Raises
    ------
    TypeError
        When ``series_number`` is not an int.
    ValueError
        When the number is outside 0 to 2**31-1, the description is longer than 64 characters or holds a
        backslash, or (``must_say_synthetic``) it does not contain the word "synthetic".
    """
    if isinstance(series_number, bool) or not isinstance(series_number, int):
        raise TypeError(f"series_number must be an int. Found {type(series_number).__name__}.")
    if not 0 <= series_number <= 2**31 - 1:
        raise ValueError(f"series_number must be between 0 and 2**31-1. Found {series_number}.")
    if len(description) > 64 or "\\" in description:
        raise ValueError(f"SeriesDescription must be at most 64 characters without a backslash. Found {description!r}.")
    if must_say_synthetic and "synthetic" not in description.lower():
        raise ValueError(f"SeriesDescription must say that the series is synthetic. Found {description!r}.")


def copy_attributes(source: Dataset, target: Dataset, keywords: Iterable[str]) -> None:
    """Copy the attributes present in ``source`` to ``target`` (deep copies, so later edits stay local)."""
    for keyword in keywords:
        if keyword in source:
            element = source[keyword]
            target[element.tag] = copy.deepcopy(element)


def ensure_laterality(ds: Dataset) -> None:
    """Add an empty Laterality when the body part is unknown (General Series type 2C: it may then be paired)."""
    if not ds.get("BodyPartExamined") and "Laterality" not in ds:
        ds.Laterality = None


def synthetic_notice(model: ModelIdentity) -> str:
    """The sentence that labels every GadSynth image as synthetic (ImageComments, SC, SEG content description)."""
    return (
        f"SYNTHETIC IMAGE computed by {SOFTWARE_NAME} {GADSYNTH_VERSION} with model {model.name} {model.version}; "
        "contrast enhancement is predicted, not acquired. Research use only, not for diagnosis."
    )


def software_versions(model: ModelIdentity) -> list[str]:
    """SoftwareVersions of every GadSynth object: GadSynth's version, then the model's."""
    return [f"{SOFTWARE_NAME} {GADSYNTH_VERSION}", f"{model.name} {model.version}"[:64]]


def derivation_description(model: ModelIdentity, series_instance_uids: Sequence[str], closing: str) -> str:
    """DerivationDescription of a synthetic image: software, model with its sha256, source series, then
    ``closing``."""
    return (
        f"Synthetic contrast-enhanced T1 computed by {SOFTWARE_NAME} {GADSYNTH_VERSION}, model {model.name} "
        f"{model.version} (sha256 {model.sha256}), from series {', '.join(series_instance_uids)}. {closing}"
    )[:1024]


def synthetic_header(
    source: Dataset,
    model: ModelIdentity,
    *,
    copied: Iterable[str],
    sop_class_uid: str,
    modality: str,
    series_instance_uid: str,
    series_number: int,
    description: str,
) -> Dataset:
    """A new header with what every GadSynth image shares.

    Patient and study attributes (and ``copied``) from the source, an empty Laterality when the body part is
    unknown, SOP class, modality, series identity, creation, content and series dates (now), GadSynth as
    manufacturer with the model, Contributing Equipment, and the synthetic notice in ImageComments.
    """
    ds = Dataset()
    copy_attributes(source, ds, PATIENT_STUDY_KEYWORDS)
    copy_attributes(source, ds, copied)
    ensure_laterality(ds)
    today, now = now_da_tm()
    ds.SOPClassUID = sop_class_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = today, now
    ds.Modality = modality
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate, ds.SeriesTime = today, now
    ds.ContentDate, ds.ContentTime = today, now
    ds.Manufacturer = SOFTWARE_NAME
    ds.ManufacturerModelName = model.name
    ds.SoftwareVersions = software_versions(model)
    ds.ContributingEquipmentSequence = contributing_equipment(source, model)
    ds.ImageComments = synthetic_notice(model)
    ds.BurnedInAnnotation = "NO"
    return ds


def contributing_equipment(source: Dataset, model: ModelIdentity) -> list[ContributingEquipment]:
    """Contributing Equipment items: the scanner that acquired the source (when named) and GadSynth with its model.

    For objects that highdicom builds (SEG, SR), pass only :func:`synthesizing_equipment`: highdicom adds the
    acquisition equipment of the source image itself, and the scanner would be described twice.
    """
    items: list[ContributingEquipment] = []
    if source.get("Manufacturer"):
        items.append(_acquisition_equipment(source))
    items.append(synthesizing_equipment(model))
    return items


def synthesizing_equipment(model: ModelIdentity) -> ContributingEquipment:
    """The Contributing Equipment item of GadSynth: software version, model name, version and sha256."""
    return ContributingEquipment(
        manufacturer=SOFTWARE_NAME,
        purpose_of_reference=codes.DCM.SynthesizingEquipment,
        manufacturer_model_name=model.name,
        software_versions=software_versions(model),
        contribution_datetime=dt.datetime.now(),
        contribution_description=(
            f"Synthetic contrast enhancement by {SOFTWARE_NAME} {GADSYNTH_VERSION}, model {model.name} "
            f"version {model.version}, model sha256 {model.sha256}"
        ),
    )


def _text(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    return str(value) if value not in (None, "") else None


def _acquisition_equipment(source: Dataset) -> ContributingEquipment:
    """The scanner that acquired the source (what highdicom's ``for_image_acquisition`` gives, without its
    standard-table lookup, which costs a third of a second on first use)."""
    versions = source.get("SoftwareVersions")
    if versions in (None, ""):
        software: str | list[str] | None = None
    elif isinstance(versions, str):
        software = versions
    else:
        software = [str(v) for v in versions] or None
    return ContributingEquipment(
        manufacturer=str(source.Manufacturer),
        purpose_of_reference=codes.DCM.AcquisitionEquipment,
        manufacturer_model_name=_text(source, "ManufacturerModelName"),
        software_versions=software,
        device_serial_number=_text(source, "DeviceSerialNumber"),
        institution_name=_text(source, "InstitutionName"),
        institutional_department_name=_text(source, "InstitutionalDepartmentName"),
        institution_address=_text(source, "InstitutionAddress"),
        station_name=_text(source, "StationName"),
        contribution_description="Acquisition equipment of the source image(s)",
    )


def source_image_item(ref: SliceRef, frame_numbers: Sequence[int] = ()) -> Dataset:
    """One Source Image Sequence item: the source instance (and frames) a synthetic slice was computed from.

    ``frame_numbers`` replaces the reference's own frame number when several frames of one instance are named.
    """
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    frames = list(frame_numbers) or ([] if ref.frame_number is None else [ref.frame_number])
    if frames:
        item.ReferencedFrameNumber = frames[0] if len(frames) == 1 else frames
    purpose = Dataset()
    code = codes.DCM.SourceImageForImageProcessingOperation
    purpose.CodeValue = code.value
    purpose.CodingSchemeDesignator = code.scheme_designator
    purpose.CodeMeaning = code.meaning
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def source_image_items(refs: Sequence[SliceRef]) -> list[Dataset]:
    """Source Image Sequence items for ``refs``: one per instance, the frames of a multi-frame instance together."""
    order: list[str] = []
    first: dict[str, SliceRef] = {}
    frames: dict[str, list[int]] = {}
    for ref in refs:
        uid = ref.sop_instance_uid
        if uid not in first:
            order.append(uid)
            first[uid] = ref
            frames[uid] = []
        if ref.frame_number is not None and ref.frame_number not in frames[uid]:
            frames[uid].append(ref.frame_number)
    return [source_image_item(first[uid], frames[uid]) for uid in order]


def referenced_series_item(series_instance_uid: str, refs: Sequence[SliceRef]) -> Dataset:
    """One Referenced Series Sequence item (Common Instance Reference) listing each referenced instance once."""
    item = Dataset()
    item.SeriesInstanceUID = series_instance_uid
    instances: list[Dataset] = []
    seen: set[str] = set()
    for ref in refs:
        if ref.sop_instance_uid in seen:
            continue
        seen.add(ref.sop_instance_uid)
        instance = Dataset()
        instance.ReferencedSOPClassUID = ref.sop_class_uid
        instance.ReferencedSOPInstanceUID = ref.sop_instance_uid
        instances.append(instance)
    item.ReferencedInstanceSequence = instances
    return item
