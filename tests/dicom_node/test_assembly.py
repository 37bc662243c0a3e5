"""From received instances to jobs, in the test process on a real job database: routing, the late-instance
policies, recovery after a crash at each step, own output and duplicates, and export creation."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from app.dicom_node.reception import count_files
from app.dicom_node.records import ExportRow, Reception, ReceptionState
from app.service.store import JobRow, JobState
from tests.dicom_node.engine import make_engine
from tests.dicom_node.node import dicom_files, study_uid
from training.phantom import PhantomStudy


def _one_reception(engine_store: object, study: str) -> Reception:
    rows = engine_store.receptions(Reception.study_instance_uid == study)  # type: ignore[attr-defined]
    assert len(rows) == 1, rows
    return rows[0]


def _late_instance(source: Path, folder: Path) -> Path:
    """A new instance of the study (a new series of one image), as a scanner might add after the fact."""
    dataset = dcmread(source)
    dataset.SeriesInstanceUID, dataset.SOPInstanceUID = generate_uid(), generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.SeriesNumber, dataset.SeriesDescription = 77, "late localizer"
    path = folder / "late.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


class TestRouting:
    def test_an_eligible_study_becomes_one_queued_job(self, tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
        engine = make_engine(tmp=tmp_path)
        files = dicom_files(phantoms[0].dicom_dir)
        assert len(set(engine.receive(files))) == 1  # one reception
        engine.assembler.tick()
        row = _one_reception(engine.store, study_uid(phantoms[0].dicom_dir))
        assert row.state == ReceptionState.ROUTED and row.rule == "default" and row.model == "ce-lowdose-v1"
        job = engine.jobs.get(row.job_id or "")
        assert job is not None and job.state == JobState.QUEUED and job.source == "dicom"
        assert sorted(p.name for p in Path(job.input_dir).iterdir()) == sorted(
            f"{u}.dcm" for u in row.sop_instance_uids
        )
        assert len(row.sop_instance_uids) == len(files) == job.n_files
        assert engine.queue.depth() == 1
        engine.assembler.tick()  # nothing more happens
        assert len(engine.jobs.rows(JobRow.source == "dicom")) == 1

    def test_the_same_instances_again_start_nothing(self, tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
        engine = make_engine(tmp=tmp_path)
        files = dicom_files(phantoms[0].dicom_dir)
        engine.receive(files)
        engine.assembler.tick()
        assert set(engine.receive(files)) == {"skipped: duplicate"}
        engine.assembler.tick()
        assert len(engine.store.receptions()) == 1

    def test_own_output_is_skipped_on_receipt(self, tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
        engine = make_engine(tmp=tmp_path)
        ours = dcmread(dicom_files(phantoms[1].dicom_dir)[0])
        ours.ImageType = ["DERIVED", "SECONDARY", "OTHER", "SYNTHETIC"]
        ours.SOPInstanceUID = ours.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ours.save_as(tmp_path / "ours.dcm", enforce_file_format=True)
        assert engine.receive([tmp_path / "ours.dcm"]) == ["own: ImageType holds SYNTHETIC"]
        assert engine.store.receptions() == []  # our output never opens a reception


class TestLateInstances:
    def test_reprocess_reads_the_whole_study_again(self, tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
        engine = make_engine(tmp=tmp_path)
        files = dicom_files(phantoms[0].dicom_dir)
        engine.receive(files)
        engine.assembler.tick()
        first = engine.store.receptions()[0]
        engine.receive([_late_instance(files[0], tmp_path)])
        engine.assembler.tick()
        second = next(r for r in engine.store.receptions() if r.id != first.id)
        assert second.state == ReceptionState.ROUTED and second.previous_job_id == first.job_id
        job = engine.jobs.get(second.job_id or "")
        assert job is not None and job.n_files == len(files) + 1
        earlier = engine.jobs.get(first.job_id or "")
        assert earlier is not None and earlier.state == JobState.CANCELLED  # it had not run: the new job replaces it

    def test_ignore_keeps_them_and_starts_nothing(self, tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
        engine = make_engine(tmp=tmp_path, dicom_late_policy="ignore")
        files = dicom_files(phantoms[0].dicom_dir)
        engine.receive(files)
        engine.assembler.tick()
        engine.receive([_late_instance(files[0], tmp_path)])
        engine.assembler.tick()
        late = next(r for r in engine.store.receptions() if r.state != ReceptionState.ROUTED)
        assert late.state == ReceptionState.IGNORED and late.reason == "late_ignored"
        assert "dicom_late_policy is ignore" in (late.message or "")
        assert count_files(Path(late.folder))[0] == 1  # kept
        (tmp_path / "again").mkdir()
        engine.receive([_late_instance(files[1], tmp_path / "again")])  # later still: ignored too, never a job
        engine.assembler.tick()
        states = sorted(r.state for r in engine.store.receptions())
        assert states == [ReceptionState.IGNORED, ReceptionState.IGNORED, ReceptionState.ROUTED]
        assert len(engine.jobs.rows(JobRow.source == "dicom")) == 1

    def test_a_study_completed_later_is_routed_whole(self, tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
        """First only the T2 (not eligible), later the rest: the second reception carries the first one's files."""
        engine = make_engine(tmp=tmp_path)
        files = dicom_files(phantoms[1].dicom_dir)
        t2 = [p for p in files if "t2-tse" in p.parent.name]
        engine.receive(t2)
        engine.assembler.tick()
        first = engine.store.receptions()[0]
        assert first.state == ReceptionState.NOT_ROUTED and first.reason == "not_eligible"
        engine.receive([p for p in files if p not in t2])
        engine.assembler.tick()
        second = next(r for r in engine.store.receptions() if r.id != first.id)
        job = engine.jobs.get(second.job_id or "")
        assert job is not None and job.n_files == len(files)


