"""Whole-blob writes (``LocalBlobStore.put``, a small upload's blob): the C
helper ``filestore.storage._syncwrite`` and the Python path beside it do the
same thing, and a write that fails part-way leaves no file.

Both run every test; the helper's are skipped, saying so, where it was not
built (no C compiler at install). The failure mid-write is real: a child
process under a file-size limit (``RLIMIT_FSIZE``) gets ``EFBIG`` from its
second ``write``, after the first has put 4 KiB on disk.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from filestore.storage import local
from filestore.storage.local import LocalBlobStore

NAME = "0123456789abcdef0123456789abcdef"
NOT_BUILT = "the C helper filestore.storage._syncwrite was not built (no C compiler at install)"
WRITERS = ["native", "python"]


def _writer(which: str) -> local._WriteNew:
    if which == "python":
        return local._write_new
    if local.NATIVE_WRITE is None:
        pytest.skip(NOT_BUILT)
    return local.NATIVE_WRITE


@pytest.fixture(params=WRITERS)
def write_new(request: pytest.FixtureRequest) -> local._WriteNew:
    return _writer(request.param)


@pytest.mark.parametrize("data", [b"", b"x", os.urandom(3 << 20)], ids=["empty", "1B", "3MiB"])
def test_writes_all_the_bytes_under_the_mode(
    write_new: local._WriteNew, tmp_path: Path, data: bytes
) -> None:
    old = os.umask(0o022)  # applied to the mode, as os.open does
    try:
        write_new(str(tmp_path), "blob", data, 0o640)
    finally:
        os.umask(old)
    assert (tmp_path / "blob").read_bytes() == data
    assert stat.S_IMODE((tmp_path / "blob").stat().st_mode) == 0o640 & ~0o022
    assert os.listdir(tmp_path) == ["blob"]


def test_takes_any_contiguous_buffer(write_new: local._WriteNew, tmp_path: Path) -> None:
    write_new(str(tmp_path), "a", bytearray(b"array"), 0o600)
    write_new(str(tmp_path), "b", memoryview(b"xxview")[2:], 0o600)
    assert (tmp_path / "a").read_bytes() == b"array"
    assert (tmp_path / "b").read_bytes() == b"view"


def test_an_existing_name_is_refused_and_left_as_it_was(
    write_new: local._WriteNew, tmp_path: Path
) -> None:
    (tmp_path / "blob").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_new(str(tmp_path), "blob", b"new bytes", 0o600)
    assert (tmp_path / "blob").read_bytes() == b"old"


def test_a_missing_directory_is_file_not_found(write_new: local._WriteNew, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_new(str(tmp_path / "gone"), "blob", b"x", 0o600)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["", "a/b", "../blob"])
def test_the_helper_takes_plain_names_only(tmp_path: Path, name: str) -> None:
    write_new = _writer("native")
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="plain file name"):
        write_new(str(tmp_path), name, b"x", 0o600)
    assert sorted(os.listdir(tmp_path)) == ["a"]
    assert os.listdir(tmp_path / "a") == []


_UNDER_A_SIZE_LIMIT = textwrap.dedent(
    """
    import asyncio, errno, resource, signal, sys
    from pathlib import Path
    from filestore.errors import StorageUnavailable
    from filestore.storage import local

    which, root = sys.argv[1], Path(sys.argv[2])

    async def via_store():
        store = await local.LocalBlobStore.open(root / "store", native=which == "native")
        try:
            await store.put("0123456789abcdef0123456789abcdef", b"x" * 10000)
        except StorageUnavailable as exc:
            return "StorageUnavailable:" + errno.errorcode[exc.__cause__.errno]
        finally:
            await store.close()
        return "written"

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    write = local.NATIVE_WRITE if which == "native" else local._write_new
    (root / "direct").mkdir()
    try:
        write(str(root / "direct"), "blob", b"x" * 10000, 0o600)
        print("written")
    except OSError as exc:
        print(errno.errorcode[exc.errno])
    print(asyncio.run(via_store()))
    """
)


@pytest.mark.parametrize("which", WRITERS)
def test_a_write_that_fails_part_way_leaves_no_file(which: str, tmp_path: Path) -> None:
    _writer(which)
    done = subprocess.run(
        [sys.executable, "-c", _UNDER_A_SIZE_LIMIT, which, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["EFBIG", "StorageUnavailable:EFBIG"]
    assert os.listdir(tmp_path / "direct") == []
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


# ------------------------------------------------------------ the store's choice
async def test_a_store_uses_the_helper_where_it_was_built(tmp_path: Path) -> None:
    store = await LocalBlobStore.open(tmp_path / "store")
    try:
        assert store.native is (local.NATIVE_WRITE is not None)
    finally:
        await store.close()


async def test_a_store_told_to_use_python_calls_os(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = os.open

    def spy(path: str | Path, *args: int) -> int:
        opened.append(os.path.basename(path))
        return real_open(path, *args)

    store = await LocalBlobStore.open(tmp_path / "store", native=False)
    try:
        monkeypatch.setattr(os, "open", spy)
        await store.put(NAME, b"small")
        monkeypatch.undo()
        assert store.native is False
        assert NAME in opened
        assert await store.get(NAME, 5) == b"small"
    finally:
        await store.close()


async def test_a_store_that_requires_the_helper_refuses_to_start_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "NATIVE_WRITE", None)
    with pytest.raises(RuntimeError, match="was not built"):
        LocalBlobStore(tmp_path / "store", native=True)
    store = LocalBlobStore(tmp_path / "store")  # not required: the Python path
    assert store.native is False
    await store.close()
