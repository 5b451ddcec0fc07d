"""The search page at ``/``: one HTML file, a script and a stylesheet shipped in the
package (``retrieval/http/static/``), served as they are, with no build step.

The page and its assets hold no data, so they are open even when the service needs a
key; the page asks for the key and sends it with its API calls (``/v1/*`` stays
protected). Every response here carries a strict Content-Security-Policy: scripts,
styles and connections from this origin only, nothing inline, and Trusted Types
required, so the browser itself refuses to parse a string as HTML (the script only ever
inserts text).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import Response

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Revalidate every time (cheap: a 304 by ETag), so an upgraded server never runs an
    # old script against a new API.
    "Cache-Control": "no-cache",
}
# URL path -> (file in static/, media type)
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
    "/ui/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """The page's files, read once from the package."""
    folder = resources.files("retrieval.http") / "static"
    assets = {}
    for path, (name, media_type) in FILES.items():
        body = (folder / name).read_bytes()
        assets[path] = Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return assets


def add_page(app: FastAPI) -> None:
    """Serve the search page at ``/`` and its assets under ``/ui/``, without a key."""
    assets = load_assets()

    def serve(asset: Asset) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            headers = {**SECURITY_HEADERS, "ETag": asset.etag}
            if asset.etag in request.headers.get("if-none-match", ""):
                return Response(status_code=304, headers=headers)
            return Response(asset.body, media_type=asset.media_type, headers=headers)

        return endpoint

    for path, asset in assets.items():
        app.add_api_route(path, serve(asset), methods=["GET", "HEAD"], include_in_schema=False)
