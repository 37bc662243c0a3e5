"""The DICOM node against a real Orthanc: Orthanc sends a study, the results come back into the same study (C-STORE),
STOW-RS into Orthanc's DICOMweb, and a study forwarded back with our results in it starts nothing (no loop)."""

from __future__ import annotations

import io
import re
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from tests.dicom_node.node import (
    NodeProcess,
    dicom_files,
    jobs_of_study,
    receptions_of_study,
    storescu,
    study_uid,
    wait_until,
)
from tests.dicom_node.peers import dciodvfy_errors, orthanc_peer
from training.bench.orthanc_process import Orthanc
from training.bench.service_process import free_port
from training.phantom import PhantomStudy

#: Our output series numbers (synthetic, SEG, the uncertainty map of the shipped model; the SR when the job writes one).
SYNTHETIC, SEG, SR, UNCERTAINTY = 9001, 9003, 9005, 9006

RULES = """
rules:
  - name: web
    match: {calling_ae: [WEBTEST]}
    destinations: [orthanc-web]
  - name: pacs
    match: {modality: [MR]}
    destinations: ["@caller"]
"""


class Setup:
    def __init__(self, orthanc: Orthanc, node: NodeProcess, client: httpx.Client) -> None:
        self.orthanc, self.node, self.client = orthanc, node, client


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("orthanc-node")
    port = free_port()
    orthanc = orthanc_peer(root / "orthanc", modalities={"gadsynth": ("GADSYNTH", "127.0.0.1", port)})
    (root / "rules.yaml").write_text(RULES)
    settings = {
        "dicom_port": port,
        "routing_rules": str(root / "rules.yaml"),
        "dicom_allowed_callers": [{"ae_title": "WEBTEST", "host": "127.0.0.1"}],
        "dicom_destinations": [
            {"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port},
            {"name": "orthanc-web", "kind": "dicomweb", "url": orthanc.dicomweb},
        ],
    }
    with orthanc, NodeProcess(root / "data", settings=settings) as node, node.client() as client:
        yield Setup(orthanc, node, client)


def _succeeded_job(client: httpx.Client, study: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        jobs = jobs_of_study(client, study)
        assert all(j["state"] not in ("failed", "cancelled") for j in jobs), jobs
        return next((j for j in jobs if j["state"] == "succeeded"), None)

    return wait_until(done, f"a succeeded job for study {study}", timeout=90)


def _exports_done(client: httpx.Client, job_id: str, n: int = 1) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = client.get("/v1/exports", params={"job_id": job_id}).json()["items"]
        assert all(e["state"] != "dead" for e in items), items
        return items if len(items) == n and all(e["state"] == "done" for e in items) else None

    return wait_until(done, f"the exports of job {job_id}", timeout=60)


def _result_files(client: httpx.Client, job_id: str, into: Path) -> list[Path]:
    response = client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
        names = [n for n in bundle.namelist() if n.endswith(".dcm")]
        bundle.extractall(into, names)
    return [into / n for n in names]


@pytest.fixture(scope="module")
def round_trip(setup: Setup, phantoms: list[PhantomStudy], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Upload the first phantom to Orthanc, have Orthanc send it to the node, wait for results back in Orthanc."""
    orthanc, client = setup.orthanc, setup.client
    files = dicom_files(phantoms[0].dicom_dir)
    study = study_uid(phantoms[0].dicom_dir)
    orthanc.upload(files)
    resource = orthanc.study_id(study)
    answer = orthanc.post("/modalities/gadsynth/store", {"Resources": [resource]})
    assert answer["InstancesCount"] == len(files) and answer["FailedInstancesCount"] == 0, answer
    job = _succeeded_job(client, study)
    exports = _exports_done(client, job["id"])
    results = _result_files(client, job["id"], tmp_path_factory.mktemp("round-trip"))
    return {"study": study, "resource": resource, "files": files, "job": job, "exports": exports, "results": results}


def test_orthanc_study_comes_back_with_synthetic_series_seg_and_sr(setup: Setup, round_trip: dict[str, Any]) -> None:
    orthanc, client = setup.orthanc, setup.client
    study, job, results = round_trip["study"], round_trip["job"], round_trip["results"]
    assert job["source"] == "dicom" and job["model"] == "ce-lowdose-v1", job
    (reception,) = receptions_of_study(client, study)
    assert reception["state"] == "routed" and reception["job_id"] == job["id"], reception
    assert reception["calling_ae"] == "ORTHANC" and reception["rule"] == "pacs"
    assert reception["n_instances"] == len(round_trip["files"]) and reception["destinations"] == ["orthanc"]
    assert {e["role"] for e in reception["selection"] if e["role"]} >= {"t1_pre", "t1_low_dose"}
    (export,) = round_trip["exports"]
    assert export["kind"] == "dicom" and export["n_confirmed"] == export["n_instances"] == len(results)

    series = {s["number"]: s for s in orthanc.series(study)}
    assert SYNTHETIC in series and SEG in series, series
    assert series[SYNTHETIC]["modality"] == "MR" and "SYNTHETIC" in series[SYNTHETIC]["description"]
    assert series[SEG]["modality"] == "SEG"
    assert UNCERTAINTY in series and series[UNCERTAINTY]["modality"] == "MR", series
    assert "UNCERTAINTY" in series[UNCERTAINTY]["description"] and "SYNTHETIC" in series[UNCERTAINTY]["description"]
    seg = dcmread(next(p for p in results if p.parent.name == "seg"))
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["Predicted contrast enhancement", "Low confidence"]
    wrote_sr = any(p.parent.name == "sr" for p in results)
    assert (SR in series) == wrote_sr, (series.keys(), [p.parent.name for p in results])
    if wrote_sr:
        assert series[SR]["modality"] == "SR"
    ours = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in results}
    held = orthanc.instance_uids(study)
    assert len(held) == len(set(held)) == len(round_trip["files"]) + len(ours)  # everything once, nothing lost
    assert ours <= set(held)
    for path in results:  # every file sent passes dciodvfy
        assert dciodvfy_errors(path) == [], path


def test_study_forwarded_back_with_our_results_starts_nothing(setup: Setup, round_trip: dict[str, Any]) -> None:
    """A PACS that forwards everything: the study (originals and our results) comes back; no second job, no loop."""
    orthanc, client, node = setup.orthanc, setup.client, setup.node
    study = round_trip["study"]
    n_held = len(orthanc.instance_uids(study))
    answer = orthanc.post("/modalities/gadsynth/store", {"Resources": [round_trip["resource"]]})
    assert answer["InstancesCount"] == n_held and answer["FailedInstancesCount"] == 0, answer
    time.sleep(3 * 1.0 + 1.0)  # three quiet periods and a tick
    assert len(receptions_of_study(client, study)) == 1
    assert [j["id"] for j in jobs_of_study(client, study)] == [round_trip["job"]["id"]]
    assert len(client.get("/v1/exports", params={"job_id": round_trip["job"]["id"]}).json()["items"]) == 1
    log = node.log()
    assert "skipped: GadSynth output (" in log
    assert "skipped: already received in an earlier reception of the study" in log
    counts = [tuple(map(int, m)) for m in re.findall(r"released: (\d+) instance\(s\) stored, (\d+) skipped", log)]
    first, *again = counts  # Orthanc may use one association per kind of object
    assert first == (len(round_trip["files"]), 0), counts
    assert sum(stored for stored, _ in again) == 0 and sum(skipped for _, skipped in again) == n_held, counts


def test_results_by_stow_rs_into_orthanc_dicomweb(setup: Setup, phantoms: list[PhantomStudy], tmp_path: Path) -> None:
    orthanc, client, node = setup.orthanc, setup.client, setup.node
    study = study_uid(phantoms[1].dicom_dir)
    storescu(node.dicom_port, phantoms[1].dicom_dir, calling="WEBTEST")
    job = _succeeded_job(client, study)
    (export,) = _exports_done(client, job["id"])
    assert export["kind"] == "dicomweb" and export["destination"] == "orthanc-web"
    results = _result_files(client, job["id"], tmp_path)
    assert export["n_confirmed"] == len(results)
    held = orthanc.instance_uids(study)  # only our results: the originals never went to Orthanc
    assert sorted(held) == sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in results)
    assert {s["number"] for s in orthanc.series(study)} >= {SYNTHETIC, SEG, UNCERTAINTY}

    page = client.get("/").text  # the status page shows both receptions and the exports
    assert "DICOM receptions" in page and export["id"] in page and "WEBTEST@127.0.0.1" in page
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["dicom_node"]["ok"] and checks["dicom_node"]["port"] == node.dicom_port
    assert checks["dicom_destinations"]["unreachable"] == [], checks["dicom_destinations"]
    assert checks["routing_rules"]["rules"] == ["web", "pacs"]
