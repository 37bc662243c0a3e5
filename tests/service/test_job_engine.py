"""The job engine's rules on a real SQLite job database and a real Huey queue (no server): claims, leases,
bounded retries, retention, STOW-RS assembly that survives a crash half-way."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.service.queue import JobQueue
from app.service.settings import ServiceSettings
from app.service.store import JobRow, JobState, JobStore, StowBatch, new_job_id
from app.service.supervisor import Supervisor, job_folder


@pytest.fixture
def engine(tmp_path: Path) -> tuple[ServiceSettings, JobStore, JobQueue, Supervisor]:
    settings = ServiceSettings(data_dir=tmp_path, lease_seconds=5, max_attempts=2, retention_hours=1)
    store = JobStore(settings.database)
    queue = JobQueue(settings)
    return settings, store, queue, Supervisor(settings, store, queue)


def _job(settings: ServiceSettings, state: JobState = JobState.QUEUED, **values: object) -> JobRow:
    job_id = new_job_id()
    folder = job_folder(settings, job_id)
    (folder / "input").mkdir(parents=True)
    now = time.time()
    fields = {
        "id": job_id,
        "state": state,
        "source": "http",
        "study_key": job_id,
        "options": {},
        "input_dir": str(folder / "input"),
        "max_attempts": settings.max_attempts,
        "created_at": now,
        "updated_at": now,
        "queued_at": now,
    } | values
    return JobRow(**fields)


def test_only_one_worker_can_claim_a_job(engine: tuple) -> None:
    settings, store, _, _ = engine
    row = _job(settings)
    store.add(row)
    assert store.claim(row.id, "a:1", 5) == 1
    assert store.claim(row.id, "b:2", 5) is None
    assert store.get(row.id).worker == "a:1"  # type: ignore[union-attr]


def test_an_attempt_that_lost_its_job_cannot_finish_it(engine: tuple) -> None:
    settings, store, _, supervisor = engine
    row = _job(settings)
    store.add(row)
    assert store.claim(row.id, "a:1", 0.01) == 1
    time.sleep(0.05)
    supervisor.requeue_lost(time.time())  # the lease ran out: queued again
    assert store.get(row.id).state == JobState.QUEUED  # type: ignore[union-attr]
    assert store.claim(row.id, "b:2", 5) == 2
    assert not store.renew(row.id, 1, 5)  # the first worker learns it lost the job
    assert not store.finish(row.id, 1, JobState.SUCCEEDED)
    assert store.finish(row.id, 2, JobState.SUCCEEDED)
    assert not store.finish(row.id, 2, JobState.SUCCEEDED)  # never twice
    final = store.get(row.id)
    assert final is not None and final.state == JobState.SUCCEEDED and final.attempt == 2


def test_retries_are_bounded(engine: tuple) -> None:
    settings, store, queue, supervisor = engine
    row = _job(settings)
    store.add(row)
    for attempt in (1, 2):
        assert store.claim(row.id, f"w:{attempt}", 0.01) == attempt
        time.sleep(0.05)
        supervisor.requeue_lost(time.time())
    final = store.get(row.id)
    assert final is not None and final.state == JobState.FAILED and final.reason == "worker_lost"
    assert "2 times" in final.error["message"]  # type: ignore[index]
    assert queue.depth() == 1  # one message for the one retry, none after the limit


def test_a_queued_job_whose_message_was_lost_is_sent_again(engine: tuple) -> None:
    settings, store, queue, supervisor = engine
    row = _job(settings, queued_at=time.time() - 120)
    store.add(row)
    assert queue.depth() == 0
    supervisor.requeue_stranded(time.time())
    assert queue.depth() == 1


def test_retention_purges_files_and_keeps_the_row(engine: tuple, caplog: pytest.LogCaptureFixture) -> None:
    settings, store, _, supervisor = engine
    old = _job(settings, JobState.SUCCEEDED, finished_at=time.time() - 2 * 3600)
    recent = _job(settings, JobState.SUCCEEDED, finished_at=time.time() - 60)
    store.add(old)
    store.add(recent)
    with caplog.at_level("INFO"):
        supervisor.purge_expired(time.time())
    assert not job_folder(settings, old.id).exists() and job_folder(settings, recent.id).exists()
    purged = store.get(old.id)
    assert purged is not None and purged.purged_at is not None and purged.state == JobState.SUCCEEDED
    assert f"job {old.id}: input and results purged" in caplog.text


def test_stow_study_assembly_survives_a_crash_half_way(engine: tuple) -> None:
    settings, store, queue, supervisor = engine
    batches = []
    for index in range(2):
        folder = settings.spool / "stow" / f"batch{index}"
        folder.mkdir(parents=True)
        (folder / "000001.dcm").write_bytes(b"x")
        batch = StowBatch(
            id=f"batch{index}",
            study_instance_uid="1.2.3",
            folder=str(folder),
            n_files=1,
            bytes_received=1,
            received_at=time.time() - 60,
        )
        store.add_batch(batch)
        batches.append(batch)
    supervisor.assemble_quiet_studies(time.time())  # the job exists, assembling; "crash" before the move
    (job,) = store.rows(JobRow.state == JobState.ASSEMBLING)
    assert job.n_files == 2
    supervisor.assemble_quiet_studies(time.time())  # a second tick makes no second job
    assert len(store.rows(JobRow.source == "stow")) == 1
    supervisor.finish_assembling()
    final = store.get(job.id)
    assert final is not None and final.state == JobState.QUEUED and queue.depth() == 1
    assert sorted(p.name for p in Path(final.input_dir).iterdir()) == ["batch0", "batch1"]
    assert not any(Path(b.folder).exists() for b in batches)
