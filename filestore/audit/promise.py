"""What the records say about the promise itself, beyond their bytes.

A correctly signed, unbroken log can still describe deletions that break
the promise — a file deleted 30 hours after upload, an "expired" deletion
before the expiry, a check that failed, two deletions of one file. The
chain cannot catch those; :class:`PromiseCheck` does, record by record,
and says which promise each record breaks, in words that quote no value.

The rules (times in Unix seconds; ``skew`` tolerates several instances'
clocks writing one log):

- a file record has ``created_at ≤ expires_at ≤ created_at + 24 h`` and
  ``created_at ≤ deleted_at ≤ created_at + 24 h``;
- reason ``expired`` means ``deleted_at ≥ expires_at - skew``;
- ``recorded_at ≥ deleted_at - skew`` (a record does not predate its deletion);
- every boolean in ``verification`` is true (``key_erased``,
  ``blob_absent``; for a KEK ``no_keys_remaining``: false means files were
  still wrapped under it at its deadline, i.e. kept past their expiry);
- one record per file id.

An orphan record (a blob with no metadata row) has no times to judge and is
only held to the last two rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from filestore.audit.records import AuditRecord

__all__ = ["MAX_LIFETIME", "PromiseCheck", "Violation"]

#: The promise: nothing lives longer than this after its upload.
MAX_LIFETIME = 24 * 3600.0


@dataclass(frozen=True)
class Violation:
    """One record that breaks the promise: where, and which rule."""

    seq: int
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}, seq {self.seq}" if self.line else f"seq {self.seq}"
        return f"{where}: {self.reason}"


class PromiseCheck:
    """Checks records one at a time, in log order, keeping one entry per
    file id (the memory an exact duplicate check needs)."""

    def __init__(self, skew: float = 300.0, max_lifetime: float = MAX_LIFETIME) -> None:
        self.skew = skew
        self.max_lifetime = max_lifetime
        self._seen: dict[str, int] = {}

    def check(self, record: AuditRecord) -> list[str]:
        """The rules ``record`` breaks, as messages (empty if none)."""
        found = [f"verification {name} is false" for name, ok in _flags(record) if not ok]
        if record.event == "kek_destroyed":
            return found
        assert record.file_id is not None
        first = self._seen.setdefault(record.file_id, record.seq)
        if first != record.seq:
            found.append(f"a second deletion record for one file (the first is seq {first})")
        found.extend(self._times(record))
        return found

    def _times(self, r: AuditRecord) -> list[str]:
        out: list[str] = []
        hours = self.max_lifetime / 3600
        if r.deleted_at is not None and r.recorded_at < r.deleted_at - self.skew:
            out.append("recorded before the deletion it records")
        if r.created_at is None or r.expires_at is None or r.deleted_at is None:
            if r.reason != "orphan":
                out.append("a file record without its upload, expiry or deletion time")
            return out
        if r.expires_at < r.created_at:
            out.append("expires before it was uploaded")
        elif r.expires_at > r.created_at + self.max_lifetime:
            out.append(f"its expiry was set more than {hours:g} h after upload")
        if r.deleted_at < r.created_at - self.skew:
            out.append("deleted before it was uploaded")
        elif r.deleted_at > r.created_at + self.max_lifetime:
            late = (r.deleted_at - r.created_at) / 3600
            out.append(f"deleted {late:.1f} h after upload, past the {hours:g}-hour promise")
        if r.reason == "expired" and r.deleted_at < r.expires_at - self.skew:
            out.append("reason 'expired' but deleted before its expiry")
        return out


def _flags(record: AuditRecord) -> list[tuple[str, bool]]:
    return sorted((k, v) for k, v in record.verification.items() if isinstance(v, bool))
