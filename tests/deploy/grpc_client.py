"""A small gRPC client of chatradio-server for the deploy checks, from Debian's
/usr/bin/python3 (python3-grpcio, python3-protobuf): stubs are generated from
proto/ into a temporary folder, so it speaks exactly the contract in proto/.

Used by prometheus_live_test.py (load for the scrape) and by docker/test-image
(from outside the container):

    grpc_client.py --target 127.0.0.1:50051 --proto-root proto [--timeout 300]

waits for health SERVING, sends one GenerateImpression and prints one line
with its finish reason and token counts (never the text). Exit 0 when both
worked, 1 with a message otherwise.
"""
import argparse
import os
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../common"))
from grpc_testing import make_stubs  # noqa: E402

FINDINGS = "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal."


def wait_serving(channel, health_pb2, health_grpc, timeout_s):
    """Polls grpc.health.v1 Check("") until SERVING; returns the seconds it took
    or raises TimeoutError with the last status seen."""
    stub = health_grpc.HealthStub(channel)
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout_s:
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            if r.status == health_pb2.HealthCheckResponse.SERVING:
                return time.monotonic() - start
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        except grpc.RpcError as e:
            last = e.code().name
        time.sleep(0.5)
    raise TimeoutError("health not SERVING after %.0f s (last: %s)" % (timeout_s, last))


def greedy(pb, max_tokens):
    return pb.SamplingParams(preset=pb.SamplingParams.PRESET_GREEDY, max_tokens=max_tokens)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    ap.add_argument("--proto-root", required=True, help="the repository's proto/ folder")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for SERVING")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc, health_pb2, health_grpc = make_stubs(args.proto_root, tmp)
        with grpc.insecure_channel(args.target) as channel:
            try:
                waited = wait_serving(channel, health_pb2, health_grpc, args.timeout)
                r = pb_grpc.ImpressionServiceStub(channel).GenerateImpression(
                    pb.GenerateImpressionRequest(findings=FINDINGS, sampling=greedy(pb, 16), client_request_id="smoke"),
                    timeout=120)
            except (TimeoutError, grpc.RpcError) as e:
                print("grpc_client: FAIL: %s" % (e,), file=sys.stderr)
                return 1
        if r.tokens.generated_tokens == 0:
            print("grpc_client: FAIL: GenerateImpression generated no token", file=sys.stderr)
            return 1
        print("grpc_client: SERVING after %.1f s; GenerateImpression OK: finish %s, %d prompt tokens, %d generated" %
              (waited, pb.FinishReason.Name(r.finish_reason), r.tokens.prompt_tokens,
               r.tokens.generated_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
