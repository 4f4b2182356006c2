"""No key material in core dumps: the server's first act is to forbid them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import ctypes, ctypes.util, resource\n"
    "from filestore.hardening import forbid_core_dumps\n"
    "ok = forbid_core_dumps()\n"
    "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
    "print(ok, resource.getrlimit(resource.RLIMIT_CORE), libc.prctl(3, 0, 0, 0, 0))\n"
)


def _run(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FILESTORE_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_core_dumps_are_forbidden_and_the_process_is_not_dumpable() -> None:
    assert _run() == "True (0, 0) 0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_debugging_opt_out_leaves_both_alone() -> None:
    ok, _rest = _run(FILESTORE_ALLOW_CORE_DUMPS="1").split(" ", 1)
    assert ok == "False"
    assert _run(FILESTORE_ALLOW_CORE_DUMPS="1").endswith(" 1")  # still dumpable
