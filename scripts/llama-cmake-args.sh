#!/usr/bin/env bash
# Prints CMAKE_ARGS for building llama-cpp-python from source on this CPU.
# Not -march=native: on some VMs the CPU reports AMX but the kernel does not grant AMX tile state,
# and llama.cpp's AMX kernels then die with SIGILL. So we enable the SIMD levels the CPU has, minus AMX.
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
args="-DGGML_NATIVE=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
has() { [[ " $flags " == *" $1 "* ]]; }
if [[ "$(uname -m)" == "x86_64" ]]; then
  has avx && args+=" -DGGML_AVX=ON"
  has avx2 && args+=" -DGGML_AVX2=ON"
  has fma && args+=" -DGGML_FMA=ON"
  has f16c && args+=" -DGGML_F16C=ON"
  has bmi2 && args+=" -DGGML_BMI2=ON"
  has avx_vnni && args+=" -DGGML_AVX_VNNI=ON"
  if has avx512f && has avx512bw && has avx512vl; then
    args+=" -DGGML_AVX512=ON"
    has avx512_vnni && args+=" -DGGML_AVX512_VNNI=ON"
    has avx512_bf16 && args+=" -DGGML_AVX512_BF16=ON"
    has avx512vbmi && args+=" -DGGML_AVX512_VBMI=ON"
  fi
  args+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
fi
echo "$args"
