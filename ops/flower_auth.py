"""Flower's basic auth, checked before Flower starts (``ops/flower_app.py``).

Flower's API can revoke tasks and shut workers down: outside development it does
not start without basic auth (``FLOWER_BASIC_AUTH`` or ``--basic-auth``, ``user:password``
pairs separated by commas), nor with a placeholder password (``admin:change-me``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shared.errors import ConfigError
from shared.settings import Environment, Settings, is_placeholder


def basic_auth(environ: Mapping[str, str], argv: Sequence[str]) -> str:
    """Flower's basic auth as it will read it: ``--basic-auth=`` wins over the variable."""
    given = [a.partition("=")[2] for a in argv if a.startswith("--basic-auth=")]
    return given[-1] if given else environ.get("FLOWER_BASIC_AUTH", "")


def check_basic_auth(settings: Settings, auth: str) -> None:
    """Outside development: some ``user:password``, and no placeholder password."""
    if settings.env is Environment.development:
        return
    pairs = [p.strip() for p in auth.split(",") if p.strip()]
    if not pairs:
        raise ConfigError("Flower needs basic auth outside development: set "
                          "FLOWER_BASIC_AUTH=user:password")
    for pair in pairs:
        user, _, password = pair.partition(":")
        if not password or is_placeholder(password):
            raise ConfigError(f"Flower user {user!r}: a real password is needed outside "
                              "development (a placeholder or none is refused)")
