"""Settings: one frozen object, built once from the environment and a TOML file.

Every setting has a name; its environment variable is ``FILESTORE_<NAME>`` and
its TOML key is the lowercase name (``max_ttl = "23h"``). The environment wins
over the file. ``FILESTORE_CONFIG`` (or ``--config``) names the TOML file.
A wrong value stops the start with a message that names the setting and says
what it accepts.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from filestore import loops
from filestore.audit.cosignature import parse_witness_key
from filestore.audit.errors import AuditVerificationError
from filestore.errors import ConfigError

DAY = 24 * 3600.0
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``90``, ``"90"``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``
    or a compound such as ``"23h58m"``."""
    if isinstance(text, bool):
        raise ValueError("expected a duration")
    if isinstance(text, int | float):
        value = float(text)
    else:
        compact = text.strip().replace(" ", "")
        parts = _DURATION_PART_RE.findall(compact)
        if not compact or "".join(n + u for n, u in parts) != compact:
            raise ValueError("expected seconds, or numbers with s, m, h or d (e.g. 23h58m)")
        if len(parts) > 1 and any(not u for _n, u in parts):
            raise ValueError("in a compound duration every number needs a unit")
        value = sum(float(n) * _UNITS[u] for n, u in parts)
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise ValueError("expected a finite, non-negative duration")
    return value


def parse_size(text: str | int) -> int:
    """Bytes from ``1048576``, ``"512MiB"``, ``"10GB"`` (powers of 1024 either way)."""
    if isinstance(text, bool):
        raise ValueError("expected a size")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE_RE.match(text)
        if not match:
            raise ValueError("expected bytes, or a number with KiB, MiB, GiB or TiB")
        unit = (match.group(2) or "b").lower()[0]
        value = (
            int(match.group(1))
            * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]
        )
    if value < 0:
        raise ValueError("expected a non-negative size")
    return value


def _parse_port(text: str | int) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("expected a port number from 0 to 65535")
    return port


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


def _parse_level(text: str) -> str:
    level = str(text).upper()
    if level not in _LOG_LEVELS:
        raise ValueError("expected one of " + ", ".join(_LOG_LEVELS))
    return level


def _parse_log_format(text: str) -> str:
    value = str(text).strip().lower()
    if value not in ("text", "json"):
        raise ValueError("expected text or json")
    return value


def _parse_event_loop(text: str) -> str:
    value = str(text).strip().lower()
    if value not in loops.CHOICES:
        raise ValueError("expected " + ", ".join(loops.CHOICES))
    return value


