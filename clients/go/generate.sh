#!/bin/sh
# Generates package chatradiov1 (chatradiov1/*.pb.go; git-ignored, never
# edited) from proto/chatradio/v1/impression_service.proto with protoc,
# protoc-gen-go (messages) and protoc-gen-go-grpc (the service stubs). Debian:
# protobuf-compiler, protoc-gen-go, protoc-gen-go-grpc. The health service's
# stubs come with grpc-go (google.golang.org/grpc/health/grpc_health_v1).
set -eu
here=$(cd "$(dirname "$0")" && pwd -P)
proto=$(cd "$here/../../proto" && pwd)
module=chatradio/clients/go
for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null 2>&1 || { echo "generate.sh: $tool not found (Debian packages: docs/clients-go.md)" >&2; exit 1; }
done
# The .proto's go_package ("chatradio/v1") is not this module's path: M maps it
# here, and module= strips the module prefix from the output paths.
map="Mchatradio/v1/impression_service.proto=$module/chatradiov1"
# Generate aside and move into place, so a concurrent build never compiles a
# half-written file.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
protoc --proto_path="$proto" \
  --go_out="$tmp" --go_opt="module=$module" --go_opt="$map" \
  --go-grpc_out="$tmp" --go-grpc_opt="module=$module" --go-grpc_opt="$map" \
  "$proto/chatradio/v1/impression_service.proto"
for f in "$tmp"/chatradiov1/*.pb.go; do
  mv -f "$f" "$here/chatradiov1/$(basename "$f")"
done
