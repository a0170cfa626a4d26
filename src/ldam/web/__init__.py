"""The live web UI: ``ldam serve`` (FastAPI + WebSockets, no front-end build step)."""

from .server import DEFAULT_PORT, ServerConfig, create_app, serve
from .session import LiveSession, ModelEntry

__all__ = ["create_app", "serve", "ServerConfig", "DEFAULT_PORT", "LiveSession", "ModelEntry"]
