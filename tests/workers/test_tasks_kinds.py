"""Completion and embedding jobs in the worker's task flow, with the fake engine and a
real Redis: a raw prompt reaches the engine untemplated; vectors come back as the
job's result; an engine that cannot embed, or a deadline, fails the job."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from shared import vectors
from shared.lifecycle import BlockingJobs, JobRecord
from shared.prompting import Prompt
from shared.schemas import JobKind, JobStatus
from shared.settings import load_settings
from tests.shared.test_lifecycle import CFG, created
from tests.workers.fake_engine import FakeEngine
from tests.workers.test_tasks import WORKER, FakeWorker, final
from workers.engine import EmbeddingError, Embeddings
from workers.tasks import run_job


class RawPrompter:
    """Tokenizes as a model would read a raw prompt: one token per word."""

    def raw(self, text: str) -> Prompt:
        return Prompt(tokens=list(range(len(text.split()))), stop=[])


class EmbeddingEngine(FakeEngine):
    """Embeds each text as [its length, 0]; asks ``stop`` before each text, after
    ``before_each`` (a test's way to act while the job runs)."""

    def __init__(self, before_each: Callable[[], object] | None = None) -> None:
        super().__init__()
        self.embedded: list[list[str]] = []
        self.deadline: float | None = None
        self.before_each = before_each

    def embed(self, texts: list[str], deadline: float | None = None,
              stop: Callable[[], bool] | None = None) -> Embeddings:
        self.embedded.append(texts)
        self.deadline = deadline
        for _ in texts:
            if self.before_each is not None:
                self.before_each()
            if stop is not None and stop():
                raise EmbeddingError("the job was cancelled", code="cancelled")
        return Embeddings(vectors=[[float(len(t)), 0.0] for t in texts],
                          prompt_tokens=sum(len(t.split()) for t in texts))


@pytest.fixture
def w(redis_client: redis.Redis) -> FakeWorker:
    return FakeWorker(BlockingJobs(redis_client, CFG), FakeEngine(), load_settings())


def text_job(w: FakeWorker, kind: JobKind, inputs: list[str]) -> JobRecord:
    return created(w.jobs, kind=kind, inputs=inputs)


def test_a_completion_job_feeds_its_prompt_as_it_is(w: FakeWorker) -> None:
    w.engine.prompter = RawPrompter()  # type: ignore[assignment]
    rec = text_job(w, JobKind.completion, ["once upon a time"])
    run_job(w, rec.id)
    done, output = final(w, rec)
    assert done.status is JobStatus.succeeded and output
    request = w.engine.requests[0]
    assert request.prompt is not None and len(request.prompt.tokens) == 4
    assert request.messages == [{"role": "user", "content": "once upon a time"}]
    assert done.usage is not None and done.usage["prompt_tokens"] == 4
    assert not w.persister.writes  # no conversation


def test_a_completion_job_needs_a_local_tokenizer(w: FakeWorker) -> None:
    # The fake engine has no prompter, as an upstream engine.
    rec = text_job(w, JobKind.completion, ["hello"])
    run_job(w, rec.id)
    done, _ = final(w, rec)
    assert done.status is JobStatus.failed and done.error is not None
    assert done.error["code"] == "prompt_error" and not w.engine.requests


def test_an_embedding_job_finishes_with_its_vectors(w: FakeWorker) -> None:
    w.engine = EmbeddingEngine()
    rec = text_job(w, JobKind.embedding, ["a b", "c d e"])
    before = time.monotonic()
    run_job(w, rec.id)
    done, output = final(w, rec)
    assert done.status is JobStatus.succeeded and done.kind is JobKind.embedding
    assert done.result is not None
    assert [vectors.unpack(v) for v in done.result["embeddings"]] == [[3.0, 0.0], [5.0, 0.0]]
    assert done.usage == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
    assert output == "" and not w.engine.requests and w.engine.embedded == [["a b", "c d e"]]
    assert w.engine.deadline is not None and w.engine.deadline > before + 200  # time limit
    assert done.timings["duration_ms"] is not None


def test_an_engine_that_cannot_embed_fails_the_job(w: FakeWorker) -> None:
    # The fake engine keeps Engine.embed: it does not embed.
    rec = text_job(w, JobKind.embedding, ["hello"])
    run_job(w, rec.id)
    done, _ = final(w, rec)
    assert done.status is JobStatus.failed and done.error is not None
    assert done.error["code"] == "unsupported" and "does not embed" in done.error["message"]
    assert done.result is None


def test_a_cancelled_embedding_job_ends_cancelled_between_texts(w: FakeWorker) -> None:
    rec = text_job(w, JobKind.embedding, ["a", "b", "c"])
    w.engine = EmbeddingEngine(before_each=lambda: w.jobs(w.jobs.ops.cancel(rec)))
    run_job(w, rec.id)
    done, _ = final(w, rec)
    assert (done.status, done.finish_reason) == (JobStatus.cancelled, "cancelled")
    assert done.result is None and done.error is None


def test_an_embedding_job_taken_away_is_dropped_not_finished(w: FakeWorker) -> None:
    rec = text_job(w, JobKind.embedding, ["a", "b"])

    def requeue() -> None:  # the sweeper decided this worker was gone
        loaded = final(w, rec)[0]
        if loaded.status is JobStatus.running:
            assert w.jobs(w.jobs.ops.requeue(loaded, WORKER, max_attempts=3)).verdict == (
                "requeued")

    w.engine = EmbeddingEngine(before_each=requeue)
    run_job(w, rec.id)
    done, _ = final(w, rec)
    assert (done.status, done.dispatch, done.owner) == (JobStatus.queued, 2, None)
    assert done.result is None
