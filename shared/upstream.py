"""A model served by a remote OpenAI-compatible server (an ``upstream``) instead of a
local GGUF file: where it is, how chatq authenticates, and which sampling parameters
it can honour.

A registry model names one in ``[models."NAME".upstream]`` (see
:mod:`shared.registry`); the API asks this module what such a model cannot do
(admission), and the upstream engine (:mod:`workers.upstream_engine`) asks it how to
call the server. What must hold:

- The API key is never in the registry, a job, a log line or an error: the registry
  names the environment variable that holds it (``api_key_env``), read by the worker
  alone, and every text that came back from the upstream passes :func:`redact`.
- A sampling parameter is never dropped silently. OpenAI (and Azure OpenAI) has no
  ``top_k``, ``min_p``, ``repeat_penalty`` or GBNF ``grammar``; vLLM and llama.cpp's
  servers take some of them (under their own names, :data:`EXTRA_PARAMS`). A value an
  upstream cannot honour is refused at admission (``400`` naming it,
  :meth:`UpstreamOptions.unsupported`); a model's own defaults for such a parameter
  are refused when the registry loads. Left unset, they stay *neutral* (off,
  :data:`NEUTRAL`) so the upstream's own defaults apply.
- Azure OpenAI: ``url`` is the deployment
  (``https://{resource}.openai.azure.com/openai/deployments/{deployment}``; the full
  ``.../chat/completions?api-version=...`` form is taken too), ``api_version`` is sent
  as the ``api-version`` query, the key as the ``api-key`` header. Other kinds send
  ``Authorization: Bearer``.
"""

from __future__ import annotations

from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.schemas import SamplingParams

UpstreamKind = Literal["openai", "azure", "vllm", "llama.cpp"]

# Sampling parameters beyond OpenAI's that an upstream kind takes: chatq's name -> the
# name in the upstream's request body. Anything not listed is refused unless neutral.
EXTRA_PARAMS: dict[str, dict[str, str]] = {
    "openai": {},
    "azure": {},
    "vllm": {"top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repetition_penalty"},
    "llama.cpp": {"top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repeat_penalty",
                  "grammar": "grammar"},
}
# The value of each such parameter that means "not asked for" (sampling as it was).
NEUTRAL: dict[str, Any] = {
    "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "grammar": None,
    "penalty_last_n": SamplingParams.model_fields["penalty_last_n"].default,
}
# OpenAI refuses more stop strings than this.
OPENAI_MAX_STOP = 4
# The body field of the answer's length limit: OpenAI deprecated max_tokens (its
# reasoning models refuse it); vLLM and llama.cpp's servers read max_tokens.
MAX_TOKENS_FIELD: dict[str, str] = {"openai": "max_completion_tokens",
                                    "azure": "max_completion_tokens",
                                    "vllm": "max_tokens", "llama.cpp": "max_tokens"}
