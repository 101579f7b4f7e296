// Package chatradiov1 holds the messages and gRPC stubs of the
// chatradio.v1.ImpressionService API, generated from proto/ by ../generate.sh
// (protoc-gen-go and protoc-gen-go-grpc). The generated *.pb.go files are
// not committed: run the script after a checkout and after every proto change.
package chatradiov1

//go:generate ../generate.sh
