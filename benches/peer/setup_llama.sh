#!/usr/bin/env bash
# Build llama.cpp from source for the peer benchmark, into a cache dir (default ~/.cache/flashmoe-peer).
#
# llama.cpp's full source ships in the llama-cpp-python sdist on PyPI (vendor/llama.cpp), so this
# needs only pip, cmake and a C++ compiler: it downloads the sdist (no binary, no deps), extracts it,
# configures a CPU-only Release build with -DGGML_NATIVE=ON -DLLAMA_CURL=OFF (AMX off), builds llama-bench,
# llama-quantize and llama-simple, then compiles benches/peer/greedy_ids.cpp against libllama.
# About 10-25 minutes on 2 cores. Re-running reuses what is there.
#
# usage: setup_llama.sh [CACHE_DIR] [LLAMA_CPP_PYTHON_VERSION]
# prints, last, the lines of an env file (also written to CACHE_DIR/llama.env):
#   LLAMA_BIN=.../build/bin  GGUF_PY=.../gguf-py  GREEDY_IDS=.../greedy_ids
set -euo pipefail

CACHE="${1:-${HOME}/.cache/flashmoe-peer}"
VERSION="${2:-0.3.36}"
JOBS="${JOBS:-2}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$CACHE"
cd "$CACHE"

command -v cmake >/dev/null || { echo "setup_llama: cmake not found (Debian: apt-get install cmake)" >&2; exit 1; }
command -v g++ >/dev/null || { echo "setup_llama: g++ not found (Debian: apt-get install g++)" >&2; exit 1; }

SDIST="llama_cpp_python-${VERSION}.tar.gz"
if [ ! -f "$SDIST" ]; then
    python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==${VERSION}" -d . >&2
fi
SRC="$CACHE/llama_cpp_python-${VERSION}/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
    tar xzf "$SDIST"
fi
[ -f "$SRC/CMakeLists.txt" ] || { echo "setup_llama: $SDIST has no vendor/llama.cpp" >&2; exit 1; }

BUILD="$CACHE/build"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    # -march=native turns on ggml's AMX kernels on a Xeon that has AMX, but a VM that does not grant
    # the AMX tile state (these machines) kills them with SIGILL at the first batched matmul
    # (`tilezero` in ggml_backend_amx_mul_mat): prefill and llama-bench -p crash, decode does not.
    # PEER_LLAMA_CFLAGS="" keeps them where the kernel allows AMX.
    FLAGS=${PEER_LLAMA_CFLAGS--mno-amx-tile -mno-amx-int8 -mno-amx-bf16}
    nice -n 10 cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS="$FLAGS" \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_UI=OFF -DBUILD_SHARED_LIBS=ON >&2
fi
nice -n 10 cmake --build "$BUILD" -j"$JOBS" --target llama-bench llama-quantize llama-simple llama-tokenize >&2

BIN="$BUILD/bin"
GREEDY="$BIN/greedy_ids"
if [ ! -x "$GREEDY" ] || [ "$HERE/greedy_ids.cpp" -nt "$GREEDY" ]; then
    nice -n 10 g++ -O2 -std=c++17 -I"$SRC/include" -I"$SRC/ggml/include" "$HERE/greedy_ids.cpp" \
        -L"$BIN" -lllama -lggml -lggml-base -Wl,-rpath,"$BIN" -o "$GREEDY"
fi

cat > "$CACHE/llama.env" <<EOF
LLAMA_BIN=$BIN
GGUF_PY=$SRC/gguf-py
GREEDY_IDS=$GREEDY
EOF
cat "$CACHE/llama.env"
