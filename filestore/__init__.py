"""filestore: a temporary file store that encrypts at rest and provably
deletes every file within 24 hours of upload."""

__version__ = "0.1.0"

__all__ = ["__version__"]
