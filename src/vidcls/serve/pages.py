"""The pages of the HTTP service outside /v1 (no API key): ``GET /health``, the upload page ``GET /``,
and the API documentation ``GET /docs``.

``/docs`` is Swagger UI 5 (it reads the OpenAPI 3.1 that FastAPI writes; Swagger UI 4 cannot) served
from the files of the installed ``fastapi-offline`` package, never from a CDN: it works offline.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

DOCS_STATIC = "/docs-static"


def _page() -> tuple[str, str]:
    """The page's HTML (CSS and JS inlined) and its Content-Security-Policy (hashes of both)."""
    files = resources.files("vidcls.serve") / "static"
    css, js = (files / "page.css").read_text(), (files / "page.js").read_text()

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    html = (files / "page.html").read_text().replace("/*CSS*/", css).replace("/*JS*/", js)
    csp = (
        f"default-src 'none'; connect-src 'self'; img-src data:; style-src {digest(css)}; "
        f"script-src {digest(js)}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, csp


def add_page_routes(app: FastAPI) -> None:
    """``GET /health`` and the upload page ``GET /``."""
    page, csp = _page()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(
            page,
            headers={
                "Content-Security-Policy": csp,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )


def add_docs(app: FastAPI) -> None:
    """``GET /docs``: Swagger UI with its files under ``/docs-static``."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    static = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_STATIC, StaticFiles(directory=str(static)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="vidcls API",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
        )
