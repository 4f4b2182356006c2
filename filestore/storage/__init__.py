"""Blob storage backends behind the :class:`BlobStore` Protocol."""

from filestore.storage.base import BlobStore, BlobWriter, ListableBlobStore, StoredBlob

__all__ = ["BlobStore", "BlobWriter", "ListableBlobStore", "StoredBlob"]
