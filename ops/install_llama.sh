#!/usr/bin/env bash
# Install llama-cpp-python into a virtualenv from a wheel cached outside the repo,
# building the wheel from source the first time (about 7-10 minutes on 2 cores).
# The cache is keyed by version and CMAKE_ARGS (e.g. -DGGML_CUDA=on for a GPU build).
#   ops/install_llama.sh .venv/bin/python 0.3.36
set -euo pipefail
py=$1
version=$2
# llama.cpp's default CPU build is -march=native, which takes AMX where the CPU lists it;
# in a VM that does not hand AMX tile state to guests (Firecracker, some clouds), the first
# matrix multiply then dies (SIGSEGV in ggml_backend_amx_mul_mat). Unless CMAKE_ARGS picks
# the CPU build itself (GGML_NATIVE), build for the features this CPU lists, without AMX.
if [[ "$(uname -m)" == x86_64 && "${CMAKE_ARGS:-}" != *GGML_NATIVE* && -r /proc/cpuinfo ]]; then
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  cpu="-DGGML_NATIVE=OFF"
  for pair in sse4_2:SSE42 avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI \
              avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI \
              avx512_bf16:AVX512_BF16; do
    if [[ "$flags" == *" ${pair%%:*} "* ]]; then cpu+=" -DGGML_${pair#*:}=ON"; fi
  done
  export CMAKE_ARGS="${CMAKE_ARGS:+$CMAKE_ARGS }$cpu -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
fi
variant=$(printf '%s' "${CMAKE_ARGS:-}" | sha1sum | cut -c1-8)
cache="${CHATQ_WHEEL_CACHE:-$HOME/.cache/chatq/wheels}/llama-cpp-python-$version-$variant"
if ! compgen -G "$cache/llama_cpp_python-$version-*.whl" >/dev/null; then
  echo "building llama-cpp-python $version from source (once; about 7-10 minutes on 2 cores)"
  echo "  CMAKE_ARGS='${CMAKE_ARGS:-}'  cache: $cache"
  tmp=$(mktemp -d)
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$py" -m pip wheel --no-deps --no-cache-dir -w "$tmp" "llama-cpp-python==$version"
  mkdir -p "$cache"
  mv "$tmp"/llama_cpp_python-"$version"-*.whl "$cache"/
  rm -rf "$tmp"
fi
"$py" -m pip install --no-deps --force-reinstall -q "$cache"/llama_cpp_python-"$version"-*.whl
