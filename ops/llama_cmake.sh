# Sourced (not run) by ops/install_llama.sh and ops/install_llama_server.sh, so the
# llama-cpp-python wheel and the llama-server binary make bench compares it with are
# built for the same CPU features, and are cached under the same variant key.
#
#   llama_cmake_args [CPUINFO [ARCH]]  prints CMAKE_ARGS: $CMAKE_ARGS as given, plus, on
#                                      x86_64 unless CMAKE_ARGS picks GGML_NATIVE itself,
#                                      the features CPUINFO (/proc/cpuinfo) lists, no AMX
#   llama_variant ARGS                 prints the cache key of a CMAKE_ARGS string
#
# Why not -march=native (llama.cpp's default): it takes AMX where the CPU lists it; in a
# VM that does not hand AMX tile state to guests (Firecracker, some clouds), the first
# matrix multiply then dies (SIGSEGV in ggml_backend_amx_mul_mat).

llama_cmake_args() {
  local cpuinfo=${1:-/proc/cpuinfo} arch=${2:-$(uname -m)} flags cpu pair
  if [[ "$arch" != x86_64 || "${CMAKE_ARGS:-}" == *GGML_NATIVE* || ! -r "$cpuinfo" ]]; then
    printf '%s\n' "${CMAKE_ARGS:-}"
    return
  fi
  flags=" $(grep -m1 '^flags' "$cpuinfo" | cut -d: -f2) "
  cpu="-DGGML_NATIVE=OFF"
  for pair in sse4_2:SSE42 avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI \
              avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI \
              avx512_bf16:AVX512_BF16; do
    if [[ "$flags" == *" ${pair%%:*} "* ]]; then cpu+=" -DGGML_${pair#*:}=ON"; fi
  done
  printf '%s\n' "${CMAKE_ARGS:+$CMAKE_ARGS }$cpu -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
}

llama_variant() {
  printf '%s' "$1" | sha1sum | cut -c1-8
}
