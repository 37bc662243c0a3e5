"""API keys: bearer tokens checked against their sha256 (never stored in clear), compared in constant time.

A browser at the status page cannot send a bearer header with every image, so ``POST /login`` puts the key in an
HttpOnly, SameSite=Strict cookie; the cookie is honoured for GET (read) requests only, never for posting studies.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass

from fastapi import HTTPException, Request

from app.service.settings import ApiKey, Scope, ServiceSettings, hash_key

__all__ = ["COOKIE", "Caller", "KeyRing", "ensure_key"]

logger = logging.getLogger(__name__)

COOKIE = "gadsynth_key"


@dataclass(frozen=True)
class Caller:
    name: str
    scopes: frozenset[str]


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def identify(self, presented: str) -> Caller | None:
        digest = hash_key(presented)
        found: Caller | None = None
        for key in self.keys:  # every key is compared, so the time taken does not say which one matched
            if hmac.compare_digest(digest, key.sha256):
                found = Caller(key.name, frozenset(key.scopes))
        return found

    def caller(self, request: Request, scope: Scope) -> Caller:
        """The caller of a request holding ``scope``; 401 without a valid key, 403 when the key lacks the scope."""
        header = request.headers.get("authorization", "")
        presented = None
        if header[:7].lower() == "bearer ":
            presented = header[7:].strip()
        elif request.method in ("GET", "HEAD") and scope == "read":
            presented = request.cookies.get(COOKIE)
        if not presented:
            raise HTTPException(
                401, "An API key is needed: Authorization: Bearer <key>.", {"WWW-Authenticate": "Bearer"}
            )
        caller = self.identify(presented)
        if caller is None:
            raise HTTPException(401, "The API key is not valid.", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if scope not in caller.scopes:
            raise HTTPException(403, f"The API key {caller.name!r} does not have the {scope!r} scope.")
        return caller


def ensure_key(settings: ServiceSettings) -> list[ApiKey]:
    """The keys to accept: the configured ones, else one generated on first start and kept in ``data_dir/api-key``
    (mode 0600) so that an embedded installation works with nothing configured."""
    if settings.api_keys:
        return list(settings.api_keys)
    path = settings.api_key_file
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(key + "\n", encoding="utf-8")
        logger.warning("no API keys configured: generated one (read and write) in %s", path.resolve())
    key = path.read_text(encoding="utf-8").strip()
    return [ApiKey(name="local", sha256=hash_key(key), scopes=["read", "write"])]
