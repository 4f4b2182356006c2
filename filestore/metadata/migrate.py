"""Schema migrations: one Alembic history for SQLite and PostgreSQL.

Run at every start (and by ``filestore db upgrade``) on a connection the
caller has already locked against other instances migrating at once.

A SQLite database made before Alembic (it records its schema in
``PRAGMA user_version``; version 4 is the schema of revision ``0001``) is
stamped at ``0001`` first, so existing deployments upgrade in place.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from filestore.errors import ConfigError

MIGRATIONS = Path(__file__).with_name("migrations")
#: ``PRAGMA user_version`` of the last hand-rolled SQLite schema, which
#: revision 0001 reproduces.
LEGACY_SQLITE_VERSION = 4
BASELINE = "0001"


def _config(conn: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def head_revision() -> str:
    """The newest revision this software knows."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def current_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(conn: sa.Connection) -> None:
    """Bring the schema to the newest revision; refuse a newer database."""
    config = _config(conn)
    current = current_revision(conn)
    if current is None and conn.dialect.name == "sqlite":
        version = conn.exec_driver_sql("PRAGMA user_version").scalar()
        if version == LEGACY_SQLITE_VERSION:
            command.stamp(config, BASELINE)
            conn.commit()
        elif version:
            raise ConfigError(
                f"the SQLite database is at legacy schema version {version}; "
                f"only version {LEGACY_SQLITE_VERSION} can be upgraded"
            )
        current = current_revision(conn)
    script = ScriptDirectory.from_config(config)
    try:
        known = current is None or script.get_revision(current) is not None
    except CommandError:
        known = False
    if not known:
        raise ConfigError(
            f"the metadata database is at schema revision {current}, newer than this "
            "filestore knows: upgrade filestore before pointing it at this database"
        )
    command.upgrade(config, "head")
    conn.commit()
