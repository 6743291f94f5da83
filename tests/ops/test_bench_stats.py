"""make bench's figures: percentiles, ratios with a missing side, verdicts, the later
turns of a conversation, and the table of chatq's ratios to its peers."""

from __future__ import annotations

import pytest

from ops.bench_stats import (
    Side,
    late_turns,
    percentile,
    ratio,
    ratio_rows,
    ratio_table,
    show,
    turns_label,
    verdict,
)


def test_percentiles_stay_within_the_measured_values() -> None:
    assert percentile([3.0], 50) == 3.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 100.0], 50) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5  # order does not matter
    assert percentile([1.0, 2.0], 99) <= 2.0
    assert percentile([1.0, 2.0], 1) >= 1.0


def test_a_percentile_of_nothing_or_of_a_bad_rank_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"1\.\.99"):
        percentile([1.0], 100)


def test_a_ratio_to_a_missing_or_zero_side_is_none_and_shown_as_such() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, 0.0) is None
    assert ratio(None, 2.0) is None
    assert ratio(3.0, None) is None
    assert show(None) == "n/a"
    assert show(1.2345) == "1.23x"
    assert show(1.5, ".3f", "") == "1.500"


def test_verdicts_follow_the_direction_of_the_target() -> None:
    assert verdict(1.0, ">= 1.0").endswith(": met")
    assert verdict(0.99, ">= 1.0").endswith("NOT met")
    assert verdict(0.2, "<= 0.2").endswith(": met")
    assert verdict(0.21, "<= 0.2").endswith("NOT met")
    assert verdict(None, "<= 0.2") == "target <= 0.2: n/a"


def test_the_later_turns_are_the_later_half() -> None:
    assert list(late_turns(10)) == [6, 7, 8, 9, 10]
    assert list(late_turns(2)) == [2]
    assert list(late_turns(3)) == [2, 3]
    assert list(late_turns(1)) == [1]
    assert turns_label(10) == "turns 6-10"
    assert turns_label(2) == "turn 2"
    with pytest.raises(ValueError):
        late_turns(0)


CHATQ = Side(per_stream=150.0, ttft1_ms=60.0, aggregate=180.0, ttftn_ms=240.0)
DIRECT = Side(per_stream=160.0, ttft1_ms=40.0, aggregate=160.0, ttftn_ms=40.0)
SERVER = Side(per_stream=150.0, ttft1_ms=50.0, aggregate=200.0, ttftn_ms=200.0)


def test_chatq_is_divided_by_each_peer_figure_by_figure() -> None:
    rows = dict(ratio_rows(CHATQ, {"direct": DIRECT, "llama-server": SERVER}))
    assert rows["1 caller, per-stream tok/s"] == [150 / 160, 1.0]
    assert rows["1 caller, first token p50"] == [1.5, 1.2]
    assert rows["{n} callers, aggregate tok/s"] == [180 / 160, 0.9]
    assert rows["{n} callers, first token p50"] == [6.0, 1.2]


def test_the_table_names_the_callers_and_judges_the_targets_set() -> None:
    lines = ratio_table(CHATQ, {"direct": DIRECT, "llama-server": SERVER}, 4)
    assert "direct" in lines[0] and "llama-server" in lines[0]
    text = "\n".join(lines)
    assert "4 callers, aggregate tok/s" in text
    aggregate = next(line for line in lines if "aggregate" in line)
    assert "0.90x (target >= 1.0: NOT met)" in aggregate  # to llama-server
    ttft = next(line for line in lines if "callers, first token" in line)
    assert "1.20x (target <= 1.2: met)" in ttft
    per_stream = next(line for line in lines if "per-stream" in line)
    assert "0.94x (target >= 0.97: NOT met)" in per_stream  # to direct


def test_a_peer_that_measured_nothing_reads_n_a() -> None:
    empty = Side(0.0, 0.0, 0.0, 0.0)
    lines = ratio_table(CHATQ, {"llama-server": empty}, 4)
    assert all("n/a" in line for line in lines[1:])
