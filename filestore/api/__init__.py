"""The HTTP gateway (aiohttp); the factory is ``filestore.api.app.create_app``."""
