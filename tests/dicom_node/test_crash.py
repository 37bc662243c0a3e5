"""kill -9 of `gadsynth serve` during a transfer and during assembly: every acknowledged instance survives, the
restarted node adopts the reception, and the study becomes exactly one job."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from tests.dicom_node.node import (
    NodeProcess,
    dicom_files,
    jobs_of_study,
    receptions_of_study,
    storescu,
    study_uid,
    wait_until,
)
from training.phantom import PhantomStudy

#: A longer quiet period, so that the second kill lands while the study waits to be assembled.
SETTINGS = {
    "dicom_quiet_seconds": 4.0,
    "dicom_allowed_callers": [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
}
ACKNOWLEDGED_BEFORE_KILL = 80


def _spooled(data: Path) -> set[str]:
    """SOP Instance UIDs of the instances on disk in open receptions."""
    return {p.stem for p in (data / "spool" / "dicom").glob("*/mr/*.dcm")}


def test_kill9_during_transfer_and_during_assembly(tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
    data = tmp_path / "data"
    files = dicom_files(phantoms[1].dicom_dir)
    study = study_uid(phantoms[1].dicom_dir)
    first = NodeProcess(data, settings=SETTINGS).start()

    # 1. A transfer interrupted by kill -9: the peer saw success for ACKNOWLEDGED_BEFORE_KILL instances.
    ae = AE(ae_title="STORESCU")  # the same calling AE as the storescu that sends the study again below
    datasets = [dcmread(p) for p in files]
    for syntax in {str(d.file_meta.TransferSyntaxUID) for d in datasets}:
        ae.add_requested_context(str(datasets[0].SOPClassUID), syntax)
    assoc = ae.associate("127.0.0.1", first.dicom_port, ae_title="GADSYNTH")
    assert assoc.is_established
    acknowledged = []
    for dataset in datasets[:ACKNOWLEDGED_BEFORE_KILL]:
        status = assoc.send_c_store(dataset)
        assert status.Status == 0x0000
        acknowledged.append(str(dataset.SOPInstanceUID))
    first.kill9()
    try:
        answer = assoc.send_c_store(datasets[ACKNOWLEDGED_BEFORE_KILL])
    except RuntimeError:  # pynetdicom saw the connection close first
        answer = None
    assert not answer  # the node is gone: no answer
    assoc.abort()
    assert set(acknowledged) <= _spooled(data)  # durable before each success was sent

    second = first.restarted()
    try:
        with second.client() as client:
            (reception,) = receptions_of_study(client, study)
            assert reception["state"] == "receiving" and reception["n_instances"] >= len(acknowledged), reception
            assert f"reception {reception['id']}: adopted from" in second.log()

            # 2. The PACS sends the study again; kill -9 while it waits for its quiet period (assembly).
            storescu(second.dicom_port, phantoms[1].dicom_dir)
            assert receptions_of_study(client, study)[0]["state"] == "receiving"
        second.kill9()
        assert _spooled(data) == {str(d.SOPInstanceUID) for d in datasets}
    finally:
        second.stop()

    third = second.restarted()
    try:
        with third.client() as client:
            job = wait_until(
                lambda: next((j for j in jobs_of_study(client, study) if j["state"] == "succeeded"), None),
                "the job",
                90,
            )
            (reception,) = receptions_of_study(client, study)
            assert reception["state"] == "routed" and reception["job_id"] == job["id"]
            assert reception["n_instances"] == len(files)
            assert [j["id"] for j in jobs_of_study(client, study)] == [job["id"]]  # processed once
            assert job["n_files"] == len(files) and job["attempt"] == 1
        log = third.log()
        assert log.count(f"job {job['id']}: attempt 1 finished: ok") == 1
        assert "Traceback" not in first.log() + log
    finally:
        third.stop()
