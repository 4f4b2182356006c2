"""The filestore client: upload, download, links, deletion, receipts.

::

    from filestore.client import Client

    with Client("http://127.0.0.1:8080", token) as fs:
        info = fs.upload("report.pdf", ttl="2h")
        fs.download(info.id, "copy.pdf")

:class:`AsyncClient` is the same API for asyncio (``async with``, ``await``);
:class:`Client` runs it on a private event loop. Results are frozen
dataclasses (:mod:`filestore.client.models`); failures raise a subclass of
:class:`ClientError` (:mod:`filestore.client.errors`). The package needs
aiohttp's client, aiofiles and filestore's audit library, never the server.
"""

from filestore.client.aio import AsyncClient, DownloadStream
from filestore.client.errors import (
    AuthError,
    BadRequestError,
    ChecksumMismatchError,
    ClientError,
    ConflictError,
    ConnectionFailedError,
    ForbiddenError,
    GoneError,
    IntegrityError,
    NotFoundError,
    RangeNotSatisfiableError,
    ReceiptVerificationError,
    ServerError,
    TooLargeError,
    UnavailableError,
)
from filestore.client.models import (
    Deletion,
    Download,
    FileInfo,
    PurgeStatus,
    Receipt,
    SignedLink,
)
from filestore.client.retry import NO_RETRIES, RetryPolicy
from filestore.client.sync import Client

__all__ = [
    "NO_RETRIES",
    "AsyncClient",
    "AuthError",
    "BadRequestError",
    "ChecksumMismatchError",
    "Client",
    "ClientError",
    "ConflictError",
    "ConnectionFailedError",
    "Deletion",
    "Download",
    "DownloadStream",
    "FileInfo",
    "ForbiddenError",
    "GoneError",
    "IntegrityError",
    "NotFoundError",
    "PurgeStatus",
    "RangeNotSatisfiableError",
    "Receipt",
    "ReceiptVerificationError",
    "RetryPolicy",
    "ServerError",
    "SignedLink",
    "TooLargeError",
    "UnavailableError",
]
