"""The CSV export, for spreadsheets.

One header row, then one row per record, columns in :data:`CSV_COLUMNS`
order; times are RFC 3339 UTC, absent values are empty, ``verification`` is
flattened to ``key=value;...`` with keys sorted and booleans as
``true``/``false``. Rows end with CRLF (RFC 4180).

A cell that a spreadsheet would run as a formula (one starting with ``=``,
``+``, ``-``, ``@``, tab or CR — a file id can start with ``-``) is written
with a leading ``'``; strip it to get the value.

CSV carries no checkpoints or proofs: it is **not verifiable on its own**.
Verify the JSONL export of the same range and use the CSV to read it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

from filestore.audit.records import AuditRecord

__all__ = ["CSV_COLUMNS", "export_csv"]

CSV_COLUMNS: tuple[str, ...] = (
    "seq",
    "event",
    "recorded_at",
    "file_id",
    "tenant",
    "size",
    "created_at",
    "expires_at",
    "deleted_at",
    "reason",
    "backend",
    "method",
    "verification",
    "kek_id",
    "actor",
    "software_version",
    "prev_hash",
    "hash",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ";".join(f"{k}={_cell(v)}" for k, v in sorted(value.items()))
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _row(cells: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(list(cells))
    return buf.getvalue()


def export_csv(records: Iterable[AuditRecord]) -> Iterator[str]:
    """Stream the CSV: the header row, then one row per record."""
    yield _row(CSV_COLUMNS)
    for record in records:
        data = record.to_json()
        yield _row(_cell(data[c]) for c in CSV_COLUMNS)
