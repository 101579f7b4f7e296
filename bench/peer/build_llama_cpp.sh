#!/usr/bin/env bash
# Builds llama.cpp tools (the peer of our benchmarks) natively on this machine
# and prints the folder that holds their binaries:
#
#   bench/peer/build_llama_cpp.sh llama-bench llama-server   # -> $PEER_DIR/llama.cpp/build/bin
#
# No internet here, but npm is reachable: node-llama-cpp ships the llama.cpp
# source of its release as a git bundle (llama/gitRelease.bundle), so we build
# from that (CPU only, -march=native, OpenMP). Nothing of it enters the
# repository; everything lives under $PEER_DIR (default /tmp/chatradio-peer).
# Shared by llama_cpp.sh (llama-bench) and llama_server.sh (llama-server) so
# both time the same source built the same way.
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: $0 TARGET [TARGET...]  (e.g. llama-bench llama-server)" >&2; exit 2; }
peer_dir="${PEER_DIR:-/tmp/chatradio-peer}"
version="${NODE_LLAMA_CPP_VERSION:-3.22.1}"
jobs="${PEER_JOBS:-2}"
mkdir -p "$peer_dir"
src="$peer_dir/llama.cpp"
if [[ ! -d "$src" ]]; then
  (cd "$peer_dir" && npm pack --silent "node-llama-cpp@$version" >/dev/null &&
     tar xzf "node-llama-cpp-$version.tgz" package/llama/gitRelease.bundle &&
     git clone -q package/llama/gitRelease.bundle "$src")
fi
# (Re)configure unless an earlier configure already enabled the server.
if ! grep -qs "^LLAMA_BUILD_SERVER:BOOL=ON" "$src/build/CMakeCache.txt"; then
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF >&2
fi
for target in "$@"; do
  [[ -x "$src/build/bin/$target" ]] || cmake --build "$src/build" -j"$jobs" --target "$target" >&2
done
echo "$src/build/bin"
