"""Where the CLI finds the server URL and API key.

In this order, the first that gives a value wins, for each of the two:

1. the flags ``--url`` and ``--token``;
2. the environment, ``FILESTORE_URL`` and ``FILESTORE_TOKEN``;
3. a TOML file with ``url`` and ``token``: the one named by
   ``FILESTORE_CLIENT_CONFIG``, else ``$XDG_CONFIG_HOME/filestore/client.toml``
   (``~/.config/filestore/client.toml``).

The URL falls back to the server's default, ``http://127.0.0.1:8080``.
(``FILESTORE_CONFIG`` is the server's settings file, which refuses keys it
does not know; the client has a variable of its own.)
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_URL",
    "ConfigProblem",
    "Connection",
    "default_config_path",
    "resolve",
]

DEFAULT_URL = "http://127.0.0.1:8080"
CONFIG_ENV = "FILESTORE_CLIENT_CONFIG"
_KEYS = frozenset({"url", "token"})


class ConfigProblem(Exception):
    """The configuration cannot be used (a usage error); the message says why."""


@dataclass(frozen=True)
class Connection:
    """The URL and key to use, and where each came from (for messages;
    never the key itself)."""

    url: str
    token: str | None
    url_from: str
    token_from: str | None
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the token never shows
        return f"Connection(url={self.url!r}, token_from={self.token_from!r})"


def default_config_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "filestore" / "client.toml"


def _read_file(path: Path, required: bool) -> tuple[dict[str, str], list[str]]:
    warnings: list[str] = []
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigProblem(f"the client config file {path} does not exist") from None
        return {}, warnings
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigProblem(f"cannot read the client config file {path}: {exc}") from None
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigProblem(
            f"{path}: unknown setting(s) {', '.join(sorted(unknown))} (known: url, token)"
        )
    values: dict[str, str] = {}
    for key in _KEYS & set(data):
        if not isinstance(data[key], str) or not data[key]:
            raise ConfigProblem(f"{path}: {key} must be a non-empty string")
        values[key] = data[key]
    if "token" in values and stat.S_IMODE(mode) & 0o077:
        warnings.append(f"{path} holds an API key and others may read it (chmod 600 {path})")
    return values, warnings


def resolve(
    url: str | None,
    token: str | None,
    env: Mapping[str, str] | None = None,
) -> Connection:
    """The connection from flags, then ``env`` (default ``os.environ``), then
    the config file. ConfigProblem for a config file that cannot be used."""
    env = os.environ if env is None else env
    named = env.get(CONFIG_ENV)
    path = Path(named) if named else default_config_path(env)
    from_file, warnings = _read_file(path, required=bool(named))
    chosen_url, url_from = DEFAULT_URL, "the default"
    for value, source in (
        (url, "--url"),
        (env.get("FILESTORE_URL"), "FILESTORE_URL"),
        (from_file.get("url"), str(path)),
    ):
        if value:
            chosen_url, url_from = value, source
            break
    chosen_token, token_from = None, None
    for value, source in (
        (token, "--token"),
        (env.get("FILESTORE_TOKEN"), "FILESTORE_TOKEN"),
        (from_file.get("token"), str(path)),
    ):
        if value:
            chosen_token, token_from = value.strip(), source
            break
    return Connection(chosen_url, chosen_token, url_from, token_from, tuple(warnings))
