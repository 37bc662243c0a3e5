"""DICOM TLS (PS3.15 B.9, BCP 195): SSL contexts for the node's SCP and for its C-STORE / C-ECHO SCU.

The node speaks TLS when ``dicom_tls_cert`` and ``dicom_tls_key`` are set. With ``dicom_tls_ca`` set, callers must
present a certificate signed by that CA (mutual TLS), and destinations with ``tls: true`` are verified against it
(else against the system's CAs); the node's certificate is then also its client certificate.
"""

from __future__ import annotations

import ssl

from app.service.settings import ServiceSettings

__all__ = ["client_context", "server_context"]


def server_context(settings: ServiceSettings) -> ssl.SSLContext | None:
    """The SCP's context, or None when the node speaks plain DICOM.

    Raises
    ------
    ssl.SSLError, OSError
        When the certificate, key or CA file cannot be loaded (a clear start-up error in `gadsynth serve`).
    """
    if settings.dicom_tls_cert is None or settings.dicom_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.dicom_tls_cert), str(settings.dicom_tls_key))
    if settings.dicom_tls_ca is not None:
        context.load_verify_locations(cafile=str(settings.dicom_tls_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(settings: ServiceSettings) -> ssl.SSLContext:
    """The SCU's context for a destination with ``tls: true`` (server verified, host name checked)."""
    cafile = str(settings.dicom_tls_ca) if settings.dicom_tls_ca is not None else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.dicom_tls_cert is not None and settings.dicom_tls_key is not None:
        context.load_cert_chain(str(settings.dicom_tls_cert), str(settings.dicom_tls_key))
    return context
