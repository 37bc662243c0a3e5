"""Which model runs on a study: the one named in the settings, else the first installed one its roles fit."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from operators.errors import NoMatchingSeriesError
from operators.model_manifest import MANIFEST_FILE, ModelManifest, ModelManifestError, load_manifest
from operators.roles import Role
from operators.study import Selection, Series
from operators.writers.report import ModelCandidate, ModelChoiceInfo, SeriesSummary

__all__ = ["MODEL_RULES", "ModelChoice", "ModelRule", "choose_by_roles", "choose_named", "named_choice"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRule:
    """One row of the choice table: a study holding every role in ``roles`` runs the first installed ``models``.

    Parameters
    ----------
    name:
        Short name of the row, used in the log and report.json (``model_choice.candidates[].rule``).
    roles:
        Roles the study must have. A model's own ``required_roles`` (from its manifest) are required too.
    models:
        Model folder names, most preferred first.
    without_contrast:
        The row is only for studies without any contrast: a study with a post-contrast series that is not a
        usable low-dose T1 (broken, mislabelled, the standard dose only) is refused rather than sent to it.
    """

    name: str
    roles: tuple[Role, ...]
    models: tuple[str, ...]
    without_contrast: bool = False


#: The automatic choice, row by row: the low-dose models when a low-dose T1 exists (the trained differential
#: model, else the linear dose-scaling baseline), else the zero-dose model when T1 pre, T2 and FLAIR exist. A row
#: whose models are not installed passes to the next row; a study that fits no installed model is not eligible.
#: A model named in the settings (``--model-name``, ``gadsynth run --model``, ``GADSYNTH_MODEL``) skips this table.
MODEL_RULES: tuple[ModelRule, ...] = (
    ModelRule("low-dose", (Role.T1_PRE, Role.T1_LOW_DOSE), ("ce-lowdose-v1", "ce-baseline-linear")),
    ModelRule("zero-dose", (Role.T1_PRE, Role.T2, Role.FLAIR), ("ce-zerodose-v1",), without_contrast=True),
)

NAMED_REASON = "named in the settings (--model-name, gadsynth run --model or GADSYNTH_MODEL)"


@dataclass
class ModelChoice:
    """The outcome of the choice: the model to run (None when the study is not eligible) and why.

    Attributes
    ----------
    manifest:
        The chosen model (sha256 verified), or None.
    info:
        The report.json entry (``model_choice``).
    selection:
        The role selection the choice was made from (None when the model was named).
    error:
        Why the study is not eligible, when ``manifest`` is None.
    """

    manifest: ModelManifest | None
    info: ModelChoiceInfo
    selection: Selection | None = None
    error: NoMatchingSeriesError | None = None

    def require(self) -> ModelManifest:
        """The chosen model.

        Raises
        ------
        operators.errors.NoMatchingSeriesError
            When the study fits no installed model (the reason names the roles found and what each model lacks).
        """
        if self.manifest is None:
            raise self.error or NoMatchingSeriesError(self.info.reason)
        return self.manifest


def _summary(series: Series) -> SeriesSummary:
    return SeriesSummary(
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        description=series.description,
        sop_class_uid=series.instances[0].sop_class_uid if series.instances else None,
        n_slices=len(series.instances),
    )


def _roles_text(roles: list[Role] | tuple[Role, ...]) -> str:
    return ", ".join(r.value for r in roles)


def _found_text(selection: Selection) -> str:
    if not selection.roles:
        return "none"
    return "; ".join(f"{role.value} {series.label}" for role, series in selection.roles.items())


def _installed(models_dir: Path, name: str) -> bool:
    return (models_dir / name / MANIFEST_FILE).is_file()


def _check_some_installed(models_dir: Path) -> None:
    names = [name for rule in MODEL_RULES for name in rule.models]
    if not any(_installed(models_dir, name) for name in names):
        found = sorted(p.parent.name for p in models_dir.glob(f"*/{MANIFEST_FILE}")) if models_dir.is_dir() else []
        raise ModelManifestError(
            f"No model for the automatic choice in {models_dir}: expected one of {names}. Available: "
            f"{found or 'none'}. Install one, or name the model to run (--model-name / GADSYNTH_MODEL)."
        )


def _why_passed(candidate: ModelCandidate) -> str:
    if candidate.missing_roles:
        return f"{candidate.name} needs {', '.join(candidate.missing_roles)}"
    return f"{candidate.name} is not installed"


def _not_eligible(selection: Selection, models_dir: Path, candidates: list[ModelCandidate]) -> NoMatchingSeriesError:
    """Why no model fits, the most useful fact first: the role the first candidate lacks and the series that came
    closest to it (the first series without a role, with the reason it was passed over)."""
    needs = [
        f"{c.name} ({c.rule}{'' if c.installed else ', not installed'}) needs {', '.join(c.missing_roles)}"
        if c.missing_roles
        else f"{c.name} ({c.rule}) fits but is not installed in {models_dir}"
        for c in candidates
    ]
    unassigned = [d for d in selection.decisions if d.role is None]
    others = "; ".join(f"#{d.series_number} {d.description!r}: {(d.reasons or ['-'])[0]}" for d in unassigned)
    wanted = " or ".join(" + ".join(r.value for r in rule.roles) for rule in MODEL_RULES)
    missing = next((c.missing_roles[0] for c in candidates if c.missing_roles), None)
    lead = f"no {missing} series" if missing else "no installed model fits the roles it has"
    closest = unassigned[0] if unassigned else None
    if closest is not None:
        lead += (
            f"; series #{closest.series_number} {closest.description!r} ({closest.series_instance_uid}) was not "
            f"used: {(closest.reasons or ['no rule matched'])[0]}"
        )
    return NoMatchingSeriesError(
        f"Study {selection.study.study_instance_uid} is not eligible: {lead}. "
        f"Roles found: {_found_text(selection)}. Missing per candidate model: {'; '.join(needs)}."
        + (f" Series without a role: {others}." if others else ""),
        series_instance_uid=closest.series_instance_uid if closest is not None else None,
        attribute="SeriesDescription/ImageType/ScanningSequence",
        expected=wanted,
        found=f"roles {_roles_text(list(selection.roles)) or 'none'}",
    )


def _contrast_without_low_dose(selection: Selection, rule: ModelRule, model: str) -> NoMatchingSeriesError:
    """The study had contrast but no usable low-dose T1: never quietly fall back to a model made for no contrast."""
    decisions = {d.series_instance_uid: d for d in selection.decisions}
    lines = []
    for uid in selection.contrast_series:
        d = decisions[uid]
        what = f"role {d.role.value}" if d.role else "; ".join(d.reasons[:2]) or "no role"
        lines.append(f"#{d.series_number} {d.description!r} ({uid}): {what}")
    unused = [uid for uid in selection.contrast_series if decisions[uid].role is None]
    return NoMatchingSeriesError(
        f"Study {selection.study.study_instance_uid} had contrast but has no usable low-dose T1, and {model} "
        f"({rule.name}) is made for studies without contrast, so it is not run. Post-contrast series: "
        f"{'; '.join(lines)}. Send the complete low-dose T1 (with its dose in the headers or the request), or "
        "name the model to run.",
        series_instance_uid=(unused or selection.contrast_series)[0],
        attribute="t1_low_dose",
        expected="a usable low-dose T1, or a study without contrast for the zero-dose model",
        found=f"{len(selection.contrast_series)} post-contrast series, none usable as the low-dose T1",
    )


def choose_by_roles(selection: Selection, models_dir: Path) -> ModelChoice:
    """Pick the model by the roles a study has, following :data:`MODEL_RULES` (a stage after series selection).

    Candidates are examined in table order until one is installed and the study has every role it needs (the
    row's roles and the manifest's ``required_roles``); the chosen model's sha256 is verified.

    Returns
    -------
    ModelChoice
        With ``manifest`` None (and ``error`` set) when the study fits no installed model.

    Raises
    ------
    operators.model_manifest.ModelManifestError
        When no model of the table is installed, a candidate's manifest is invalid, or the chosen model's file is
        missing or its sha256 differs.
    """
    _check_some_installed(models_dir)
    found = set(selection.roles)
    candidates: list[ModelCandidate] = []
    chosen: ModelManifest | None = None
    chosen_rule: ModelRule | None = None
    for rule in MODEL_RULES:
        for name in rule.models:
            if chosen is not None:
                break
            needed = list(rule.roles)
            installed = _installed(models_dir, name)
            manifest = load_manifest(models_dir, name, verify=False) if installed else None
            if manifest is not None:
                needed += [r for r in manifest.required_roles if r not in needed]
            missing = [r for r in needed if r not in found]
            take = manifest is not None and not missing
            candidates.append(
                ModelCandidate(
                    name=name,
                    rule=rule.name,
                    installed=installed,
                    required_roles=[r.value for r in needed],
                    missing_roles=[r.value for r in missing],
                    chosen=take,
                )
            )
            if take and manifest is not None:
                manifest.verify()
                chosen, chosen_rule = manifest, rule
    roles_found = {role.value: _summary(series) for role, series in selection.roles.items()}
    if chosen is None or chosen_rule is None:
        error = _not_eligible(selection, models_dir, candidates)
        info = ModelChoiceInfo(reason=str(error), roles_found=roles_found, candidates=candidates)
        logger.info(
            "study %s: no installed model fits roles [%s]",
            selection.study.study_instance_uid,
            _roles_text(list(selection.roles)),
        )
        return ModelChoice(manifest=None, info=info, selection=selection, error=error)
    if chosen_rule.without_contrast and selection.contrast_series:
        error = _contrast_without_low_dose(selection, chosen_rule, chosen.name)
        info = ModelChoiceInfo(reason=str(error), roles_found=roles_found, candidates=candidates)
        logger.warning("study %s: %s", selection.study.study_instance_uid, error)
        return ModelChoice(manifest=None, info=info, selection=selection, error=error)
    passed = [_why_passed(c) for c in candidates if not c.chosen]
    reason = f"{chosen_rule.name} study: it has {_roles_text(chosen_rule.roles)}" + (
        f" (passed over: {'; '.join(passed)})" if passed else ""
    )
    info = ModelChoiceInfo(chosen=chosen.name, reason=reason, roles_found=roles_found, candidates=candidates)
    logger.info(
        "study %s: model %s chosen (%s); roles found: %s",
        selection.study.study_instance_uid,
        chosen.name,
        reason,
        _found_text(selection),
    )
    return ModelChoice(manifest=chosen, info=info, selection=selection)


def named_choice(manifest: ModelManifest) -> ModelChoice:
    """The choice of a model given by name (or as a manifest): no table lookup."""
    logger.info("model %s %s: %s", manifest.name, manifest.version, NAMED_REASON)
    return ModelChoice(manifest=manifest, info=ModelChoiceInfo(chosen=manifest.name, named=True, reason=NAMED_REASON))


def choose_named(models_dir: Path, name: str) -> ModelChoice:
    """Load the model named in the settings (the pipeline then checks that the study has the roles it needs).

    Raises
    ------
    operators.model_manifest.ModelManifestError
        When the model is missing (the message lists the models found) or its manifest / sha256 is wrong.
    """
    return named_choice(load_manifest(models_dir, name))
