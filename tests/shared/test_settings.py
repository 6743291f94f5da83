import pytest
from pydantic import ValidationError

from shared.settings import is_placeholder, load_settings


def test_defaults_keep_time_limits_ordered() -> None:
    c = load_settings().celery
    assert c.soft_time_limit_s < c.hard_time_limit_s < c.visibility_timeout_s


def test_env_sets_nested_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATQ_JOBS__RETENTION_S", "42")
    monkeypatch.setenv("CHATQ_WORKER__QUEUE", "gpu1")
    settings = load_settings()
    assert settings.jobs.retention_s == 42
    assert settings.worker.queue == "gpu1"


def test_visibility_timeout_below_hard_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATQ_CELERY__VISIBILITY_TIMEOUT_S", "100")
    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        load_settings()


def test_broker_defaults_to_redis_url() -> None:
    settings = load_settings(redis_url="redis://example:6379/3")
    assert settings.broker_url == "redis://example:6379/3"


PROD = {"env": "production", "api": {"keys": "k-3f9a2c71=acme"}}


@pytest.mark.parametrize("override", [
    {"mongo_url": "mongodb://chatq:change-me@mongo:27017/"},
    {"mongo_url": "mongodb://chatq:CHANGEME@mongo:27017/"},
    {"redis_url": "redis://:password@redis:6379/0"},
    {"celery": {"broker_url": "redis://:secret@redis:6379/1"}},
    {"api": {"keys": "change_me=acme"}},
    {"api": {"keys": "k-3f9a2c71=acme", "admin_keys": "placeholder"}},
])
def test_production_refuses_placeholder_passwords(override: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        load_settings(**{**PROD, **override})


def test_production_takes_real_secrets_and_development_takes_anything() -> None:
    settings = load_settings(**PROD, mongo_url="mongodb://chatq:Xq7v9Lr2@mongo:27017/")
    assert settings.env == "production"
    load_settings(mongo_url="mongodb://chatq:change-me@mongo:27017/")  # development


@pytest.mark.parametrize("value", ["change-me", "Change_Me", "changeme123", "password",
                                   "admin", "please-replace-me", "xxx"])
def test_placeholders_are_recognised(value: str) -> None:
    assert is_placeholder(value)


@pytest.mark.parametrize("value", ["k-3f9a2c71", "Xq7v9Lr2", "correct horse battery"])
def test_real_secrets_are_not_placeholders(value: str) -> None:
    assert not is_placeholder(value)
