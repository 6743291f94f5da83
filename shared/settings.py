"""chatq settings: one pydantic-settings model, env prefix ``CHATQ_``, nested with ``__``.

Build it with :func:`load_settings` once per process and pass it around; tests
build their own with overrides instead of patching a module-level singleton.

Outside development the settings refuse what is only safe on a developer's machine:
no API keys, the development key, and a placeholder for any password or key they
hold (``change-me`` and the like, :func:`is_placeholder`; Flower's basic auth is
checked the same way by ``ops/flower_app.py``).
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REGISTRY = Path(__file__).with_name("models.toml")
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9])?)*$")


class Environment(StrEnum):
    development = "development"
    production = "production"


class CelerySettings(BaseModel):
    """Time limits are ordered soft < hard < visibility timeout, everywhere.

    The API, the workers and Flower all build their Celery config from this
    group, so the broker's visibility timeout cannot drift between them.
    """

    broker_url: str | None = Field(
        None, description="Celery broker URL; defaults to the Redis URL."
    )
    soft_time_limit_s: int = Field(
        300, gt=0, description="A job still generating after this fails with `timeout`."
    )
    hard_time_limit_s: int = Field(
        330, gt=0, description="The pool child is killed after this (last resort)."
    )
    visibility_timeout_s: int = Field(
        3600,
        gt=0,
        description="An unacknowledged job is redelivered after this; above the hard limit.",
    )
    max_attempts: int = Field(
        3, ge=1, description="Deliveries of one job before it fails with `worker_lost`."
    )

    @model_validator(mode="after")
    def _ordered_limits(self) -> Self:
        if not self.soft_time_limit_s < self.hard_time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "time limits must satisfy soft_time_limit_s < hard_time_limit_s "
                f"< visibility_timeout_s (got {self.soft_time_limit_s}, "
                f"{self.hard_time_limit_s}, {self.visibility_timeout_s})"
            )
        return self


class JobSettings(BaseModel):
    max_age_s: int = Field(
        86400, gt=0,
        description="A job not started this long after its submit ends `expired`; a "
                    "running job's record lives this long.",
    )
    retention_s: int = Field(
        3600, gt=0, description="Finished jobs are kept this long, then answer 410."
    )
    tombstone_s: int = Field(
        7 * 24 * 3600,
        gt=0,
        description="How long an expired job id is still recognised (410 rather than 404).",
    )
    replay_max_events: int = Field(
        16384, gt=0, description="Token events kept per job for late stream joiners."
    )
    transitions_max: int = Field(
        100_000, gt=0,
        description="Entries kept in the transition log (approximately); a consumer "
                    "group further behind than this misses the oldest.",
    )
    unsent_grace_s: float = Field(
        10.0, gt=0,
        description="A queued job whose broker message is not confirmed after this long "
                    "is sent by the recovery sweeper.",
    )
    sweep_interval_s: float = Field(
        1.0, gt=0, description="How often each API and worker process runs the recovery "
                               "sweeper (dead workers, unsent jobs, expired jobs).",
    )
    coalesce_ms: float = Field(
        50.0, ge=0,
        description="A job's first token goes out at once; later ones are batched for this "
                    "long per Redis write (and per chunk to OpenAI streaming clients): 20 "
                    "writes a second, about five tokens each at 100 tokens/s. 0 sends every "
                    "token on its own.",
    )


class WorkerSettings(BaseModel):
    queue: str = Field("cpu", description="The queue this worker serves.")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="Seconds between heartbeats.")
    heartbeat_ttl_s: float = Field(
        10.0, gt=0, description="A worker silent for this long is considered gone."
    )
    model_load_timeout_s: float = Field(
        600.0,
        gt=4,
        description="How long the pool child may take to load its model at start.",
    )
    n_threads: int | None = Field(None, description="llama.cpp threads; default: all cores.")
    affinity_ttl_s: float = Field(
        3600.0, ge=0, description="How long a conversation's next turn is sent to the worker "
        "whose prompt cache holds its last one (when it has a free slot); 0 turns it off.")


DEV_API_KEY = "chatq-dev-key"  # development only; refused when env=production


class Mode(StrEnum):
    sync = "sync"
    async_ = "async"


class RateLimits(BaseModel):
    """One tenant's rate limits (``api.ratelimits``); each optional."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0, description="Prompt tokens plus "
                                          "max_tokens as admitted; settled as used.")
    concurrent_jobs: int | None = Field(None, gt=0, description="Unfinished jobs at once.")

    def any(self) -> bool:
        return any(v is not None for v in (self.requests_per_minute, self.tokens_per_minute,
                                           self.concurrent_jobs))


