"""llama.cpp's own ``llama-server``, the peer ``make bench`` measures chatq against.

The binary comes from ``ops/install_llama_server.sh`` (the llama.cpp that the pinned
llama-cpp-python vendors, built with the wheel's CPU flags). What must hold, and why:

- **The same work as chatq's worker**: the same GGUF file, ``--parallel`` = the
  model's ``slots`` (one sequence per caller up to that many), a context of
  ``context_size`` per slot (``--ctx-size`` is split between the slots), the
  engine's threads for generation and for prompts, and every llama.cpp option the
  registry sets for the model (flash attention, batch sizes, KV cache types, RoPE,
  mmap/mlock, GPU layers, chat template) passed as llama-server's own flag. An option
  the registry leaves out is left to llama-server's default, as chatq leaves it to
  llama.cpp's: flash attention ``auto`` on both sides. llama-server's own features
  keep their defaults (``--cache-prompt`` on, ``--cache-ram`` 8 GiB): the peer is
  llama-server as its users run it.
- **Loopback only, nothing fetched**: it listens on 127.0.0.1 on a free port, reads
  the model from its path (no ``-hf``), and has no web UI.
- **It ends with the bench**: it runs as one of the bench stack's processes (its own
  process group, log in the stack's folder) and stops with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ops.devstack import Stack, free_port, wait_for
from shared.registry import ModelSpec

FLASH_ATTN = {None: "auto", True: "on", False: "off"}
# Registry option -> llama-server flag, for options passed on as they are.
VALUE_FLAGS = {
    "n_batch": "--batch-size", "n_ubatch": "--ubatch-size", "type_k": "--cache-type-k",
    "type_v": "--cache-type-v", "rope_scaling_type": "--rope-scaling",
    "rope_freq_base": "--rope-freq-base", "rope_freq_scale": "--rope-freq-scale",
    "main_gpu": "--main-gpu", "split_mode": "--split-mode",
}


def server_argv(binary: Path, spec: ModelSpec, model: Path, port: int, threads: int,
                *, template: Path | None = None) -> list[str]:
    """llama-server's command line for ``spec`` (``template``: a file holding the
    registry's chat template, when it sets one)."""
    argv = [str(binary), "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--parallel", str(spec.slots), "--ctx-size", str(spec.context_size * spec.slots),
            "--threads", str(threads),
            "--threads-batch", str(spec.n_threads_batch or threads),
            "--flash-attn", FLASH_ATTN[spec.flash_attn],
            "--n-gpu-layers", "all" if spec.gpu_layers == -1 else str(spec.gpu_layers),
            "--no-webui"]
    for name, flag in VALUE_FLAGS.items():
        value: Any = getattr(spec, name)
        if value is not None:
            argv += [flag, str(value)]
    if spec.tensor_split:
        argv += ["--tensor-split", ",".join(f"{s:g}" for s in spec.tensor_split)]
    if spec.offload_kqv is False:
        argv.append("--no-kv-offload")
    if spec.use_mmap is not None or spec.use_mlock is not None:
        argv += ["--load-mode", load_mode(spec.use_mmap is not False, bool(spec.use_mlock))]
    if template is not None:
        argv += ["--chat-template-file", str(template)]
    return argv


def load_mode(mmap: bool, mlock: bool) -> str:
    """llama-server's ``--load-mode`` for the registry's use_mmap / use_mlock (as the
    engine's ``workers.llama.params`` maps them to llama.cpp's load modes)."""
    if mlock:
        return "mmap+mlock" if mmap else "mlock"
    return "mmap" if mmap else "none"


def healthy(base_url: str) -> bool:
    """llama-server answers /health with 200 once the model is loaded (503 before)."""
    return httpx.get(f"{base_url}/health", timeout=2).status_code == 200


def start_server(stack: Stack, binary: Path, spec: ModelSpec, model: Path,
                 threads: int) -> str:
    """Start llama-server as one of ``stack``'s processes; its base URL once it is ready."""
    template = None
    if spec.chat_template:
        template = stack.data_dir / "chat_template.jinja"
        template.write_text(spec.chat_template)
    port = free_port()
    proc = stack.spawn("llama-server", server_argv(binary, spec, model, port, threads,
                                                   template=template))
    base_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: healthy(base_url), 120, f"llama-server on port {port}", proc)
    return base_url
