#!/usr/bin/env bash
# Build llama.cpp's llama-server once, the peer make bench measures chatq against, and
# print its path (the only line on stdout; progress goes to stderr).
#   ops/install_llama_server.sh .venv/bin/python 0.3.36
# It is built from the llama.cpp that the llama-cpp-python sdist of that version vendors
# (so both sides run the same llama.cpp), with the wheel's CPU flags (ops/llama_cmake.sh),
# and cached outside the repository like the wheel, keyed by version and those flags:
#   ~/.cache/chatq/llama-server-VERSION-VARIANT/llama-server   (CHATQ_SERVER_CACHE: the folder)
# The first time: the sdist from PyPI (about 75 MB) and about 10 minutes on 2 cores. Only
# the llama-server target is built: no curl, no OpenSSL, no web UI (nothing is fetched
# at build or run time). Statically linked, so the binary alone is the cache.
set -euo pipefail
py=$1
version=$2
source "$(dirname "$0")/llama_cmake.sh"
CMAKE_ARGS=$(llama_cmake_args)
variant=$(llama_variant "$CMAKE_ARGS")
cache="${CHATQ_SERVER_CACHE:-$HOME/.cache/chatq}/llama-server-$version-$variant"
if [[ ! -x "$cache/llama-server" ]]; then
  {
    echo "building llama-server from llama-cpp-python $version's llama.cpp (once; about 10 minutes on 2 cores)"
    echo "  CMAKE_ARGS='$CMAKE_ARGS'  cache: $cache"
  } >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$py" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$version" >&2
  tar -xzf "$tmp"/llama_cpp_python-"$version".tar.gz -C "$tmp"
  # CMAKE_ARGS is a list of -D options: split on spaces, as pip's build of the wheel does.
  # shellcheck disable=SC2086
  cmake -S "$tmp/llama_cpp_python-$version/vendor/llama.cpp" -B "$tmp/build" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON $CMAKE_ARGS >&2
  cmake --build "$tmp/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >&2
  mkdir -p "$cache"
  cp "$tmp/build/bin/llama-server" "$cache/llama-server.tmp"
  mv "$cache/llama-server.tmp" "$cache/llama-server"  # whole or not there
fi
printf '%s\n' "$cache/llama-server"
