"""The one error the audit package raises on purpose.

Every check that fails — a record whose hash does not match, a broken chain,
a bad signature, a proof that does not lead to the signed root, a stale or
inconsistent checkpoint, a malformed line — raises
:class:`AuditVerificationError`. Following ``cryptography``'s rule, nothing
here returns ``False`` for "invalid": callers cannot forget to look.

Programming errors (asking for the proof of a leaf outside the tree, giving
the export writer records out of order) raise ``ValueError`` instead: they are
bugs in the caller, not evidence about the log.
"""

from __future__ import annotations

from filestore.errors import FilestoreError

__all__ = ["AuditVerificationError"]


class AuditVerificationError(FilestoreError):
    """Audit data failed a check.

    ``str(err)`` names the first place that is wrong — ``line N`` of an
    export and ``seq S`` of a record where known — and what was wrong. It
    never quotes field values, so it is safe to log. ``line``, ``seq`` and
    ``reason`` carry the same facts for programs.
    """

    def __init__(self, reason: str, *, line: int | None = None, seq: int | None = None) -> None:
        self.reason = reason
        self.line = line
        self.seq = seq
        where = []
        if line is not None:
            where.append(f"line {line}")
        if seq is not None:
            where.append(f"seq {seq}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)

    def at(self, *, line: int | None = None, seq: int | None = None) -> AuditVerificationError:
        """A copy of this error placed at ``line``/``seq`` (kept if already set)."""
        return AuditVerificationError(
            self.reason,
            line=self.line if self.line is not None else line,
            seq=self.seq if self.seq is not None else seq,
        )
