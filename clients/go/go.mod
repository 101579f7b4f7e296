module chatradio/clients/go

// For users with a module proxy: `go mod tidy` fills in the indirect
// requirements and go.sum. Here (no proxy) the code builds in GOPATH mode
// from Debian's packages instead (docs/clients-go.md, run_tests.sh).
go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
