#!/usr/bin/python3
"""End-to-end test of the real chatradio-server binary from a Python gRPC client.

Run by test_service (ServiceBinary.PythonClientEndToEnd) with Debian's
/usr/bin/python3 (python3-grpcio, python3-protobuf). Stubs are generated from
our .proto files at test time into a temporary folder, so the client speaks
exactly the contract in proto/.

    client_test.py --server BIN --model DIR --templates FILE --proto-root DIR

Exits 0 when every check passed, 1 with a message otherwise.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../common"))
from grpc_testing import ServerProcess, add_server_arguments, free_port, make_stubs  # noqa: E402


def fail(msg):
    print("client_test: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def exit_code(args, timeout=20):
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def main():
    ap = argparse.ArgumentParser()
    add_server_arguments(ap)
    a = ap.parse_args()

    # Usage errors exit 2 with a message; --help exits 0.
    rc, out, err = exit_code([a.server, "--help"])
    check(rc == 0 and "--model DIR" in out, "--help: rc %d" % rc)
    rc, out, err = exit_code([a.server, "--model", a.model, "--bogus"])
    check(rc == 2 and "unknown option --bogus" in err, "--bogus: rc %d, stderr %r" % (rc, err))
    rc, out, err = exit_code([a.server, "--model", "/nonexistent"])
    check(rc == 2 and "is not a directory" in err, "missing model: rc %d, stderr %r" % (rc, err))
    with tempfile.TemporaryDirectory() as tmp:
        bad = os.path.join(tmp, "bad.json")
        with open(bad, "w") as f:
            f.write('{"templates": []}')
        rc, out, err = exit_code([a.server, "--model", a.model, "--templates", bad, "--port", "0",
                                  "--metrics-port", "0"])
        check(rc == 2 and "bad.json" in err, "bad templates: rc %d, stderr %r" % (rc, err))

    with tempfile.TemporaryDirectory() as stubs:
        pb, pbg, health_pb2, health_pb2_grpc = make_stubs(a.proto_root, stubs)

        mport = free_port()
        server = ServerProcess([a.server, "--model", a.model, "--templates", a.templates, "--port", "0",
                                "--metrics-host", "127.0.0.1", "--metrics-port", str(mport), "--threads", "1",
                                "--max-batch-size", "1", "--drain-timeout", "20"])
        try:
            port = server.wait_event("listening", 20)["port"]
            channel = grpc.insecure_channel("127.0.0.1:%d" % port)
            health = health_pb2_grpc.HealthStub(channel)
            end = time.time() + 20
            while True:
                try:
                    st = health.Check(health_pb2.HealthCheckRequest(service="chatradio.v1.ImpressionService"),
                                      timeout=2).status
                except grpc.RpcError:
                    st = None
                if st == health_pb2.HealthCheckResponse.SERVING:
                    break
                check(time.time() < end, "health never became SERVING")
                time.sleep(0.05)

            stub = pbg.ImpressionServiceStub(channel)
            findings = "Secretfinding: the lungs are clear."
            greedy = pb.SamplingParams(preset=pb.SamplingParams.PRESET_GREEDY, max_tokens=30)
            r = stub.GenerateImpression(pb.GenerateImpressionRequest(
                findings=findings, sampling=greedy, client_request_id="py-1"), timeout=20)
            check(r.impression != "", "empty impression")
            check(r.client_request_id == "py-1" and r.request_id, "ids not echoed")
            check(r.tokens.generated_tokens > 0 and r.model.name == "stories260K", "summary: %s" % r)

            # Streaming: same greedy output, deltas add up to the final text.
            deltas, final = [], None
            for m in stub.StreamImpression(pb.GenerateImpressionRequest(findings=findings, sampling=greedy),
                                           timeout=20):
                if m.HasField("delta"):
                    check(final is None, "delta after the final message")
                    deltas.append(m.delta)
                else:
                    final = m.final
            check(final is not None, "no final message")
            check("".join(deltas) == final.impression, "deltas do not add up to the impression")
            check(final.impression == r.impression, "stream and unary greedy outputs differ")

            # ROUGE_MODE_LIN: exact F = 1 for a text against itself (the default
            # rouge_chinese mode adds 1e-8 to the denominator and needs jieba).
            s = stub.Score(pb.ScoreRequest(findings=findings, candidate_impression=r.impression,
                                           reference_impression=r.impression, per_token_logprobs=True,
                                           rouge_mode=pb.ROUGE_MODE_LIN), timeout=20)
            check(s.candidate_tokens == len(s.token_logprobs) > 0, "per-token logprobs")
            check(abs(s.total_logprob - sum(t.logprob for t in s.token_logprobs)) < 1e-3, "total logprob")
            check(s.rouge.rouge1.f1 == 1.0 and s.rouge.rouge_l.f1 == 1.0, "ROUGE of a text against itself")

            try:
                stub.GenerateImpression(pb.GenerateImpressionRequest(findings="\u3000"), timeout=20)
                fail("blank findings were accepted")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details() == "findings is empty",
                      "blank findings: %s %s" % (e.code(), e.details()))

            # Server reflection (v1alpha): list_services, spoken in raw protobuf
            # bytes since Debian ships no Python reflection client.
            reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                            request_serializer=lambda b: b, response_deserializer=lambda b: b)
            answer = b"".join(reflect(iter([b"\x3a\x00"]), timeout=10))  # field 7 list_services = ""
            check(b"chatradio.v1.ImpressionService" in answer and b"grpc.health.v1.Health" in answer,
                  "reflection does not list the services: %r" % answer)

            # SIGTERM with requests in flight: max-batch-size 1 makes three of
            # the four wait in the engine; all must finish, then exit 0.
            sampled = pb.SamplingParams(preset=pb.SamplingParams.PRESET_PAPER, max_tokens=300)
            results = [None] * 4

            def run(i):
                text, fin = [], None
                try:
                    for m in stub.StreamImpression(pb.GenerateImpressionRequest(
                            findings=findings, sampling=pb.SamplingParams(
                                preset=sampled.preset, max_tokens=sampled.max_tokens, seed=i)), timeout=60):
                        if m.HasField("delta"):
                            text.append(m.delta)
                        else:
                            fin = m.final
                    results[i] = ("ok", fin is not None and "".join(text) == fin.impression)
                except grpc.RpcError as e:
                    results[i] = (str(e.code()), e.details())

            threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            # SIGTERM once all four reached the server (running, waiting in the
            # engine, or done) and at least one still waits behind another.
            ok_key = 'chatradio_requests_total{code="OK",rpc="StreamImpression"}'
            done_before = scrape(mport).get(ok_key, 0)
            end = time.time() + 20
            while True:
                m = scrape(mport)
                running = m.get("chatradio_requests_running", 0)
                waiting = m.get("chatradio_requests_waiting", 0)
                done = m.get(ok_key, 0) - done_before
                if running + waiting + done == 4 and waiting >= 1:
                    break
                check(time.time() < end, "the four streams never reached the engine: %s" % m)
                time.sleep(0.002)
            server.proc.send_signal(signal.SIGTERM)
            for t in threads:
                t.join(60)
            code = server.proc.wait(timeout=60)
            check(code == 0, "exit code %d after SIGTERM" % code)
            for i, res in enumerate(results):
                check(res == ("ok", True), "stream %d during the drain: %s" % (i, res))
            server.reader.join(5)
            events = [json.loads(l) for l in server.lines]
            names = [e["event"] for e in events]
            for ev in ("signal", "draining", "drained", "exit"):
                check(ev in names, "no %s event" % ev)
            sig = names.index("signal")
            finished_after = [e for e in events[sig:] if e["event"] == "request"]
            check(len(finished_after) >= 1, "no request finished during the drain")
            check(names.index("drained") > max(i for i, e in enumerate(events) if e["event"] == "request"),
                  "drained before every request ended")
            for line in server.lines:
                check("Secretfinding" not in line and "lungs" not in line, "report text in a log line: " + line)
            req = [e for e in events if e["event"] == "request"]
            check(all({"request_id", "rpc", "code", "prompt_tokens", "generated_tokens", "total_s",
                       "template_id", "institution_id", "client_request_id"} <= set(e) for e in req),
                  "request lines miss fields")
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()
    print("client_test: all checks passed")


def scrape(port):
    """The exposer's metrics as {series: value}; {} when it does not answer."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:  # a server event that never came (grpc_testing)
        fail(str(e))
