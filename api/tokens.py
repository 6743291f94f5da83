"""Exact prompt token counts in the API, with the model's own tokenizer: the
token-counting seam of admission.

Each local model's GGUF is opened vocabulary-only (no weights: tens of
milliseconds, a few MB) on first use, and prompts are rendered with its chat
template exactly as the worker renders them, so admission never guesses. A
model chatq has no tokenizer for (one served by a remote server) counts as
``None``: its server checks the context instead.

What must hold: counting never runs on the event loop (a worker thread does it),
and no process-wide lock serialises it. A llama.cpp tokenizer is not shared across
threads, so each model has a small pool of them (``CHATQ_LIMITS__TOKENIZERS_PER_MODEL``),
each used by one call at a time: a long prompt holds up one of them, never every
other tenant's count. How long one call can take is bounded by admission's input
budgets (:mod:`api.budgets`), checked before anything is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio
from llama_cpp import Llama

from shared.prompting import PromptRenderer
from shared.registry import ModelSpec, Registry
from shared.tools import ToolSet

Maker = Callable[[ModelSpec], PromptRenderer]


class _Pool:
    """Up to ``size`` renderers of one model; a call takes an idle one (or makes one)."""

    def __init__(self, size: int) -> None:
        self.slots = anyio.Semaphore(size)
        self.idle: list[PromptRenderer] = []  # touched on the event loop only


class TokenCounter:
    def __init__(self, registry: Registry, per_model: int = 4,
                 make: Maker | None = None) -> None:
        self.registry = registry
        self.per_model = per_model
        self._make = make or self._vocab_only
        self._pools: dict[str, _Pool] = {}

    def _vocab_only(self, spec: ModelSpec) -> PromptRenderer:
        llm = Llama(model_path=str(self.registry.gguf_path(spec)), vocab_only=True,
                    n_ctx=spec.context_size, verbose=False)
        return PromptRenderer(llm, spec.chat_template)

    async def _with_renderer[T](self, spec: ModelSpec,
                                use: Callable[[PromptRenderer], T]) -> T:
        """``use(renderer)`` in a worker thread, on a renderer no other call is using."""
        pool = self._pools.setdefault(spec.name, _Pool(self.per_model))
        async with pool.slots:
            held = [pool.idle.pop()] if pool.idle else []

            def run() -> T:
                if not held:
                    held.append(self._make(spec))
                return use(held[0])

            try:
                return await anyio.to_thread.run_sync(run)
            finally:
                pool.idle.extend(held)

    async def count(self, spec: ModelSpec, messages: Sequence[dict[str, Any]],
                    toolset: ToolSet | None = None) -> int | None:
        if not spec.tokenizer_local:
            return None
        return await self._with_renderer(spec, lambda r: r.for_tools(toolset).count(messages))

    async def vocab_size(self, spec: ModelSpec) -> int | None:
        """Tokens in the model's vocabulary (None: chatq has no tokenizer for it)."""
        if not spec.tokenizer_local:
            return None
        return await self._with_renderer(spec, lambda r: int(r.llm.n_vocab()))

    async def count_texts(self, spec: ModelSpec, texts: Sequence[str]) -> list[int] | None:
        """Tokens of each text read as it is, no chat template (a raw prompt, inputs to
        embed); None when chatq has no tokenizer for the model."""
        if not spec.tokenizer_local:
            return None
        return await self._with_renderer(spec, lambda r: [r.count_text(t) for t in texts])
