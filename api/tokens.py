"""Exact prompt token counts in the API, with the model's own tokenizer: the
token-counting seam of admission.

Each local model's GGUF is opened vocabulary-only (no weights: tens of
milliseconds, a few MB) on first use, and prompts are rendered with its chat
template exactly as the worker renders them, so admission never guesses. A
model chatq has no tokenizer for (one served by a remote server) counts as
``None``: its server checks the context instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import anyio
from llama_cpp import Llama

from shared.prompting import PromptRenderer
from shared.registry import ModelSpec, Registry
from shared.tools import ToolSet


class TokenCounter:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._renderers: dict[str, PromptRenderer] = {}
        self._lock = threading.Lock()  # llama.cpp tokenizers are not shared across threads

    def _renderer(self, spec: ModelSpec) -> PromptRenderer:
        """The model's renderer (call with ``_lock`` held)."""
        renderer = self._renderers.get(spec.name)
        if renderer is None:
            llm = Llama(model_path=str(self.registry.gguf_path(spec)), vocab_only=True,
                        n_ctx=spec.context_size, verbose=False)
            renderer = self._renderers[spec.name] = PromptRenderer(llm, spec.chat_template)
        return renderer

    def _count(self, spec: ModelSpec, messages: Sequence[dict[str, Any]],
               toolset: ToolSet | None = None) -> int | None:
        if not spec.tokenizer_local:
            return None
        with self._lock:
            return self._renderer(spec).for_tools(toolset).count(messages)

    def _vocab_size(self, spec: ModelSpec) -> int | None:
        if not spec.tokenizer_local:
            return None
        with self._lock:
            return int(self._renderer(spec).llm.n_vocab())

    async def count(self, spec: ModelSpec, messages: Sequence[dict[str, Any]],
                    toolset: ToolSet | None = None) -> int | None:
        return await anyio.to_thread.run_sync(self._count, spec, messages, toolset)

    async def vocab_size(self, spec: ModelSpec) -> int | None:
        """Tokens in the model's vocabulary (None: chatq has no tokenizer for it)."""
        return await anyio.to_thread.run_sync(self._vocab_size, spec)

    def _count_texts(self, spec: ModelSpec, texts: Sequence[str]) -> list[int] | None:
        if not spec.tokenizer_local:
            return None
        with self._lock:
            renderer = self._renderer(spec)
            return [renderer.count_text(t) for t in texts]

    async def count_texts(self, spec: ModelSpec, texts: Sequence[str]) -> list[int] | None:
        """Tokens of each text read as it is, no chat template (a raw prompt, inputs to
        embed); None when chatq has no tokenizer for the model."""
        return await anyio.to_thread.run_sync(self._count_texts, spec, texts)
