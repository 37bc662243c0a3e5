"""`gadsynth serve`, `gadsynth worker` and `gadsynth apikey`."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

__all__ = ["apikey", "serve", "worker"]

logger = logging.getLogger(__name__)

#: The serve process hands its settings to its worker-pool process through this variable (JSON).
SETTINGS_VARIABLE = "GADSYNTH_SERVICE_SETTINGS_JSON"


def _settings(**overrides: Any) -> Any:
    from pydantic import ValidationError

    from app.config import _check_config_file
    from app.service.settings import ServiceSettings

    try:
        _check_config_file()
        return ServiceSettings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValidationError, ValueError) as exc:
        typer.echo(f"Configuration error: {exc}", err=True)
        raise typer.Exit(1) from None


def serve(
    host: str | None = typer.Option(None, help="Address to listen on (default 127.0.0.1; GADSYNTH_HOST)."),
    port: int | None = typer.Option(None, help="HTTP port (default 8000; GADSYNTH_PORT)."),
    data_dir: Path | None = typer.Option(None, help="Job database, queue and spool (default ./gadsynth-data)."),
    workers: int | None = typer.Option(None, help="Worker processes to start here (default 1; 0: none)."),
    ssl_certfile: Path | None = typer.Option(None, help="TLS certificate (PEM): serve HTTPS."),
    ssl_keyfile: Path | None = typer.Option(None, help="TLS private key (PEM)."),
) -> None:
    """Start the HTTP service (and its worker processes) with embedded defaults: SQLite, a local spool; and the
    DICOM node (C-ECHO, C-STORE, routing, export) unless GADSYNTH_DICOM_PORT is 0."""
    import uvicorn

    from app.service.api import create_app
    from app.service.auth import KeyRing, ensure_key
    from app.service.queue import JobQueue
    from app.service.store import JobStore

    settings = _settings(host=host, port=port, data_dir=data_dir, workers=workers)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.database)
    queue = JobQueue(settings)
    keys = KeyRing(ensure_key(settings))
    node = _start_dicom_node(settings, store, queue)
    pool = _PoolKeeper(settings) if settings.workers else None
    app = create_app(settings, keys, store, queue, dicom=node)
    typer.echo(
        f"GadSynth service on http{'s' if ssl_certfile else ''}://{settings.host}:{settings.port} "
        f"({settings.workers} worker process(es); data in {settings.data_dir.resolve()})",
        err=True,
    )
    if not settings.api_keys:
        typer.echo(f"API key: in {settings.api_key_file.resolve()}", err=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        timeout_graceful_shutdown=10,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        node.stop()
        if pool is not None:
            pool.stop()


def _start_dicom_node(settings: Any, store: Any, queue: Any) -> Any:
    """Start the DICOM node (app/dicom_node) beside the HTTP service; a clear message and exit 1 when it cannot."""
    from app.dicom_node.routing import RulesError
    from app.dicom_node.runtime import DicomNode, NodeStartError

    node = DicomNode(settings, store, queue)
    try:
        node.start()
    except (NodeStartError, RulesError) as exc:
        node.stop()
        typer.echo(f"Configuration error: {exc}", err=True)
        raise typer.Exit(1) from None
    if settings.dicom_port:
        typer.echo(
            f"DICOM node {settings.dicom_ae_title} on {settings.dicom_bind_host}:{settings.dicom_port}"
            f"{' (TLS)' if settings.dicom_tls_cert else ''}",
            err=True,
        )
    return node


class _PoolKeeper:
    """Runs the worker-pool process of `gadsynth serve` and starts a new one when it dies unasked (the OOM killer,
    kill -9): without it the service would go on taking studies that no worker runs.

    One thread starts, watches and stops the pool: Linux sends the pool its PR_SET_PDEATHSIG when the *thread* that
    started it ends, so that thread lives until the pool has exited. A pool that exits with status 0 was asked to
    stop (Ctrl-C reaches the whole process group) and is not started again.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="worker-pool", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            pool, started = _start_pool(self.settings), time.monotonic()
            while pool.poll() is None:
                if self._stopping.wait(0.5):
                    pool.send_signal(signal.SIGINT)  # Huey: graceful, running jobs finish first
                    try:
                        pool.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        pool.kill()
                        pool.wait()
                    return
            if pool.returncode == 0:
                logger.info("worker pool (pid %d) stopped", pool.pid)
                return
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)
            logger.error(
                "worker pool (pid %d) exited with status %d; starting a new one in %.0f s; its running jobs are "
                "queued again when their leases run out",
                pool.pid,
                pool.returncode,
                delay,
            )
            self._stopping.wait(delay)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=90)


def _start_pool(settings: Any) -> subprocess.Popen[bytes]:
    from app.service.queue import die_with_parent

    env = dict(os.environ, **{SETTINGS_VARIABLE: settings.model_dump_json()})
    command = [sys.executable, "-m", "app.service.cli", "--pool", str(settings.workers)]
    return subprocess.Popen(command, env=env, preexec_fn=die_with_parent)


def worker(
    workers: int | None = typer.Option(None, help="Worker processes (default: the workers setting, 1)."),
    data_dir: Path | None = typer.Option(None, help="As for serve (with SQLite and a local queue)."),
) -> None:
    """Run worker processes only (another machine of a Redis + PostgreSQL installation)."""
    from app.service.queue import serve_consumer

    settings = _settings(data_dir=data_dir)
    serve_consumer(settings, workers or settings.workers or 1)


def apikey(
    name: str = typer.Option("client", help="A name for the key (shown in logs, never the key)."),
    read_only: bool = typer.Option(False, "--read-only", help="May read jobs and results but not post studies."),
) -> None:
    """Make a new API key: prints the key (give it to the client) and the entry for GADSYNTH_API_KEYS."""
    import json
    import secrets

    from app.service.settings import hash_key

    key = secrets.token_urlsafe(32)
    entry = {"name": name, "sha256": hash_key(key), "scopes": ["read"] if read_only else ["read", "write"]}
    typer.echo(f"key: {key}")
    typer.echo(f"settings entry (api_keys): {json.dumps(entry)}")


def _pool_main(workers: int) -> None:
    from app.service.queue import serve_consumer
    from app.service.settings import ServiceSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServiceSettings.model_validate_json(os.environ[SETTINGS_VARIABLE])
    serve_consumer(settings, workers)


if __name__ == "__main__" and sys.argv[1:2] == ["--pool"]:
    _pool_main(int(sys.argv[2]))
