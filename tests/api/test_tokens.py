"""Token counting off the event loop, with no process-wide lock: each model has a pool
of tokenizers, each used by one call at a time (a fake renderer behind the seam)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio

from api.tokens import TokenCounter
from shared.registry import ModelSpec, Registry

SPEC = ModelSpec.model_validate({"name": "m", "queue": "cpu", "path": "/models/m.gguf"})


class Renderer:
    """Counts characters; a text starting with ``wait`` holds its call until released."""

    made = 0

    def __init__(self, release: threading.Event, users: list[int]) -> None:
        Renderer.made += 1
        self.release = release
        self.users = users

    def count_text(self, text: str) -> int:
        self.users.append(id(self))
        if text.startswith("wait"):
            assert self.release.wait(10), "never released"
        return len(text)


def counter(per_model: int, release: threading.Event, users: list[int]) -> TokenCounter:
    registry = Registry({"m": SPEC}, Path("."))
    fake: Any = lambda spec: Renderer(release, users)  # noqa: E731
    return TokenCounter(registry, per_model, make=fake)


def test_a_long_count_holds_up_no_other() -> None:
    """One call is stuck in its tokenizer; another call still gets an answer (on
    another tokenizer of the pool) and releases the first: had the count run on the
    event loop or behind one lock, this would never end."""
    release, users = threading.Event(), []
    tokens = counter(2, release, users)
    results: dict[str, Any] = {}

    async def main() -> None:
        async def slow() -> None:
            results["slow"] = await tokens.count_texts(SPEC, ["wait" + "x" * 6])

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                results["quick"] = await tokens.count_texts(SPEC, ["hi"])
                release.set()

    anyio.run(main)
    assert results == {"quick": [2], "slow": [10]}
    assert len(set(users)) == 2  # two tokenizers, never one used by two calls at once


def test_the_pool_reuses_its_tokenizers_up_to_its_size() -> None:
    release, users = threading.Event(), []
    release.set()
    tokens = counter(3, release, users)
    Renderer.made = 0

    async def main() -> None:
        for _ in range(5):
            assert await tokens.count_texts(SPEC, ["abc"]) == [3]

    anyio.run(main)
    assert Renderer.made == 1  # one at a time: the idle one again


def test_an_upstream_model_has_no_count() -> None:
    up = ModelSpec.model_validate({"name": "up", "queue": "u", "upstream": {
        "url": "https://api.example/v1", "model": "m"}})
    tokens = TokenCounter(Registry({"up": up}, Path(".")))
    assert anyio.run(tokens.count_texts, up, ["hi"]) is None
    assert anyio.run(tokens.vocab_size, up) is None

