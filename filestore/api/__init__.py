"""The HTTP gateway (aiohttp)."""

from filestore.api.app import create_app

__all__ = ["create_app"]
