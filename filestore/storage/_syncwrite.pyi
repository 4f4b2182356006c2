"""Types of the optional C helper (filestore/storage/_syncwrite.c)."""

import os

def write_new(
    directory: str | bytes | os.PathLike[str],
    name: str | bytes,
    data: bytes | bytearray | memoryview,
    mode: int,
    /,
) -> None: ...
