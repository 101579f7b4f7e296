#!/usr/bin/env bash
# The peer rows of bench/README.md: a recent llama.cpp built natively on this
# machine, timed on random Q4_0 weights of our benchmark shapes, interleaved
# with our bench_cpu_e2e on the same shapes (this VM's neighbours make single
# runs vary by ±20 %, so rounds alternate the two engines; take medians).
#
# llama-bench comes from build_llama_cpp.sh (llama.cpp from npm node-llama-cpp's
# source bundle, CPU only, -march=native, OpenMP, under $PEER_DIR).
#
#   bench/peer/llama_cpp.sh --pair llama2-7b=/tmp/synth-7b-int4 \
#       --pair tinyllama-1.1b=/tmp/synth-tinyllama-int4 [--threads 2] [--rounds 3]
#
# Each pair is SHAPE (make_gguf.py --shape) = our int4 checkpoint of that shape
# (chatradio synth). Prints our bench_cpu_e2e row, then llama-bench's rows
# (pp256, tgN, both also at depth 256), per pair and round, and each engine's
# peak RSS (ours in its row; the peer's from /usr/bin/time).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
shared="$(cd "$repo/.." && pwd)/shared"
peer_dir="${PEER_DIR:-/tmp/chatradio-peer}"
version="${NODE_LLAMA_CPP_VERSION:-3.22.1}"
pairs=()
threads=2
rounds=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --pair) pairs+=("$2"); shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "usage: $0 --pair SHAPE=DIR [--pair ...] [--threads N] [--rounds N]" >&2; exit 2 ;;
  esac
done
[[ ${#pairs[@]} -gt 0 ]] || { echo "$0: give at least one --pair SHAPE=DIR" >&2; exit 2; }
tokenizer="$shared/tokenizers/llama2/tokenizer.model"
[[ -f "$tokenizer" ]] || { echo "missing $tokenizer (../shared)" >&2; exit 2; }
ours="$repo/build/bench/bench_cpu_e2e"
[[ -x "$ours" ]] || { echo "build the project first ($ours missing)" >&2; exit 2; }

peer="$("$here/build_llama_cpp.sh" llama-bench)/llama-bench"
echo "llama.cpp $(git -C "$peer_dir/llama.cpp" log -1 --format=%h) from node-llama-cpp $version; $threads threads"

for pair in "${pairs[@]}"; do
  shape="${pair%%=*}"
  gguf="$peer_dir/$shape-q4_0.gguf"
  [[ -f "$gguf" ]] || /usr/bin/python3 "$here/make_gguf.py" --shape "$shape" --tokenizer "$tokenizer" --out "$gguf"
done
for ((r = 1; r <= rounds; ++r)); do
  for pair in "${pairs[@]}"; do
    shape="${pair%%=*}" dir="${pair#*=}"
    # 7B decode is slow: fewer generated tokens keep a round in minutes.
    n=32; [[ "$shape" == llama2-7b ]] && n=16
    echo "== round $r $shape (load average $(cut -d' ' -f1 /proc/loadavg))"
    "$ours" --model "$dir" --threads "$threads" --decode "$n" --prefill 256 --context 256
    /usr/bin/time -f "peer peak RSS %M KiB" "$peer" -m "$peer_dir/$shape-q4_0.gguf" -t "$threads" -p 256 \
      -n "$n" -d 0,256 -r 1 -lm none 2>&1 | grep -E "^\| llama|peak RSS"
  done
done
