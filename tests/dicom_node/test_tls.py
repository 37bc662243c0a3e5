"""DICOM TLS with a self-signed certificate made by openssl: the node takes TLS associations only (mutual TLS), and
sends results over TLS to dcmtk's storescp."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from pydicom import dcmread

from tests.dicom_node.node import NodeProcess, dicom_files, jobs_of_study, storescu, study_uid, wait_until
from tests.dicom_node.peers import dcmtk, wait_for_scp
from tests.service.peers import require
from training.bench.service_process import free_port
from training.phantom import PhantomStudy


def _certificate(folder: Path) -> tuple[Path, Path]:
    require("openssl", "openssl")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def test_tls_in_and_out(tmp_path: Path, phantoms: list[PhantomStudy]) -> None:
    key, cert = _certificate(tmp_path)
    tls = ("+tls", str(key), str(cert), "+cf", str(cert))
    received = tmp_path / "storescp"
    received.mkdir()
    peer_port = free_port()
    require("storescp", "dcmtk")
    peer = subprocess.Popen(
        ["storescp", *tls, "-aet", "SECURE", "-od", str(received), str(peer_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, TCP_NODELAY="1"),
    )  # fmt: skip
    settings = {
        "dicom_tls_cert": str(cert),
        "dicom_tls_key": str(key),
        "dicom_tls_ca": str(cert),
        "dicom_allowed_callers": [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
        "dicom_destinations": [
            {"name": "secure", "ae_title": "SECURE", "host": "127.0.0.1", "port": peer_port, "tls": True}
        ],
        "routing_rules": str(tmp_path / "rules.yaml"),
    }
    (tmp_path / "rules.yaml").write_text("rules:\n  - name: all\n    destinations: [secure]\n")
    try:
        wait_for_scp(peer_port, "SECURE", tls=tls)
        with NodeProcess(tmp_path / "data", settings=settings) as node, node.client() as client:
            port = str(node.dicom_port)
            secure = dcmtk("echoscu", *tls, "-aet", "STORESCU", "-aec", "GADSYNTH", "127.0.0.1", port)
            assert secure.returncode == 0, secure.stdout + secure.stderr
            plain = dcmtk("echoscu", "-aet", "STORESCU", "-aec", "GADSYNTH", "127.0.0.1", port)
            assert plain.returncode != 0  # the node speaks TLS only
            anonymous = dcmtk("echoscu", "+tla", "+cf", str(cert), "-aet", "STORESCU", "-aec", "GADSYNTH", "127.0.0.1",
                              port)  # fmt: skip
            assert anonymous.returncode != 0  # mutual TLS: a caller without a certificate is refused

            storescu(node.dicom_port, phantoms[0].dicom_dir, extra=tls)
            study = study_uid(phantoms[0].dicom_dir)
            job = wait_until(
                lambda: next((j for j in jobs_of_study(client, study) if j["state"] == "succeeded"), None), "job", 90
            )
            export = wait_until(
                lambda: next(
                    (e for e in client.get("/v1/exports", params={"job_id": job["id"]}).json()["items"]
                     if e["state"] == "done"),
                    None,
                ),
                "the TLS export", 30,
            )  # fmt: skip
            assert client.get("/readyz").json()["checks"]["dicom_node"]["tls"] is True
        files = dicom_files(received)
        assert len(files) == export["n_instances"] == export["n_confirmed"] > 0
        assert {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files} == {study}
    finally:
        peer.send_signal(signal.SIGTERM)
        peer.wait(timeout=10)