class ApiSettings(BaseModel):
    readiness_timeout_s: float = Field(2.0, gt=0, description="Per-dependency check timeout.")
    keys: SecretStr | None = Field(
        None, description="API keys as `key=tenant` pairs separated by commas."
    )
    keys_file: Path | None = Field(
        None, description="A file of `key=tenant` lines (# comments allowed)."
    )
    admin_keys: SecretStr | None = Field(
        None, description="Operator keys, comma separated (no tenant): the whole "
                          "`/v1/queues` (worker hosts and pids, every tenant's running "
                          "jobs), and `/metrics` in production or once any is set.",
    )
    modes: set[Mode] = Field(
        {Mode.sync, Mode.async_}, description="Invocation modes callers may ask for."
    )
    default_mode: Mode = Field(Mode.async_, description="Mode used when no Prefer header.")
    default_wait_s: float = Field(30.0, gt=0, description="Sync-mode wait with no `wait=N`.")
    max_wait_s: float = Field(120.0, gt=0, description="Cap on any `Prefer: wait=N`.")
    max_queue_depth: int = Field(
        1000, gt=0, description="Jobs waiting per queue, all tenants together, before new "
                                "ones get 429: the safety limit above the tenants' own.",
    )
    rate_limits: dict[str, RateLimits] = Field(
        default_factory=dict, description="Per tenant (JSON; `*`: any tenant without its "
        "own): requests_per_minute, tokens_per_minute, concurrent_jobs. 429 "
        "`rate_limit_exceeded` with OpenAI's x-ratelimit-* headers.",
    )
    fair_share: int = Field(
        1, gt=0, description="Jobs of one tenant waiting per queue and priority before its "
                             "next ones wait behind every other tenant's jobs of that "
                             "priority within their share (a tenant's flood never keeps "
                             "another tenant's job waiting behind it).",
    )
    max_tenant_queue_depth: int = Field(
        100, gt=0, description="Jobs of one tenant waiting per queue before its new ones get "
                               "429; another tenant's backlog never makes a tenant's request "
                               "429 below the safety limit.",
    )
    sse_keepalive_s: float = Field(
        15.0, gt=0, description="An idle event stream gets a comment line this often."
    )
    redis_max_connections: int = Field(
        64, gt=1, description="Redis connections one API process holds at most; requests "
                              "beyond wait for a free one (streams share one pub/sub).",
    )
    stream_patience_s: float = Field(
        60.0, gt=0, description="How long an open event stream waits for an unreachable "
                                "Redis (a restart) before it gives up.",
    )
    redis_wait_s: float = Field(
        20.0, gt=0, description="How long a request waits for a free Redis connection "
                                "before answering 503.",
    )


class ConversationSettings(BaseModel):
    mongo_timeout_ms: int = Field(
        1500, gt=0,
        description="MongoDB server selection/connect timeout; a job waits at most about "
                    "this long before its conversation write goes to the outbox.",
    )
    outbox_interval_s: float = Field(
        2.0, gt=0, description="Seconds between a worker's tries to drain the outbox."
    )
    ancestor_wait_s: float = Field(
        120.0, gt=0,
        description="How long /office/Llama and /character/Llama wait for the answer "
                    "before answering 202 with the job id.",
    )


class WebhookSettings(BaseModel):
    """Webhook delivery (the webhook worker, ``workers.webhooks.app``) and its target checks."""

    queue: str = Field("webhooks", description="The Celery queue of webhook deliveries.")
    concurrency: int = Field(
        8, ge=1, le=256, description="Deliveries one webhook worker makes at once (threads)."
    )
    timeout_s: float = Field(
        10.0, gt=0, description="Connect and read timeout of one delivery attempt."
    )
    backoff_s: float = Field(
        5.0, gt=0, description="Wait before the first retry; doubled at each further one."
    )
    backoff_max_s: float = Field(
        1800.0, gt=0, description="The longest wait between two attempts."
    )
    retry_period_s: float = Field(
        86400.0, gt=0,
        description="A delivery still failing this long after its event is given up "
                    "(`failed`).",
    )
    allow_hosts: list[str] = Field(
        [],
        description="Webhook targets allowed in production although they resolve to "
                    "loopback, private or link-local addresses: host names (exact) and "
                    "IP addresses or networks (`10.1.0.0/16`). JSON list in the environment.",
    )
    allow_private_targets: bool = Field(
        False,
        description="Development with API keys set: let webhooks target loopback, "
                    "private and link-local addresses anyway. Without it such a stack "
                    "(several tenants) refuses them as production does; development "
                    "without API keys (one trusted user) always allows them. Production "
                    "ignores it: name hosts or networks in allow_hosts.",
    )

    @field_validator("allow_hosts")
    @classmethod
    def _hosts_or_networks(cls, entries: list[str]) -> list[str]:
        out = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not _HOST_NAME.match(entry):
                    raise ValueError(f"allow_hosts: {raw!r} is not a host name, address "
                                     "or network") from None
            out.append(entry)
        return out


