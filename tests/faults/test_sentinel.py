"""Redis through Sentinel (issue 30): every chatq process finds the master through three
Sentinels, and a failover (the master handed to its replica) is survived: a stream in
flight ends with every token once, in order; new jobs run on the new master."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ops.devstack import free_port, wait_for
from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import LONG, SseStream, hi, stream_job, submit, wait_done

MASTER = "chatq"


def _sentinel(stack_dir: Path, port: int, master_port: int) -> list[str]:
    conf = stack_dir / f"sentinel-{port}.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {stack_dir}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {MASTER} 2000\n"
                    f"sentinel failover-timeout {MASTER} 10000\n")
    return ["redis-server", str(conf), "--sentinel"]


def master_port(sentinel_port: int) -> int:
    client = redis.Redis(port=sentinel_port, decode_responses=True)
    _, port = client.sentinel_get_master_addr_by_name(MASTER)
    return int(port)


@pytest.fixture(scope="module")
def sentineled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Chatq, list[int]]]:
    stack = new_stack(tmp_path_factory.mktemp("sentinel"), "stack")
    first = int(stack.env["CHATQ_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    replica = free_port()
    proc = stack.spawn("replica", ["redis-server", "--port", str(replica), "--bind",
                                   "127.0.0.1", "--save", "", "--appendonly", "no",
                                   "--dir", str(stack.data_dir), "--dbfilename", "replica.rdb",
                                   "--replicaof", "127.0.0.1", str(first)])
    wait_for(lambda: redis.Redis(port=replica).info("replication").get(
        "master_link_status") == "up", 30, "the replica", proc)
    sentinels = [free_port() for _ in range(3)]
    for port in sentinels:
        stack.spawn(f"sentinel-{port}", _sentinel(stack.data_dir, port, first))
    for port in sentinels:
        wait_for(lambda p=port: _answers(p), 30, f"sentinel {port}")  # type: ignore[misc]
    hosts = ",".join(f"127.0.0.1:{p}" for p in sentinels)
    stack.env["CHATQ_REDIS_URL"] = f"redis+sentinel://{hosts}/{MASTER}/0"
    try:
        yield start_chatq(stack), [first, replica, *sentinels]
    finally:
        stack.stop()


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port).ping())
    except redis.RedisError:
        return False


def test_a_job_runs_through_the_sentinels(sentineled: tuple[Chatq, list[int]]) -> None:
    chatq, _ = sentineled
    with chatq.client() as c:
        job = submit(c, hi(max_tokens=4))
        assert wait_done(c, job["id"])["status"] == "succeeded"


def test_a_failover_loses_no_token_and_no_job(sentineled: tuple[Chatq, list[int]]) -> None:
    chatq, (first, replica, sentinel, *_) = sentineled
    assert master_port(sentinel) == first
    with chatq.client(timeout=300) as c:
        job = submit(c, hi(LONG, max_tokens=120, temperature=0))
        streamed: list[SseStream] = []
        reader = threading.Thread(target=lambda: streamed.append(stream_job(c, job["id"])))
        reader.start()
        while not c.get(f"/v1/jobs/{job['id']}").json()["output"]:
            pass  # generating: fail over mid-stream
        redis.Redis(port=sentinel).execute_command("SENTINEL", "FAILOVER", MASTER)
        wait_for(lambda: master_port(sentinel) == replica, 60, "the failover")
        reader.join(300)
        done = wait_done(c, job["id"], timeout=300)
        assert done["status"] == "succeeded"
        [stream] = streamed
        assert stream.last.event == "done"
        seqs = [e.data["seq"] for e in stream.tokens]
        assert seqs == list(range(1, len(seqs) + 1))  # every token once, in order
        assert stream.text == done["output"]
        after = submit(c, hi(max_tokens=4))  # on the new master
        assert wait_done(c, after["id"])["status"] == "succeeded"
