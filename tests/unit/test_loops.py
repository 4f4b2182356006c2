"""The server's event loop choice (filestore/loops.py)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from filestore import loops
from filestore.config import Settings
from filestore.errors import ConfigError


def test_auto_is_uvloop_where_installed() -> None:
    assert loops.resolve("auto") == ("uvloop" if loops.uvloop_available() else "asyncio")
    assert loops.resolve("asyncio") == "asyncio"


def test_asyncio_runs_on_the_standard_loop() -> None:
    async def kind() -> str:
        return loops.running()

    assert loops.factory("asyncio") is None
    assert loops.run("asyncio", kind()) == "asyncio"


@pytest.mark.skipif(not loops.uvloop_available(), reason="uvloop is not installed here")
def test_uvloop_runs_on_uvloop() -> None:
    async def kind() -> tuple[str, str]:
        return loops.running(), type(asyncio.get_running_loop()).__module__

    running, module = loops.run("uvloop", kind())
    assert running == "uvloop"
    assert module.startswith("uvloop")


def test_missing_uvloop_is_an_error_only_when_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a)
    )
    assert loops.resolve("auto") == "asyncio"  # falls back quietly
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loops.resolve("uvloop")

    async def never() -> None:
        raise AssertionError("must not run")

    coro = never()
    with pytest.raises(ConfigError):
        loops.run("uvloop", coro)
    assert coro.cr_frame is None  # closed, not left to warn "never awaited"


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ConfigError, match="event_loop must be one of"):
        loops.resolve("trio")


def test_setting_is_read_and_checked() -> None:
    assert Settings.load(env={}).event_loop == "auto"
    assert Settings.load(env={"FILESTORE_EVENT_LOOP": " AsyncIO "}).event_loop == "asyncio"
    with pytest.raises(ConfigError, match="FILESTORE_EVENT_LOOP='tokio' is not valid"):
        Settings.load(env={"FILESTORE_EVENT_LOOP": "tokio"})
