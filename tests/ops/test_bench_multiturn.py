"""make bench's multi-turn scenario, its pure parts: the prompts (deterministic, an
edition per run so nothing is cached from an earlier one) and the figures per turn."""

from __future__ import annotations

import pytest

from ops.bench_multiturn import figures, questions, system_prompt


def test_prompts_are_deterministic() -> None:
    assert system_prompt(3) == system_prompt(3)
    assert questions(2, 10) == questions(2, 10)


def shared_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_each_edition_differs_from_its_first_line_on() -> None:
    editions = [system_prompt(e) for e in range(24)]
    for i, a in enumerate(editions):
        for b in editions[i + 1:]:
            assert shared_prefix(a, b) < 40  # a few tokens of the first line at most
            assert a.split("Staff directory:")[1] != b.split("Staff directory:")[1]


def test_the_system_prompt_is_an_office_assistant_with_reference_data() -> None:
    text = system_prompt(0)
    assert "office assistant" in text
    assert text.count("\n- ") >= 30  # staff, rooms, rules
    assert 2000 < len(text) < 3000  # about 700 tokens (SmolLM2: 733)


def test_conversations_differ_from_their_first_question_on() -> None:
    ten = [questions(c, 10) for c in range(8)]
    assert len({q[0] for q in ten}) == 8
    assert all(len(q) == 10 for q in ten)
    assert len({tuple(q[1:]) for q in ten}) > 1
    assert questions(0, 2) == questions(0, 10)[:2]


def test_figures_per_turn() -> None:
    # three conversations of ten turns: turn t took 100 * t ms, plus 10 ms per conversation
    ttfts = [[100.0 * t + 10 * c for t in range(1, 11)] for c in range(3)]
    f = figures(ttfts, [40.0, 44.0], [48, 48, 30])
    assert f.turn1_ms == 110.0  # p50 of 100, 110, 120
    assert f.last_ms == 1010.0
    assert f.late_p50_ms == 810.0  # turns 6-10 of every conversation
    assert f.wall_s == 42.0
    assert f.answer_tokens == 48


def test_figures_of_one_conversation_and_two_turns() -> None:
    f = figures([[2500.0, 200.0]], [3.0], [48, 48])
    assert (f.turn1_ms, f.last_ms, f.late_p50_ms) == (2500.0, 200.0, 200.0)


def test_figures_need_a_measured_turn() -> None:
    with pytest.raises(ValueError):
        figures([[]], [1.0], [1])
