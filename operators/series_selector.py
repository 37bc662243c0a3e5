"""Series role selector: which series is the pre-contrast T1, the low-dose T1, the T2, ... and why.

Rules are data (``operators/selection_rules.json`` by default; the language is described in
`operators.series_rules`). Selection runs in the order of the rules' ``selections``:

1. Every series is checked against the ``exclusions`` (localizers, fMRI, field maps, ASL, DWI, reformats, phase
   images, multi-volume series, ...); an excluded series gets no role, and the reason.
2. Each selection's rule node gives the candidates; relations to an earlier role are then checked
   (``after`` / ``before``: acquisition order; ``same_study`` / ``same_frame_of_reference``).
3. Normalized copies (Siemens NORM, also in Siemens' private per-frame ImageType of enhanced objects): the
   ``preferences.normalized_copies`` variant ("original" or "normalized") is kept. Selections sharing a
   ``consistency_group`` (pre- and post-contrast T1) get the same variant: when the preferred one is missing
   for one of them but the other variant exists for all, the other variant is used for all.
4. Candidates are ranked by ``preferences.order`` (default: protocol match with the reference role, rule
   alternative order, ORIGINAL over DERIVED, 3D over 2D, finer voxels, more slices), then deterministically by
   SeriesNumber and SeriesInstanceUID. Equally good candidates are logged.
5. A selection with ``split_by: dose`` (post-contrast T1) gives its first role (low dose) to the lowest dose and
   its second (standard dose) to the highest; doses come from the headers (ContrastBolusVolume or
   ContrastBolusTotalDose, agent, PatientWeight), else from acquisition order. A single post-contrast series
   takes the role its dose implies (``standard_dose_threshold``), or ``single_post_contrast_role``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from operators.contrast import contrast_info, header_dose
from operators.errors import NoMatchingSeriesError
from operators.roles import Role
from operators.series_features import series_features
from operators.series_ranking import Candidate, acquisition_key, rank, time_key
from operators.series_rules import Match, evaluate, load_rules
from operators.study import ContrastInfo, Selection, Series, SeriesDecision, Study

__all__ = ["require_roles", "select_roles"]

logger = logging.getLogger(__name__)

_NODE_KEYS = ("label", "conditions", "any", "all", "not", "use")


class _Selector:
    """One run of role selection over a study (state shared by the steps)."""

    def __init__(
        self,
        study: Study,
        rules: dict[str, Any],
        doses: Mapping[Role, float],
        agent: str | None,
        field_strength_t: float | None,
    ) -> None:
        self.study = study
        self.rules = rules
        self.definitions: dict[str, Any] = rules.get("definitions", {})
        self.preferences: dict[str, Any] = rules.get("preferences", {})
        self.contrast: dict[str, Any] = rules.get("contrast", {})
        self.doses = doses
        self.agent = agent
        self.field_strength_t = field_strength_t
        markers = self.preferences.get("normalized_markers", ["NORM"])
        self.features = {s.series_instance_uid: series_features(s, normalized_markers=markers) for s in study.series}
        self.decisions = {
            s.series_instance_uid: SeriesDecision(s.series_instance_uid, s.series_number, s.description, None)
            for s in study.series
        }
        self.failures: dict[str, list[str]] = {s.series_instance_uid: [] for s in study.series}
        self.roles: dict[Role, Series] = {}
        self.contrast_info: dict[Role, ContrastInfo] = {}
        self.warnings: list[str] = []
        self._mark_after_contrast()

    def _mark_after_contrast(self) -> None:
        times = [f["AcquisitionDateTime"] for f in self.features.values() if f["ContrastBolusAgent"]]
        times = [t for t in times if t is not None]
        if not times:
            return
        first = min(times)
        for f in self.features.values():
            f["AfterContrast"] = f["AcquisitionDateTime"] is not None and f["AcquisitionDateTime"] > first

    def note(self, series: Series, reason: str) -> None:
        self.decisions[series.series_instance_uid].reasons.append(reason)

    def run(self) -> Selection:
        eligible = self._exclude()
        selections = self.rules["selections"]
        candidates = {i: self._candidates(sel, eligible) for i, sel in enumerate(selections)}
        self._choose_variants(selections, candidates)
        used: set[str] = set()
        for i, selection in enumerate(selections):
            self._assign(selection, [c for c in candidates[i] if c.series.series_instance_uid not in used], used)
        for s in self.study.series:
            decision = self.decisions[s.series_instance_uid]
            decision.reasons.extend(self.failures[s.series_instance_uid])
            if not decision.reasons:
                decision.reasons.append("no rule matched")
        return Selection(
            study=self.study,
            roles=dict(self.roles),
            decisions=[self.decisions[s.series_instance_uid] for s in self.study.series],
            contrast=dict(self.contrast_info),
            contrast_series=[uid for uid, f in self.features.items() if f["ContrastBolusAgent"]],
            warnings=list(self.warnings),
        )

    def _exclude(self) -> list[Series]:
        eligible = []
        for series in self.study.series:
            f = self.features[series.series_instance_uid]
            for node in self.rules.get("exclusions", []):
                m = evaluate(node, f, self.definitions)
                if m.ok:
                    label = node.get("label", "excluded")
                    self.note(series, f"excluded: {m.reason}")
                    logger.info("%s excluded: %s", series.label, label)
                    break
            else:
                eligible.append(series)
        return eligible

    def _candidates(self, selection: Mapping[str, Any], eligible: list[Series]) -> list[Candidate]:
        node = {k: v for k, v in selection.items() if k in _NODE_KEYS}
        label = selection.get("label", selection["name"])
        found = []
        for series in eligible:
            f = self.features[series.series_instance_uid]
            m = evaluate(node, f, self.definitions)
            if m.ok:
                found.append(Candidate(series, f, m))
            else:
                self.failures[series.series_instance_uid].append(f"not {label}: {m.reason}")
        return found

    def _choose_variants(self, selections: list[Any], candidates: dict[int, list[Candidate]]) -> None:
        preferred = str(self.preferences.get("normalized_copies", "original")).lower() == "normalized"
        groups: dict[str, list[int]] = {}
        for i, selection in enumerate(selections):
            groups.setdefault(selection.get("consistency_group") or f"#{i}", []).append(i)
        everyone = [c for cands in candidates.values() for c in cands]
        for name, members in groups.items():
            available = [{c.features["Normalized"] for c in candidates[i]} for i in members if candidates[i]]
            if all(preferred in a for a in available):
                chosen: bool | None = preferred
            elif all((not preferred) in a for a in available):
                chosen = not preferred
                if len(members) > 1:
                    logger.info("Consistency group %s: preferred variant missing, using the other for all", name)
            else:
                chosen = None
                logger.warning("Consistency group %s: normalized and original series cannot be matched", name)
            for i in members:
                variants = {c.features["Normalized"] for c in candidates[i]}
                variant = chosen if chosen is not None else (preferred if preferred in variants else not preferred)
                kept = [c for c in candidates[i] if c.features["Normalized"] == variant]
                for c in candidates[i]:
                    if c.features["Normalized"] != variant:
                        self._note_variant(c, everyone, variant, selections[i], chosen != preferred)
                candidates[i] = kept

    def _note_variant(
        self, c: Candidate, everyone: list[Candidate], kept: bool, selection: Mapping[str, Any], switched: bool
    ) -> None:
        key = acquisition_key(c.features)
        twins = [
            o
            for o in everyone
            if o is not c and acquisition_key(o.features) == key and o.features["Normalized"] == kept
        ]
        what = "normalized" if c.features["Normalized"] else "unnormalized"
        copy_of = f" copy of {twins[0].series.label}" if twins else " series"
        policy = self.preferences.get("normalized_copies", "original")
        why = " (switched to keep pre- and post-contrast series consistent)" if switched else ""
        self.note(
            c.series,
            f"not {selection.get('label', selection['name'])}: {what}{copy_of}; rules keep "
            f"{'normalized' if kept else 'original (unnormalized)'} images (normalized_copies={policy!r}){why}",
        )

    def _related(self, selection: Mapping[str, Any], cands: list[Candidate]) -> list[Candidate]:
        kept = []
        for c in cands:
            problem = None
            for relation in ("after", "before", "same_study", "same_frame_of_reference"):
                if relation not in selection or Role(selection[relation]) not in self.roles:
                    continue
                ref_series = self.roles[Role(selection[relation])]
                ref = Candidate(ref_series, self.features[ref_series.series_instance_uid], Match(True, ""))
                if relation == "after" and time_key(c) <= time_key(ref):
                    problem = f"acquired before {selection[relation]} {ref_series.label}"
                elif relation == "before" and time_key(c) >= time_key(ref):
                    problem = f"acquired after {selection[relation]} {ref_series.label}"
                elif relation == "same_study" and c.series.study_instance_uid != ref_series.study_instance_uid:
                    problem = f"not in the study of {selection[relation]}"
                elif relation == "same_frame_of_reference" and (
                    c.features["FrameOfReferenceUID"] != ref.features["FrameOfReferenceUID"]
                ):
                    problem = f"FrameOfReferenceUID differs from {selection[relation]} {ref_series.label}"
                if problem:
                    break
            if problem:
                self.note(c.series, f"not {selection.get('label', selection['name'])}: {problem}")
            else:
                kept.append(c)
        return kept

    def _assign(self, selection: Mapping[str, Any], cands: list[Candidate], used: set[str]) -> None:
        cands = self._related(selection, cands)
        if not cands:
            return
        label = selection.get("label", selection["name"])
        ref_role = selection.get("match_protocol_of")
        ref_series = self.roles.get(Role(ref_role)) if ref_role else None
        reference = self.features[ref_series.series_instance_uid] if ref_series else None
        order = self.preferences.get(
            "order", ["protocol_match", "rule_order", "original", "3d", "finer_resolution", "more_slices"]
        )
        keyed = sorted(
            ((rank(c, order, reference), c) for c in cands),
            key=lambda kc: (kc[0], kc[1].series.series_number or 10**9, kc[1].series.series_instance_uid),
        )
        roles = [Role(r) for r in selection.get("roles", [selection["name"]])]
        if selection.get("split_by") == "dose" and len(roles) == 2:
            best = keyed[0][0][:1] if "protocol_match" in order[:1] else None
            pool = [c for k, c in keyed if best is None or k[:1] == best]
            for _, c in keyed:
                if c not in pool:
                    self.note(
                        c.series, f"not {label}: protocol differs from {ref_role} more than {pool[0].series.label}"
                    )
            self._split_by_dose(selection, roles, pool, used)
            return
        winner = keyed[0][1]
        ties = [c for k, c in keyed[1:] if k == keyed[0][0]]
        if ties:
            names = ", ".join(t.series.label for t in ties)
            logger.warning(
                "%d equally good candidates for %s: %s and %s; took %s (lowest SeriesNumber, then SeriesInstanceUID)",
                len(ties) + 1,
                roles[0].value,
                winner.series.label,
                names,
                winner.series.label,
            )
            self.note(
                winner.series,
                f"{roles[0].value}: chosen among equally good candidates ({names}) by lowest SeriesNumber",
            )
        for _, c in keyed[1:]:
            self.note(c.series, f"{label} candidate, not chosen: {winner.series.label} preferred")
        self._give(roles[0], winner, label, used)

    def _give(self, role: Role, c: Candidate, label: str, used: set[str], extra: str = "") -> None:
        self.roles[role] = c.series
        used.add(c.series.series_instance_uid)
        decision = self.decisions[c.series.series_instance_uid]
        decision.role = role
        decision.reasons.insert(0, f"{role.value}: {c.match.reason}{extra}")
        logger.info("%s -> %s", c.series.label, role.value)

    def _split_by_dose(
        self, selection: Mapping[str, Any], roles: list[Role], pool: list[Candidate], used: set[str]
    ) -> None:
        low_role, std_role = roles
        label = selection.get("label", selection["name"])
        threshold = float(self.contrast.get("standard_dose_threshold", 0.75))
        doses = {c.series.series_instance_uid: header_dose(c.features)[0] for c in pool}
        chosen: dict[Role, Candidate] = {}
        if len(pool) == 1:
            c = pool[0]
            dose = doses[c.series.series_instance_uid]
            if dose is None:
                chosen[Role(self.contrast.get("single_post_contrast_role", low_role.value))] = c
            else:
                chosen[low_role if dose < threshold else std_role] = c
        elif all(d is not None for d in doses.values()):
            by_dose = sorted(pool, key=lambda c: (doses[c.series.series_instance_uid], time_key(c)))
            lowest, highest = by_dose[0], by_dose[-1]
            if doses[lowest.series.series_instance_uid] < threshold:  # type: ignore[operator]
                chosen[low_role] = lowest
            if doses[highest.series.series_instance_uid] >= threshold:  # type: ignore[operator]
                chosen[std_role] = highest
        else:
            by_time = sorted(pool, key=time_key)
            chosen[low_role], chosen[std_role] = by_time[0], by_time[-1]
        for role, c in chosen.items():
            dose = doses[c.series.series_instance_uid]
            how = f"; dose {dose:.3g} x standard from the header" if dose is not None else "; acquisition order"
            self._give(role, c, label, used, how)
            self.contrast_info[role] = self._contrast_for(role, c)
        taken = {id(c) for c in chosen.values()}
        for c in pool:
            if id(c) not in taken:
                others = ", ".join(f"{r.value} {x.series.label}" for r, x in chosen.items())
                self.note(c.series, f"{label} candidate, not used: {others}")

    def _contrast_for(self, role: Role, c: Candidate) -> ContrastInfo:
        info, notes = contrast_info(
            c.features,
            role,
            requested_dose=self.doses.get(role),
            requested_agent=self.agent,
            requested_field_strength_t=self.field_strength_t,
            rules=self.contrast,
            series=c.series,
            warnings=self.warnings,
        )
        for line in notes:
            self.note(c.series, line)
        return info


def _why_not(reasons: list[str], label: str) -> str:
    """The reason that explains why a series did not get a role (whose selection has `label`)."""
    for reason in reasons:
        if reason.startswith(("excluded", f"not {label}", label)):
            return reason
    return reasons[0] if reasons else "no reason"


def select_roles(
    study: Study,
    rules: Mapping[str, Any] | str | Path | None = None,
    *,
    required: Sequence[Role] = (Role.T1_PRE,),
    doses: Mapping[Role, float] | None = None,
    agent: str | None = None,
    field_strength_t: float | None = None,
) -> Selection:
    """Assign roles to the series of a study, explaining every decision.

    Parameters
    ----------
    study:
        The loaded study.
    rules:
        Selection rules: None for the packaged default, a JSON / YAML path, or a parsed mapping.
    required:
        Roles that must be found.
    doses:
        Relative doses per post-contrast role from the request, used when the headers do not give one.
    agent, field_strength_t:
        Contrast agent and field strength from the request, used when the headers do not give them.

    Returns
    -------
    Selection
        Roles, one SeriesDecision per series (in study order) and ContrastInfo per post-contrast role.

    Raises
    ------
    NoMatchingSeriesError
        When a required role has no series; the message lists why each series was rejected.
    ValueError
        When the rules are malformed.
    """
    data = load_rules(rules)
    selection = _Selector(study, data, dict(doses or {}), agent, field_strength_t).run()
    require_roles(selection, required, data)
    return selection


def require_roles(selection: Selection, required: Sequence[Role], rules: Mapping[str, Any] | None = None) -> None:
    """Check that a selection has every role in ``required``.

    Parameters
    ----------
    selection:
        From :func:`select_roles`.
    required:
        Roles that must have a series (e.g. a model's ``required_roles``).
    rules:
        The parsed rules the selection was made with (for the label of each role in the message); None: the
        packaged rules.

    Raises
    ------
    NoMatchingSeriesError
        When a required role has no series; the message lists why each series was rejected.
    """
    data = load_rules(rules)
    study = selection.study
    for role in required:
        if role not in selection.roles:
            label = next(
                (s.get("label", s["name"]) for s in data["selections"] if role.value in s.get("roles", [s["name"]])),
                role.value,
            )
            summary = "; ".join(
                f"#{d.series_number} {d.description!r}: {_why_not(d.reasons, label)}" for d in selection.decisions
            )
            raise NoMatchingSeriesError(
                f"No series fits role {role.value} in study {study.study_instance_uid} "
                f"({len(study.series)} image series). {summary}",
                attribute="SeriesDescription/ImageType/ScanningSequence",
                expected=f"a series for role {role.value}",
                found=f"{len(study.series)} series, none fits",
            )
