"""Who may use the service: start-up checks on the bind address and key, and the
dependency that checks each request's key."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from retrieval.config import Settings
from retrieval.errors import ConfigError


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def check_serve_settings(settings: Settings) -> None:
    """Refuse settings that would expose the service or cannot work.

    Raises :class:`ConfigError` with what to change.
    """
    if not is_loopback(settings.serve.host) and not settings.serve.api_key:
        raise ConfigError(
            f"refusing to listen on {settings.serve.host} without an API key: anyone who can reach it could read and "
            "change every document; set RETRIEVE_API_KEY (or api_key in the config), or bind to 127.0.0.1"
        )
    if settings.serve.api_key is not None and len(settings.serve.api_key) < 16:
        raise ConfigError(
            "serve.api_key: use at least 16 characters (for example: python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    if not 0 <= settings.serve.port <= 65535:
        raise ConfigError(f"serve.port: must be between 0 and 65535, got {settings.serve.port}")
    for name in ("serve.max_body_bytes", "serve.max_batch"):
        if settings.get(name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {settings.get(name)}")


def key_checker(api_key: str | None) -> Callable[..., None]:
    """A FastAPI dependency accepting ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``
    (anything when ``api_key`` is None)."""
    key = api_key.encode() if api_key else None
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")

    def require_key(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008 - FastAPI's idiom
        x_api_key: str | None = Security(header_key),
    ) -> None:
        if key is None:
            return
        given = credentials.credentials if credentials is not None else x_api_key
        # Constant-time comparison: response times must not reveal how much of a guess matched.
        if not given or not hmac.compare_digest(given.encode(), key):
            raise HTTPException(
                401,
                "missing or wrong API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_key
