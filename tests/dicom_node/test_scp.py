"""dcmtk's echoscu and storescu against a real `gadsynth serve`: association control, eligible and non-eligible
studies, a dataset the node cannot understand, and late instances (reprocess)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
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
from tests.dicom_node.peers import dcmtk
from training.phantom import PhantomStudy

CALLER = {"ae_title": "STORESCU", "host": "127.0.0.1"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    settings = {"dicom_allowed_callers": [CALLER, {"ae_title": "PYNETDICOM", "host": "127.0.0.0/8"}]}
    with NodeProcess(tmp_path_factory.mktemp("scp") / "data", settings=settings) as process:
        yield process


@pytest.fixture(scope="module")
def client(node: NodeProcess) -> Iterator[httpx.Client]:
    with node.client() as http:
        yield http


def _closed(client: httpx.Client, study: str, n: int = 1) -> list[dict]:
    def check() -> list[dict] | None:
        found = receptions_of_study(client, study)
        return found if len(found) == n and all(r["state"] not in ("receiving", "routing") for r in found) else None

    return wait_until(check, f"{n} closed reception(s) of {study}", 30)


class TestAssociations:
    def test_echoscu(self, node: NodeProcess) -> None:
        result = dcmtk("echoscu", "-v", "-aet", "STORESCU", "-aec", "GADSYNTH", "127.0.0.1", str(node.dicom_port))
        assert result.returncode == 0, result.stderr
        assert "Received Echo Response (Success)" in result.stdout + result.stderr

    def test_unknown_calling_ae_is_rejected(self, node: NodeProcess) -> None:
        result = dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "GADSYNTH", "127.0.0.1", str(node.dicom_port))
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
        assert "association from INTRUDER@127.0.0.1 rejected: not an allowed caller" in node.log()

    def test_other_called_ae_is_rejected(self, node: NodeProcess) -> None:
        result = dcmtk("echoscu", "-aet", "STORESCU", "-aec", "SOMEONE", "127.0.0.1", str(node.dicom_port))
        assert result.returncode != 0
        assert "Called AE Title Not Recognized" in result.stdout + result.stderr

    def test_undecodable_dataset_is_answered_c210(self, node: NodeProcess, phantoms: list[PhantomStudy]) -> None:
        dataset = dcmread(dicom_files(phantoms[0].dicom_dir)[0])
        del dataset.StudyInstanceUID
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="GADSYNTH")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(dataset)
        finally:
            assoc.release()
        assert status.Status == 0xC210
        assert "no valid StudyInstanceUID; answered 0xC210" in node.log()


class TestStudies:
    def test_study_over_storescu_becomes_one_job(
        self, node: NodeProcess, client: httpx.Client, phantoms: list[PhantomStudy]
    ) -> None:
        study = study_uid(phantoms[0].dicom_dir)
        files = dicom_files(phantoms[0].dicom_dir)
        output = storescu(node.dicom_port, phantoms[0].dicom_dir)
        assert output.count("Received Store Response (Success)") == len(files)
        (reception,) = _closed(client, study)
        assert reception["state"] == "routed" and reception["n_instances"] == len(files), reception
        assert sum(s["count"] for s in reception["series"]) == len(files)
        assert reception["rule"] == "default" and reception["destinations"] == []  # STORESCU is no destination
        (job,) = jobs_of_study(client, study)
        assert job["source"] == "dicom" and job["n_files"] == len(files)
        assert job["links"]["reception"] == f"/v1/receptions/{reception['id']}"
        job = wait_until(lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["state"] == "succeeded" and j,
                         "the job", 90)  # fmt: skip
        assert job["attempt"] == 1
        header = dcmread(files[0], stop_before_pixels=True)
        log = node.log()
        assert study in log and job["id"] in log
        assert str(header.PatientName) not in log and str(header.PatientID) not in log  # never patient identifiers

    def test_late_instance_reprocesses_the_whole_study(
        self, node: NodeProcess, client: httpx.Client, phantoms: list[PhantomStudy], tmp_path: Path
    ) -> None:
        study = study_uid(phantoms[0].dicom_dir)
        (first,) = wait_until(
            lambda: [r for r in receptions_of_study(client, study) if r["state"] == "routed"], "the first reception"
        )
        late = dcmread(dicom_files(phantoms[0].dicom_dir)[0])
        late.SeriesInstanceUID, late.SOPInstanceUID = generate_uid(), generate_uid()
        late.file_meta.MediaStorageSOPInstanceUID = late.SOPInstanceUID
        late.SeriesNumber, late.SeriesDescription = 77, "late localizer"
        late.save_as(tmp_path / "late.dcm", enforce_file_format=True)
        storescu(node.dicom_port, tmp_path / "late.dcm", phantoms[0].dicom_dir)  # with the study again, as a PACS does
        receptions = _closed(client, study, 2)
        second = next(r for r in receptions if r["id"] != first["id"])
        assert second["state"] == "routed" and second["n_instances"] == 1, second  # the rest were already here
        assert second["previous_job_id"] == first["job_id"]
        jobs = {j["id"]: j for j in jobs_of_study(client, study)}
        assert set(jobs) == {first["job_id"], second["job_id"]}
        assert jobs[second["job_id"]]["n_files"] == first["n_instances"] + 1  # the whole study, read again
        assert "already received in an earlier reception of the study" in node.log()


class TestNotEligible:
    def test_mr_without_t1_starts_no_job(
        self, node: NodeProcess, client: httpx.Client, phantoms: list[PhantomStudy]
    ) -> None:
        t2 = next(p for p in sorted(phantoms[1].dicom_dir.iterdir()) if "t2-tse" in p.name)
        study = study_uid(phantoms[1].dicom_dir)
        storescu(node.dicom_port, t2)
        (reception,) = _closed(client, study)
        assert reception["state"] == "not_routed" and reception["reason"] == "not_eligible", reception
        assert "t1_pre" in reception["message"], reception["message"]
        assert [e["role"] for e in reception["selection"]] == ["t2"]
        assert jobs_of_study(client, study) == []
        assert f"reception {reception['id']}: study {study} from STORESCU not routed (not_eligible)" in node.log()

    def test_ct_is_kept_but_not_routed(self, node: NodeProcess, client: httpx.Client) -> None:
        path = Path(get_testdata_file("CT_small.dcm", download=False) or "")
        study = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        storescu(node.dicom_port, path)
        (reception,) = _closed(client, study)
        assert reception["state"] == "not_routed" and reception["reason"] == "no_rule", reception  # the default: MR
        assert reception["n_other"] == 1 and reception["n_instances"] == 0
        assert reception["message"] == "No routing rule matched: default: modalities ['CT'] not in ['MR']."
        assert jobs_of_study(client, study) == []
        assert f"reception {reception['id']}: study {study} from STORESCU not routed (no_rule)" in node.log()