class TestCrashes:
    def test_a_restarted_node_adopts_an_open_reception(self, tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
        engine = make_engine(tmp=tmp_path)
        files = dicom_files(phantoms[0].dicom_dir)
        engine.receive(files[:50])
        reception = engine.store.receptions()[0]
        (Path(reception.folder) / "mr" / ".half-written.dcm.1234.tmp").write_bytes(b"partial")  # killed mid-write
        # kill -9 here: no flush, no tick. The new process finds the row and the files.
        again = engine.restarted()
        again.assembler.recover(starting=True)
        row = again.store.reception(reception.id)
        assert row is not None and row.state == ReceptionState.RECEIVING and row.n_instances == 50
        assert not list((Path(reception.folder) / "mr").glob("*.tmp"))
        again.receive(files[50:])
        again.assembler.tick()
        routed = _one_reception(again.store, study_uid(phantoms[0].dicom_dir))
        assert routed.id == reception.id and routed.state == ReceptionState.ROUTED
        assert len(routed.sop_instance_uids) == len(files)

    def test_interrupted_routing_is_done_again(self, tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
        engine = make_engine(tmp=tmp_path)
        engine.receive(dicom_files(phantoms[0].dicom_dir))
        reception = engine.store.receptions()[0]
        assert engine.store.update_reception(reception.id, state=ReceptionState.ROUTING)  # killed while routing
        again = engine.restarted()
        again.assembler.recover(starting=True)
        again.assembler.tick()
        row = again.store.reception(reception.id)
        assert row is not None and row.state == ReceptionState.ROUTED
        assert len(again.jobs.rows(JobRow.source == "dicom")) == 1

    def test_a_job_made_but_not_moved_is_finished(self, tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
        engine = make_engine(tmp=tmp_path)
        engine.receive(dicom_files(phantoms[0].dicom_dir))
        reception = engine.store.receptions()[0]
        engine.store.update_reception(reception.id, state=ReceptionState.ROUTING)
        now = time.time()
        job = JobRow(
            id="0123456789abcdef", state=JobState.ASSEMBLING, source="dicom", study_key=f"dicom:{reception.id}",
            study_instance_uid=reception.study_instance_uid, options={}, input_dir=str(tmp_path / "job" / "input"),
            created_at=now, updated_at=now,
        )  # fmt: skip
        assert engine.store.route(reception.id, job)  # the transaction committed; then kill -9 before the move
        again = engine.restarted()
        again.assembler.recover(starting=True)
        queued = again.jobs.get(job.id)
        assert queued is not None and queued.state == JobState.QUEUED
        assert len(list(Path(job.input_dir).iterdir())) == len(dicom_files(phantoms[0].dicom_dir))


class TestExports:
    def test_created_once_when_the_job_succeeded(self, tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
        destinations = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}]
        engine = make_engine(tmp=tmp_path, dicom_destinations=destinations)
        engine.receive(dicom_files(phantoms[0].dicom_dir))  # calling AE PACS: @caller is the destination pacs
        engine.assembler.tick()
        row = engine.store.receptions()[0]
        assert row.destinations == ["pacs"]
        job_id = row.job_id or ""
        attempt = engine.jobs.claim(job_id, "test:1", 60)
        assert attempt == 1
        engine.assembler.make_exports()
        assert engine.store.page_exports()[1] == 0  # not before the job has finished
        results = tmp_path / "results"
        (results / "seg").mkdir(parents=True)
        for index, path in enumerate(dicom_files(phantoms[0].dicom_dir)[:3]):
            (results / "seg" / f"{index}.dcm").write_bytes(path.read_bytes())
        engine.jobs.finish(job_id, attempt, JobState.SUCCEEDED, result_dir=str(results))
        engine.assembler.make_exports()
        engine.assembler.make_exports()
        exports, total = engine.store.page_exports()
        assert total == 1 and isinstance(exports[0], ExportRow)
        assert (exports[0].destination, exports[0].state, exports[0].n_instances) == ("pacs", "pending", 3)
