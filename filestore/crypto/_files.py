"""Private key files: atomic writes and permission checks.

Shared by the keyring and the signing key. Two promises callers rely on:

* a key file is never seen half-written: the data goes to a temporary file in
  the same directory (created ``O_EXCL`` with the final mode, so it is never
  readable by others, even for an instant), is fsynced, renamed over the
  target, and the directory is fsynced so the rename survives a crash;
* a key file that group or others may access is refused with a
  :class:`~filestore.errors.ConfigError` naming the path, never the contents.

All functions do blocking file I/O; call them from a thread in async code.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import stat
from pathlib import Path

from filestore.errors import ConfigError

__all__ = ["check_private", "ensure_private_dir", "read_private_file", "write_private_file"]


def _check_mode(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )


def check_private(path: Path) -> None:
    """ConfigError unless ``path`` is a regular file only its owner may access."""
    _check_mode(path, os.stat(path))


def read_private_file(path: Path) -> bytes:
    """Read a key file after checking (on the open descriptor) that it is
    private. FileNotFoundError if it does not exist."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        _check_mode(path, os.fstat(f.fileno()))
        return f.read()


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` and any missing parents with mode 0700.

    Existing directories are left as they are.
    """
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless ``path`` exists."""
    try:
        os.link(tmp, path)  # atomic and never overwrites, unlike rename
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links: check-then-rename, racy but rare.
        if path.exists():
            raise FileExistsError(path) from None
        os.replace(tmp, path)


def write_private_file(path: Path, data: bytes, mode: int = 0o600, *, replace: bool = True) -> None:
    """Atomically make ``path`` hold ``data`` with permissions ``mode``.

    With ``replace=False`` the file is only created: FileExistsError if it
    already exists (so two processes creating the same key concurrently end
    up agreeing on one of them, rather than each keeping its own).
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it (e.g. for 0644)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(directory)


def b64_or_none(value: object) -> bytes | None:
    """Strict base64 of a key file's field, or None (the caller says what is
    wrong without quoting the field)."""
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
