"""Per-key refusals from a real S3 server, for the batch-deletion tests.

SeaweedFS has no bucket policy that refuses the deletion of one key, so
:class:`RefusingClient` wraps the store's real boto3 client: every call goes
to the server, except that a ``DeleteObjects`` request is sent without the
refused keys and its reply gets an ``AccessDenied`` entry in ``Errors`` for
each — the shape S3 gives a refusal inside a 200 reply — and a
``DeleteObject`` of a refused key raises the ``ClientError`` S3 would. The
refused objects really stay on the server. Keys in ``silent`` are deleted
but left out of the reply, as a server that answers incompletely would.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError


class RefusingClient:
    """The real client, refusing to delete ``refused`` keys (editable: tests
    clear it to end the fault). Counts the requests made by operation."""

    def __init__(self, real: Any, refused: set[str], silent: frozenset[str] = frozenset()) -> None:
        self.real = real
        self.refused = refused
        self.silent = silent
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        return getattr(self.real, name)

    def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        self.calls["delete_objects"] = self.calls.get("delete_objects", 0) + 1
        asked = Delete["Objects"]
        sent = [o for o in asked if o["Key"] not in self.refused]
        reply: dict[str, Any] = {"Deleted": [], "Errors": []}
        if sent:
            reply = self.real.delete_objects(Bucket=Bucket, Delete={**Delete, "Objects": sent})
        reply["Deleted"] = [d for d in reply.get("Deleted", []) if d["Key"] not in self.silent]
        reply.setdefault("Errors", [])
        reply["Errors"] += [
            {"Key": o["Key"], "Code": "AccessDenied", "Message": "Access Denied"}
            for o in asked
            if o["Key"] in self.refused
        ]
        return reply

    def delete_object(self, *, Bucket: str, Key: str, **extra: Any) -> dict[str, Any]:
        self.calls["delete_object"] = self.calls.get("delete_object", 0) + 1
        if Key in self.refused:
            raise ClientError(
                {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "DeleteObject"
            )
        reply: dict[str, Any] = self.real.delete_object(Bucket=Bucket, Key=Key, **extra)
        return reply
