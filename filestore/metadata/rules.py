"""The lifecycle's rules, written once, above any one database.

``uploading → active → purging → purged``. Every rule a backend must apply
atomically is a SQLAlchemy Core condition on the ``files`` table here, so it
compiles to the same meaning on SQLite and PostgreSQL; the backend only puts
it into a statement and takes the locks. The rules a caller checks in Python
(may this tenant see this row, may it be read now) sit beside their SQL twins,
so the two cannot drift apart.

State names are rendered as SQL literals, not bound parameters: the partial
indexes are declared on ``state <> 'purged'`` and friends, and a planner can
only use them when it can see the literal.

Transitions (any other is refused by the condition that guards it):

=================  ==========================  ===============================
step               from                        to
=================  ==========================  ===============================
activate           uploading                   active
discard            uploading                   (row removed)
begin_delete       uploading, active, or       purging (lease, reason kept if
                   purging with a lapsed or    already purging)
                   own lease
claim_expired      due (:func:`due_expired`,   purging (reason ``expired``
                   :func:`due_abandoned`)      unless one was recorded)
record_failure     purging, held by the owner  purging, lease released,
                                               retried after a backoff
finish_delete      purging (any deleter whose  purged (+ one audit record)
                   steps all succeeded)
=================  ==========================  ===============================
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from filestore.errors import Gone, NotFound
from filestore.metadata.base import FileKey, FileRecord, FileState
from filestore.metadata.schema import files


def state_is(*states: FileState) -> ColumnElement[bool]:
    """``state`` is one of ``states``, with the names as literals."""
    if len(states) == 1:
        return files.c.state == sa.literal_column(f"'{states[0]}'")
    return files.c.state.in_([sa.literal_column(f"'{s}'") for s in states])


NOT_PURGED = files.c.state != sa.literal_column(f"'{FileState.PURGED}'")


# --------------------------------------------------------------- visibility
def visible(record: FileRecord | None, tenant: str) -> FileRecord:
    """The row if ``tenant`` may know of it; NotFound otherwise. Another
    tenant's file is indistinguishable from a missing one (404, never 403)."""
    if record is None or record.tenant != tenant:
        raise NotFound("no such file")
    return record


def readable(
    loaded: tuple[FileRecord, FileKey | None] | None, tenant: str, now: float
) -> tuple[FileRecord, FileKey]:
    """The row and key of a file ``tenant`` may read at ``now``; NotFound or
    Gone otherwise. Expiry is judged on the clock passed in, every time."""
    record = visible(loaded[0] if loaded else None, tenant)
    key = loaded[1] if loaded else None
    if record.state in (FileState.PURGING, FileState.PURGED):
        raise Gone("the file was deleted")
    if record.state != FileState.ACTIVE or key is None:
        raise NotFound("no such file")
    if now >= record.expires_at:
        raise Gone("the file has expired")
    if record.max_downloads is not None and record.downloads >= record.max_downloads:
        raise Gone("the file reached its download limit")
    return record, key


def downloadable(now: float) -> ColumnElement[bool]:
    """SQL twin of :func:`readable` for the atomic download count: active,
    unexpired and below its limit."""
    return sa.and_(
        state_is(FileState.ACTIVE),
        files.c.expires_at > now,
        sa.or_(files.c.max_downloads.is_(None), files.c.downloads < files.c.max_downloads),
    )


# ------------------------------------------------------------------ leases
def lease_lapsed(now: float) -> ColumnElement[bool]:
    return sa.or_(files.c.lease_expires.is_(None), files.c.lease_expires <= now)


def held_by(owner: str) -> ColumnElement[bool]:
    """The row is being deleted under ``owner``'s lease."""
    return sa.and_(state_is(FileState.PURGING), files.c.lease_owner == owner)


def may_finish() -> ColumnElement[bool]:
    """A deleter that erased the key and saw the blob gone may mark the row
    purged even if its lease lapsed meanwhile: its steps are done and
    idempotent, and whoever finishes first writes the one record. (Requiring
    the lease would let a batch slower than its lease be taken over and
    redone forever.)"""
    return state_is(FileState.PURGING)


def may_lease(owner: str, now: float) -> ColumnElement[bool]:
    """A deleter may take the row: it is not purged, and nobody else holds a
    live lease on it."""
    return sa.or_(
        state_is(FileState.ACTIVE, FileState.UPLOADING),
        sa.and_(
            state_is(FileState.PURGING),
            sa.or_(files.c.lease_owner == owner, lease_lapsed(now)),
        ),
    )


def retry_due(now: float) -> ColumnElement[bool]:
    """Not waiting out the backoff of an earlier failure."""
    return sa.or_(files.c.next_attempt_at.is_(None), files.c.next_attempt_at <= now)


def due_expired(now: float) -> ColumnElement[bool]:
    """Past expiry, not purged, not held by a live lease, not backing off
    (served by the ``files_live_expiry`` index)."""
    return sa.and_(
        NOT_PURGED,
        files.c.expires_at <= now,
        sa.or_(files.c.state != sa.literal_column(f"'{FileState.PURGING}'"), lease_lapsed(now)),
        retry_due(now),
    )


def due_abandoned(now: float) -> ColumnElement[bool]:
    """An early deletion (DELETE, download limit) whose deleter died or
    failed: purged before its expiry (served by ``files_purging``)."""
    return sa.and_(state_is(FileState.PURGING), lease_lapsed(now), retry_due(now))


# ------------------------------------------------------------------- retry
def backoff(attempts: int, interval: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: doubling from one
    purge interval, never more than ``cap``. The cap is the slack the 24-hour
    budget leaves (``Settings.retry_cap``): waiting longer would spend the
    promise on backing off once the fault has cleared."""
    return float(min(interval * 2 ** min(attempts, 20), max(interval, cap)))