class LimitSettings(BaseModel):
    """Input budgets: every size a caller controls, checked at admission before any
    expensive work (parsing, tokenizing, grammar building), each refusal a 400 (413 for
    the body) naming the field and the limit. Defaults follow OpenAI's own limits where
    it has one."""

    max_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0,
        description="Largest request body, in bytes; a larger one is refused (413) before "
                    "it is read in full or parsed.")
    max_messages: int = Field(
        2048, gt=0, description="Most messages in one request.")
    max_input_chars: int = Field(
        2_000_000, gt=0,
        description="Most characters of text in one request: its messages' contents, a "
                    "prompt to complete, or the texts to embed, together.")
    max_chars_per_token: int = Field(
        64, gt=0,
        description="The most characters one token can stand for. A prompt longer than "
                    "context_size x this cannot fit the model's context "
                    "whatever its tokens, and is refused before it is tokenized; set it to "
                    "at least the longest token of your models' vocabularies (rarely over "
                    "32 characters) so a prompt that could fit is always counted.")
    max_stop_chars: int = Field(
        256, gt=0, description="Longest stop string, in characters (at most 4 of them).")
    max_metadata_pairs: int = Field(
        16, gt=0, description="Most `metadata` keys (OpenAI: 16).")
    max_metadata_key_chars: int = Field(
        64, gt=0, description="Longest `metadata` key (OpenAI: 64 characters).")
    max_metadata_value_chars: int = Field(
        512, gt=0,
        description="Longest `metadata` value (OpenAI: 512 characters; a value that is not "
                    "a string counts as its JSON text).")
    max_tools: int = Field(128, gt=0, description="Most tools in one request (OpenAI: 128).")
    max_tools_chars: int = Field(
        300_000, gt=0, description="Largest `tools` list, as JSON text (characters).")
    max_schema_chars: int = Field(
        120_000, gt=0,
        description="Largest `response_format` JSON schema, as JSON text (characters).")
    max_logit_bias: int = Field(
        300, gt=0, description="Most `logit_bias` entries (OpenAI: 300).")
    grammar_timeout_s: float = Field(
        5.0, gt=0,
        description="Longest a JSON schema (response_format, a forced tool call) may take "
                    "to become a grammar, in a worker thread; past it the request is "
                    "refused (400 naming the field).")
    grammar_threads: int = Field(
        4, gt=0, description="Grammars built at once per API process (worker threads).")
    tokenizers_per_model: int = Field(
        4, gt=0,
        description="Tokenizers per model in each API process, each used by one request "
                    "at a time (a vocabulary-only load: a few MB each): so many requests "
                    "are counted at once, and one long prompt holds up no other.")


# Values that stand in for a secret in examples and templates; production refuses them
# (compared lower-case, without punctuation: "Change-Me", "change_me" and "CHANGEME" alike).
PLACEHOLDERS = frozenset({
    "changeme", "changethis", "replaceme", "placeholder", "password", "passwd", "secret",
    "admin", "root", "example", "default", "test", "letmein", "qwerty", "123456", "xxx",
    "todo", "fixme", "yourpassword", "mypassword", "pass", "pw",
})


def is_placeholder(secret: str) -> bool:
    """A template's stand-in rather than a secret: one of :data:`PLACEHOLDERS`, or a
    value that says to change or replace it (``change-me-please``)."""
    plain = "".join(c for c in secret.lower() if c.isalnum())
    return plain in PLACEHOLDERS or "changeme" in plain or "replaceme" in plain


