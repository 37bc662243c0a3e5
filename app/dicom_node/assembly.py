"""From received instances to jobs: quiet receptions are read, routed, and become jobs of the one job engine.

Every step is safe to repeat after a crash. A reception goes ``receiving -> routing`` (compare-and-set), is read with
the pipeline's own ``load_study`` and ``select_series`` stages (and ``choose_model`` for eligibility), and then, in
one transaction, becomes ``routed`` with a new job (state ``assembling``, source ``dicom``), or ``not_routed`` with
the reason and the selection log. The job's input is the reception's ``mr/`` folder, renamed into the job folder;
then the job is queued. A node restarted after a crash puts a reception it was routing back to ``receiving`` and
finishes the assembly of a job whose folder was not moved yet.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread

from app.dicom_node.config import CALLER, DestinationKind, LatePolicy
from app.dicom_node.reception import Receiver, count_files
from app.dicom_node.records import ExportRow, ExportState, NodeStore, Reception, ReceptionState
from app.dicom_node.routing import Route, RuleBook, StudyFacts, decide
from app.service.settings import ServiceSettings
from app.service.spool import fsync_dir, move_durably, remove_tree
from app.service.store import FINISHED, JobRow, JobState, JobStore, new_job_id
from app.service.supervisor import job_folder

__all__ = ["Assembler", "result_files"]

logger = logging.getLogger(__name__)

_FACT_TAGS = ["Modality", "BodyPartExamined", "StudyDescription", "SeriesDescription"]
_DEAD_AFTER_S = 120.0


def result_files(result_dir: str | Path | None) -> list[Path]:
    """The DICOM files a job wrote (every ``*.dcm`` under its result folder), in a stable order."""
    if not result_dir or not Path(result_dir).is_dir():
        return []
    return sorted(p for p in Path(result_dir).rglob("*.dcm") if p.is_file())


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(source, target)


def _selection_summary(selection: list[dict[str, Any]]) -> str:
    parts = []
    for entry in selection:
        role = entry.get("role") or "none"
        reasons = entry.get("reasons") or []
        why = f" ({reasons[0]})" if reasons and not entry.get("role") else ""
        parts.append(f"#{entry.get('series_number')} {entry.get('description')!r} -> {role}{why}")
    return "; ".join(parts) or "no image series"


class Assembler:
    """Runs in the node's assembler thread: flush, close quiet receptions, route, queue jobs, create exports."""

    def __init__(
        self,
        settings: ServiceSettings,
        jobs: JobStore,
        store: NodeStore,
        queue: Any,
        receiver: Receiver,
        rules: RuleBook,
    ) -> None:
        self.settings, self.jobs, self.store, self.queue = settings, jobs, store, queue
        self.receiver, self.rules = receiver, rules
        self._pipeline: Any = None

    # --- start-up ------------------------------------------------------------------------------------------------

    def _dead(self, node: str, updated_at: float, now: float, *, starting: bool) -> bool:
        if node == self.receiver.node:
            return starting  # the same host:pid before a restart (a container's pid 1)
        host, _, pid = node.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            return not Path(f"/proc/{pid}").exists()
        return now - updated_at > _DEAD_AFTER_S

    def recover(self, *, starting: bool = True) -> None:
        """Adopt the receptions of a dead node (this one before a crash) and finish interrupted assemblies."""
        now = time.time()
        for row in self.store.receptions(Reception.state == ReceptionState.ROUTING):
            if self._dead(row.node, row.updated_at, now, starting=starting) and self.store.update_reception(
                row.id, Reception.state == ReceptionState.ROUTING, state=ReceptionState.RECEIVING
            ):
                logger.warning(
                    "reception %s: routing was interrupted (node %s stopped); routing again", row.id, row.node
                )
        held = {r.id for r in self.receiver.open_receptions()}
        for row in self.store.receptions(Reception.state == ReceptionState.RECEIVING):
            if row.id not in held and self._dead(row.node, row.updated_at, now, starting=starting):
                self.receiver.adopt(row)
        self.finish_assembling()

    # --- the tick ------------------------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.receiver.flush(now)
        for reception in self.receiver.take_quiet(now):
            self.close(reception.id, reception.values(), reception.study_uid, reception.folder)
        self.finish_assembling()
        self.make_exports()
        self.purge(now)

    def close(self, reception_id: str, values: dict[str, Any], study: str, folder: Path) -> None:
        """A quiet reception: route it (exactly once, whoever else tries)."""
        if not self.store.update_reception(
            reception_id,
            Reception.state == ReceptionState.RECEIVING,
            state=ReceptionState.ROUTING,
            node=self.receiver.node,
            **values,
        ):
            logger.warning("reception %s: no longer receiving here; left to its new holder", reception_id)
            return
        self.receiver.remember(study, self._uids(folder))  # sent again while it is routed: not new
        try:
            self.route(reception_id)
        except Exception:
            logger.exception("reception %s: internal error while routing", reception_id)
            self._close(
                reception_id,
                ReceptionState.NOT_ROUTED,
                reason="error",
                message="Internal error while routing the study; see the service log.",
            )
        finally:
            self.receiver.forget(study)

    def _close(self, reception_id: str, state: ReceptionState, **values: Any) -> bool:
        return self.store.update_reception(
            reception_id, Reception.state == ReceptionState.ROUTING, state=state, closed_at=time.time(), **values
        )

    # --- routing -------------------------------------------------------------------------------------------------

    def route(self, reception_id: str) -> None:
        row = self.store.reception(reception_id)
        if row is None:
            return
        folder = Path(row.folder)
        mr = folder / "mr"
        earlier = self.store.closed_receptions(row.study_instance_uid)
        routed = [r for r in earlier if r.state == ReceptionState.ROUTED]
        previous = routed[-1] if routed else None  # the job that late instances would make the study run again
        label = f"reception {row.id}: study {row.study_instance_uid} from {row.calling_ae}"
        if previous is not None and self.settings.dicom_late_policy == LatePolicy.IGNORE:
            n_mr, n_other, _ = count_files(folder)
            message = (
                f"{n_mr + n_other} instance(s) arrived after the study became job {previous.job_id}; "
                "dicom_late_policy is ignore: kept, nothing runs."
            )
            self._close(row.id, ReceptionState.IGNORED, reason="late_ignored", message=message,
                        sop_instance_uids=self._uids(folder))  # fmt: skip
            logger.warning("%s: %s", label, message)
            return
        carried = sum(self._carry(earlier_reception, mr) for earlier_reception in earlier)
        uids = self._uids(folder)
        facts = self._facts(row, folder)
        selection, study_error, roles, given = self._select(mr, folder)
        decision = decide(self.rules.current(), StudyFacts(**(facts | {"roles": frozenset(roles)})))
        common: dict[str, Any] = {"selection": selection, "sop_instance_uids": uids, "rule": decision.rule}
        if previous is not None:
            common["previous_job_id"] = previous.job_id
        if not decision.process:
            reason = "skipped_by_rule" if decision.rule else "no_rule"
            message = (
                f"Rule {decision.rule!r} says skip." if decision.rule else f"No routing rule matched: {decision.why}."
            )
            self._not_routed(row, label, reason, message, common)
            return
        if study_error is not None:
            self._not_routed(row, label, "not_eligible", study_error, common)
            return
        model, error = self._choose_model(mr, decision, given)
        if error is not None:
            self._not_routed(row, label, "not_eligible", error, common)
            return
        destinations = self._destinations(decision, row.calling_ae)
        self._make_job(row, label, decision, model, destinations, common, carried, previous)

    def _not_routed(self, row: Reception, label: str, reason: str, message: str, common: dict[str, Any]) -> None:
        self._close(row.id, ReceptionState.NOT_ROUTED, reason=reason, message=message, **common)
        logger.warning(
            "%s not routed (%s): %s Selection: %s", label, reason, message, _selection_summary(common["selection"])
        )

    def _carry(self, previous: Reception, mr: Path) -> int:
        """Link the MR instances of an earlier reception of the study into this one (the study is read whole; an
        instance received again in this reception keeps its new copy)."""
        source: Path | None = None
        if previous.state == ReceptionState.ROUTED and previous.job_id:
            job = self.jobs.get(previous.job_id)
            if job is not None and job.purged_at is None:
                source = Path(job.input_dir)
        else:
            source = Path(previous.folder) / "mr"
        if source is None or not source.is_dir():
            return 0
        mr.mkdir(parents=True, exist_ok=True)
        carried = 0
        for path in source.iterdir():
            target = mr / path.name
            if path.is_file() and not path.name.endswith(".tmp") and not target.exists():
                _link_or_copy(path, target)
                carried += 1
        fsync_dir(mr)
        return carried

    @staticmethod
    def _uids(folder: Path) -> list[str]:
        return sorted(
            p.stem for sub in ("mr", "other") if (folder / sub).is_dir() for p in (folder / sub).glob("*.dcm")
        )

    @staticmethod
    def _facts(row: Reception, folder: Path) -> dict[str, Any]:
        modalities, parts, studies, series = set(), set(), set(), []
        seen: set[tuple[str, str]] = set()
        for sub in ("mr", "other"):
            if not (folder / sub).is_dir():
                continue
            for path in sorted((folder / sub).glob("*.dcm")):
                try:
                    ds = dcmread(path, stop_before_pixels=True, specific_tags=_FACT_TAGS)
                except Exception:  # a file pydicom cannot parse says nothing to the rules; the loader reports it
                    continue
                modality = str(ds.get("Modality") or "").strip().upper()
                part = str(ds.get("BodyPartExamined") or "").strip().upper()
                description = str(ds.get("SeriesDescription") or "").strip()
                if (modality, description) not in seen:
                    seen.add((modality, description))
                    series.append(description)
                modalities.add(modality)
                if part:
                    parts.add(part)
                study = str(ds.get("StudyDescription") or "").strip()
                if study:
                    studies.add(study)
        return {
            "calling_ae": row.calling_ae,
            "called_ae": row.called_ae,
            "modalities": frozenset(m for m in modalities if m),
            "body_parts": frozenset(parts),
            "study_descriptions": frozenset(studies),
            "series_descriptions": tuple(series),
        }

    def pipeline(self) -> Any:
        if self._pipeline is None:
            from app.config import load_settings
            from app.pipeline import Pipeline

            self._pipeline = Pipeline(load_settings())
        return self._pipeline

    def _select(self, mr: Path, folder: Path) -> tuple[list[dict[str, Any]], str | None, set[str], Any]:
        """The selection log, why the study cannot be read (None when it can), the roles found, the stage results."""
        from app.job import PipelineRequest

        if not mr.is_dir() or not any(mr.glob("*.dcm")):
            _, n_other, _ = count_files(folder)
            why = f"No MR images in the study ({n_other} instance(s) of other storage classes, kept, not routed)."
            return [], why, set(), None
        pipeline = self.pipeline()
        request = PipelineRequest(study_dir=mr, job_id=f"route-{folder.name}", last_stage="select_series")
        job = pipeline.start(request)
        for stage in pipeline.stages(request):
            pipeline.run_stage(stage, job)
        selection = job.results.selection
        log = [d.to_dict() for d in selection.decisions] if selection is not None else []
        roles = {role.value for role in selection.roles} if selection is not None else set()
        error = str(job.error) if job.error is not None else None
        return log, error, roles, job.results

    def _choose_model(self, mr: Path, decision: Route, given: Any) -> tuple[str | None, str | None]:
        """The model the study will run and why it is not eligible (None when it is)."""
        from app.job import PipelineRequest, StageResults

        pipeline = self.pipeline()
        request = PipelineRequest(
            study_dir=mr, job_id=f"route-{mr.parent.name}", model=decision.model,
            first_stage="choose_model", last_stage="choose_model",
        )  # fmt: skip
        job = pipeline.start(
            request, StageResults(study=given.study, selection=given.selection, contrast=given.contrast)
        )
        for stage in pipeline.stages(request):
            pipeline.run_stage(stage, job)
        if job.error is not None:
            return None, str(job.error)
        choice = job.results.choice
        return (choice.manifest.name if choice is not None and choice.manifest is not None else None), None

    def _destinations(self, decision: Route, calling_ae: str) -> list[str]:
        names: list[str] = []
        for name in decision.destinations:
            if name == CALLER:
                found = [
                    d.name
                    for d in self.settings.dicom_destinations
                    if d.kind == DestinationKind.DICOM and d.ae_title == calling_ae
                ]
                if not found:
                    logger.info("routing: calling AE %s is not a configured destination; @caller skipped", calling_ae)
                names += found
            else:
                names.append(name)
        return list(dict.fromkeys(names))

    def _make_job(
        self,
        row: Reception,
        label: str,
        decision: Route,
        model: str | None,
        destinations: list[str],
        common: dict[str, Any],
        carried: int,
        previous: Reception | None,
    ) -> None:
        mr = Path(row.folder) / "mr"
        files = [p for p in mr.iterdir() if p.is_file()]
        job_id = new_job_id()
        folder = job_folder(self.settings, job_id)
        now = time.time()
        job = JobRow(
            id=job_id,
            state=JobState.ASSEMBLING,
            source="dicom",
            study_key=f"dicom:{row.id}",
            study_instance_uid=row.study_instance_uid,
            options={"model": decision.model} if decision.model else {},
            n_files=len(files),
            bytes_received=sum(p.stat().st_size for p in files),
            input_dir=str(folder / "input"),
            max_attempts=self.settings.max_attempts,
            created_at=now,
            updated_at=now,
        )
        if not self.store.route(row.id, job, model=model, destinations=destinations, **common):
            logger.warning("%s: routed by another node meanwhile", label)
            return
        more = f" ({carried} carried from the earlier reception)" if carried else ""
        logger.info(
            "%s routed by rule %s: job %s, %d MR instance(s)%s, model %s, destinations %s",
            label, decision.rule, job_id, len(files), more, model or "automatic", destinations or "none",
        )  # fmt: skip
        self.finish_assembling()
        if previous is not None and previous.state == ReceptionState.ROUTED and previous.job_id:
            earlier = self.jobs.get(previous.job_id)
            if earlier is not None and earlier.state not in FINISHED:
                self.jobs.request_cancel(earlier.id)
                logger.warning("job %s: cancelled; late instances made job %s reprocess the study", earlier.id, job_id)

    def finish_assembling(self) -> None:
        """Move a routed reception's MR folder into its job's input, then queue the job (safe to repeat)."""
        for job in self.jobs.rows(JobRow.state == JobState.ASSEMBLING, JobRow.source == "dicom"):
            reception_id = job.study_key.removeprefix("dicom:")
            reception = self.store.reception(reception_id)
            input_dir = Path(job.input_dir)
            if reception is not None and (Path(reception.folder) / "mr").is_dir() and not input_dir.exists():
                move_durably(Path(reception.folder) / "mr", input_dir)
            input_dir.mkdir(parents=True, exist_ok=True)
            if self.jobs.mark_queued(job.id):
                self.queue.enqueue(job.id)
                logger.info("job %s: queued (DICOM study %s)", job.id, job.study_instance_uid)

    # --- after the job -------------------------------------------------------------------------------------------

    def make_exports(self) -> None:
        """Create the exports of routed studies whose job succeeded (once); note those whose job did not."""
        configured = {d.name: d for d in self.settings.dicom_destinations}
        waiting = (Reception.state == ReceptionState.ROUTED, Reception.exports_created.is_(False))
        for row in self.store.receptions(*waiting):
            job = self.jobs.get(row.job_id or "")
            if job is None or job.state not in FINISHED:
                continue
            if job.state != JobState.SUCCEEDED:
                if self.store.create_exports(row.id, []):
                    logger.info("job %s: %s; nothing to export", job.id, job.state)
                continue
            files = result_files(job.result_dir)
            now = time.time()
            exports = []
            for name in row.destinations or []:
                destination = configured.get(name)
                if destination is None:
                    logger.error("job %s: destination %s is no longer configured; not exported there", job.id, name)
                    continue
                exports.append(
                    ExportRow(
                        id=new_job_id(),
                        job_id=job.id,
                        reception_id=row.id,
                        study_instance_uid=row.study_instance_uid,
                        destination=name,
                        kind=destination.kind.value,
                        state=ExportState.PENDING,
                        attempt=0,
                        max_attempts=self.settings.export_max_attempts,
                        next_attempt_at=now,
                        n_instances=len(files),
                        confirmed=[],
                        created_at=now,
                        updated_at=now,
                    )
                )
            if self.store.create_exports(row.id, exports):
                if exports:
                    logger.info(
                        "job %s: %d instance(s) to export to %s",
                        job.id,
                        len(files),
                        ", ".join(f"{e.destination} (export {e.id})" for e in exports),
                    )
                else:
                    logger.info("job %s: no destination; results are available through the API", job.id)

    def purge(self, now: float) -> None:
        """Files of closed receptions go after retention_hours (the rows stay)."""
        cutoff = now - self.settings.retention_hours * 3600
        closed = (ReceptionState.ROUTED, ReceptionState.NOT_ROUTED, ReceptionState.IGNORED)
        for row in self.store.receptions(
            Reception.state.in_(closed), Reception.purged_at.is_(None), Reception.closed_at < cutoff
        ):
            remove_tree(row.folder)
            self.store.update_reception(row.id, Reception.purged_at.is_(None), purged_at=now)
            logger.info("reception %s: files purged", row.id)
