#!/usr/bin/env bash
# deploy/monitoring/rules.yaml through the real promtool: `promtool check rules`
# (syntax, PromQL, templates) and `promtool test rules rules.test.yaml` (the
# unit tests); and every alert must have a test that expects it to fire and one
# that expects silence (exp_alerts: []).
#   tests/deploy/check_rules.sh REPO_ROOT
# Exit 0 = passed, 1 = failed, 77 = skipped (no promtool: scripts/setup installs prometheus).
set -euo pipefail
DIR=$(realpath "$1")/deploy/monitoring
command -v promtool >/dev/null || { echo "check_rules: SKIP: promtool missing (Debian package prometheus)"; exit 77; }
promtool check rules "$DIR/rules.yaml"
(cd "$DIR" && promtool test rules rules.test.yaml)
/usr/bin/python3 - "$DIR" <<'PY'
import sys, yaml
d = sys.argv[1]
alerts = [r["alert"] for g in yaml.safe_load(open(d + "/rules.yaml"))["groups"] for r in g["rules"] if "alert" in r]
fires, silent = set(), set()
for t in yaml.safe_load(open(d + "/rules.test.yaml"))["tests"]:
    for a in t.get("alert_rule_test", []):
        (fires if a.get("exp_alerts") else silent).add(a["alertname"])
missing = [a + (" never fires" if a not in fires else " is never tested silent") for a in alerts
           if a not in fires or a not in silent]
if missing:
    sys.exit("check_rules: FAIL: " + "; ".join(missing))
print("check_rules: each of the %d alerts is tested firing and silent" % len(alerts))
PY
