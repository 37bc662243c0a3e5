"""Configuration pieces of the DICOM node: allowed callers, destinations, late-instance policy, AE titles.

They are fields of :class:`app.service.settings.ServiceSettings` (environment ``GADSYNTH_DICOM_*`` as JSON, or the
YAML file named by ``GADSYNTH_CONFIG``); this module holds the models so that the settings module stays flat.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import threading
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "AE_TITLE_PATTERN",
    "CALLER",
    "AllowedCaller",
    "Destination",
    "DestinationKind",
    "LatePolicy",
    "address_matches",
    "check_ae_title",
]

#: An AE title: 1 to 16 characters of the DICOM default repertoire, no backslash, no control characters.
AE_TITLE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def check_ae_title(value: str) -> str:
    """An AE title without its padding.

    Raises
    ------
    ValueError
        When it is empty, longer than 16 characters, or holds a backslash or a control character.
    """
    import re

    if not isinstance(value, str) or not re.fullmatch(AE_TITLE_PATTERN, value) or not value.strip():
        raise ValueError(
            f"an AE title is 1 to 16 printable ASCII characters without a backslash, not all spaces. Found {value!r}."
        )
    return value.strip()


class LatePolicy(enum.StrEnum):
    """What happens to instances of a study that arrive after the study became a job."""

    #: The study is processed again with every instance received so far (the earlier job is cancelled if it has
    #: not finished; a finished one keeps its results).
    REPROCESS = "reprocess"
    #: The late instances are kept (and shown) but start nothing.
    IGNORE = "ignore"


class DestinationKind(enum.StrEnum):
    DICOM = "dicom"  # C-STORE SCU
    DICOMWEB = "dicomweb"  # STOW-RS


_RESOLVED: dict[str, tuple[float, frozenset[str]]] = {}
_RESOLVED_LOCK = threading.Lock()
_RESOLVE_TTL_S = 60.0


def _addresses(host: str) -> frozenset[str]:
    """The IP addresses a host name stands for (cached for a minute; empty when it does not resolve)."""
    now = time.monotonic()
    with _RESOLVED_LOCK:
        cached = _RESOLVED.get(host)
        if cached is not None and now - cached[0] < _RESOLVE_TTL_S:
            return cached[1]
    try:
        found = frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError:
        found = frozenset()
    with _RESOLVED_LOCK:
        _RESOLVED[host] = (now, found)
    return found


def address_matches(pattern: str, address: str) -> bool:
    """Whether a peer's IP address is ``pattern``: an IP address, a network (CIDR) or a host name."""
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    try:
        return peer in ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        pass
    return address in _addresses(pattern)


class AllowedCaller(BaseModel):
    """A peer that may open associations with the node: its calling AE title and where it connects from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: str = Field(description="Calling AE title (exact, without padding).")
    host: str = Field(
        min_length=1,
        max_length=255,
        description="The peer's IP address, a network in CIDR notation (10.1.0.0/16), or a host name.",
    )
    quiet_seconds: float | None = Field(
        default=None, ge=0, description="This caller's quiet period; None: dicom_quiet_seconds."
    )

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return check_ae_title(value)

    def matches(self, ae_title: str, address: str) -> bool:
        return ae_title.strip() == self.ae_title and address_matches(self.host, address)


class Destination(BaseModel):
    """Where results go: a DICOM peer (C-STORE) or a DICOMweb service (STOW-RS).

    ``kind: dicom`` needs ``ae_title``, ``host`` and ``port`` (``tls`` for DICOM TLS); ``kind: dicomweb`` needs
    ``url`` (its DICOMweb root, e.g. ``http://pacs:8042/dicom-web``) and takes ``username`` / ``password`` (basic) or
    ``token`` (bearer), and ``ca_bundle`` for an https server with a private CA.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_PATTERN, description="Name used by the routing rules and the API.")
    kind: DestinationKind = DestinationKind.DICOM
    ae_title: str | None = None
    host: str | None = Field(default=None, min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: bool = Field(default=False, description="DICOM TLS (dicom_tls_* settings for certificates).")
    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    ca_bundle: Path | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=3600, description="Network timeout of one exchange.")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)

    @model_validator(mode="after")
    def _complete(self) -> Destination:
        if self.kind == DestinationKind.DICOM:
            missing = [f for f in ("ae_title", "host", "port") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"destination {self.name!r} (kind dicom) needs {', '.join(missing)}")
            if self.url is not None:
                raise ValueError(f"destination {self.name!r} is kind dicom: url is for kind dicomweb")
        else:
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError(
                    f"destination {self.name!r} (kind dicomweb) needs url http(s)://... Found {self.url!r}."
                )
            if self.ae_title is not None or self.port is not None:
                raise ValueError(f"destination {self.name!r} is kind dicomweb: ae_title and port are for kind dicom")
            if self.token is not None and self.username is not None:
                raise ValueError(f"destination {self.name!r}: give username/password or token, not both")
        return self

    def describe(self) -> str:
        """How the logs and the API name it (never a password)."""
        if self.kind == DestinationKind.DICOM:
            return f"{self.name} (DICOM {self.ae_title}@{self.host}:{self.port}{' TLS' if self.tls else ''})"
        return f"{self.name} (DICOMweb {self.url})"


#: Caller keyword in routing rules: the calling AE, if it is a configured DICOM destination.
CALLER = "@caller"
