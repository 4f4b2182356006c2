"""The connection limits ``filestore serve`` applies (see
``filestore/api/connections.py`` and docs/operations.md, "Connection
limits"): their defaults and their refusal of a value that would switch a
bound off."""

from __future__ import annotations

import pytest

from filestore.config import Settings
from filestore.errors import ConfigError


def test_defaults_and_parsing() -> None:
    assert Settings().header_timeout == 20.0
    # Above nginx's idle upstream timeout (60 s), so nginx never reuses a
    # connection the gateway is closing.
    assert Settings().keepalive_timeout == 75.0
    env = {"FILESTORE_HEADER_TIMEOUT": "5s", "FILESTORE_KEEPALIVE_TIMEOUT": "2m"}
    settings = Settings.load(env=env)
    assert (settings.header_timeout, settings.keepalive_timeout) == (5.0, 120.0)


@pytest.mark.parametrize("name", ["HEADER_TIMEOUT", "KEEPALIVE_TIMEOUT"])
def test_zero_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"FILESTORE_{name} must be positive"):
        Settings.load(env={f"FILESTORE_{name}": "0"})
