"""Render chat messages with the model's own chat template (from the GGUF) and tokenize.

The worker uses it with the loaded model; the API can use it with a
vocabulary-only load of the same GGUF to count prompt tokens exactly.
"""

from __future__ import annotations

import copy
import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.meta
import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from shared.tools import ToolSet, prompt_messages

_llama_log = logging.getLogger("llama.cpp")
# ggml's log levels (ggml.h): 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous
# line. llama.cpp's info lines (a model's whole metadata) are debug here.
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_last_level = [logging.DEBUG]


@llama_cpp.llama_log_callback
def _forward_llama_log(level: int, text: bytes, _: ctypes.c_void_p) -> None:
    if level != 5:
        _last_level[0] = _LEVELS.get(level, logging.DEBUG)
    message = text.decode("utf-8", errors="replace").strip()
    if message:
        _llama_log.log(_last_level[0], message)


def route_llama_logs() -> None:
    """Send llama.cpp's own log lines through Python logging (JSON), not raw stderr."""
    llama_cpp.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))

# Used only when a GGUF carries no chat template (ChatML, the common default).
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    stop: list[str]  # stop strings the template implies (e.g. its end-of-turn marker)


route_llama_logs()


def takes_tools(template: str) -> bool:
    """Whether a chat template renders the ``tools`` it is given."""
    try:
        ast = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except jinja2.TemplateError:
        return False
    return "tools" in jinja2.meta.find_undeclared_variables(ast)


class PromptRenderer:
    """Renders messages (tool calls and tool results included, see :mod:`shared.tools`)
    with the model's template; :meth:`for_tools` gives one that also shows a request's
    functions (through the template when it takes ``tools``, else the generic block)."""

    toolset: ToolSet | None = None

    def __init__(self, llm: Llama, template: str | None = None) -> None:
        """``template``: the registry's chat template, else the GGUF's own, else ChatML."""
        self.llm = llm
        template = template or llm.metadata.get("tokenizer.chat_template") or _FALLBACK_TEMPLATE
        self.supports_tools = takes_tools(template)
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(llm.token_eos()),
            bos_token=self._token_text(llm.token_bos()),
        )

    def for_tools(self, toolset: ToolSet | None) -> PromptRenderer:
        """This renderer showing ``toolset``'s offered functions (None: none)."""
        bound = copy.copy(self)
        bound.toolset = toolset
        return bound

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def render(self, messages: Sequence[dict[str, Any]]) -> Prompt:
        native = self.supports_tools
        shown = prompt_messages(list(messages), self.toolset, native)
        tools = self.toolset.openai_tools() if native and self.toolset else None
        result = self.formatter(messages=shown, tools=tools or None)  # type: ignore[arg-type]
        tokens = self.llm.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop if isinstance(result.stop, list) else [result.stop or ""]
        return Prompt(tokens=tokens, stop=[s for s in stop if s])

    def count(self, messages: Sequence[dict[str, Any]]) -> int:
        return len(self.render(messages).tokens)

    def raw(self, text: str) -> Prompt:
        """A prompt fed as it is (``/v1/completions``): no chat template, the model's
        BOS if it wants one, special tokens written in the text read as such (as
        llama-server reads them)."""
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        return Prompt(tokens=tokens, stop=[])

    def count_text(self, text: str) -> int:
        """Tokens of a text as :meth:`raw` reads it (an input to embed, a raw prompt)."""
        return len(self.raw(text).tokens)
