"""The CPU flags of both llama.cpp builds (the wheel and llama-server), computed in one
place: the features /proc/cpuinfo lists, never AMX, unless CMAKE_ARGS picks the CPU
build itself; and the cache key both builds use."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "ops" / "llama_cmake.sh"
NO_AMX = "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"


def sh(call: str, cmake_args: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    if cmake_args is not None:
        env["CMAKE_ARGS"] = cmake_args
    done = subprocess.run(["bash", "-c", f'source "{SCRIPT}"; {call}'], env=env, check=True,
                          capture_output=True, text=True)
    return done.stdout.rstrip("\n")


def cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: {flags}\nbugs\t\t: none\n"
                    f"processor\t: 1\nflags\t\t: {flags} avx512f\n")
    return path


def test_the_features_the_cpu_lists_without_amx(tmp_path: Path) -> None:
    path = cpuinfo(tmp_path, "fpu sse4_2 avx avx2 fma f16c bmi2 amx_tile amx_int8 avx_vnni")
    assert sh(f"llama_cmake_args {path} x86_64") == (
        "-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON "
        f"-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON {NO_AMX}")


def test_avx512_features_are_whole_words(tmp_path: Path) -> None:
    # avx512f only on the second processor line: the first line is read
    path = cpuinfo(tmp_path, "sse4_2 avx512vbmi avx512_vnni avx512_bf16 avx512fp16")
    assert sh(f"llama_cmake_args {path} x86_64") == (
        "-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON "
        f"-DGGML_AVX512_BF16=ON {NO_AMX}")


def test_given_cmake_args_come_first(tmp_path: Path) -> None:
    path = cpuinfo(tmp_path, "avx2")
    assert sh(f"llama_cmake_args {path} x86_64", "-DGGML_CUDA=on") == (
        f"-DGGML_CUDA=on -DGGML_NATIVE=OFF -DGGML_AVX2=ON {NO_AMX}")


def test_a_native_choice_or_another_architecture_is_left_alone(tmp_path: Path) -> None:
    path = cpuinfo(tmp_path, "avx2 amx_tile")
    assert sh(f"llama_cmake_args {path} x86_64", "-DGGML_NATIVE=ON") == "-DGGML_NATIVE=ON"
    assert sh(f"llama_cmake_args {path} aarch64") == ""
    assert sh(f"llama_cmake_args {tmp_path / 'missing'} x86_64", "-DX=1") == "-DX=1"


def test_the_cache_key_is_the_flags_digest() -> None:
    args = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON"
    assert sh(f'llama_variant "{args}"') == hashlib.sha1(args.encode()).hexdigest()[:8]
    assert sh('llama_variant ""') == hashlib.sha1(b"").hexdigest()[:8]


def test_both_builds_take_their_flags_and_key_from_the_one_place() -> None:
    for name in ("install_llama.sh", "install_llama_server.sh"):
        text = (ROOT / "ops" / name).read_text()
        assert 'source "$(dirname "$0")/llama_cmake.sh"' in text
        assert "CMAKE_ARGS=$(llama_cmake_args)" in text
        assert 'variant=$(llama_variant "$CMAKE_ARGS")' in text
        assert "GGML_AMX" not in text and "/proc/cpuinfo" not in text
