"""The HTTP API against a real `gadsynth serve` over a socket: the three encodings, results, jobs, STOW-RS, auth,
and every kind of bad input answered with the right 4xx and a message that names the problem."""

from __future__ import annotations

import io
import json
import re
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client import DICOMwebClient
from pydicom import dcmread

from tests.service.conftest import dicom_files
from training.bench.service_process import KEYS, ServiceProcess, wait_for_job
from training.phantom import PhantomStudy


def _form(files: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/dicom")) for p in files]


def _zip(files: list[Path], root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in files:
            bundle.write(path, path.relative_to(root).as_posix())
    return buffer.getvalue()


def _related(parts: list[bytes], part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n" for data in parts)
        + f"--{boundary}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _read_zip(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as bundle:
        return {name: bundle.read(name) for name in bundle.namelist()}


def _check_result_zip(content: bytes, study: PhantomStudy) -> None:
    """A result as a PACS would take it: synthetic series labelled synthetic, in the source study, plus the SEG."""
    files = _read_zip(content)
    synthetic = [n for n in files if n.startswith("synthetic_t1c/") and n.endswith(".dcm")]
    assert len(synthetic) >= 20, sorted(files)[:10]
    assert "report.json" in files and "preview.png" in files
    assert any(n.startswith("seg/") for n in files)
    source_study = dcmread(dicom_files(study.dicom_dir)[0], stop_before_pixels=True).StudyInstanceUID
    ds = dcmread(io.BytesIO(files[synthetic[0]]))
    assert ds.StudyInstanceUID == source_study
    assert "SYNTHETIC" in ds.SeriesDescription
    assert "DERIVED" in ds.ImageType
    assert json.loads(files["report.json"])["status"] == "ok"


@pytest.fixture(scope="module")
def posted(client: httpx.Client, studies: list[PhantomStudy]) -> dict[str, Any]:
    """The first study posted as multipart/form-data (202, then run to the end)."""
    response = client.post("/synthesize", files=_form(dicom_files(studies[0].dicom_dir)))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    return wait_for_job(client, job["id"])


class TestPostingAStudy:
    def test_form_data_then_poll_and_fetch(self, client: httpx.Client, posted: dict[str, Any], studies: list) -> None:
        assert posted["state"] == "succeeded", posted
        assert posted["attempt"] == 1 and posted["model"] == "ce-lowdose-v1"
        assert {e["role"] for e in posted["selection"] if e.get("role")} >= {"t1_pre", "t1_low_dose"}
        result = client.get(f"/v1/jobs/{posted['id']}/result")
        assert result.status_code == 200 and result.headers["content-type"] == "application/zip"
        _check_result_zip(result.content, studies[0])

    def test_zip_with_synchronous_wait(self, client: httpx.Client, studies: list[PhantomStudy]) -> None:
        files = dicom_files(studies[1].dicom_dir)
        body = _zip(files, studies[1].dicom_dir)
        response = client.post("/synthesize?wait=120", content=body, headers={"Content-Type": "application/zip"})
        assert response.status_code == 200, response.text[:500]
        _check_result_zip(response.content, studies[1])

    def test_multipart_related_and_result_as_multipart(self, client: httpx.Client, studies: list) -> None:
        body, content_type = _related([p.read_bytes() for p in dicom_files(studies[2].dicom_dir)])
        response = client.post("/synthesize", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"])
        assert job["state"] == "succeeded", job
        result = client.get(
            f"/v1/jobs/{job['id']}/result", headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        assert result.status_code == 200
        assert result.headers["content-type"].startswith("multipart/related")
        boundary = re.search(r"boundary=([^;]+)", result.headers["content-type"]).group(1)  # type: ignore[union-attr]
        parts = [p for p in result.content.split(f"--{boundary}".encode()) if b"\r\n\r\n" in p]
        datasets = [dcmread(io.BytesIO(p.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n"))) for p in parts]
        assert len(datasets) >= 20
        assert any(ds.Modality == "SEG" for ds in datasets)
        assert all("SYNTHETIC" in ds.SeriesDescription for ds in datasets if ds.Modality == "MR")

    def test_same_study_again_is_the_same_job_unless_forced(
        self, client: httpx.Client, posted: dict[str, Any], studies: list[PhantomStudy]
    ) -> None:
        files = dicom_files(studies[0].dicom_dir)
        again = client.post("/synthesize", files=_form(files))
        assert again.status_code == 200 and again.json()["id"] == posted["id"]
        forced = client.post("/synthesize?force=true", files=_form(files))
        assert forced.status_code == 202 and forced.json()["id"] != posted["id"]
        other_options = client.post("/synthesize?outputs=sc", files=_form(files))
        assert other_options.json()["id"] not in (posted["id"], forced.json()["id"])
        for job_id in (forced.json()["id"], other_options.json()["id"]):
            assert client.delete(f"/v1/jobs/{job_id}").status_code in (200, 202)

    def test_study_that_is_not_eligible(self, client: httpx.Client, studies: list[PhantomStudy]) -> None:
        t2_only = [p for p in dicom_files(studies[0].dicom_dir) if "t2-tse" in p.parent.name]
        assert t2_only
        response = client.post("/synthesize?wait=60", files=_form(t2_only))
        assert response.status_code == 422, response.text
        job = response.json()
        assert job["state"] == "failed" and job["reason"] == "not_eligible"
        assert job["error"]["message"] and job["selection"], job


class TestJobs:
    def test_list_filter_and_page(self, client: httpx.Client, posted: dict[str, Any]) -> None:
        page = client.get("/v1/jobs", params={"state": "succeeded", "limit": 1}).json()
        assert page["total"] >= 1 and len(page["items"]) == 1
        assert all(j["state"] == "succeeded" for j in page["items"])
        assert client.get("/v1/jobs", params={"state": "bogus"}).status_code == 422
        assert client.get("/v1/jobs/does-not-exist").status_code == 404

    def test_report_and_preview(self, client: httpx.Client, posted: dict[str, Any]) -> None:
        report = client.get(f"/v1/jobs/{posted['id']}/report").json()
        assert report["status"] == "ok" and report["job_id"] == posted["id"]
        preview = client.get(f"/v1/jobs/{posted['id']}/preview.png")
        assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")

    def test_delete_cancels_then_purges(self, client: httpx.Client, studies: list[PhantomStudy]) -> None:
        job = client.post("/synthesize?force=true", files=_form(dicom_files(studies[1].dicom_dir))).json()
        deleted = client.delete(f"/v1/jobs/{job['id']}")
        assert deleted.status_code in (200, 202)
        final = wait_for_job(client, job["id"])
        # Cancelled before or while it ran, or (a fast worker) finished first: either way its files are gone.
        assert final["state"] in ("cancelled", "succeeded"), final
        if final["state"] == "succeeded":
            client.delete(f"/v1/jobs/{job['id']}")
        deadline = time.monotonic() + 30
        while not client.get(f"/v1/jobs/{job['id']}").json()["purged"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get(f"/v1/jobs/{job['id']}").json()["purged"]
        assert client.get(f"/v1/jobs/{job['id']}/result").status_code in (409, 410)

    def test_health_ready_metrics(self, service: ServiceProcess, client: httpx.Client, posted: dict) -> None:
        assert httpx.get(f"{service.url}/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert checks["models"]["ok"] and "CPUExecutionProvider" in checks["onnxruntime"]["providers"]
        metrics = client.get("/metrics").text
        assert re.search(r'gadsynth_jobs\{state="succeeded"\} [1-9]', metrics)
        assert re.search(r'gadsynth_studies_total\{model="ce-lowdose-v1"\} [1-9]', metrics)
        assert 'gadsynth_stage_duration_seconds_count{stage="infer"}' in metrics
        assert re.search(r"gadsynth_received_bytes_total [1-9]", metrics)


class TestStowRs:
    def test_dicomweb_client_store_then_a_job_after_the_quiet_period(
        self, service: ServiceProcess, client: httpx.Client, studies: list[PhantomStudy]
    ) -> None:
        web = DICOMwebClient(f"{service.url}/dicomweb", headers={"Authorization": f"Bearer {KEYS['writer'][0]}"})
        datasets = [dcmread(p) for p in dicom_files(studies[2].dicom_dir)]
        half = len(datasets) // 2
        first = web.store_instances(datasets[:half])
        second = web.store_instances(datasets[half:], study_instance_uid=datasets[0].StudyInstanceUID)
        stored = [item.ReferencedSOPInstanceUID for r in (first, second) for item in r.ReferencedSOPSequence]
        assert sorted(stored) == sorted(ds.SOPInstanceUID for ds in datasets)
        assert "FailedSOPSequence" not in first and "FailedSOPSequence" not in second
        deadline = time.monotonic() + 60
        job = None
        while job is None and time.monotonic() < deadline:
            items = client.get("/v1/jobs", params={"limit": 50}).json()["items"]
            job = next((j for j in items if j["source"] == "stow"), None)
            time.sleep(0.3)
        assert job is not None, "no job made from the STOW-RS study"
        assert job["n_files"] == len(datasets)
        assert wait_for_job(client, job["id"])["state"] == "succeeded"

    def test_failures_are_listed_with_reasons(self, service: ServiceProcess, studies: list[PhantomStudy]) -> None:
        good = dicom_files(studies[0].dicom_dir)[0]
        body, content_type = _related([good.read_bytes(), b"this is not DICOM"])
        with service.client() as http:
            other = "1.2.3.4.5"
            response = http.post(f"/dicomweb/studies/{other}", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 409, response.text  # nothing stored: wrong study, then not DICOM
        assert response.headers["content-type"] == "application/dicom+json"
        reasons = [item["00081197"]["Value"][0] for item in response.json()["00081198"]["Value"]]
        assert reasons == [0xA900, 0xC000]

    def test_wrong_media_type(self, service: ServiceProcess) -> None:
        with service.client() as http:
            response = http.post("/dicomweb/studies", content=b"{}", headers={"Content-Type": "application/json"})
        assert response.status_code == 415 and "multipart/related" in response.json()["detail"]


class TestAuth:
    def test_every_route_needs_a_key(self, service: ServiceProcess) -> None:
        with service.client(key="reader") as reader:
            schema = reader.get("/openapi.json").json()
        routes = [(m, p) for p, ops in schema["paths"].items() for m in ops if p != "/healthz"]
        routes += [("get", "/openapi.json")]
        assert len(routes) >= 10
        with service.client(key=None) as anonymous, service.client(key="reader") as reader:
            for method, path in routes:
                url = path.replace("{job_id}", "0" * 16).replace("{study}", "1.2.3")
                assert anonymous.request(method.upper(), url).status_code == 401, (method, path)
                bad = anonymous.request(method.upper(), url, headers={"Authorization": "Bearer wrong"})
                assert bad.status_code == 401, (method, path)
                if method in ("post", "delete"):
                    denied = reader.request(method.upper(), url)
                    assert denied.status_code == 403, (method, path, denied.text)
                    assert "write" in denied.json()["detail"]


@pytest.fixture(scope="module")
def files(studies: list[PhantomStudy]) -> list[Path]:
    return dicom_files(studies[0].dicom_dir)


class TestBadInput:
    def _post(self, client: httpx.Client, body: bytes, content_type: str, query: str = "") -> httpx.Response:
        return client.post(f"/synthesize{query}", content=body, headers={"Content-Type": content_type})

    def test_body_too_large(self, client: httpx.Client) -> None:
        response = client.post("/synthesize", content=b"x" * (65 * 2**20), headers={"Content-Type": "application/zip"})
        assert response.status_code == 413 and "limit" in response.json()["detail"]

    def test_part_that_is_not_dicom_is_named(self, client: httpx.Client, files: list[Path]) -> None:
        form = [*_form(files[:3]), ("files", ("notes.txt", b"hello, not an image", "text/plain"))]
        response = client.post("/synthesize", files=form)
        assert response.status_code == 400
        assert "notes.txt" in response.json()["detail"] and "DICOM" in response.json()["detail"]

    def test_wrong_content_type(self, client: httpx.Client) -> None:
        response = self._post(client, b'{"study": 1}', "application/json")
        assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]

    def test_related_part_of_another_type(self, client: httpx.Client) -> None:
        body, content_type = _related([b"{}"], part_type="application/dicom+json")
        response = self._post(client, body, content_type)
        assert response.status_code == 400 and "application/dicom+json" in response.json()["detail"]

    @pytest.mark.parametrize("name", ["../escape.dcm", "/etc/passwd", "a/../../b.dcm"])
    def test_zip_paths_that_escape(self, client: httpx.Client, files: list[Path], name: str) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as bundle:
            bundle.writestr(name, files[0].read_bytes())
        response = self._post(client, buffer.getvalue(), "application/zip")
        assert response.status_code == 400 and name in response.json()["detail"]

    def test_zip_bomb(self, client: httpx.Client) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr("bomb.dcm", b"\0" * (32 * 2**20))
        assert len(buffer.getvalue()) < 2**20
        response = self._post(client, buffer.getvalue(), "application/zip")
        assert response.status_code == 400 and "zip bomb" in response.json()["detail"]

    def test_too_many_files(self, client: httpx.Client) -> None:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as bundle:
            for index in range(401):
                bundle.writestr(f"f{index}.dcm", b"x")
        response = self._post(client, buffer.getvalue(), "application/zip")
        assert response.status_code == 413 and "400" in response.json()["detail"]

    def test_damaged_zip_and_truncated_multipart(self, client: httpx.Client, files: list[Path]) -> None:
        assert self._post(client, b"PK\x03\x04 broken", "application/zip").status_code == 400
        body, content_type = _related([files[0].read_bytes()])
        truncated = self._post(client, body[: len(body) // 2], content_type)
        assert truncated.status_code == 400, truncated.text

    def test_two_studies_in_one_request(self, client: httpx.Client, studies: list[PhantomStudy]) -> None:
        mixed = dicom_files(studies[0].dicom_dir)[:2] + dicom_files(studies[1].dicom_dir)[:2]
        response = client.post("/synthesize", files=_form(mixed))
        assert response.status_code == 400 and "2 studies" in response.json()["detail"]

    @pytest.mark.parametrize(
        ("query", "words"),
        [
            ("?dose=5", "dose"),
            ("?agent=tea", "agent"),
            ("?field_strength_t=70", "field_strength_t"),
            ("?outputs=everything", "outputs"),
            ("?wait=100000", "wait"),
            ("?model=../../etc", "model"),
        ],
    )
    def test_options_that_make_no_sense(self, client: httpx.Client, files: list[Path], query: str, words: str) -> None:
        response = client.post(f"/synthesize{query}", files=_form(files[:2]))
        assert response.status_code == 422, response.text
        assert words in json.dumps(response.json())

    def test_nothing_is_left_in_the_spool(self, service: ServiceProcess) -> None:
        leftovers = list((service.data_dir / "spool" / "tmp").glob("*"))
        assert leftovers == [], leftovers


def test_logs_carry_no_patient_identifiers(service: ServiceProcess, posted: dict[str, Any], studies: list) -> None:
    log = service.log()
    assert posted["id"] in log
    for study in studies:
        ds = dcmread(dicom_files(study.dicom_dir)[0], stop_before_pixels=True)
        assert str(ds.PatientName) not in log and str(ds.PatientID) not in log
