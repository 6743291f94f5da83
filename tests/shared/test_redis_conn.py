"""Redis URLs: plain, or the Sentinels of a master (issue 30)."""

from __future__ import annotations

import pytest

from shared.redis_conn import SentinelTarget, celery_broker


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_db() -> None:
    target = SentinelTarget.parse("redis+sentinel://:s3cret@h1:26379,h2:26380,[::1]:26381/main/2")
    assert target == SentinelTarget([("h1", 26379), ("h2", 26380), ("::1", 26381)], "main", 2,
                                    "s3cret")
    assert SentinelTarget.parse("redis://127.0.0.1:6379/0") is None


@pytest.mark.parametrize("url", ["redis+sentinel://h1:26379", "redis+sentinel://h1/main",
                                 "redis+sentinel://h1:x/main"])
def test_a_bad_sentinel_url_says_what_is_missing(url: str) -> None:
    with pytest.raises(ValueError, match="redis\\+sentinel"):
        SentinelTarget.parse(url)


def test_celery_gets_one_sentinel_url_each_and_the_masters_name() -> None:
    broker, options = celery_broker("redis+sentinel://:pw@h1:26379,h2:26379/main/1")
    assert broker == "sentinel://:pw@h1:26379/1;sentinel://:pw@h2:26379/1"
    assert options == {"master_name": "main", "sentinel_kwargs": {"password": "pw"}}
    assert celery_broker("redis://h:6379/0") == ("redis://h:6379/0", {})
