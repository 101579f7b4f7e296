#!/usr/bin/env bash
# The serving rows of bench/README.md: chatradio-server and llama.cpp's
# llama-server side by side under the same open-loop load (bench/serving),
# same shape, same threads, same prompts token for token, same output lengths.
#
#   bench/peer/llama_server.sh --shape tinyllama-1.1b --ours /tmp/synth-tinyllama-int4 \
#       [--threads 2] [--parallel 4] [--sweep 0.25,0.5,1] [--num-requests 40] [--output-len 64] \
#       [--rounds 3] [--slo-ttft 5] [--slo-tpot 0.5] [--out DIR] [--build DIR]
#
# --ours is our int4 checkpoint of SHAPE (chatradio synth --shape SHAPE --tokenizer
# ../shared/tokenizers/llama2/tokenizer.model); the peer gets a random Q4_0 GGUF of the
# same shape (make_gguf.py), built once under $PEER_DIR. Each round runs the whole
# sweep on ours, then on the peer (interleaved rounds: this VM's neighbours move single
# runs by ±20 %; take medians), with nothing else of ours running. llama-server gets
# --parallel N slots (continuous batching is on by default) and ours --max-batch-size N.
# Reports: DIR/round-R-{ours,peer}.{json,md} and DIR/round-R-compare.md
# (serving_bench.py compare). Prints the load average before each server starts.
# Medians over the rounds: bench/peer/serving_medians.py DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
shared="$(cd "$repo/.." && pwd)/shared"
peer_dir="${PEER_DIR:-/tmp/chatradio-peer}"
shape="" ours="" threads=2 parallel=4 sweep="0.25,0.5,1" num=40 out_len=64 rounds=3
slo=() out="/tmp/chatradio-serving" build="$repo/build"
usage() {
  echo "usage: $0 --shape SHAPE --ours DIR [--threads N] [--parallel N] [--sweep R,R,...] [--num-requests N]" \
       "[--output-len N] [--rounds N] [--slo-ttft S] [--slo-tpot S] [--out DIR] [--build DIR]" >&2
  exit 2
}
while [[ $# -gt 0 ]]; do
  [[ $# -ge 2 ]] || usage
  case "$1" in
    --shape) shape="$2" ;;
    --ours) ours="$2" ;;
    --threads) threads="$2" ;;
    --parallel) parallel="$2" ;;
    --sweep) sweep="$2" ;;
    --num-requests) num="$2" ;;
    --output-len) out_len="$2" ;;
    --rounds) rounds="$2" ;;
    --slo-ttft | --slo-tpot) slo+=("$1" "$2") ;;
    --out) out="$2" ;;
    --build) build="$2" ;;
    *) usage ;;
  esac
  shift 2
done
[[ -n "$shape" && -d "$ours" ]] || usage
tokenizer="$shared/tokenizers/llama2/tokenizer.model"
[[ -f "$tokenizer" ]] || { echo "missing $tokenizer (../shared)" >&2; exit 2; }
server="$build/server/service/chatradio-server"
[[ -x "$server" ]] || { echo "build the project first ($server missing)" >&2; exit 2; }

peer="$("$here/build_llama_cpp.sh" llama-server)/llama-server"
gguf="$peer_dir/$shape-q4_0.gguf"
[[ -f "$gguf" ]] || /usr/bin/python3 "$here/make_gguf.py" --shape "$shape" --tokenizer "$tokenizer" --out "$gguf"
mkdir -p "$out"
echo "llama.cpp $(git -C "$peer_dir/llama.cpp" log -1 --format=%h); $shape; $threads threads; $parallel slots"

free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pid=""
stop() { [[ -z "$pid" ]] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; }; }
trap stop EXIT
wait_ready() {  # wait_ready CMD...: until CMD succeeds (the model is loaded), or the server died
  until "$@"; do
    kill -0 "$pid" 2>/dev/null || { echo "the server exited before it was ready" >&2; exit 1; }
    sleep 1
  done
}
bench() {  # bench NAME TARGET: the sweep against one running server
  /usr/bin/python3 "$repo/bench/serving/serving_bench.py" --target "$2" --tokenizer "$tokenizer" \
    --sweep "$sweep" --num-requests "$num" --output-len "$out_len" "${slo[@]}" \
    --label "$1, $shape, $threads threads" --json "$out/$round-$1.json" --markdown "$out/$round-$1.md"
}

for ((r = 1; r <= rounds; ++r)); do
  round="round-$r"
  port="$(free_port)"
  echo "== $round ours (load average $(cut -d' ' -f1 /proc/loadavg))"
  "$server" --model "$ours" --port "$port" --metrics-port 0 --threads "$threads" --max-batch-size "$parallel" \
    2>"$out/$round-ours.log" &
  pid=$!
  wait_ready grep -qs '"event":"ready"' "$out/$round-ours.log"
  bench ours "grpc://127.0.0.1:$port"
  stop
  port="$(free_port)"
  echo "== $round peer (load average $(cut -d' ' -f1 /proc/loadavg))"
  # Per-slot context: the longest rendered prompt (~1k tokens) plus the output.
  "$peer" -m "$gguf" -t "$threads" -np "$parallel" -c $((parallel * (1024 + out_len))) \
    --host 127.0.0.1 --port "$port" 2>"$out/$round-peer.log" &
  pid=$!
  wait_ready curl -sf -o /dev/null "http://127.0.0.1:$port/health"
  bench peer "openai://127.0.0.1:$port"
  stop
  /usr/bin/python3 "$repo/bench/serving/serving_bench.py" compare "$out/$round-ours.json" "$out/$round-peer.json" |
    tee "$out/$round-compare.md"
done
