"""How the series selector ranks the candidates for one role (preferences named in the selection rules)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from operators.series_rules import Match
from operators.study import Series

__all__ = ["Candidate", "acquisition_key", "protocol_distance", "rank", "time_key"]


_PROTOCOL_TEXT = ("MRAcquisitionType", "SequenceName", "Orientation", "Rows", "Columns", "NumberOfSlices")
_PROTOCOL_NUMBERS = ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "VoxelVolume")


@dataclass
class Candidate:
    series: Series
    features: dict[str, Any]
    match: Match


def time_key(c: Candidate) -> tuple[Any, ...]:
    moment = c.features["AcquisitionDateTime"]
    number = c.series.series_number if c.series.series_number is not None else 10**9
    return (moment is None, moment.timestamp() if moment else 0.0, number, c.series.series_instance_uid)


def protocol_distance(features: Mapping[str, Any], reference: Mapping[str, Any] | None) -> int:
    if reference is None:
        return 0
    distance = sum(1 for k in _PROTOCOL_TEXT if str(features.get(k)).upper() != str(reference.get(k)).upper())
    for key in _PROTOCOL_NUMBERS:
        a, b = features.get(key), reference.get(key)
        if a is None or b is None:
            distance += int((a is None) != (b is None))
        elif abs(float(a) - float(b)) > 0.05 * max(abs(float(b)), 1e-6):
            distance += 1
    return distance


def rank(c: Candidate, order: Sequence[str], reference: Mapping[str, Any] | None) -> tuple[Any, ...]:
    keys: list[Any] = []
    f = c.features
    for name in order:
        if name == "protocol_match":
            keys.append(protocol_distance(f, reference))
        elif name == "rule_order":
            keys.append(c.match.rank)
        elif name == "original":
            keys.append(0 if f["ImageType"][:1] == ["ORIGINAL"] else 1)
        elif name == "3d":
            keys.append(0 if str(f.get("MRAcquisitionType") or "").upper() == "3D" else 1)
        elif name == "finer_resolution":
            keys.append(round(f["VoxelVolume"], 3) if f["VoxelVolume"] else float("inf"))
        elif name == "more_slices":
            keys.append(-int(f["NumberOfSlices"]))
        else:
            raise ValueError(
                f"Unknown preference {name!r} in selection rules; known: protocol_match, rule_order, original, "
                "3d, finer_resolution, more_slices."
            )
    return tuple(keys)


def acquisition_key(f: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        f.get("FrameOfReferenceUID"),
        f.get("AcquisitionDateTime"),
        f.get("Rows"),
        f.get("Columns"),
        f.get("NumberOfSlices"),
    )
