"""The export queue: bounded attempts with backoff, dead-letter, retry through the API (scopes, 404, 409), and
delivery to a real dcmtk storescp once it listens; the node's SCP answering 0xA700 below the spool floor."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE

from app.dicom_node.export import Exporter, backoff
from app.dicom_node.reception import Receiver
from app.dicom_node.records import ExportRow, ExportState
from app.dicom_node.scp import DicomServer
from app.service.api import create_app
from app.service.auth import KeyRing
from app.service.settings import ApiKey, ServiceSettings, hash_key
from app.service.store import JobRow, JobState
from tests.dicom_node.engine import Engine, make_engine
from tests.dicom_node.node import dicom_files, wait_until
from tests.dicom_node.peers import wait_for_scp
from tests.service.peers import require
from training.bench.service_process import free_port
from training.phantom import PhantomStudy

KEYS = [
    ApiKey(name="writer", sha256=hash_key("w" * 32), scopes=["read", "write"]),
    ApiKey(name="reader", sha256=hash_key("r" * 32), scopes=["read"]),
]


def _succeeded_job(engine: Engine, files: list[Path], folder: Path) -> str:
    (folder / "synthetic_t1c").mkdir(parents=True)
    for path in files:
        (folder / "synthetic_t1c" / path.name).write_bytes(path.read_bytes())
    now = time.time()
    engine.jobs.add(
        JobRow(
            id="feedfacecafe0001", state=JobState.SUCCEEDED, source="dicom", study_key="dicom:x", options={},
            input_dir=str(folder / "input"), result_dir=str(folder), created_at=now, updated_at=now,
        )
    )  # fmt: skip
    return "feedfacecafe0001"


@pytest.fixture
def queue(tmp_path: Path, phantoms: list[PhantomStudy]) -> Iterator[tuple[Engine, str, int, list[Path]]]:
    port = free_port()  # nothing listens there yet
    engine = make_engine(
        tmp=tmp_path,
        dicom_destinations=[{"name": "late", "ae_title": "LATE", "host": "127.0.0.1", "port": port, "timeout_s": 5}],
        export_max_attempts=2,
        export_backoff_s=0.01,
    )
    files = dicom_files(phantoms[0].dicom_dir)[:3]
    job_id = _succeeded_job(engine, files, tmp_path / "job")
    now = time.time()
    engine.store.create_exports("none", [])  # no reception: harmless no-op
    with engine.store.session() as session:
        session.add(
            ExportRow(
                id="e0000000000000a1", job_id=job_id, destination="late", kind="dicom", state=ExportState.PENDING,
                attempt=0, max_attempts=2, next_attempt_at=now, n_instances=3, confirmed=[], created_at=now,
                updated_at=now,
            )
        )  # fmt: skip
    yield engine, "e0000000000000a1", port, files


def test_backoff_doubles_up_to_the_limit() -> None:
    settings = ServiceSettings(export_backoff_s=10, export_backoff_max_s=60, dicom_port=0)
    assert [backoff(n, settings) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_dead_letter_then_retry_through_the_api_delivers(queue: tuple, tmp_path: Path) -> None:
    engine, export_id, port, files = queue
    exporter = Exporter(engine.settings, engine.jobs, engine.store)
    assert exporter.tick() == 1
    row = engine.store.export(export_id)
    assert row is not None and row.state == ExportState.PENDING and row.attempt == 1
    assert "LATE@127.0.0.1" in (row.last_error or "")
    time.sleep(0.05)
    assert exporter.tick() == 1
    row = engine.store.export(export_id)
    assert row is not None and row.state == ExportState.DEAD and row.attempt == 2
    assert exporter.tick() == 0  # dead: left alone

    with warnings.catch_warnings():  # starlette's TestClient announces its move to httpx2 on import
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    app = create_app(engine.settings, KeyRing(KEYS), engine.jobs, engine.queue, supervise=False)
    with TestClient(app) as client:
        writer, reader = {"Authorization": f"Bearer {'w' * 32}"}, {"Authorization": f"Bearer {'r' * 32}"}
        listed = client.get("/v1/exports", params={"state": "dead"}, headers=reader).json()
        assert [e["id"] for e in listed["items"]] == [export_id]
        assert listed["items"][0]["links"]["retry"] == f"/v1/exports/{export_id}/retry"
        assert "dead" in client.get("/", headers=reader).text
        assert client.post(f"/v1/exports/{export_id}/retry", headers=reader).status_code == 403
        assert client.post("/v1/exports/0000000000000000/retry", headers=writer).status_code == 404
        assert client.get("/v1/exports", params={"state": "lost"}, headers=reader).status_code == 422

        received = tmp_path / "received"
        received.mkdir()
        require("storescp", "dcmtk")
        peer = subprocess.Popen(
            ["storescp", "-aet", "LATE", "-od", str(received), str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, TCP_NODELAY="1"),
        )  # fmt: skip
        try:
            wait_for_scp(port, "LATE")
            retried = client.post(f"/v1/exports/{export_id}/retry", headers=writer)
            assert retried.status_code == 200, retried.text
            assert retried.json()["state"] == "pending" and retried.json()["attempt"] == 0
            again = client.post(f"/v1/exports/{export_id}/retry", headers=writer)
            assert again.status_code == 409 and "only a dead export" in again.json()["detail"]
            wait_until(lambda: exporter.tick(), "the retried export to be attempted", 10, poll=0.2)
        finally:
            peer.send_signal(signal.SIGTERM)
            peer.wait(timeout=10)
        done = client.get(f"/v1/exports/{export_id}", headers=reader).json()
        assert done["state"] == "done" and done["n_confirmed"] == 3, done
    assert sorted(str(dcmread(p).SOPInstanceUID) for p in received.iterdir()) == sorted(
        str(dcmread(p).SOPInstanceUID) for p in files
    )


def test_scp_answers_out_of_resources_below_the_spool_floor(tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
    settings = ServiceSettings(
        data_dir=tmp_path, dicom_port=free_port(), spool_min_free_mb=2**40,
        dicom_allowed_callers=[{"ae_title": "SCU", "host": "127.0.0.1"}],
    )  # fmt: skip
    engine = make_engine(settings)
    server = DicomServer(settings, Receiver(settings, engine.store))
    server.start()
    try:
        dataset = dcmread(dicom_files(phantoms[0].dicom_dir)[0])
        ae = AE(ae_title="SCU")
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title="GADSYNTH")
        assert assoc.is_established
        try:
            assert assoc.send_c_store(dataset).Status == 0xA700
        finally:
            assoc.release()
    finally:
        server.stop()
    assert engine.store.receptions() == []  # nothing kept
