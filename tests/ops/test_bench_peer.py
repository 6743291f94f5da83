"""llama-server's command line in make bench: the same model, slots, context per slot,
threads and llama.cpp options as chatq's worker, on loopback, nothing fetched."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.bench_peer import server_argv
from shared.registry import ModelSpec

BIN = Path("/cache/llama-server")
GGUF = Path("/models/m.gguf")


def spec(**options: object) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", "path": "/models/m.gguf", "queue": "cpu",
                                     **options})


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_defaults_give_the_same_work_as_chatq() -> None:
    argv = server_argv(BIN, spec(), GGUF, 8123, 2)
    assert argv[0] == str(BIN)
    assert flag(argv, "--model") == str(GGUF)
    assert flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--port") == "8123"
    assert flag(argv, "--parallel") == "4"  # the registry's default slots
    assert flag(argv, "--ctx-size") == str(2048 * 4)  # context_size per slot
    assert flag(argv, "--threads") == "2"
    assert flag(argv, "--threads-batch") == "2"
    assert flag(argv, "--flash-attn") == "auto"  # llama.cpp's default, as the engine's
    assert flag(argv, "--n-gpu-layers") == "0"
    assert "--no-webui" in argv
    # llama-server's own features keep their defaults; nothing names a remote model
    assert not {"--no-cache-prompt", "--cache-ram", "-hf", "--hf-repo", "--kv-unified",
                "--batch-size", "--chat-template-file", "--load-mode"} & set(argv)


def test_slots_and_context_follow_the_registry() -> None:
    argv = server_argv(BIN, spec(slots=8, context_size=1024), GGUF, 1, 2)
    assert flag(argv, "--parallel") == "8"
    assert flag(argv, "--ctx-size") == "8192"


@pytest.mark.parametrize(("flash", "word"), [(True, "on"), (False, "off"), (None, "auto")])
def test_flash_attention_as_the_registry_sets_it(flash: bool | None, word: str) -> None:
    assert flag(server_argv(BIN, spec(flash_attn=flash), GGUF, 1, 2), "--flash-attn") == word


def test_every_llama_option_the_registry_sets_is_passed_on() -> None:
    s = spec(n_batch=1024, n_ubatch=256, n_threads_batch=4, flash_attn=True, type_k="q8_0",
             type_v="q8_0", rope_scaling_type="linear", rope_freq_scale=0.5,
             rope_freq_base=10000.0, gpu_layers=-1, main_gpu=1, split_mode="row",
             tensor_split=[3, 1], offload_kqv=False, use_mmap=False, use_mlock=True)
    argv = server_argv(BIN, s, GGUF, 1, 2)
    assert flag(argv, "--batch-size") == "1024"
    assert flag(argv, "--ubatch-size") == "256"
    assert flag(argv, "--threads") == "2"
    assert flag(argv, "--threads-batch") == "4"
    assert flag(argv, "--cache-type-k") == "q8_0"
    assert flag(argv, "--cache-type-v") == "q8_0"
    assert flag(argv, "--rope-scaling") == "linear"
    assert flag(argv, "--rope-freq-scale") == "0.5"
    assert flag(argv, "--rope-freq-base") == "10000.0"
    assert flag(argv, "--n-gpu-layers") == "all"
    assert flag(argv, "--main-gpu") == "1"
    assert flag(argv, "--split-mode") == "row"
    assert flag(argv, "--tensor-split") == "3,1"
    assert "--no-kv-offload" in argv
    assert flag(argv, "--load-mode") == "mlock"


@pytest.mark.parametrize(("mmap", "mlock", "mode"), [
    (None, True, "mmap+mlock"), (True, None, "mmap"), (False, None, "none"),
    (False, False, "none"), (True, True, "mmap+mlock")])
def test_mmap_and_mlock_are_a_load_mode(mmap: bool | None, mlock: bool | None,
                                        mode: str) -> None:
    argv = server_argv(BIN, spec(use_mmap=mmap, use_mlock=mlock), GGUF, 1, 2)
    assert flag(argv, "--load-mode") == mode


def test_a_registry_chat_template_goes_in_a_file() -> None:
    argv = server_argv(BIN, spec(), GGUF, 1, 2, template=Path("/tmp/t.jinja"))
    assert flag(argv, "--chat-template-file") == "/tmp/t.jinja"
