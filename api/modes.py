"""Invocation modes from RFC 7240 ``Prefer`` headers (the platform's sync/async knobs).

    Prefer: respond-async     -> 202 at once
    Prefer: wait=N            -> hold up to N s (capped), 200 when done else 202
    (none)                    -> the server's default mode

``Preference-Applied`` echoes what was honoured. Unknown or malformed
preferences are ignored, as RFC 7240 asks.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.settings import ApiSettings, Mode


@dataclass(frozen=True)
class Preference:
    wait_s: float  # how long to hold the response; 0 answers at once
    applied: str | None  # the Preference-Applied header, if a preference was honoured


def _parse(header: str | None) -> tuple[bool, float | None]:
    respond_async, wait = False, None
    for item in (header or "").split(","):
        token = item.split(";")[0].strip().lower()
        name, _, value = token.partition("=")
        if name == "respond-async":
            respond_async = True
        elif name == "wait":
            try:
                wait = max(float(value.strip().strip('"')), 0.0)
            except ValueError:
                continue
    return respond_async, wait


def preference(header: str | None, api: ApiSettings) -> Preference:
    respond_async, wait = _parse(header)
    sync_ok, async_ok = Mode.sync in api.modes, Mode.async_ in api.modes
    if wait is not None and sync_ok:
        capped = min(wait, api.max_wait_s)
        return Preference(capped, f"wait={capped:g}")
    if respond_async and async_ok:
        return Preference(0.0, "respond-async")
    if (api.default_mode is Mode.sync and sync_ok) or not async_ok:
        return Preference(api.default_wait_s, None)
    return Preference(0.0, None)


def long_poll(header: str | None, api: ApiSettings) -> Preference:
    """For ``GET /v1/jobs/{id}``: only ``wait=N`` means anything."""
    _, wait = _parse(header)
    if wait is None:
        return Preference(0.0, None)
    capped = min(wait, api.max_wait_s)
    return Preference(capped, f"wait={capped:g}")
