"""RFC 7240 ``Prefer`` handling: which mode a request gets, and what is echoed back."""

from __future__ import annotations

import pytest

from api.modes import long_poll, preference
from shared.settings import ApiSettings, Mode

BOTH = ApiSettings(max_wait_s=120, default_wait_s=30)


@pytest.mark.parametrize(("header", "wait", "applied"), [
    ("respond-async", 0.0, "respond-async"),
    ("wait=10", 10.0, "wait=10"),
    ('wait="2.5"', 2.5, "wait=2.5"),
    ("wait=999", 120.0, "wait=120"),  # capped by the server
    ("respond-async, wait=5", 5.0, "wait=5"),  # wait wins where both are allowed
    ("RESPOND-ASYNC; foo=bar", 0.0, "respond-async"),
    ("wait=abc", 0.0, None),  # malformed: ignored, as RFC 7240 asks
    ("handling=lenient", 0.0, None),
    (None, 0.0, None),  # the default mode (async)
])
def test_preferences(header: str | None, wait: float, applied: str | None) -> None:
    pref = preference(header, BOTH)
    assert (pref.wait_s, pref.applied) == (wait, applied)


def test_default_sync_mode_waits_the_default_time() -> None:
    api = ApiSettings(default_mode=Mode.sync, default_wait_s=7)
    assert preference(None, api).wait_s == 7
    assert preference("respond-async", api).applied == "respond-async"


def test_a_mode_the_server_does_not_offer_is_not_honoured() -> None:
    async_only = ApiSettings(modes={Mode.async_})
    assert preference("wait=5", async_only).wait_s == 0
    sync_only = ApiSettings(modes={Mode.sync}, default_wait_s=9)
    pref = preference("respond-async", sync_only)
    assert (pref.wait_s, pref.applied) == (9, None)


def test_long_poll_honours_only_wait() -> None:
    assert long_poll("respond-async", BOTH).wait_s == 0
    assert long_poll("wait=3", BOTH).applied == "wait=3"
    assert long_poll("wait=1000", BOTH).wait_s == 120
