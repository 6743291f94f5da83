"""The registry's llama.cpp options as llama.cpp's own parameter structs.

The batched engine talks to llama.cpp through its low-level API (one model,
one context of ``slots`` sequences), so the options a registry model sets
(:meth:`shared.registry.ModelSpec.llama_kwargs`, named as llama-cpp-python's
``Llama`` names them) are put into ``llama_model_params`` and
``llama_context_params`` here, the way ``Llama.__init__`` does. Options a model
leaves out keep llama.cpp's defaults (flash attention: auto).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import llama_cpp

from shared.registry import ModelSpec

_ALL_LAYERS = 0x7FFFFFFF


def llama_threads(spec: ModelSpec, n_threads: int | None = None) -> int:
    """llama.cpp's threads for the model: the registry's, else the worker's
    (``n_threads``), else every core this process may use."""
    return spec.n_threads or n_threads or len(os.sched_getaffinity(0))


def model_params(spec: ModelSpec) -> tuple[Any, Any]:
    """``llama_model_params`` for the model, and an object that must outlive the load
    (the tensor split array the struct points into)."""
    o = spec.llama_kwargs()
    params = llama_cpp.llama_model_default_params()
    layers = o.get("n_gpu_layers", 0)
    params.n_gpu_layers = _ALL_LAYERS if layers == -1 else layers
    for name in ("split_mode", "main_gpu"):
        if name in o:
            setattr(params, name, o[name])
    params.load_mode = _load_mode(o.get("use_mmap", True), o.get("use_mlock", False))
    keep = None
    if o.get("tensor_split"):
        keep = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*o["tensor_split"])
        params.tensor_split = keep
    return params, keep


def _load_mode(mmap: bool, mlock: bool) -> int:
    if mmap and mlock:
        return int(llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK)
    if mlock:
        return int(llama_cpp.LLAMA_LOAD_MODE_MLOCK)
    return int(llama_cpp.LLAMA_LOAD_MODE_MMAP if mmap else llama_cpp.LLAMA_LOAD_MODE_NONE)


def context_params(spec: ModelSpec, sequences: int, n_batch: int, n_threads: int) -> Any:
    """``llama_context_params``: ``sequences`` sequences of ``context_size`` each, every
    sequence its own KV stream (not unified), ``n_batch`` tokens per decode."""
    o = spec.llama_kwargs()
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = spec.context_size * sequences
    params.n_seq_max = sequences
    params.kv_unified = False  # one KV stream of n_ctx / n_seq_max cells per sequence
    params.n_batch = n_batch
    params.n_ubatch = min(o.get("n_ubatch", n_batch), n_batch)
    params.n_threads = n_threads
    params.n_threads_batch = o.get("n_threads_batch", n_threads)
    if "flash_attn" in o:
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if o["flash_attn"]
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    for name in ("type_k", "type_v", "offload_kqv", "rope_scaling_type", "rope_freq_base",
                 "rope_freq_scale"):
        if name in o:
            setattr(params, name, o[name])
    return params
