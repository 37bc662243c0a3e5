"""A real Orthanc (Debian `orthanc` + `orthanc-dicomweb`) in a child process, for the DICOM node's tests and bench.

:class:`Orthanc` runs /usr/sbin/Orthanc on loopback with a generated JSON configuration (free HTTP and DICOM ports,
storage in the given folder, the DICOMweb plugin, modality entries for the DICOM peers it may call, no remote access,
no authentication), waits for its REST API, and can be stopped and started again on the same ports and storage.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from training.bench.service_process import free_port

__all__ = ["DICOMWEB_PLUGIN", "ORTHANC", "Orthanc", "orthanc_installed"]

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
STARTUP_TIMEOUT_S = 30.0


def orthanc_installed() -> bool:
    return Path(ORTHANC).exists() and Path(DICOMWEB_PLUGIN).exists()


class Orthanc:
    """One Orthanc on loopback; ``modalities`` maps a name to (AE title, host, port) of DICOM peers it may call."""

    def __init__(self, root: Path, *, modalities: dict[str, tuple[str, str, int]], aet: str = "ORTHANC") -> None:
        self.root = root
        self.aet = aet
        self.modalities = modalities
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def configuration(self) -> dict[str, Any]:
        storage = str(self.root / "storage")
        return {
            "Name": "gadsynth-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "StorageCompression": False,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {name: list(entry) for name, entry in self.modalities.items()},
            "DicomScuTimeout": 30,
        }

    def start(self) -> Orthanc:
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self.configuration(), indent=1))
        log = self.root / "orthanc.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen([ORTHANC, str(config)], cwd=self.root, stdout=out, stderr=subprocess.STDOUT)
        started = time.monotonic()
        while True:
            try:
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() - started > STARTUP_TIMEOUT_S:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Orthanc did not answer on {self.url}; log {log}:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- REST --------------------------------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=60)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any, timeout: float = 120) -> Any:
        response = httpx.post(f"{self.url}{path}", json=body, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def upload(self, files: list[Path]) -> None:
        """POST each file to /instances (Orthanc's REST upload)."""
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for path in files:
                response = client.post("/instances", content=path.read_bytes())
                response.raise_for_status()

    def study_id(self, study_uid: str) -> str | None:
        response = httpx.post(f"{self.url}/tools/lookup", content=study_uid, timeout=30)
        response.raise_for_status()
        found = [r for r in response.json() if r.get("Type") == "Study"]
        return found[0]["ID"] if found else None

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        """Each series of the study: number, description, modality, instance count."""
        study = self.study_id(study_uid)
        if study is None:
            return []
        return [
            {
                "number": int(s["MainDicomTags"].get("SeriesNumber") or 0),
                "description": s["MainDicomTags"].get("SeriesDescription", ""),
                "modality": s["MainDicomTags"].get("Modality", ""),
                "instances": len(s["Instances"]),
            }
            for s in self.get(f"/studies/{study}/series")
        ]

    def instance_uids(self, study_uid: str) -> list[str]:
        study = self.study_id(study_uid)
        if study is None:
            return []
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in self.get(f"/studies/{study}/instances")]
