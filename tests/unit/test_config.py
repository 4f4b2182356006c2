from pathlib import Path

import pytest

from filestore.config import DAY, Settings, parse_duration, parse_size
from filestore.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1.5h", 5400),
        (30, 30),
        ("23h58m", 86280),
        ("1h 30m", 5400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5", "5x", "1e9999", "nan", "5 hours"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1024", 1024), ("1KiB", 1024), ("512MiB", 512 << 20), ("10GB", 10 << 30), ("2g", 2 << 30)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_defaults_are_the_embedded_setup() -> None:
    s = Settings.load(env={})
    assert (s.host, s.port, s.storage) == ("127.0.0.1", 8080, "local")
    assert s.data_dir == Path("filestore-data")
    assert s.database_path == Path("filestore-data/filestore.db")
    assert s.max_ttl + 2 * s.purge_interval == DAY


def test_environment_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "filestore.toml"
    cfg.write_text('port = 9000\nmax_ttl = "12h"\ndata_dir = "/srv/fs"\n')
    s = Settings.load(env={"FILESTORE_PORT": "9100"}, config_file=cfg)
    assert s.port == 9100
    assert s.max_ttl == 12 * 3600
    assert s.data_dir == Path("/srv/fs")


def test_config_file_from_env(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('default_ttl = "10m"\n')
    assert Settings.load(env={"FILESTORE_CONFIG": str(cfg)}).default_ttl == 600


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FILESTORE_PORT": "http"}, "FILESTORE_PORT"),
        ({"FILESTORE_PORT": "70000"}, "FILESTORE_PORT"),
        ({"FILESTORE_MAX_TTL": "24h"}, "24h"),
        ({"FILESTORE_MAX_TTL": "23h", "FILESTORE_PURGE_INTERVAL": "31m"}, "PURGE_INTERVAL"),
        ({"FILESTORE_DEFAULT_TTL": "23h59m"}, "DEFAULT_TTL"),
        ({"FILESTORE_LOG_LEVEL": "chatty"}, "FILESTORE_LOG_LEVEL"),
        ({"FILESTORE_STORAGE": "ftp"}, "FILESTORE_STORAGE"),
        ({"FILESTORE_MAX_FILE_SIZE": "lots"}, "FILESTORE_MAX_FILE_SIZE"),
        ({"FILESTORE_DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"FILESTORE_BATCH_SIZE": "1000"}, "BATCH_SIZE"),
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(env=env)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        Settings.load(env={}, config_file=cfg)


def test_broken_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(env={}, config_file=cfg)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.load(env={}, config_file=tmp_path / "nope.toml")


def test_download_grace_follows_a_short_purge_interval() -> None:
    assert Settings.load(env={"FILESTORE_PURGE_INTERVAL": "5s"}).download_grace == 5
    assert Settings.load(env={}).download_grace == 60
    five_minutes = {"FILESTORE_PURGE_INTERVAL": "5m", "FILESTORE_MAX_TTL": "23h"}
    assert Settings.load(env=five_minutes).download_grace == 60
    with pytest.raises(ConfigError, match="DOWNLOAD_GRACE"):
        Settings.load(env={"FILESTORE_PURGE_INTERVAL": "5s", "FILESTORE_DOWNLOAD_GRACE": "10s"})
