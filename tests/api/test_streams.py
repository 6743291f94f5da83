"""The stream hub's merging: a late joiner's replay log and live events, each once."""

from __future__ import annotations

from api.streams import EventMerger
from shared.events import KeepaliveEvent, StatusEvent, TokenEvent
from shared.schemas import JobStatus


def tok(seq: int) -> TokenEvent:
    return TokenEvent(seq=seq, text=f"t{seq}")


def test_tokens_pass_once_in_order_after_the_last_seen() -> None:
    merger = EventMerger(last_seq=2)
    logged = [tok(1), tok(2), tok(3), tok(4)]
    live = [tok(4), tok(5)]  # published while the log was read: 4 is in both
    assert merger.fresh(logged) == [tok(3), tok(4)]
    assert merger.fresh(live) == [tok(5)]
    assert merger.fresh([tok(1), tok(5)]) == []


def test_each_status_passes_once() -> None:
    merger = EventMerger()
    running = StatusEvent(status=JobStatus.running, attempt=1)
    again = StatusEvent(status=JobStatus.running, attempt=2)  # a redelivery
    assert merger.fresh([running, tok(1)]) == [running, tok(1)]
    assert merger.fresh([again, StatusEvent(status=JobStatus.succeeded)]) == [
        StatusEvent(status=JobStatus.succeeded)]


def test_keepalives_always_pass() -> None:
    merger = EventMerger()
    assert merger.fresh([KeepaliveEvent(), KeepaliveEvent()]) == [KeepaliveEvent()] * 2


def test_a_run_of_tokens_is_joined_into_one_and_a_status_splits_runs() -> None:
    from api.jobs import joined
    from shared.events import LogprobEntry

    def lp(token: str) -> LogprobEntry:
        return LogprobEntry(token=token, logprob=-0.5, bytes=list(token.encode()),
                            top_logprobs=[])

    running = StatusEvent(status=JobStatus.running, attempt=1)
    assert joined([tok(1), tok(2), running, tok(3), tok(4), tok(5)]) == [
        TokenEvent(seq=2, text="t1t2"), running, TokenEvent(seq=5, text="t3t4t5")]
    with_lp = [TokenEvent(seq=1, text="a", logprobs=[lp("a")]),
               TokenEvent(seq=2, text="b", logprobs=[lp("b")])]
    assert joined(with_lp) == [TokenEvent(seq=2, text="ab", logprobs=[lp("a"), lp("b")])]
    assert joined([tok(7)]) == [tok(7)] and joined([]) == []
