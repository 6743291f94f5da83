"""Grammars are built off the event loop, within a time limit (a blocking build behind
the seam): the loop keeps running meanwhile, and a build past the limit is refused
naming the field."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from api import grammars
from shared.errors import OverLimit
from shared.schemas import ResponseFormat
from shared.settings import load_settings

JSON = ResponseFormat(type="json_object")
TOOLS = [{"type": "function", "function": {"name": "f"}}]


def services(**limits: Any) -> Any:
    return SimpleNamespace(settings=load_settings(limits=limits))


def test_the_loop_runs_while_a_grammar_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build waits for a task on the loop to release it: had it run on the loop,
    that task could never run."""
    release = threading.Event()
    real = grammars.build_now

    def blocking(*args: Any) -> grammars.Grammars:
        assert release.wait(10), "the loop never ran"
        return real(*args)

    monkeypatch.setattr(grammars, "build_now", blocking)

    async def main() -> grammars.Grammars:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, release.set)
            return await grammars.build(services(), JSON, None, None, None)

    built = anyio.run(main)
    assert built.response_format is not None and built.tool_call is None


@pytest.mark.parametrize(("fmt", "tools", "field"), [(JSON, None, "response_format"),
                                                     (None, TOOLS, "tools")])
def test_a_build_past_its_time_limit_is_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, fmt: ResponseFormat | None, tools: Any, field: str,
) -> None:
    release = threading.Event()
    monkeypatch.setattr(grammars, "build_now", lambda *args: release.wait(10))
    try:
        with pytest.raises(OverLimit) as refused:
            anyio.run(grammars.build, services(grammar_timeout_s=0.05), fmt, tools,
                      "required", None)
    finally:
        release.set()
    assert refused.value.status == 400 and refused.value.details[0]["field"] == field
    assert "0.05 s" in refused.value.message


def test_no_thread_when_nothing_asks_for_a_grammar() -> None:
    built = anyio.run(grammars.build, services(), ResponseFormat(type="text"), None, None, None)
    assert built == grammars.Grammars()
