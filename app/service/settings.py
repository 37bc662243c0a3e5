"""The service's settings: same sources and precedence as the pipeline's (:mod:`app.config`), prefix GADSYNTH_."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from app.config import _Sources
from app.dicom_node.config import AllowedCaller, Destination, LatePolicy, check_ae_title

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
    # --- the DICOM node (app/dicom_node) ---------------------------------------------------------------------------
    dicom_port: int = Field(
        default=11112, ge=0, le=65535, description="DICOM port of the node (C-ECHO, C-STORE); 0 = no DICOM node."
    )
    dicom_host: str | None = Field(default=None, description="Address the DICOM node listens on; None: as host.")
    dicom_ae_title: str = Field(default="GADSYNTH", description="The node's AE title (called AE, and SCU calling AE).")
    dicom_called_ae_titles: list[str] = Field(
        default_factory=list, description="More called AE titles the node answers to (routing rules can match them)."
    )
    dicom_allowed_callers: list[AllowedCaller] = Field(
        default_factory=list,
        description="Peers that may send: [{ae_title, host (IP, CIDR or name), quiet_seconds?}]. DICOM destinations "
        "are allowed too; with neither, every association is rejected.",
    )
    dicom_max_associations: int = Field(default=10, ge=1, le=200, description="Associations served at once.")
    dicom_acse_timeout_s: float = Field(default=30.0, gt=0, description="Association negotiation timeout.")
    dicom_dimse_timeout_s: float = Field(default=60.0, gt=0, description="Timeout waiting for a DIMSE message.")
    dicom_network_timeout_s: float = Field(default=60.0, gt=0, description="Idle association timeout.")
    dicom_quiet_seconds: float = Field(
        default=30.0, ge=0, description="A study (per calling AE) is complete when no instance came for this long."
    )
    dicom_late_policy: LatePolicy = Field(
        default=LatePolicy.REPROCESS,
        description="Instances of a study that arrive after it became a job: reprocess (the whole study again) or "
        "ignore (kept, logged, nothing runs).",
    )
    dicom_own_series_numbers: tuple[int, int] = Field(
        default=(9001, 9005),
        description="Series numbers GadSynth writes (first, last): a derived series numbered so is taken as ours.",
    )
    dicom_destinations: list[Destination] = Field(
        default_factory=list,
        description="Where results may go: [{name, kind: dicom, ae_title, host, port, tls?}] or "
        "[{name, kind: dicomweb, url, username?, password?, token?}].",
    )
    routing_rules: Path | None = Field(
        default=None, description="Routing rules (YAML), reloaded when the file changes; None: the default rule."
    )
    export_max_attempts: int = Field(default=8, ge=1, le=100, description="Sends of one export before dead-letter.")
    export_backoff_s: float = Field(default=10.0, gt=0, description="Wait before the second attempt (doubles).")
    export_backoff_max_s: float = Field(default=600.0, gt=0, description="Longest wait between two attempts.")
    dicom_echo_timeout_s: float = Field(default=5.0, gt=0, description="C-ECHO timeout (start-up and /readyz).")
    dicom_tls_cert: Path | None = Field(default=None, description="PEM certificate: the DICOM node speaks TLS only.")
    dicom_tls_key: Path | None = Field(default=None, description="PEM private key of dicom_tls_cert.")
    dicom_tls_ca: Path | None = Field(
        default=None,
        description="PEM CA bundle: peers' certificates are verified against it (callers must then present one).",
    )

    @field_validator("database_url", "queue_url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.split("://", 1)[0] or "://" not in value:
            raise ValueError(f"must be a URL (scheme://...). Found {value!r}.")
        return value

    @field_validator("dicom_ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("dicom_called_ae_titles")
    @classmethod
    def _ae_titles(cls, value: list[str]) -> list[str]:
        return [check_ae_title(v) for v in value]

    @model_validator(mode="after")
    def _dicom(self) -> ServiceSettings:
        names = [d.name for d in self.dicom_destinations]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"dicom_destinations: each name once. Found {', '.join(twice)} more than once.")
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise ValueError("dicom_tls_cert and dicom_tls_key go together: give both or neither.")
        for name in ("dicom_tls_cert", "dicom_tls_key", "dicom_tls_ca"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {str(path)!r} is not a file.")
        first, last = self.dicom_own_series_numbers
        if first > last:
            raise ValueError(f"dicom_own_series_numbers: (first, last) with first <= last. Found {first}, {last}.")
        return self

    @property
    def dicom_bind_host(self) -> str:
        return self.dicom_host or self.host

    @property
    def spool(self) -> Path:
        return (self.spool_dir or self.data_dir / "spool").resolve()

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'jobs.sqlite').resolve()}"

    @property
    def api_key_file(self) -> Path:
        return self.data_dir / "api-key"
