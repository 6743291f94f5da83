import pytest
from pydantic import ValidationError

from shared.settings import load_settings


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