def _parse_database_url(text: str) -> str:
    url = str(text).strip()
    if url and not url.startswith(_DATABASE_SCHEMES):
        raise ValueError(
            "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    return url


#: URL schemes FILESTORE_DATABASE_URL accepts (a driver suffix is allowed only
#: where it names the driver filestore uses).
_DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+asyncpg://", "postgres://")


def _parse_key_schedule(text: str) -> str:
    if text not in ("keyring", "ratchet"):
        raise ValueError("expected 'keyring' (one host) or 'ratchet' (machines sharing nothing)")
    return text


def _parse_peers(text: str | list[str]) -> tuple[str, ...]:
    items = text if isinstance(text, list) else str(text).split(",")
    peers = tuple(p.strip().rstrip("/") for p in items if p.strip())
    for peer in peers:
        if not peer.startswith(("http://", "https://")):
            raise ValueError("expected a comma-separated list of http(s):// base URLs")
    return peers


def _parse_origin(text: str) -> str:
    # The origin doubles as the checkpoints' key name: no space, no '+'.
    if text and (len(text) > 255 or re.search(r"[\s+]", text)):
        raise ValueError("expected a log name without spaces or '+', e.g. filestore.audit/eu-1")
    return text


def _parse_witnesses(text: str | list[str]) -> tuple[str, ...]:
    items = text if isinstance(text, list) else re.split(r"[,\s]+", str(text))
    vkeys = tuple(v.strip() for v in items if v.strip())
    names = set()
    for vkey in vkeys:
        try:
            witness = parse_witness_key(vkey)
        except AuditVerificationError as exc:
            raise ValueError(
                f"expected witness vkeys (name+keyid+base64 of type 0x04): {exc}"
            ) from None
        if witness.name in names:
            raise ValueError(f"two witnesses are named {witness.name!r}")
        names.add(witness.name)
    return vkeys


def _parse_storage(text: str) -> str:
    if text not in ("local", "s3"):
        raise ValueError("expected 'local' or 's3'")
    return text


# --- S3 settings (issue 4) ---------------------------------------------------
#: S3 refuses parts under 5 MiB (but the last) and uploads of over 10 000 parts.
S3_MIN_PART_SIZE = 5 << 20
S3_MAX_PARTS = 10_000


def _parse_addressing_style(text: str) -> str:
    if text not in ("auto", "path", "virtual"):
        raise ValueError("expected 'auto', 'path' or 'virtual'")
    return text


def _parse_part_size(text: str | int) -> int:
    size = parse_size(text)
    if not S3_MIN_PART_SIZE <= size <= 5 << 30:
        raise ValueError("expected a part size from 5MiB to 5GiB (S3's limits)")
    return size


# --- end of S3 settings --------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Everything filestore can be told. Defaults give the embedded setup."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("filestore-data")
    #: Blob backend: "local" (files under data_dir/storage) or "s3" (the s3_* settings).
    storage: str = "local"
    #: Metadata database: empty means SQLite at data_dir/filestore.db;
    #: ``sqlite:///PATH`` or ``postgresql://USER:PASSWORD@HOST:PORT/DB``.
    #: Left out of the repr: it may hold a password.
    database_url: str = field(default="", repr=False)
    #: Connections kept open to PostgreSQL by each process.
    database_pool_size: int = 10
    #: Gateway processes ``filestore serve`` runs on one port (SO_REUSEPORT);
    #: 1 is a single process with no supervisor (filestore.workers).
    workers: int = 1
    max_file_size: int = 10 << 30
    default_ttl: float = 3600.0
    max_ttl: float = DAY - 120.0
    purge_interval: float = 60.0
    #: Key-encryption keyring; empty means data_dir/keys/keyring.json.
    keyring_file: str = ""
    #: Where key-encryption keys come from: "keyring" (a file shared by the
    #: processes of one host) or "ratchet" (a forward-secure schedule each
    #: machine keeps on its own disk; see docs/architecture.md).
    key_schedule: str = "keyring"
    #: Ratchet state; empty means data_dir/keys/ratchet.json.
    ratchet_file: str = ""
    #: Secret only the instances share, authenticating a ratchet hand-over.
    cluster_secret_file: str = ""
    #: Base URLs of live peers a new instance asks for the ratchet state.
    join_peers: tuple[str, ...] = ()
    #: How long a new instance keeps asking its peers before it gives up.
    join_wait: float = 60.0
    #: Largest difference from the database server's clock before this
    #: instance reports itself not ready (expiry is judged on local clocks).
    max_clock_skew: float = 5.0
    #: Ed25519 audit signing key; empty means data_dir/keys/audit-signing.pem.
    signing_key_file: str = ""
    #: Secret for signed download links; empty means data_dir/keys/link-signing.key.
    link_key_file: str = ""
    #: Lifetime of a signed link when the client asks for none (capped at the file's).
    default_link_ttl: float = 3600.0
    #: A new key-encryption key this often.
    kek_rotation: float = 3600.0
    #: Extra wait, past the last possible purge, before a retired KEK is destroyed.
    kek_grace: float = 3600.0
    #: Files claimed per purge batch.
    purge_batch_size: int = 500
    #: Checkpoint origin line: names this deployment's audit log (and is the
    #: key name its checkpoints are signed under). Empty: the log keeps the
    #: origin its checkpoints already carry, and a new log takes
    #: filestore.audit/<16 hex of SHA-256 of the signing public key>.
    audit_origin: str = ""
    #: Witnesses whose cosignatures the gateway accepts and serves with its
    #: checkpoints: C2SP vkeys of type 0x04, comma- or space-separated.
    audit_witnesses: tuple[str, ...] = ()
    log_level: str = "INFO"
    #: "text" (one readable line per record, for a terminal) or "json" (one
    #: JSON object per line, with the access log's fields as keys).
    log_format: str = "text"
    #: The server's event loop: "auto" (uvloop where installed), "uvloop"
    #: (an error without it) or "asyncio" (the standard library's).
    event_loop: str = "auto"
    #: A client that sends no body bytes for this long is cut off (408).
    read_timeout: float = 60.0
    #: A client must send a whole request head (request line and headers)
    #: within this long of connecting, or of its next request's first byte.
    header_timeout: float = 20.0
    #: An idle kept-alive connection is closed after this long (keep it above
    #: a proxy's idle upstream timeout: nginx's is 60 s).
    keepalive_timeout: float = 75.0
    #: A download already streaming at expiry may go on this long, then is cut
    #: (unset: 60 s, or the purge interval if that is shorter).
    download_grace: float = 60.0
    #: How often storage is listed for blobs no row claims (orphans).
    sweep_interval: float = 3600.0
    #: Uploads still "uploading" after this long are abandoned (swept).
    upload_grace: float = 3600.0
    #: Bytes of plaintext per encryption batch (a multiple of 16 KiB).
    batch_size: int = 1 << 20
    #: A verified API key is not looked up again for this long, so a key
    #: revoked from another process works at most this much longer (0: off).
    key_cache_ttl: float = 1.0
    # --- S3 settings (issue 4); credentials come from the standard AWS chain.
    #: Bucket for blobs when storage = "s3" (required then).
    s3_bucket: str = ""
    #: Key prefix of every object filestore writes; it owns everything below it.
    s3_prefix: str = "filestore/"
    #: Endpoint of an S3-compatible service (MinIO, SeaweedFS, Ceph, R2); empty for AWS.
    s3_endpoint_url: str = ""
    #: Region; empty means the AWS chain's (AWS_REGION, AWS_DEFAULT_REGION, config file).
    s3_region: str = ""
    #: "auto", "path" (most self-hosted services) or "virtual" (bucket in the host name).
    s3_addressing_style: str = "auto"
    #: Multipart part size: memory per upload is about three parts.
    s3_part_size: int = 8 << 20
    #: Threads for S3 calls (and HTTP connections in the pool).
    s3_max_workers: int = 16
    # --- end of S3 settings

    # ------------------------------------------------------------------ derived
    @property
    def database_dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "sqlite" if not self.database_url or self.database_url.startswith("sqlite") else (
            "postgresql"
        )

    @property
    def database_path(self) -> Path:
        """The SQLite file, when the metadata database is SQLite."""
        url = self.database_url
        if not url:
            return self.data_dir / "filestore.db"
        if url.startswith("sqlite:///"):
            return Path(url[len("sqlite:///") :])
        raise ConfigError("FILESTORE_DATABASE_URL names no SQLite file")

    @property
    def ratchet_path(self) -> Path:
        if self.ratchet_file:
            return Path(self.ratchet_file)
        return self.data_dir / "keys" / "ratchet.json"

    @property
    def retry_cap(self) -> float:
        """Longest wait before a failed deletion is retried: what is left of
        the 24 hours after the longest life and one pass, and at least one
        interval (a file due at expiry must be gone an interval later)."""
        return max(self.purge_interval, DAY - self.max_ttl - self.purge_interval)

    @property
    def kek_destroy_after(self) -> float:
        """Seconds from the end of a KEK's epoch (its retirement) until it is
        destroyed: every file it wrapped has expired and been purged by then."""
        return self.max_ttl + self.purge_interval + self.kek_grace

    @property
    def keyring_path(self) -> Path:
        return (
            Path(self.keyring_file)
            if self.keyring_file
            else self.data_dir / "keys" / "keyring.json"
        )

    @property
    def signing_key_path(self) -> Path:
        return (
            Path(self.signing_key_file)
            if self.signing_key_file
            else self.data_dir / "keys" / "audit-signing.pem"
        )

    @property
    def link_key_path(self) -> Path:
        return (
            Path(self.link_key_file)
            if self.link_key_file
            else self.data_dir / "keys" / "link-signing.key"
        )

    @property
    def storage_dir(self) -> Path:
        """Root of the local blob store (``blobs/`` and ``tmp/`` below it)."""
        return self.data_dir / "storage"

    # --------------------------------------------------------------- building
    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        config_file: str | Path | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from a TOML file, then the environment, then overrides.

        Raises ConfigError naming the first bad setting.
        """
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        path = config_file or env.get("FILESTORE_CONFIG")
        if path:
            try:
                with open(path, "rb") as fh:
                    data = tomllib.load(fh)
            except OSError as exc:
                raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path}: not valid TOML ({exc})") from exc
            known = {f.name for f in fields(cls)}
            for key, value in data.items():
                if key not in known:
                    raise ConfigError(f"config file {path}: unknown setting {key!r}")
                raw[key] = value
        for f in fields(cls):
            name = "FILESTORE_" + f.name.upper()
            if name in env:
                raw[f.name] = env[name]
        raw.update({k: v for k, v in overrides.items() if v is not None})
        values: dict[str, Any] = {}
        for key, value in raw.items():
            parser = _PARSERS[key]
            try:
                values[key] = parser(value)
            except (ValueError, TypeError) as exc:
                # A URL may hold a password: name the setting, not the value.
                shown = "…" if key in _SECRET_VALUES else repr(value)
                raise ConfigError(f"FILESTORE_{key.upper()}={shown} is not valid: {exc}") from exc
        if "download_grace" not in values:
            # Unset, the grace follows a short purge interval down: it may be
            # at most one interval (see validate).
            interval = values.get("purge_interval", cls.purge_interval)
            values["download_grace"] = min(cls.download_grace, interval)
        settings = replace(cls(), **values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check the settings against each other; raise ConfigError if unusable."""
        if self.purge_interval < 1:
            raise ConfigError("FILESTORE_PURGE_INTERVAL must be at least 1 second")
        if self.max_ttl <= 0:
            raise ConfigError("FILESTORE_MAX_TTL must be positive")
        if self.max_ttl + 2 * self.purge_interval > DAY:
            raise ConfigError(
                "FILESTORE_MAX_TTL plus two FILESTORE_PURGE_INTERVALs must not exceed 24h, "
                "or a file could outlive the 24-hour promise "
                f"(max_ttl={self.max_ttl:g}s, purge_interval={self.purge_interval:g}s)"
            )
        if self.download_grace > self.purge_interval:
            raise ConfigError(
                "FILESTORE_DOWNLOAD_GRACE may be at most FILESTORE_PURGE_INTERVAL, so a "
                "download in flight at expiry ends within the 24-hour bound"
            )
        for name in ("header_timeout", "keepalive_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"FILESTORE_{name.upper()} must be positive")
        if self.kek_rotation < 60:
            raise ConfigError("FILESTORE_KEK_ROTATION must be at least 60 seconds")
        if not 0 < self.default_ttl <= self.max_ttl:
            raise ConfigError(
                "FILESTORE_DEFAULT_TTL must be positive and at most FILESTORE_MAX_TTL"
            )
        if self.batch_size % 16384 or self.batch_size <= 0:
            raise ConfigError("FILESTORE_BATCH_SIZE must be a positive multiple of 16384")
        if self.key_schedule == "ratchet" and not self.cluster_secret_file:
            raise ConfigError(
                "FILESTORE_CLUSTER_SECRET_FILE must be set when FILESTORE_KEY_SCHEDULE=ratchet"
            )
        # --- S3 settings (issue 4)
        if self.storage == "s3":
            if not self.s3_bucket:
                raise ConfigError("FILESTORE_S3_BUCKET must be set when FILESTORE_STORAGE=s3")
            # Ciphertext is ~0.1 % longer than the plaintext, plus its prefix.
            if self.max_file_size + self.max_file_size // 1000 + (1 << 20) > (
                S3_MAX_PARTS * self.s3_part_size
            ):
                raise ConfigError(
                    "FILESTORE_S3_PART_SIZE is too small for FILESTORE_MAX_FILE_SIZE: S3 allows "
                    f"at most {S3_MAX_PARTS} parts per upload"
                )
        # --- end of S3 settings


#: Settings whose values are never quoted in an error message.
_SECRET_VALUES = frozenset({"database_url"})

_PARSERS: dict[str, Callable[[Any], Any]] = {
    "host": str,
    "port": _parse_port,
    "data_dir": lambda v: Path(str(v)),
    "storage": _parse_storage,
    "database_url": _parse_database_url,
    "database_pool_size": lambda v: _positive(int(v)),
    "workers": lambda v: _positive(int(v)),
    "key_schedule": _parse_key_schedule,
    "ratchet_file": str,
    "cluster_secret_file": str,
    "join_peers": _parse_peers,
    "join_wait": parse_duration,
    "max_clock_skew": parse_duration,
    "max_file_size": parse_size,
    "default_ttl": parse_duration,
    "max_ttl": parse_duration,
    "purge_interval": parse_duration,
    "keyring_file": str,
    "signing_key_file": str,
    "link_key_file": str,
    "default_link_ttl": parse_duration,
    "kek_rotation": parse_duration,
    "kek_grace": parse_duration,
    "purge_batch_size": lambda v: _positive(int(v)),
    "audit_origin": _parse_origin,
    "audit_witnesses": _parse_witnesses,
    "log_level": _parse_level,
    "log_format": _parse_log_format,
    "event_loop": _parse_event_loop,
    "read_timeout": parse_duration,
    "header_timeout": parse_duration,
    "keepalive_timeout": parse_duration,
    "upload_grace": parse_duration,
    "download_grace": parse_duration,
    "sweep_interval": parse_duration,
    "batch_size": parse_size,
    "key_cache_ttl": parse_duration,
    # --- S3 settings (issue 4)
    "s3_bucket": str,
    "s3_prefix": str,
    "s3_endpoint_url": str,
    "s3_region": str,
    "s3_addressing_style": _parse_addressing_style,
    "s3_part_size": _parse_part_size,
    "s3_max_workers": lambda v: _positive(int(v)),
    # --- end of S3 settings
}
