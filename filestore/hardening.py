"""Keeping key material out of core dumps.

A process holding live KEKs and DEKs must not leave them in a core file (a
crash dump lands on disk, in a bug report, in a backup) or be readable by a
debugger attached by another user. At start the server sets ``RLIMIT_CORE``
to 0 and, on Linux, marks itself non-dumpable (``PR_SET_DUMPABLE``, which
also blocks ``ptrace`` attach by non-root users and makes ``/proc/<pid>``
root-owned). ``FILESTORE_ALLOW_CORE_DUMPS=1`` opts out, for debugging only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import sys

log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3


def forbid_core_dumps() -> bool:
    """Apply both measures; True if the process is now non-dumpable (or the
    platform has no such flag). Never raises: a failure is logged."""
    if os.environ.get("FILESTORE_ALLOW_CORE_DUMPS") == "1":
        log.warning("core dumps allowed (FILESTORE_ALLOW_CORE_DUMPS=1): keys may reach a dump")
        return False
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        log.warning("could not set RLIMIT_CORE to 0")
    if not sys.platform.startswith("linux"):
        return True
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("could not mark the process non-dumpable")
        return False
    return bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
