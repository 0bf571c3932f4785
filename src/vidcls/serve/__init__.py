"""The HTTP service of a trained run (``vidcls serve``): FastAPI app, limits, the upload page."""

from .app import ServeSettings, create_app, resolve_api_key, serve

__all__ = ["ServeSettings", "create_app", "resolve_api_key", "serve"]
