#!/bin/sh
# The Go client's checks, as CTest's go_client test runs them
# (clients/go/CMakeLists.txt), or by hand:
#   clients/go/run_tests.sh build/server/service/chatradio-server [WORK_DIR]
# GOPATH mode over Debian's Go sources (/usr/share/gocode; no module proxy
# here): generates package chatradiov1, checks gofmt, runs go vet, builds
# cmd/chatradio-client and runs go test against the real server on
# ../shared/models/stories260K. Exits 77 (CTest: skipped) with a message when
# the Go toolchain is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
server=${1:?usage: run_tests.sh CHATRADIO_SERVER [WORK_DIR]}
work=${2:-${TMPDIR:-/tmp}/chatradio-go-client}

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "go_client: skipped: $tool not found (scripts/setup installs the Debian packages; docs/clients-go.md)"
    exit 77
  fi
done
if [ ! -d /usr/share/gocode/src/google.golang.org/grpc ]; then
  echo "go_client: skipped: no grpc-go sources in /usr/share/gocode (Debian: golang-google-grpc-dev)"
  exit 77
fi

# GOPATH mode finds the module's packages under $GOPATH/src/<import path>:
# link the source folder there and work from the link.
mkdir -p "$work/gopath/src/chatradio/clients"
ln -sfn "$here" "$work/gopath/src/chatradio/clients/go"
export GO111MODULE=off GOFLAGS= GOPATH="$work/gopath:/usr/share/gocode"
[ -n "${HOME:-}" ] || export GOCACHE="$work/go-build"
export CHATRADIO_SERVER="$server" CHATRADIO_SOURCE_DIR="$repo"
export CHATRADIO_SHARED_DIR="${CHATRADIO_SHARED_DIR:-$repo/../shared}"

"$here/generate.sh"
cd "$work/gopath/src/chatradio/clients/go"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "go_client: not gofmt-formatted: $unformatted" >&2
  exit 1
fi
go vet ./...
go build -o "$work/chatradio-client" ./cmd/chatradio-client
go test -count=1 -timeout 15m -v ./...
