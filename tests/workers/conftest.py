"""Fixtures of the worker tests: the scripted OpenAI-compatible server the upstream
engine's tests talk to (started per test, stopped at teardown)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.workers.fake_upstream import FakeUpstream


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()
