"""A real `gadsynth serve` (or `gadsynth worker`) in a child process, for the service's tests and benchmark.

Starts the command with its own data folder and free port, waits until ``/healthz`` answers, and gives an HTTP
client that carries an API key. :meth:`ServiceProcess.kill9` kills the server process only: its worker pool and
workers die with it (they ask the kernel for that), as they would if the machine lost the process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["KEYS", "ServiceProcess", "free_port", "key_settings", "wait_for_job"]

#: API keys the tests configure: name -> (key, scopes).
KEYS: dict[str, tuple[str, list[str]]] = {
    "writer": ("test-writer-key-0123456789abcdef", ["read", "write"]),
    "reader": ("test-reader-key-0123456789abcdef", ["read"]),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gadsynth() -> list[str]:
    script = Path(sys.executable).parent / "gadsynth"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from app.cli import main; main()"]


def _env_value(value: Any) -> str:
    """A setting as an environment variable: lists and mappings as JSON (as pydantic-settings reads them)."""
    return json.dumps(value, default=str) if isinstance(value, list | tuple | dict) else str(value)


def key_settings() -> str:
    """GADSYNTH_API_KEYS for :data:`KEYS` (hashed, as a deployment would configure them)."""
    from app.service.settings import hash_key

    return json.dumps([{"name": n, "sha256": hash_key(k), "scopes": s} for n, (k, s) in KEYS.items()])


class ServiceProcess:
    """One `gadsynth serve` (``command="serve"``) or `gadsynth worker` process tree."""

    def __init__(
        self,
        data_dir: Path,
        *,
        settings: dict[str, Any] | None = None,
        workers: int = 1,
        command: str = "serve",
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.command = command
        self.port = port or free_port()
        self.workers = workers
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GADSYNTH_")},
            "PYTHONUNBUFFERED": "1",
            "GADSYNTH_API_KEYS": key_settings(),
            "GADSYNTH_DICOM_PORT": "0",  # no DICOM node unless the settings give it a port (11112 may be taken)
            **{f"GADSYNTH_{k.upper()}": _env_value(v) for k, v in (settings or {}).items()},
        }
        self.log_path = data_dir / f"{command}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [*_gadsynth(), self.command, "--data-dir", str(self.data_dir), "--workers", str(self.workers)]
        if self.command == "serve":
            args += ["--port", str(self.port)]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if self.command == "serve":
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.command} did not answer /healthz within {timeout} s:\n{self.log()[-4000:]}")

    def client(self, key: str | None = "writer", timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {KEYS[key][0]}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL the main process (nothing runs its shutdown code)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def wait_for_job(
    client: httpx.Client, job_id: str, timeout: float = 180.0, states: tuple[str, ...] = (), poll: float = 0.25
) -> dict[str, Any]:
    """Poll ``GET /v1/jobs/{id}`` until the job is finished (or in one of ``states``); the job's JSON."""
    finished = states or ("succeeded", "failed", "cancelled")
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job.get("state") in finished:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.get('state')} after {timeout} s: {job}")
        time.sleep(poll)