REDACTED = "[redacted]"
_AZURE_HOST = ".openai.azure.com"


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced (an upstream may echo it)."""
    return text.replace(secret, REDACTED) if secret else text


class UpstreamOptions(BaseModel):
    """``[models."NAME".upstream]``: the OpenAI-compatible server that runs the model."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="The server's OpenAI-compatible base URL, to which "
                     "`/chat/completions` is added: `https://api.openai.com/v1`, "
                     "`http://vllm:8000/v1`; for Azure OpenAI the deployment, "
                     "`https://{resource}.openai.azure.com/openai/deployments/{name}`. "
                     "A trailing `/chat/completions` is dropped (and Azure's "
                     "`?api-version=` read). No credentials in it (see `api_key_env`).")
    kind: UpstreamKind = Field("openai", description="What the server is, which decides "
                               "the sampling parameters it takes: `openai` and `azure` "
                               "(OpenAI's only), `vllm` (adds top_k, min_p, repeat_penalty "
                               "as repetition_penalty), `llama.cpp` (llama-server or "
                               "llama-cpp-python's server: adds top_k, min_p, "
                               "repeat_penalty, grammar).")
    model: str | None = Field(None, min_length=1, description="The model's name on the "
                              "upstream (the request's `model`); optional for Azure, "
                              "whose deployment decides.")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="The environment variable (of the worker) "
                                    "that holds the API key; never the key itself. None: "
                                    "the server takes no key.")
    api_version: str | None = Field(None, min_length=1, description="Azure OpenAI's "
                                    "`api-version` (e.g. 2024-10-21); needs kind = "
                                    "'azure'.")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Longest wait for the "
                             "server to connect or send the next bytes of an answer; "
                             "past it the attempt counts as failed.")
    retries: int = Field(3, ge=0, le=10, description="Further tries of a job's request "
                         "after a 429, a 5xx, a timeout or a connection error, before "
                         "the first token (the job then fails with `upstream_error`).")
    backoff_s: float = Field(1.0, gt=0, le=60, description="Wait before the first retry, "
                             "doubled each time (an upstream's Retry-After wins, up to "
                             "60 s).")

    @model_validator(mode="before")
    @classmethod
    def _azure_url_form(cls, data: Any) -> Any:
        """Take Azure's full URL (``.../chat/completions?api-version=...``): the
        deployment becomes ``url``, the query ``api_version``."""
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        parts = urlsplit(data["url"])
        path = parts.path.rstrip("/").removesuffix("/chat/completions")
        query = parse_qs(parts.query)
        given = dict(data, url=urlunsplit((parts.scheme, parts.netloc, path, "", parts.fragment)))
        if "api-version" in query and set(query) == {"api-version"}:
            version = query["api-version"][0]
            if data.get("api_version") not in (None, version):
                raise ValueError(f"`url` says api-version={version} but `api_version` = "
                                 f"{data['api_version']!r}")
            given["api_version"] = version
        elif parts.query:
            raise ValueError("`url` must not carry a query (only Azure's api-version)")
        return given

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"`url` = {self.url!r}: must be an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("`url` must not carry credentials: put the key in an "
                             "environment variable and name it in `api_key_env`")
        if parts.fragment:
            raise ValueError("`url` must not have a #fragment")
        azure_host = (parts.hostname or "").endswith(_AZURE_HOST)
        if azure_host and self.kind != "azure":
            raise ValueError(f"`url` is Azure OpenAI ({parts.hostname}): set kind = 'azure'")
        if self.kind == "azure":
            if "/openai/deployments/" in parts.path and self.api_version is None:
                raise ValueError("an Azure OpenAI deployment needs `api_version` "
                                 "(or ?api-version=... in `url`)")
        elif self.api_version is not None:
            raise ValueError("`api_version` is Azure OpenAI's: it needs kind = 'azure'")
        if self.model is None and self.kind != "azure":
            raise ValueError("`model` (the upstream's model name) is required")
        return self

    # --- how to call it -----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The chat completions URL (with Azure's api-version)."""
        url = f"{self.url.rstrip('/')}/chat/completions"
        return f"{url}?api-version={self.api_version}" if self.api_version else url

    @property
    def embeddings_endpoint(self) -> str:
        """The embeddings URL (with Azure's api-version)."""
        url = f"{self.url.rstrip('/')}/embeddings"
        return f"{url}?api-version={self.api_version}" if self.api_version else url

    @property
    def public_url(self) -> str:
        """The base URL as it may be shown (it carries no credentials, by validation)."""
        return self.url

    def auth_headers(self, key: str | None) -> dict[str, str]:
        if not key:
            return {}
        return {"api-key": key} if self.kind == "azure" else {"Authorization": f"Bearer {key}"}

    # --- what it can honour -------------------------------------------------------

    def takes(self, param: str) -> bool:
        """The upstream honours this chatq sampling parameter (beyond OpenAI's)."""
        return param in EXTRA_PARAMS[self.kind]

    def unsupported(self, params: SamplingParams) -> list[tuple[str, str]]:
        """``(field, why)`` for each parameter asked for that this upstream cannot honour."""
        problems = []
        for name, neutral in NEUTRAL.items():
            if getattr(params, name) != neutral and not self.takes(name):
                problems.append((name, f"the {self.kind} upstream of this model has no "
                                       f"`{name}`"))
        if self.kind in ("openai", "azure") and len(params.stop) > OPENAI_MAX_STOP:
            problems.append(("stop", f"the {self.kind} upstream of this model takes at most "
                                     f"{OPENAI_MAX_STOP} stop strings, the model's own "
                                     f"defaults included ({len(params.stop)} asked)"))
        return problems
