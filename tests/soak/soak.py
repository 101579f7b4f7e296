#!/usr/bin/python3
"""Soak and fault test of the real chatradio-server binary (docs/testing.md).

Runs the server on a tiny model for a configurable time under mixed load from
worker subprocesses (unary, streaming and Score calls; client cancellations;
short deadlines; invalid requests; an unknown template; a small queue limit so
some calls are refused) while one worker at a time is killed with SIGKILL
mid-call, then waits for the server to go idle, scrapes /metrics, sends SIGTERM
with calls in flight and still arriving, and checks:

  - the server exits 0 after the drain, and every stderr line is JSON;
  - RSS after warm-up stays within a generous bound of the warm-up peak;
  - once idle: running/waiting gauges and KV cache usage are 0;
  - every call a client finished is in the log exactly once (matched by its
    client_request_id) with the code the client saw, and the request-id the
    client got; calls of killed workers at most once; the log's per-(rpc, code)
    counts equal chatradio_requests_total;
  - no report text (the findings/reference strings sent) in any output.

    soak.py --server BIN --model DIR --templates FILE --proto-root DIR [--seconds 60 | --minutes 10]

Every check runs; failures are listed and the exit code is 1. A summary of
counts and figures is printed as JSON. Exits 77 (CTest's skip) when the model is
absent. The worker mode (--worker) is internal.
"""
import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "service"))
from client_test import free_port, make_stubs, scrape  # noqa: E402  (stub generation, /metrics parsing)

# Report text that must never appear in any output. Both are plain English the
# tiny story model will not write on its own.
SECRET_FINDINGS = "Soakmarker pleural effusion quxvelt on the left."
SECRET_REFERENCE = "Soakreference bilateral zorbinth consolidation."
SECRETS = ("Soakmarker", "quxvelt", "Soakreference", "zorbinth")
TEMPLATE_ID = "story-en"


# ---------------------------------------------------------------- worker side

def worker(a):
    """Makes random calls until a.until; one JSON line per call start and end in a.out."""
    import grpc
    sys.path.insert(0, a.stubs)
    from chatradio.v1 import impression_service_pb2 as pb
    from chatradio.v1 import impression_service_pb2_grpc as pbg

    out = open(a.out, "a", buffering=1)
    lock = threading.Lock()
    counter = [0]
    channel = grpc.insecure_channel("127.0.0.1:%d" % a.port)
    stub = pbg.ImpressionServiceStub(channel)

    def record(**kv):
        with lock:
            out.write(json.dumps(kv) + "\n")

    def gen_request(crid, r, template=TEMPLATE_ID, findings=SECRET_FINDINGS):
        sampling = pb.SamplingParams(preset=pb.SamplingParams.PRESET_PAPER, max_tokens=r.randint(1, 80),
                                     seed=r.randint(0, 1 << 30))
        return pb.GenerateImpressionRequest(findings=findings, sampling=sampling, client_request_id=crid,
                                            context=pb.ReportContext(template_id=template))

    def one_call(r):
        with lock:
            counter[0] += 1
            crid = "%s-%06d" % (a.name, counter[0])
        kind = r.choices(["unary", "stream", "score", "cancel_unary", "cancel_stream", "deadline",
                          "invalid", "unknown_template"], weights=[20, 20, 15, 8, 8, 10, 4, 2])[0]
        rpc = {"stream": "StreamImpression", "cancel_stream": "StreamImpression",
               "score": "Score"}.get(kind, "GenerateImpression")
        record(id=crid, kind=kind, rpc=rpc, phase="start", t=time.time())
        # CANCELLED_BY_CLIENT: our own cancel(), told apart from a CANCELLED status the server sent.
        code, request_id = "OK", None
        try:
            if kind == "unary":
                request_id = stub.GenerateImpression(gen_request(crid, r), timeout=60).request_id
            elif kind == "invalid":
                stub.GenerateImpression(gen_request(crid, r, findings=" \n"), timeout=60)
            elif kind == "unknown_template":
                stub.GenerateImpression(gen_request(crid, r, template="no-such-template-" + "x" * 5000), timeout=60)
            elif kind == "deadline":
                stub.GenerateImpression(gen_request(crid, r), timeout=r.uniform(0.02, 0.3))
            elif kind == "stream":
                for m in stub.StreamImpression(gen_request(crid, r), timeout=60):
                    if m.HasField("final"):
                        request_id = m.final.request_id
            elif kind == "score":
                s = stub.Score(pb.ScoreRequest(findings=SECRET_FINDINGS, candidate_impression=SECRET_REFERENCE,
                                               reference_impression=SECRET_REFERENCE, client_request_id=crid,
                                               per_token_logprobs=r.random() < 0.5,
                                               context=pb.ReportContext(template_id=TEMPLATE_ID)), timeout=60)
                request_id = s.request_id
            elif kind == "cancel_unary":
                fut = stub.GenerateImpression.future(gen_request(crid, r), timeout=60)
                time.sleep(r.uniform(0.02, 0.2))
                if fut.cancel():
                    code = "CANCELLED_BY_CLIENT"
                else:
                    request_id = fut.result().request_id
            elif kind == "cancel_stream":
                call = stub.StreamImpression(gen_request(crid, r), timeout=60)
                stop_after = r.randint(0, 3)
                for i, m in enumerate(call):
                    if m.HasField("final"):
                        request_id = m.final.request_id
                    elif i >= stop_after and call.cancel():
                        code = "CANCELLED_BY_CLIENT"
                        break
        except grpc.RpcError as e:
            code = e.code().name
        record(id=crid, rpc=rpc, phase="end", code=code, request_id=request_id)
        if code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE"):
            time.sleep(r.uniform(0.05, 0.3))  # back off as a real client would, instead of spinning

    def loop(tid):
        r = random.Random(a.seed * 1000 + tid)
        while time.time() < a.until:
            one_call(r)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.close()


