#!/usr/bin/env bash
# Install llama-cpp-python into a virtualenv from a wheel cached outside the repo,
# building the wheel from source the first time (about 7-10 minutes on 2 cores).
# The cache is keyed by version and CMAKE_ARGS (e.g. -DGGML_CUDA=on for a GPU build).
#   ops/install_llama.sh .venv/bin/python 0.3.36
set -euo pipefail
py=$1
version=$2
# The CPU features to build for (without AMX: see ops/llama_cmake.sh), unless CMAKE_ARGS
# picks the CPU build itself (GGML_NATIVE); shared with ops/install_llama_server.sh.
source "$(dirname "$0")/llama_cmake.sh"
CMAKE_ARGS=$(llama_cmake_args)
export CMAKE_ARGS
variant=$(llama_variant "$CMAKE_ARGS")
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
