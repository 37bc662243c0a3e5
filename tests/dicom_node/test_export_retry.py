"""Results ready while the PACS is down: the export retries with backoff and delivers once Orthanc is back, every
instance exactly once; /readyz reports the destination unreachable and stays ready meanwhile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.dicom_node.node import NodeProcess, jobs_of_study, storescu, study_uid, wait_until
from tests.dicom_node.peers import orthanc_peer
from training.phantom import PhantomStudy


def test_orthanc_down_then_back_gets_everything_once(tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
    orthanc = orthanc_peer(tmp_path / "orthanc", modalities={})
    (tmp_path / "rules.yaml").write_text("rules:\n  - name: all\n    destinations: [pacs]\n")
    settings = {
        "routing_rules": str(tmp_path / "rules.yaml"),
        "dicom_allowed_callers": [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
        "dicom_destinations": [
            {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
        ],
        "export_max_attempts": 30,
    }
    study = study_uid(phantoms[0].dicom_dir)
    with orthanc, NodeProcess(tmp_path / "data", settings=settings) as node, node.client() as client:
        orthanc.stop()  # the PACS goes away before the study arrives
        storescu(node.dicom_port, phantoms[0].dicom_dir)
        job = wait_until(
            lambda: next((j for j in jobs_of_study(client, study) if j["state"] == "succeeded"), None), "the job", 90
        )

        def retrying() -> dict[str, Any] | None:
            exports = client.get("/v1/exports", params={"job_id": job["id"]}).json()["items"]
            assert len(exports) <= 1, exports
            if exports and exports[0]["attempt"] >= 2 and exports[0]["state"] in ("pending", "sending"):
                return dict(exports[0])
            return None  # not created yet (the job has just finished), or still on its first attempt

        export = wait_until(retrying, "a second attempt", 30)
        assert export["last_error"] and "ORTHANC" in export["last_error"], export
        assert export["n_confirmed"] == 0

        def unreachable() -> dict[str, Any] | None:
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text  # destinations never make the service unready
            checks: dict[str, Any] = ready.json()["checks"]["dicom_destinations"]
            return checks if checks["unreachable"] == ["pacs"] else None

        checks = wait_until(unreachable, "/readyz to report the destination unreachable", 15, poll=1.0)
        assert not checks["destinations"]["pacs"]["reachable"]

        orthanc.start()  # same ports and storage
        done = wait_until(
            lambda: next(
                (
                    e
                    for e in client.get("/v1/exports", params={"job_id": job["id"]}).json()["items"]
                    if e["state"] == "done"
                ),
                None,
            ),
            "the export to finish",
            30,
        )
        assert done["n_confirmed"] == done["n_instances"] > 0, done
        held = orthanc.instance_uids(study)
        assert len(held) == len(set(held)) == done["n_instances"]  # nothing lost, nothing doubled
        assert {s["number"] for s in orthanc.series(study)} >= {9001, 9003}
        log = node.log()
        assert f"export {done['id']} (job {job['id']} to pacs): attempt 1/30 failed" in log
        assert log.count(f"export {done['id']} (job {job['id']} to pacs): done") == 1
