"""A job's prompt with its conversation: persona, stored history, the new turn.

The history is trimmed oldest-first, by the model's real token count, until
the rendered prompt plus ``max_tokens`` fits the model's context. The persona
(system message, character greeting) and the request's own messages are
always kept.

It is trimmed in steps, so the prompt's beginning stays the same for many turns
and the worker's prompt cache keeps matching it: the history may only start at
fixed cut points, the first user turn after every further quarter of the context
(in tokens, counted from the conversation's first stored message), and the prompt
starts at the earliest cut point that fits. Dropping the fewest messages instead
would change the prompt's beginning, and miss the cache, at every turn once the
conversation outgrew the context; with steps, one turn in several re-reads its
prompt, then the next ones reuse it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from pymongo.errors import PyMongoError

from shared.conversations import WorkerConversationStore
from shared.lifecycle import JobRecord
from shared.personas import parse_persona, persona_turns
from shared.prompting import Prompt, PromptRenderer
from shared.tools import ToolSet, prompt_messages

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
TRIM_STEPS = 4  # history is trimmed in steps of 1/TRIM_STEPS of the context (see above)


@dataclass
class PromptPlan:
    prompt: Prompt | None  # rendered and tokenized (None: the engine has no tokenizer)
    messages: Messages  # the prompt as chat messages (persona head, kept history, turn)
    turn: Messages  # the request's user/assistant messages: persisted with the answer
    history_used: int = 0  # stored messages that made it into the prompt
    history_trimmed: int = 0  # stored messages left out to fit the context

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt.tokens) if self.prompt else 0


def fit_history(renderer: PromptRenderer, head: Messages, history: Messages, tail: Messages,
                budget: int, *, step: int | None = None) -> tuple[int, Prompt]:
    """Drop the oldest history messages so the prompt is at most ``budget`` tokens: the
    fewest, or with ``step`` (tokens) the fewest among the cut points
    (:func:`cut_points`), so the kept history starts at the same message turn after turn.

    Returns how many were dropped and the rendered prompt. Binary search: the
    token count only falls as messages are dropped, so O(log n) renders. When
    even no history does not fit, all of it is dropped (the engine then caps
    the answer at what is left of the context).
    """

    def render(dropped: int) -> Prompt:
        return renderer.render([*head, *history[dropped:], *tail])

    full = render(0)
    if len(full.tokens) <= budget or not history:
        return 0, full
    starts = cut_points(renderer, history, step) if step else list(range(len(history) + 1))
    lo, hi = 1, len(starts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(render(starts[mid]).tokens) <= budget:
            hi = mid
        else:
            lo = mid + 1
    dropped = starts[lo]
    # Start the kept history on a user turn, so roles keep alternating.
    while dropped < len(history) and history[dropped]["role"] != "user":
        dropped += 1
    return dropped, render(dropped)


def cut_points(renderer: PromptRenderer, history: Messages, step: int) -> list[int]:
    """Where a trimmed history may start: 0, the first user message after each further
    ``step`` tokens of history (messages' contents, counted from the first), and the
    end (nothing kept). Each depends only on the messages before it, so a growing
    conversation keeps its cut points."""
    points, total, mark = [0], 0, step
    for i, message in enumerate(history):
        if total >= mark and message["role"] == "user":
            points.append(i)
            while mark <= total:
                mark += step
        total += renderer.count_text(str(message.get("content") or ""))
    return [*points, len(history)]


def compatible_head(renderer: PromptRenderer, head: Messages) -> Messages:
    """The persona head as this model's template accepts it.

    Some templates (Gemma's, Mistral's) insist that turns alternate starting
    with the user, so a greeting cannot open the conversation; for those the
    greeting is folded into the system message instead.
    """
    if len(head) != 2 or head[1]["role"] != "assistant":
        return head
    try:
        renderer.render([*head, {"role": "user", "content": "Hi"}])
    except (ValueError, TemplateError):
        opening = f"You opened the conversation by saying: {head[1]['content']}"
        return [{"role": "system", "content": f"{head[0]['content']}\n\n{opening}"}]
    return head


def _stored(store: WorkerConversationStore, record: JobRecord, limit: int,
            ctx: dict[str, Any]) -> tuple[dict[str, Any] | None, Messages]:
    if not record.conversation_id or record.fresh_conversation:
        return None, []  # none, or one the API made for this job: nothing stored before it
    try:
        return store.load(record.conversation_id, record.tenant, record.id, limit)
    except PyMongoError as exc:
        # MongoDB down: the job still answers, without the stored history.
        log.warning("conversation history unavailable; going on without it",
                    extra={**ctx, "conversation_id": record.conversation_id,
                           "error": type(exc).__name__})
        return None, []


def plan_prompt(store: WorkerConversationStore, renderer: PromptRenderer | None,
                context_size: int | None, record: JobRecord, ctx: dict[str, Any]) -> PromptPlan:
    """Persona, stored history and the request's turn; the history trimmed to fit the
    context when the engine can count tokens (``renderer``), else all of it."""
    # A message costs at least one token, so no more than context_size can ever fit.
    stored_persona, history = _stored(store, record, context_size or 100_000, ctx)
    persona = parse_persona(record.persona or stored_persona)
    system = [m["content"] for m in record.messages if m["role"] == "system"]
    turn = [m for m in record.messages if m["role"] != "system"]
    toolset = ToolSet.from_json(record.tools)
    if renderer is None or context_size is None:
        # A remote server gets the functions and tool messages in the generic format.
        head = persona_turns(persona, system)
        messages = prompt_messages([*head, *history, *turn], toolset, native=False)
        return PromptPlan(prompt=None, messages=messages, turn=turn, history_used=len(history))
    renderer = renderer.for_tools(toolset)
    head = compatible_head(renderer, persona_turns(persona, system))
    budget = context_size - record.params.max_tokens
    dropped, prompt = fit_history(renderer, head, history, turn, budget,
                                  step=max(context_size // TRIM_STEPS, 1))
    if dropped:
        log.info("history trimmed to fit the context",
                 extra={**ctx, "dropped": dropped, "kept": len(history) - dropped})
    return PromptPlan(prompt=prompt, messages=[*head, *history[dropped:], *turn], turn=turn,
                      history_used=len(history) - dropped, history_trimmed=dropped)
