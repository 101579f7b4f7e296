#!/usr/bin/env bash
# The peer row of bench/README.md: a recent llama.cpp built natively on this
# machine, timed on random Q4_0 weights of our benchmark shapes, 2 threads.
#
# No internet here, but npm is reachable: node-llama-cpp ships the llama.cpp
# source of its release as a git bundle (llama/gitRelease.bundle), so we build
# llama-bench from that (CPU only, -march=native, OpenMP). Nothing of it enters
# the repository; everything lives under $PEER_DIR.
#
#   bench/peer/llama_cpp.sh [--shapes "tinyllama-1.1b llama2-7b"] [--reps N]
#
# Prints llama-bench's markdown table per shape plus its peak RSS (weights in
# anonymous memory, -lm none, like our loader).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="$(cd "$here/../../.." && pwd)/shared"
peer_dir="${PEER_DIR:-/tmp/chatradio-peer}"
version="${NODE_LLAMA_CPP_VERSION:-3.22.1}"
shapes="tinyllama-1.1b llama2-7b"
reps=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --shapes) shapes="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    *) echo "usage: $0 [--shapes \"S ...\"] [--reps N]" >&2; exit 2 ;;
  esac
done
tokenizer="$shared/tokenizers/llama2/tokenizer.model"
[[ -f "$tokenizer" ]] || { echo "missing $tokenizer (../shared)" >&2; exit 2; }

mkdir -p "$peer_dir"
src="$peer_dir/llama.cpp"
if [[ ! -d "$src" ]]; then
  (cd "$peer_dir" && npm pack --silent "node-llama-cpp@$version" >/dev/null &&
     tar xzf "node-llama-cpp-$version.tgz" package/llama/gitRelease.bundle &&
     git clone -q package/llama/gitRelease.bundle "$src")
fi
bench="$src/build/bin/llama-bench"
if [[ ! -x "$bench" ]]; then
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
  cmake --build "$src/build" -j"$(nproc)" --target llama-bench >/dev/null
fi
echo "llama.cpp $(git -C "$src" log -1 --format=%h) from node-llama-cpp $version"

for shape in $shapes; do
  gguf="$peer_dir/$shape-q4_0.gguf"
  [[ -f "$gguf" ]] || /usr/bin/python3 "$here/make_gguf.py" --shape "$shape" --tokenizer "$tokenizer" --out "$gguf"
  /usr/bin/time -f "peak RSS %M KB" "$bench" -m "$gguf" -t 2 -p 256 -n 32 -d 0,256 -r "$reps" -lm none
done