# ---------------------------------------------------------------- driver side

class Server:
    """chatradio-server as a child; stderr lines kept (and copied to a file for post-mortems)."""

    def __init__(self, args, log_path):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines, self.stdout = [], ""
        self.cv = threading.Condition()
        self.log = open(log_path, "w", buffering=1)
        self.err_reader = threading.Thread(target=self._read, daemon=True)
        self.err_reader.start()
        self.out_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self.out_reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.log.write(line)
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                self.cv.notify_all()

    def _read_stdout(self):
        self.stdout = self.proc.stdout.read()

    def wait_event(self, name, timeout):
        end = time.time() + timeout
        with self.cv:
            while True:
                for line in self.lines:
                    try:
                        j = json.loads(line)
                    except ValueError:
                        continue
                    if j.get("event") == name:
                        return j
                left = end - time.time()
                if left <= 0 or self.proc.poll() is not None:
                    raise SystemExit("soak: no '%s' event from the server; stderr:\n%s" % (name, "\n".join(self.lines)))
                self.cv.wait(min(left, 1.0))

    def rss_kib(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None


class Soak:
    def __init__(self, a, tmp):
        self.a, self.tmp = a, tmp
        self.failures = []
        self.summary = collections.OrderedDict()
        self.workers = []   # (Popen, out path, killed?)
        self.nworkers = 0
        self.sigterm_at = float("inf")

    def check(self, cond, msg):
        if not cond:
            self.failures.append(msg)
            print("soak: FAIL: " + msg, file=sys.stderr)
        return cond

    def spawn(self, until, threads):
        self.nworkers += 1
        name = "w%02d" % self.nworkers
        out = os.path.join(self.tmp, name + ".jsonl")
        args = [sys.executable, os.path.abspath(__file__), "--worker", "--port", str(self.port), "--stubs",
                self.stubs, "--out", out, "--until", str(until), "--seed", str(self.a.seed * 100 + self.nworkers),
                "--name", name, "--threads", str(threads)]
        self.workers.append([subprocess.Popen(args), out, False])
        return self.workers[-1]

    def run(self):
        a = self.a
        self.stubs = os.path.join(self.tmp, "stubs")
        os.mkdir(self.stubs)
        make_stubs(a.proto_root, self.stubs)
        sys.path.insert(0, self.stubs)
        self.mport = free_port()
        # A small engine (batch 2, 4 waiting) so the offered load overflows into RESOURCE_EXHAUSTED.
        srv = Server([a.server, "--model", a.model, "--templates", a.templates, "--port", "0",
                      "--metrics-host", "127.0.0.1", "--metrics-port", str(self.mport), "--threads", "1",
                      "--max-batch-size", "2", "--max-waiting", "4", "--kv-blocks", "64",
                      "--drain-grace", "1", "--drain-timeout", "30"], os.path.join(self.tmp, "server.log"))
        self.server = srv
        try:
            self.port = srv.wait_event("listening", 60)["port"]
            srv.wait_event("ready", 120)
            self.load_phase(srv)
            self.idle_checks(srv)
            self.drain_phase(srv)
        finally:
            for w in self.workers:
                if w[0].poll() is None:
                    w[0].kill()
                    w[0].wait()
            if srv.proc.poll() is None:
                srv.proc.kill()
                srv.proc.wait()
        srv.err_reader.join(10)
        srv.out_reader.join(10)
        self.accounting(srv)
        self.no_report_text(srv)

    def load_phase(self, srv):
        a = self.a
        start = time.time()
        until = start + a.seconds
        for _ in range(a.workers):
            self.spawn(until, 3)
        victim = self.spawn(until, 2)
        rss = []   # (seconds since start, KiB)
        next_kill = start + a.kill_every
        while time.time() < until:
            time.sleep(0.5)
            now = time.time()
            rss.append((now - start, srv.rss_kib()))
            if now >= next_kill and now < until - 2:
                # SIGKILL mid-call: the server sees the connection drop under its calls.
                victim[0].kill()
                victim[0].wait()
                victim[2] = True
                victim = self.spawn(until, 2)
                next_kill = now + a.kill_every
            self.check(srv.proc.poll() is None, "the server died during the load (exit %s)" % srv.proc.poll())
            if srv.proc.poll() is not None:
                return
        for w in self.workers:
            w[0].wait(120)
            if not w[2]:
                self.check(w[0].returncode == 0, "worker %s exited %s" % (w[1], w[0].returncode))
        warm = [k for t, k in rss if t <= a.seconds * 0.25 and k]
        late = [k for t, k in rss if t > a.seconds * 0.5 and k]
        if warm and late:
            bound = max(warm) * 1.25 + 32 * 1024
            self.summary["rss_kib"] = {"warmup_peak": max(warm), "late_peak": max(late), "end": late[-1],
                                       "bound": int(bound)}
            if a.rss_check:
                self.check(max(late) <= bound, "RSS grew after warm-up: peak %d KiB late vs %d KiB in warm-up"
                           % (max(late), max(warm)))
        self.summary["load_seconds"] = round(time.time() - start, 1)
        self.summary["workers_killed"] = sum(1 for w in self.workers if w[2])

    def idle_checks(self, srv):
        """Gauges back to 0 once the load stopped; metrics per (rpc, code) as of now."""
        end = time.time() + 60
        m = {}
        while time.time() < end:
            m = scrape(self.mport)
            if (m and m.get("chatradio_requests_running") == 0 and m.get("chatradio_requests_waiting") == 0
                    and m.get("chatradio_kv_cache_usage_ratio") == 0):
                break
            time.sleep(0.5)
        for g in ("chatradio_requests_running", "chatradio_requests_waiting", "chatradio_kv_cache_usage_ratio"):
            self.check(m.get(g) == 0, "%s is %s a minute after the load stopped" % (g, m.get(g)))
        self.metrics_counts = collections.Counter()
        for series, value in m.items():
            if series.startswith("chatradio_requests_total{"):
                labels = dict(kv.split("=", 1) for kv in series[len("chatradio_requests_total{"):-1].split(","))
                self.metrics_counts[(labels["rpc"].strip('"'), labels["code"].strip('"'))] += int(value)
        self.log_lines_at_idle = len(srv.lines)

    def drain_phase(self, srv):
        """SIGTERM with calls in flight and more arriving during the drain; exit 0 expected."""
        w = self.spawn(time.time() + 8, 3)
        time.sleep(2)
        self.sigterm_at = t0 = time.time()
        srv.proc.send_signal(signal.SIGTERM)
        try:
            code = srv.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            code = None
        self.summary["drain_seconds"] = round(time.time() - t0, 2)
        self.check(code == 0, "exit code %s after SIGTERM (0 expected)" % code)
        w[0].wait(120)

    def accounting(self, srv):
        events, not_json = [], []
        for line in srv.lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                not_json.append(line)
        self.check(not not_json, "%d stderr lines are not JSON, e.g. %r" % (len(not_json), not_json[:3]))
        long_lines = [len(line) for line in srv.lines if len(line) > 4096]
        self.check(not long_lines, "%d log lines over 4 kB (longest %d bytes)" % (len(long_lines), max(long_lines or [0])))
        requests = [e for e in events if e.get("event") == "request"]
        by_crid = collections.defaultdict(list)
        for e in requests:
            by_crid[e.get("client_request_id", "")].append(e)

        calls, in_flight_killed = {}, 0
        for proc, out, killed in self.workers:
            started = {}
            if not os.path.exists(out):
                continue  # killed before its first call
            with open(out) as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue  # a line cut by SIGKILL
                    if r["phase"] == "start":
                        started[r["id"]] = r
                    else:
                        r["t"] = started.pop(r["id"])["t"]
                        calls[r["id"]] = r
            for crid in started:
                in_flight_killed += 1
                self.check(len(by_crid.get(crid, [])) <= 1, "call %s of a killed client logged %d times"
                           % (crid, len(by_crid.get(crid, []))))
        client_codes = collections.Counter(c["code"] for c in calls.values())
        self.summary["calls"] = len(calls)
        self.summary["client_codes"] = dict(sorted(client_codes.items()))
        self.summary["killed_in_flight"] = in_flight_killed
        self.summary["log_request_lines"] = len(requests)

        # A call the client cancelled (or whose deadline hit) before its message reached the server
        # is logged without a client_request_id: match those by (rpc, code) against anonymous lines.
        ended_by_client = ("CANCELLED_BY_CLIENT", "DEADLINE_EXCEEDED")
        mismatches, unlogged, races, refused, cancelled_at_close = collections.Counter(), collections.Counter(), 0, 0, 0
        examples = []
        for crid, c in calls.items():
            lines = by_crid.get(crid, [])
            if not lines and c["code"] == "UNAVAILABLE" and c["t"] >= self.sigterm_at - 0.5:
                refused += 1  # refused by the closing server's transport: never accepted, so never logged
                continue
            if not lines and c["code"] == "CANCELLED" and c["t"] >= self.sigterm_at - 0.5:
                # Known gap (issue 10, item 5): a call that arrives in the last moments of shutdown,
                # after the drain grace, is cancelled by gRPC's Shutdown before any handler runs, so
                # the server cannot log it, and the client sees CANCELLED rather than UNAVAILABLE.
                # Counted in the summary, not hidden; docs/service.md states the gap.
                cancelled_at_close += 1
                continue
            if not lines and c["code"] in ended_by_client:
                unlogged[(c["rpc"], c["code"].replace("_BY_CLIENT", ""))] += 1
                continue
            if not self.check(len(lines) == 1, "call %s (%s, client saw %s) logged %d times"
                              % (crid, c["rpc"], c["code"], len(lines))) or not lines:
                continue
            e = lines[0]
            logged = e.get("code")
            if logged != c["code"].replace("_BY_CLIENT", ""):
                # A response already on the wire when the client cancelled or its deadline hit:
                # the server truly finished with the code it logged. Anything else is wrong accounting.
                if c["code"] in ended_by_client and logged not in ("CANCELLED", "DEADLINE_EXCEEDED"):
                    races += 1
                else:
                    mismatches[(c["rpc"], c["code"], logged)] += 1
                    if len(examples) < 5:
                        examples.append({"id": crid, "client": c["code"], "log": logged, "error": e.get("error")})
            if c.get("request_id"):
                self.check(e.get("request_id") == c["request_id"], "call %s: log request_id %s, client got %s"
                           % (crid, e.get("request_id"), c["request_id"]))
            self.check(e.get("rpc") == c["rpc"], "call %s: log rpc %s, client called %s" % (crid, e.get("rpc"), c["rpc"]))
        self.summary["cancel_or_deadline_after_response"] = races
        self.summary["refused_after_close"] = refused
        self.summary["cancelled_by_closing_transport"] = cancelled_at_close
        for (rpc, client, logged), n in sorted(mismatches.items()):
            self.check(False, "%d %s calls the client saw as %s were logged as %s" % (n, rpc, client, logged))
        if examples:
            self.summary["mismatch_examples"] = examples

        anonymous = collections.Counter((e.get("rpc"), e.get("code")) for e in by_crid.get("", []))
        unseen = 0
        for key, n in sorted(unlogged.items()):
            matched = min(n, anonymous[key])
            anonymous[key] -= matched
            unseen += n - matched
        self.summary["matched_anonymously"] = sum(unlogged.values()) - unseen
        # A client can cancel, or time out, before its call's headers left it (the client waits at
        # least 20 ms, but a loaded machine may not schedule its I/O thread): the server never saw
        # such a call. Losing more than a few of them is a server that does not log cancellations.
        client_ended = sum(1 for c in calls.values() if c["code"] in ended_by_client)
        self.summary["client_ended_never_seen"] = unseen
        self.check(unseen <= 2 + client_ended // 100,
                   "%d of %d calls the client cancelled or timed out are not in the log (by id or anonymously: %s)"
                   % (unseen, client_ended, dict(unlogged)))
        # What is left: calls of killed clients (logged by id or, when killed before the message
        # was sent, anonymously), and anonymous lines no client call explains.
        unknown = collections.Counter("%s/%s%s" % (e.get("rpc"), e.get("code"), "" if e.get("client_request_id") else
                                                   " (no id)")
                                      for e in requests if e.get("client_request_id", "") not in calls)
        left = sum(unknown.values()) - self.summary["matched_anonymously"]
        self.check(left <= in_flight_killed,
                   "%d log lines belong to no call a client finished (%d calls were in flight in killed clients): %s"
                   % (left, in_flight_killed, dict(sorted(unknown.items()))))

        # Metrics at idle vs the log lines written before that scrape: both server-side, exact.
        before = collections.Counter()
        for line in srv.lines[:self.log_lines_at_idle]:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "request":
                before[(e.get("rpc"), e.get("code"))] += 1
        self.summary["metrics_requests_total"] = {"%s/%s" % k: v for k, v in sorted(self.metrics_counts.items())}
        for key in sorted(set(before) | set(self.metrics_counts)):
            self.check(before[key] == self.metrics_counts[key], "requests_total{rpc=%s,code=%s} is %d, the log has %d"
                       % (key[0], key[1], self.metrics_counts[key], before[key]))

    def no_report_text(self, srv):
        for name, text in (("stderr", "\n".join(srv.lines)), ("stdout", srv.stdout)):
            for s in SECRETS:
                self.check(s not in text, "report text %r in the server's %s" % (s, name))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server")
    ap.add_argument("--model")
    ap.add_argument("--templates")
    ap.add_argument("--proto-root")
    ap.add_argument("--seconds", type=float, default=60, help="length of the load phase (default 60)")
    ap.add_argument("--minutes", type=float, help="length of the load phase in minutes (overrides --seconds)")
    ap.add_argument("--workers", type=int, default=4, help="load worker processes besides the one killed (default 4)")
    ap.add_argument("--kill-every", type=float, default=5, help="seconds between SIGKILLs of a client (default 5)")
    ap.add_argument("--no-rss-check", dest="rss_check", action="store_false",
                    help="report RSS but do not bound it (sanitizer builds hold freed memory in quarantine)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (server.log, worker records)")
    # worker mode
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--stubs", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return 0
    if not (a.server and a.model and a.templates and a.proto_root):
        ap.error("--server, --model, --templates and --proto-root are required")
    if not os.access(a.server, os.X_OK):
        ap.error("--server %s is not an executable file" % a.server)
    if a.minutes is not None:
        a.seconds = a.minutes * 60
    if not os.path.isfile(os.path.join(a.model, "config.json")):
        print("soak: SKIP: no model at %s" % a.model)
        return 77
    tmp = tempfile.mkdtemp(prefix="chatradio-soak-")
    soak = Soak(a, tmp)
    t0 = time.time()
    soak.run()
    soak.summary["total_seconds"] = round(time.time() - t0, 1)
    soak.summary["failures"] = len(soak.failures)
    print(json.dumps(soak.summary, indent=1))
    if a.keep or soak.failures:
        print("soak: server log and worker records in " + tmp)
    else:
        subprocess.run(["rm", "-rf", tmp])
    if soak.failures:
        print("soak: %d checks failed:\n  %s" % (len(soak.failures), "\n  ".join(soak.failures)), file=sys.stderr)
        return 1
    print("soak: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
