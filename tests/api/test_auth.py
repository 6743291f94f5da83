"""API keys: tenants by key, the open development default, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.auth import Caller, KeyRing
from shared.errors import ConfigError, Unauthorized
from shared.settings import DEV_API_KEY, load_settings


def test_keys_map_to_their_tenants(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# ops team\nk-file = ops\n\n")
    ring = KeyRing(load_settings(api={"keys": "k-a=acme, k-b=globex", "keys_file": keys_file}))
    assert ring.tenant("Bearer k-a") == "acme"
    assert ring.tenant("bearer  k-b ") == "globex"
    assert ring.tenant("Bearer k-file") == "ops"
    for bad in (None, "", "Bearer", "Basic k-a", "Bearer k-c", f"Bearer {DEV_API_KEY}"):
        with pytest.raises(Unauthorized):
            ring.tenant(bad)


def test_development_without_keys_is_open_as_tenant_dev() -> None:
    """Any key, or none, as llama-server and Ollama take it (SDKs insist on some key)."""
    ring = KeyRing(load_settings())
    for authorization in (None, "", f"Bearer {DEV_API_KEY}", "Bearer sk-anything", "Basic x"):
        assert ring.tenant(authorization) == "dev"


def test_production_needs_a_configured_key() -> None:
    ring = KeyRing(load_settings(env="production", api={"keys": "k-prod=acme"}))
    assert ring.tenant("Bearer k-prod") == "acme"
    for bad in (None, "Bearer sk-anything", f"Bearer {DEV_API_KEY}"):
        with pytest.raises(Unauthorized):
            ring.tenant(bad)


def test_malformed_key_lines_are_refused_without_echoing_the_key() -> None:
    with pytest.raises(ConfigError) as refused:
        KeyRing(load_settings(api={"keys": "secretsecretsecret"}))
    assert "secretsecretsecret" not in refused.value.message


def test_production_refuses_the_development_key(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{DEV_API_KEY}=dev\n")
    settings = load_settings(env="production", api={"keys_file": keys_file})
    with pytest.raises(ConfigError):
        KeyRing(settings)


def test_admin_keys_make_an_operator_and_tenant_keys_a_tenant() -> None:
    ring = KeyRing(load_settings(api={"keys": "k-a=acme", "admin_keys": "ops-1, ops-2"}))
    assert ring.caller("Bearer ops-2") == Caller(None, admin=True)
    assert ring.caller("Bearer k-a") == Caller("acme", admin=False)
    for bad in (None, "Bearer nope", "Basic ops-1"):
        with pytest.raises(Unauthorized):
            ring.caller(bad)
    with pytest.raises(Unauthorized):  # an admin key is no tenant's key
        ring.tenant("Bearer ops-1")


def test_development_without_keys_is_the_operator_until_admin_keys_are_set() -> None:
    assert KeyRing(load_settings()).caller(None) == Caller("dev", admin=True)
    ring = KeyRing(load_settings(api={"admin_keys": "ops-1"}))
    assert ring.caller("Bearer anything") == Caller("dev", admin=False)
    assert ring.caller("Bearer ops-1").admin


def test_an_admin_key_that_is_also_a_tenants_key_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        KeyRing(load_settings(api={"keys": "same=acme", "admin_keys": "same"}))
    assert "same" not in refused.value.message