class BatchSettings(BaseModel):
    """OpenAI's Batch API (``/v1/files``, ``/v1/batches``): files in MongoDB GridFS, lines
    fed into the queues as they drain by a feeder in every API process."""

    max_file_bytes: int = Field(
        200 * 1024 * 1024, gt=0, description="Largest file `POST /v1/files` takes (OpenAI's "
                                             "200 MB).")
    max_lines: int = Field(50_000, gt=0, description="Most requests in one batch input file.")
    window_s: float = Field(
        86400, gt=0,
        description="How long the `completion_window` `24h` lasts here (seconds): lines not "
                    "finished by then end `batch_expired` (tests shorten it).")
    max_waiting: int = Field(
        16, ge=1,
        description="Lines of one batch queued or running at once: the feeder adds more as "
                    "they finish, so a batch never floods its queue.")
    queue_share: float = Field(
        0.5, gt=0, le=1,
        description="Batches feed a queue only while it holds fewer waiting jobs than this "
                    "share of CHATQ_API__MAX_QUEUE_DEPTH: the rest is interactive callers' "
                    "room (no 429 because of a batch).")
    feed_interval_s: float = Field(0.5, gt=0, description="How often the batch feeder runs.")
    lease_s: float = Field(
        30, gt=0,
        description="A feeder works on a batch under a lease this long (renewed each round): "
                    "two API processes never feed one batch; a dead one's batch is taken "
                    "over when its lease lapses.")
    output_expires_after_s: int = Field(
        30 * 86400, ge=3600,
        description="Output and error files are kept this long after they are made (a "
                    "batch's `output_expires_after` overrides it), then answer 404.")
    file_expires_after_s: int = Field(
        30 * 86400, ge=3600,
        description="An uploaded file is kept this long (OpenAI's default for `batch` "
                    "files; its `expires_after` overrides it), then answers 404.")


class Settings(BaseSettings):
    """All of chatq's configuration. See README for the variables."""

    model_config = SettingsConfigDict(
        env_prefix="CHATQ_", env_nested_delimiter="__", extra="ignore"
    )

    env: Environment = Field(Environment.development, description="development or production")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Job store and pub/sub.")
    mongo_url: SecretStr = Field(
        SecretStr("mongodb://127.0.0.1:27017/?directConnection=true"),
        description="MongoDB (or the embedded wire-compatible store).",
    )
    mongo_db: str = Field("chatq", description="MongoDB database name.")
    registry: Path = Field(DEFAULT_REGISTRY, description="Model registry TOML file.")
    key_prefix: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")] = Field(
        "chatq", description="Prefix of every Redis key chatq writes."
    )
    celery: CelerySettings = CelerySettings()
    jobs: JobSettings = JobSettings()
    worker: WorkerSettings = WorkerSettings()
    api: ApiSettings = ApiSettings()
    conversations: ConversationSettings = ConversationSettings()
    webhooks: WebhookSettings = WebhookSettings()
    limits: LimitSettings = LimitSettings()
    batches: BatchSettings = BatchSettings()

    @model_validator(mode="after")
    def _safe_outside_development(self) -> Self:
        if self.env is Environment.development:
            return self
        if self.api.keys is None and self.api.keys_file is None:
            raise ValueError("production needs API keys: set CHATQ_API__KEYS or "
                             "CHATQ_API__KEYS_FILE (the development key is refused)")
        if self.api.keys and DEV_API_KEY in self.api.keys.get_secret_value():
            raise ValueError("the development API key is refused outside development")
        for name, secret in self._secrets():
            if is_placeholder(secret):
                raise ValueError(f"{name}: a placeholder password is refused outside "
                                 "development (set a real secret)")
        return self

    def _secrets(self) -> list[tuple[str, str]]:
        """The passwords and keys this process is configured with, by variable."""
        found = [("CHATQ_MONGO_URL", urlsplit(self.mongo_url.get_secret_value()).password),
                 ("CHATQ_REDIS_URL", urlsplit(self.redis_url).password),
                 ("CHATQ_CELERY__BROKER_URL", urlsplit(self.celery.broker_url or "").password)]
        if self.api.keys is not None:
            found += [("CHATQ_API__KEYS", pair.partition("=")[0])
                      for pair in self.api.keys.get_secret_value().split(",")]
        if self.api.admin_keys is not None:
            found += [("CHATQ_API__ADMIN_KEYS", key)
                      for key in self.api.admin_keys.get_secret_value().split(",")]
        return [(name, value.strip()) for name, value in found if value and value.strip()]

    @property
    def broker_url(self) -> str:
        return self.celery.broker_url or self.redis_url


def load_settings(**overrides: object) -> Settings:
    """Read the environment (and explicit overrides) into a validated Settings."""
    return Settings(**overrides)  # type: ignore[arg-type]
