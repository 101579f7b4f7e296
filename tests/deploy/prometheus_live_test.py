#!/usr/bin/python3
"""The dashboard and the rules against a real Prometheus scraping a real server.

Starts chatradio-server (the build tree's) on stories260K and Debian's
`prometheus` on loopback, scraping it every second with deploy/monitoring's
rules loaded; sends a short load (unary, streaming, Score and invalid requests
in two waves); then, through Prometheus' HTTP API:
  - every PromQL expression of the dashboard and of the rules must parse;
  - every dashboard query must return data, and each template variable's metric must exist;
  - every metric name the expressions use must be one the server exports (or a
    recording rule defines);
  - every rule must evaluate without error.

    prometheus_live_test.py --server BIN --model DIR --templates FILE --proto-root DIR --monitoring DIR

Exit 0 when every check passed, 1 with the failures, 77 when prometheus is missing.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import grpc
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../common"))
import grpc_client  # noqa: E402
from grpc_testing import ServerProcess, add_server_arguments, free_port, make_stubs  # noqa: E402

# What a dashboard query's Grafana variables become for Prometheus.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$job": ".*", "$instance": ".*"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                "group_right", "inf", "nan"}


def fail(msg):
    print("prometheus_live_test: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def metric_names(expr):
    """The metric names a PromQL expression reads (not functions, labels, keywords)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                    # string literals
    e = re.sub(r"\{[^}]*\}", "", e)                                # label matchers
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    e = re.sub(r"\[[^\]]*\]", "", e)                               # ranges
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        if m.group(2) is None and m.group(1) not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


class Prometheus:
    def __init__(self, url):
        self.url = url

    def get(self, path, **params):
        q = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(self.url + path + ("?" + q if q else ""), timeout=30) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:  # 400 = bad query: the body says why
            return json.load(e)

    def query(self, expr):
        return self.get("/api/v1/query", query=expr)


def send_load(pb, stub, wave):
    """One wave: unary and streaming generations, Score, and invalid requests.
    Returns the number of calls made."""
    greedy = grpc_client.greedy(pb, 24)
    findings = [grpc_client.FINDINGS, "Mild cardiomegaly. No focal consolidation.", "Small left pleural effusion."]
    calls = []
    for i, f in enumerate(findings):
        calls.append(lambda f=f, i=i: stub.GenerateImpression(
            pb.GenerateImpressionRequest(findings=f, sampling=greedy, client_request_id="w%d-g%d" % (wave, i)), timeout=60))
        calls.append(lambda f=f: list(stub.StreamImpression(
            pb.GenerateImpressionRequest(findings=f, sampling=greedy), timeout=60)))
        calls.append(lambda f=f: stub.Score(pb.ScoreRequest(findings=f, candidate_impression="No acute disease.",
                                                            reference_impression="No acute findings."), timeout=60))
    calls.append(lambda: stub.GenerateImpression(pb.GenerateImpressionRequest(findings=" "), timeout=60))
    errors = []

    def run(call):
        try:
            call()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                errors.append(e.code().name)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        fail("load requests failed: %s" % errors)
    return len(calls)


