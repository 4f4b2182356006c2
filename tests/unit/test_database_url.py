"""PostgreSQL URLs: libpq's parameters understood, anything else refused by
name, and a password never quoted in an error."""

from __future__ import annotations

import pytest

from filestore.config import Settings
from filestore.errors import ConfigError
from filestore.metadata.database import asyncpg_url


def test_libpq_parameters_become_connection_arguments() -> None:
    url, args = asyncpg_url(
        "postgresql://fs:pw@db.internal:6432/files?sslmode=verify-full&connect_timeout=3"
        "&application_name=gw"
    )
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port, url.database, dict(url.query)) == ("db.internal", 6432, "files", {})
    assert args == {
        "ssl": "verify-full",
        "timeout": 3.0,
        "server_settings": {"application_name": "gw"},
    }
    assert asyncpg_url("postgres://fs@h/db")[0].drivername == "postgresql+asyncpg"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql://fs:S3cretPW@h/db?sslmode=sometimes", "sslmode"),
        ("postgresql://fs:S3cretPW@h/db?connect_timeout=soon", "connect_timeout"),
        ("postgresql://fs:S3cretPW@h/db?target_session_attrs=any", "target_session_attrs"),
        ("postgresql://fs:S3cretPW@h:port/db", "not a valid"),
    ],
)
def test_bad_urls_are_refused_without_the_password(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as err:
        asyncpg_url(url)
    assert "S3cretPW" not in str(err.value)


def test_settings_never_quote_or_show_the_database_url() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load(env={"FILESTORE_DATABASE_URL": "mysql://admin:S3cretPW@h/db"})
    assert "DATABASE_URL" in str(err.value) and "S3cretPW" not in str(err.value)
    settings = Settings.load(env={"FILESTORE_DATABASE_URL": "postgresql://a:S3cretPW@h/db"})
    assert "S3cretPW" not in repr(settings)
