"""Logging for the filestore commands: text for a terminal, or JSON lines.

``FILESTORE_LOG_FORMAT=text`` (the default) writes
``time LEVEL logger: message``. ``json`` writes each record as one JSON
object on one line, for a log pipeline::

    {"time": "2026-12-02T10:00:00.123Z", "level": "INFO",
     "logger": "filestore.access", "message": "GET /v1/files/{id} 200 …",
     "request_id": "…", "route": "/v1/files/{id}", "method": "GET",
     "status": 200, "bytes": 70000, "duration_seconds": 0.012, "tenant": "acme"}

Structured fields are whatever a call passed as ``extra`` (the access log
passes its figures; see ``filestore.api.access_log``). A traceback, if any,
goes in ``exception`` — still one line. Values that JSON cannot hold are
written as their ``str``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has; anything else on a record came from
#: ``extra`` and is written as a field of its own.
_STANDARD = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}
#: Keys the JSON line itself uses; an ``extra`` of the same name is renamed.
_OWN = ("time", "level", "logger", "message", "exception", "stack")
#: Loggers that say too much at INFO: APScheduler logs every run, Alembic its
#: context at each start (the pass and `filestore db` say what matters).
_NOISY = ("apscheduler", "alembic")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            doc[f"extra_{key}" if key in _OWN else key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}")


class _Handler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure` installs (and replaces when called
    again); handlers others installed are left alone."""


class _Fields(logging.Filter):
    """Stamps fixed fields on every record the handler writes (a worker's
    name): a handler filter, so records of every logger get them."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            setattr(record, key, value)
        return True


def configure(
    level: str,
    log_format: str = "text",
    stream: TextIO | None = None,
    fields: Mapping[str, str] | None = None,
) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr)
    in ``log_format``. ``fields`` are added to every record: JSON keys, and
    in text after the level (``worker=gw-…-w1``)."""
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    if fields:
        handler.addFilter(_Fields(fields))
        if log_format == "text":
            text = " ".join(f"{k}={v}" for k, v in fields.items()).replace("%", "%%")
            handler.setFormatter(
                logging.Formatter(TEXT_FORMAT.replace("%(levelname)s ", f"%(levelname)s {text} "))
            )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
