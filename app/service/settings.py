"""The service's settings: same sources and precedence as the pipeline's (:mod:`app.config`), prefix GADSYNTH_."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from app.config import _Sources

__all__ = ["ApiKey", "Scope", "ServiceSettings", "hash_key"]

Scope = Literal["read", "write"]


def hash_key(key: str) -> str:
    """The sha256 (hex) under which an API key is stored: the key itself is never kept."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKey(BaseModel):
    """One API key: a name for the logs, the sha256 of the key, and what it may do."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hashlib.sha256(key).hexdigest(); `gadsynth apikey`.")
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["read", "write"]))


class ServiceSettings(_Sources):
    """Configuration of `gadsynth serve` and `gadsynth worker` (environment ``GADSYNTH_<FIELD>``, the YAML file
    named by ``GADSYNTH_CONFIG``, or options). Every field has a working default for one machine."""

    host: str = Field(default="127.0.0.1", description="Address the HTTP service listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    data_dir: Path = Field(
        default=Path("gadsynth-data"),
        description="Where the embedded defaults keep their files: job database, queue, spool, generated API key.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the job database; None: SQLite in data_dir. Many machines: "
        "postgresql+psycopg://user@host/db.",
    )
    queue_url: str | None = Field(
        default=None,
        description="Job queue: None = SQLite file in data_dir (Huey); redis://host:port/db for many machines.",
    )
    spool_dir: Path | None = Field(
        default=None, description="Received studies and results; None: data_dir/spool. Shared by every machine."
    )
    workers: int = Field(
        default=1, ge=0, le=64, description="Worker processes `gadsynth serve` starts (each holds one warm pipeline)."
    )
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description="Accepted API keys (hashed). Empty: `gadsynth serve` makes one, stored in data_dir/api-key.",
    )
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS; empty = CORS off.")
    max_upload_bytes: int = Field(default=4 * 2**30, ge=1024, description="Largest request body accepted (413).")
    max_files: int = Field(default=20000, ge=1, description="Most DICOM files in one posted study (413).")
    zip_max_bytes: int = Field(default=8 * 2**30, ge=1024, description="Most bytes a zip may expand to (413).")
    zip_max_ratio: float = Field(default=200.0, gt=1, description="Largest compression ratio of one zip member (400).")
    max_wait_seconds: float = Field(default=900.0, ge=0, description="Longest synchronous wait a request may ask.")
    stow_quiet_seconds: float = Field(
        default=30.0, ge=0, description="A STOW-RS study becomes a job once no instance has arrived for this long."
    )
    lease_seconds: float = Field(
        default=60.0, gt=0, description="A running job whose worker has not renewed its lease this long is re-queued."
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Most times a job is started (crashes included).")
    retention_hours: float = Field(
        default=168.0, gt=0, description="Inputs and results of finished jobs are purged after this many hours."
    )
    spool_min_free_mb: int = Field(
        default=1024, ge=0, description="Below this much free space on the spool disk the service refuses studies."
    )
    supervisor_interval_s: float = Field(
        default=2.0, gt=0, description="How often leases, quiet STOW studies and retention are checked."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Log level of the service and its workers."
    )

    @field_validator("database_url", "queue_url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.split("://", 1)[0] or "://" not in value:
            raise ValueError(f"must be a URL (scheme://...). Found {value!r}.")
        return value

    @property
    def spool(self) -> Path:
        return (self.spool_dir or self.data_dir / "spool").resolve()

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'jobs.sqlite').resolve()}"

    @property
    def api_key_file(self) -> Path:
        return self.data_dir / "api-key"
