"""The budgets' edges that the end-to-end tests do not reach: what counts toward the
character bound of the context, and which models it applies to."""

from __future__ import annotations

import pytest

from api import budgets
from api.admission import Work
from shared.errors import OverLimit
from shared.registry import ModelSpec
from shared.schemas import JobKind, Message
from shared.settings import LimitSettings

LOCAL = ModelSpec.model_validate({"name": "m", "queue": "cpu", "path": "/m.gguf",
                                  "context_size": 100, "defaults": {"max_tokens": 10}})
UPSTREAM = ModelSpec.model_validate({"name": "up", "queue": "u", "upstream": {
    "url": "https://api.example/v1", "model": "m"}})
LIMITS = LimitSettings(max_chars_per_token=10)  # at most 1000 characters fit LOCAL


def chat(*texts: str) -> Work:
    return Work(messages=[Message(role="user", content=t) for t in texts])


def test_a_text_that_might_fit_is_left_to_the_tokenizer() -> None:
    budgets.check_fits(chat("x" * 500, "y" * 500), LOCAL, LIMITS)
    budgets.check_fits(chat(" " * 5000 + "x"), LOCAL, LIMITS)  # templates may trim it
    budgets.check_fits(chat("x" * 5000), UPSTREAM, LIMITS)  # its server counts


def test_a_text_that_cannot_fit_is_refused_naming_it() -> None:
    with pytest.raises(OverLimit) as refused:
        budgets.check_fits(chat("x" * 500, "y" * 501), LOCAL, LIMITS)
    assert refused.value.details[0]["field"] == "messages"
    texts = Work(kind=JobKind.embedding, inputs=["a", "b" * 1001])
    with pytest.raises(OverLimit) as refused:
        budgets.check_fits(texts, LOCAL, LIMITS)
    assert refused.value.details[0]["field"] == "input[1]"


def test_within_every_budget_passes() -> None:
    budgets.check(Work(messages=[Message(role="user", content="hi")], metadata={"a": "b"},
                       sampling={"stop": ["\n"], "logit_bias": {1: 1.0}}), LimitSettings())
