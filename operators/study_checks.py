"""Checks across the series a model will use: one patient, MR only, no instance sent twice under two series."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from operators.errors import InputDicomError
from operators.fast_header import raw_text
from operators.roles import Role
from operators.study import Selection, Series

__all__ = ["InconsistentStudyError", "check_series_consistency"]

logger = logging.getLogger(__name__)


class InconsistentStudyError(InputDicomError):
    """The series chosen for one job do not belong together (another patient, not MR, instances sent twice)."""


def _refuse(series: Series, role: Role, attribute: str, expected: str, found: str, hint: str) -> InconsistentStudyError:
    return InconsistentStudyError(
        f"{series.label} ({role.value}): {attribute}: expected {expected}, found {found}. {hint}",
        series_instance_uid=series.series_instance_uid,
        attribute=attribute,
        expected=expected,
        found=found,
    )


def _patient_ids(series: Series) -> set[str]:
    return {raw_text(instance.dataset, 0x00100020) or "" for instance in series.instances} - {""}


def check_series_consistency(selection: Selection, roles: Sequence[Role]) -> None:
    """Refuse a study whose series for ``roles`` cannot be one acquisition of one patient.

    Compares every used series with the t1_pre: Modality MR, the same PatientID (patient IDs are compared, never
    logged), and no SOP Instance UID used by two series.

    Raises
    ------
    InconsistentStudyError
        Naming the series at fault, the attribute, what was expected and what was found.
    """
    used = [(role, selection.roles[role]) for role in roles if role in selection.roles]
    for role, series in used:
        if series.modality != "MR":
            raise _refuse(series, role, "Modality", "MR", repr(series.modality or ""), "Only MR series can be used.")
        ids = _patient_ids(series)
        if len(ids) > 1:
            raise _refuse(
                series,
                role,
                "PatientID",
                "one patient in a series",
                f"{len(ids)} different PatientIDs",
                "The series mixes patients; it is not used.",
            )
    reference = selection.roles.get(Role.T1_PRE)
    if reference is None:
        return
    reference_ids = _patient_ids(reference)
    seen = {instance.sop_instance_uid: Role.T1_PRE for instance in reference.instances}
    for role, series in used:
        if series is reference:
            continue
        ids = _patient_ids(series)
        if reference_ids and ids and ids != reference_ids:
            raise _refuse(
                series,
                role,
                "PatientID",
                "the t1_pre's patient",
                "another PatientID",
                "A series of another patient was filed under this study; nothing is synthesized from it.",
            )
        for instance in series.instances:
            other = seen.get(instance.sop_instance_uid)
            if other is not None:
                raise _refuse(
                    series,
                    role,
                    "SOPInstanceUID",
                    "instance UIDs used by one series only",
                    f"{instance.sop_instance_uid} also in the {other.value} series",
                    "The same instances were sent under two series.",
                )
            seen[instance.sop_instance_uid] = role