def wait_for(what, predicate, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    fail("timed out waiting for " + what)


def main():
    ap = argparse.ArgumentParser()
    add_server_arguments(ap)
    ap.add_argument("--monitoring", required=True, help="deploy/monitoring (rules.yaml, dashboard.json)")
    args = ap.parse_args()
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        print("prometheus_live_test: SKIP: no prometheus binary (Debian package prometheus; scripts/setup)")
        return 77
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        print("prometheus_live_test: SKIP: %s is missing (../shared)" % args.model)
        return 77
    rules_path = os.path.join(args.monitoring, "rules.yaml")
    rules = [r for g in yaml.safe_load(open(rules_path))["groups"] for r in g["rules"]]
    dashboard = json.load(open(os.path.join(args.monitoring, "dashboard.json")))
    started = time.time()

    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc, health_pb2, health_grpc = make_stubs(args.proto_root, tmp)
        metrics_port, prom_port = free_port(), free_port()
        server = ServerProcess([args.server, "--model", args.model, "--templates", args.templates,
                                "--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1",
                                "--metrics-port", str(metrics_port), "--threads", "2", "--drain-timeout", "5"])
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            yaml.safe_dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [os.path.abspath(rules_path)],
                "scrape_configs": [{"job_name": "chatradio",
                                    "static_configs": [{"targets": ["127.0.0.1:%d" % metrics_port]}]}],
            }, f)
        prom = subprocess.Popen([prometheus_bin, "--config.file=" + config, "--storage.tsdb.path=" + os.path.join(tmp, "data"),
                                 "--web.listen-address=127.0.0.1:%d" % prom_port, "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "prometheus.log"), "w"))
        try:
            port = server.wait_event("listening", 60)["port"]
            with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
                grpc_client.wait_serving(channel, health_pb2, health_grpc, 120)
                p = Prometheus("http://127.0.0.1:%d" % prom_port)

                def ready():
                    if prom.poll() is not None:
                        with open(os.path.join(tmp, "prometheus.log")) as f:
                            fail("prometheus exited %d (a rule file it cannot load?):\n%s" % (prom.returncode, f.read()[-3000:]))
                    try:
                        return p.query('up{job="chatradio"} == 1')["data"]["result"] != []
                    except OSError:
                        return False
                wait_for("Prometheus to scrape the server", ready)
                stub = pb_grpc.ImpressionServiceStub(channel)
                sent = send_load(pb, stub, 1)
                time.sleep(3)  # a few scrapes between the waves, so rates see increases
                sent += send_load(pb, stub, 2)

            def scraped_all():
                r = p.query("sum(chatradio_requests_total)")["data"]["result"]
                return r and float(r[0]["value"][1]) >= sent
            wait_for("Prometheus to see all %d requests" % sent, scraped_all)
            time.sleep(3)  # rule evaluations over the final samples
            failures = check(p, rules, dashboard)
        finally:
            for proc in (server.proc, prom):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in (server.proc, prom):
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if failures:
            with open(os.path.join(tmp, "prometheus.log")) as f:
                log = f.read()[-2000:]
            fail("\n  " + "\n  ".join(failures) + ("\nprometheus log:\n" + log if log else ""))
    print("prometheus_live_test: %d requests scraped; %d dashboard queries return data, %d rules evaluate; "
          "%.0f s" % (sent, count_queries(dashboard), len(rules), time.time() - started))
    return 0


def dashboard_queries(dashboard):
    """(where, PromQL) of every panel target, Grafana variables substituted."""
    out = []
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"]
            for k in sorted(GRAFANA_VARS, key=len, reverse=True):
                expr = expr.replace(k, GRAFANA_VARS[k])
            out.append(("panel '%s' %s" % (panel["title"], t["refId"]), expr))
    return out


def count_queries(dashboard):
    return len(dashboard_queries(dashboard))


def check(p, rules, dashboard):
    failures = []
    exported = set(p.get("/api/v1/label/__name__/values")["data"])
    recorded = {r["record"] for r in rules if "record" in r}
    # The name check must be able to fail: a made-up name is not exported.
    if "chatradio_made_up_total" in exported or metric_names('rate(chatradio_made_up_total{a="b"}[1m])') != {
            "chatradio_made_up_total"}:
        failures.append("metric-name extraction self-check failed")

    def names_ok(where, expr):
        unknown = sorted(n for n in metric_names(expr) if n not in exported and n not in recorded)
        if unknown:
            failures.append("%s uses metrics the server does not export: %s" % (where, ", ".join(unknown)))

    for where, expr in dashboard_queries(dashboard):
        r = p.query(expr)
        if r.get("status") != "success":
            failures.append("%s does not parse: %s (%s)" % (where, r.get("error"), expr))
            continue
        names_ok(where, expr)
        if not r["data"]["result"]:
            failures.append("%s returns no data: %s" % (where, expr))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        m = re.match(r"label_values\((.*),\s*(\w+)\)$", var["query"]["query"])
        if not m:
            failures.append("variable %s: not a label_values() query" % var["name"])
            continue
        selector = m.group(1).replace("$job", ".*")
        names_ok("variable " + var["name"], selector)
        if not p.get("/api/v1/series", **{"match[]": selector})["data"]:
            failures.append("variable %s: no series for %s" % (var["name"], selector))
    for r in rules:
        name = r.get("record") or r.get("alert")
        res = p.query(r["expr"])
        if res.get("status") != "success":
            failures.append("rule %s does not parse: %s" % (name, res.get("error")))
        names_ok("rule " + name, r["expr"])
    loaded = {(x.get("name")): x for g in p.get("/api/v1/rules")["data"]["groups"] for x in g["rules"]}
    for r in rules:
        name = r.get("record") or r.get("alert")
        x = loaded.get(name)
        if x is None:
            failures.append("rule %s is not loaded by Prometheus" % name)
        elif x.get("health") != "ok":
            failures.append("rule %s: health %s %s" % (name, x.get("health"), x.get("lastError", "")))
    return failures


if __name__ == "__main__":
    sys.exit(main())
