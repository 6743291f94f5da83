"""Exact prompt token counts in the API, with the model's own tokenizer.

Each model's GGUF is opened vocabulary-only (no weights: tens of milliseconds,
a few MB) on first use, and prompts are rendered with its chat template exactly
as the worker renders them, so admission never guesses.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import anyio
from llama_cpp import Llama

from shared.prompting import PromptRenderer
from shared.registry import ModelSpec, Registry


class TokenCounter:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._renderers: dict[str, PromptRenderer] = {}
        self._lock = threading.Lock()  # llama.cpp tokenizers are not shared across threads

    def _count(self, spec: ModelSpec, messages: Sequence[dict[str, str]]) -> int:
        with self._lock:
            renderer = self._renderers.get(spec.name)
            if renderer is None:
                llm = Llama(model_path=str(self.registry.gguf_path(spec)), vocab_only=True,
                            n_ctx=spec.context_size, verbose=False)
                renderer = self._renderers[spec.name] = PromptRenderer(llm)
            return renderer.count(messages)

    async def count(self, spec: ModelSpec, messages: Sequence[dict[str, str]]) -> int:
        return await anyio.to_thread.run_sync(self._count, spec, messages)
