"""make bench's batch scenario, its pure parts: the lines (deterministic, every question
its own, each a valid batch line carrying the request a caller would send) and the rates."""

from __future__ import annotations

import json

from ops.bench_batch import ASKS, SUBJECTS, batch_file, per_second, question, request_body


def test_the_first_200_questions_differ_and_repeat_the_same() -> None:
    assert len(ASKS) * len(SUBJECTS) >= 200
    assert len({question(i) for i in range(200)}) == 200
    assert [question(i) for i in range(200)] == [question(i) for i in range(200)]


def test_each_line_is_a_chat_request_with_a_custom_id_of_its_own() -> None:
    rows = [json.loads(r) for r in batch_file(5, "m", 8).decode().splitlines()]
    assert len(rows) == 5 and len({r["custom_id"] for r in rows}) == 5
    for i, row in enumerate(rows):
        assert (row["method"], row["url"]) == ("POST", "/v1/chat/completions")
        assert row["body"] == request_body(i, "m", 8)
        assert row["body"]["messages"] == [{"role": "user", "content": question(i)}]
        assert (row["body"]["max_tokens"], row["body"]["temperature"]) == (8, 0)
    assert batch_file(5, "m", 8) == batch_file(5, "m", 8)
    assert batch_file(0, "m", 8) == b""


def test_a_rate_over_no_time_is_zero_rather_than_a_division_by_zero() -> None:
    assert per_second(10, 4.0) == 2.5
    assert per_second(10, 0.0) == 0.0
