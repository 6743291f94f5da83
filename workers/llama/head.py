"""The chat template's head: the tokens every chat prompt without a system message of
its own opens with (the template's default system prompt and the user turn's header),
and the registry's shared system prompts as the prefixes they open a prompt with.

The engine reads the head once, at load, into a KV stream of its own; the prompt cache
lets every tenant reuse these prefixes (they hold no caller's text).
"""

from __future__ import annotations

import logging

from shared.prompting import PromptRenderer

log = logging.getLogger(__name__)

MIN_HEAD = 4  # a shorter template head is not worth a KV stream


def template_head(prompter: PromptRenderer, system: str | None = None) -> list[int]:
    """The tokens every chat prompt without a system message (or with ``system`` as
    its system message) begins with: what two one-turn prompts share. Empty when they
    share under ``MIN_HEAD`` tokens or the template cannot render. (A user's text that
    merges with the header's last token into another token gives a prompt that does
    not begin with the head: it is read whole.)"""
    opening = [] if system is None else [{"role": "system", "content": system}]
    try:
        a, b = (prompter.render([*opening, {"role": "user", "content": text}]).tokens
                for text in ("a", "b"))
    except Exception:
        log.warning("chat template did not render; no template head", exc_info=True)
        return []
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return list(a[:n]) if n >= MIN_HEAD else []


def shared_prefixes(prompter: PromptRenderer, texts: list[str]) -> list[list[int]]:
    """The registry's shared system prompts as the token prefixes they open a chat
    prompt with (system message and the user turn's header)."""
    return [head for head in (template_head(prompter, text) for text in texts) if head]

