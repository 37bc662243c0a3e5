"""Real peers for the service tests: Redis, PostgreSQL and headless Chromium, started from the Debian packages.

No mocks: each context manager starts the real program on 127.0.0.1 with a free port, waits until it answers, yields
how to reach it and stops it afterwards. A missing program skips the test (fails it in CI) with the apt-get hint;
`scripts/setup-system.sh` installs them all.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

from training.bench.service_process import free_port

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_DATABASE = "gadsynth"
POSTGRES_USER = "postgres"  # the Debian system user the server runs as when the tests run as root


class PeerStartupError(RuntimeError):
    """A peer did not come up in time or exited early; the message carries the tail of its log."""


def require(command_or_path: str, package: str) -> None:
    """Skip the test (fail it in CI) when a program is missing.

    `command_or_path` is a command looked up on PATH (and in /usr/sbin), or, when it contains a slash, a path that may
    be a glob pattern (e.g. `/usr/lib/postgresql/*/bin/postgres`).
    """
    if "/" in command_or_path:
        found = bool(glob.glob(command_or_path))
    else:
        found = shutil.which(command_or_path) is not None or Path("/usr/sbin", command_or_path).exists()
    if found:
        return
    message = (
        f"{command_or_path} is not installed: apt-get install {package} "
        "(or run `bash scripts/setup-system.sh` as root, which installs every Debian package the tests need)"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _log_tail(log: Path, lines: int = 40) -> str:
    """The last lines of a peer's log, for error messages."""
    try:
        text = log.read_text(errors="replace")
    except OSError as error:
        return f"(log {log} unreadable: {error})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def _wait_until_ready(name: str, process: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool]) -> float:
    """Poll `ready` until it returns True; return the seconds it took.

    Raise PeerStartupError, with the log tail, when the process exits first or STARTUP_TIMEOUT_S passes.
    """
    start = time.monotonic()
    last_error: Exception | None = None
    while True:
        try:
            if ready():
                return time.monotonic() - start
        except Exception as error:  # the peer is not up yet: connection refused, still starting, ...
            last_error = error
        code = process.poll()
        if code is not None:
            raise PeerStartupError(f"{name} exited with status {code} before it answered; log {log}:\n{_log_tail(log)}")
        if time.monotonic() - start > STARTUP_TIMEOUT_S:
            raise PeerStartupError(
                f"{name} did not answer within {STARTUP_TIMEOUT_S:.0f} s (last error: {last_error!r}); "
                f"log {log}:\n{_log_tail(log)}"
            )
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """Send `sig` to the process and wait; kill it if it is still running after STOP_TIMEOUT_S."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def redis_server(tmp_dir: Path) -> Iterator[str]:
    """Run `redis-server` on 127.0.0.1 (no persistence, working dir `tmp_dir`); yield `redis://127.0.0.1:PORT/0`.

    The server log is `tmp_dir/redis.log`.
    """
    require("redis-server", "redis-server")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    log = tmp_dir / "redis.log"
    command = [
        "redis-server",
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(tmp_dir),
        "--daemonize", "no",
        "--logfile", "",
    ]  # fmt: skip

    def ready() -> bool:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1) as client:
            return bool(client.ping())

    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_until_ready("redis-server", process, log, ready)
            yield url
        finally:
            _stop(process, signal.SIGTERM)


def _postgres_bin() -> Path:
    """The bin directory of the newest installed PostgreSQL server (Debian: /usr/lib/postgresql/<version>/bin)."""
    candidates = [Path(p) for p in glob.glob(POSTGRES_BIN_GLOB) if Path(p, "postgres").exists()]
    if not candidates:
        raise FileNotFoundError(f"no PostgreSQL server under {POSTGRES_BIN_GLOB}")
    return max(candidates, key=lambda p: [int(part) for part in p.parent.name.split(".") if part.isdigit()])


@contextlib.contextmanager
def postgres_server(tmp_dir: Path) -> Iterator[str]:
    """Run a throw-away PostgreSQL cluster on 127.0.0.1 with a database `gadsynth`; yield its SQLAlchemy URL.

    The URL is `postgresql+psycopg://postgres@127.0.0.1:PORT/gadsynth` (trust authentication, no password). The server
    log is `tmp_dir/postgres.log`. Durability is off (fsync, synchronous_commit, full_page_writes): tests only.

    PostgreSQL refuses to run as root. As root, the cluster (data and socket directory) lives in a fresh directory
    owned by the `postgres` system user (created by the Debian package) under the system temp dir, because pytest's
    tmp_path is private to root (0700) and the `postgres` user cannot reach it; initdb and postgres run as that user
    and the directory is removed afterwards. As any other user, the cluster lives in `tmp_dir/pg` and runs as that user.
    """
    require(f"{POSTGRES_BIN_GLOB}/postgres", "postgresql")
    require(f"{POSTGRES_BIN_GLOB}/initdb", "postgresql")
    bin_dir = _postgres_bin()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log = tmp_dir / "postgres.log"
    as_root = os.geteuid() == 0
    run_as: dict[str, Any] = {}
    if as_root:
        try:
            pwd.getpwnam(POSTGRES_USER)
        except KeyError:
            message = f"running as root, but there is no `{POSTGRES_USER}` system user (apt-get install postgresql)"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        base = Path(tempfile.mkdtemp(prefix="gadsynth-pg-"))
        shutil.chown(base, user=POSTGRES_USER, group=POSTGRES_USER)
        # Popen switches user itself (no runuser/su in between), so the signals below reach postgres directly.
        run_as = {"user": POSTGRES_USER, "group": POSTGRES_USER, "extra_groups": []}
    else:
        base = tmp_dir / "pg"
        base.mkdir()
    data = base / "data"
    sockets = base / "run"
    port = free_port()

    try:
        with log.open("wb") as log_file:
            # cwd=base: the server user may not be allowed into the caller's working directory.
            try:
                initdb = subprocess.run(
                    [
                        str(bin_dir / "initdb"),
                        "--pgdata", str(data),
                        "--username", "postgres",
                        "--auth", "trust",
                        "--encoding", "UTF8",
                        "--no-locale",
                        "--no-sync",
                    ],
                    cwd=base, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, check=False,
                    timeout=STARTUP_TIMEOUT_S, **run_as,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise PeerStartupError(
                    f"initdb did not finish within {STARTUP_TIMEOUT_S:.0f} s; log {log}:\n{_log_tail(log)}"
                ) from None
            if initdb.returncode != 0:
                raise PeerStartupError(f"initdb failed with status {initdb.returncode}; log {log}:\n{_log_tail(log)}")
            sockets.mkdir()
            if as_root:
                shutil.chown(sockets, user=POSTGRES_USER, group=POSTGRES_USER)
            command = [
                str(bin_dir / "postgres"),
                "-D", str(data),
                "-p", str(port),
                "-k", str(sockets),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
            ]  # fmt: skip
            process = subprocess.Popen(
                command, cwd=base, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, **run_as
            )
            try:

                def ready() -> bool:
                    with psycopg.connect(
                        host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=1
                    ) as conn:
                        return conn.execute("select 1").fetchone() == (1,)

                _wait_until_ready("postgres", process, log, ready)
                with psycopg.connect(
                    host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
                ) as conn:
                    conn.execute(f"create database {POSTGRES_DATABASE}")
                yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{POSTGRES_DATABASE}"
            finally:
                _stop(process, signal.SIGINT)  # SIGINT is PostgreSQL's "fast" shutdown
    finally:
        if as_root:
            shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def chromium_driver() -> Iterator[webdriver.Chrome]:
    """Start headless Chromium through the Debian chromedriver; yield the selenium driver and quit it afterwards.

    Both paths are given explicitly, so selenium never runs Selenium Manager (which would try to download a driver).
    chromedriver and the browser it starts run in their own session, so that a start that hangs past
    STARTUP_TIMEOUT_S can be killed as a whole; the error then carries the tail of chromedriver's log.
    """
    require(CHROMIUM, "chromium")
    require(CHROMEDRIVER, "chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    log_fd, log_name = tempfile.mkstemp(prefix="gadsynth-chromedriver-", suffix=".log")
    os.close(log_fd)
    log = Path(log_name)
    service = Service(executable_path=CHROMEDRIVER, log_output=log_name, popen_kw={"start_new_session": True})
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="chromium-start")
    try:
        future = pool.submit(webdriver.Chrome, service=service, options=options)
        try:
            driver = future.result(timeout=STARTUP_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            process = getattr(service, "process", None)
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            raise PeerStartupError(
                f"chromium did not start within {STARTUP_TIMEOUT_S:.0f} s; chromedriver log tail:\n{_log_tail(log)}"
            ) from None
        except WebDriverException as error:
            raise PeerStartupError(
                f"chromium did not start: {error.msg}; chromedriver log tail:\n{_log_tail(log)}"
            ) from error
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        pool.shutdown(wait=False)
        log.unlink(missing_ok=True)
