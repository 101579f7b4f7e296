#!/usr/bin/env bash
# deploy/helm/chatradio through the real helm (docs/deploy.md "Checks"):
#   helm lint --strict and helm template over the default values and every
#   example of deploy/helm/examples (alone and in the combinations the README
#   uses); every rendered object validated against the Kubernetes, KEDA and
#   prometheus-operator API schemas (validate_k8s.mjs) and the chart's own
#   promises (chart_invariants.mjs); every file of bad-values/ must be refused
#   with the message its first line expects; and, given the server binary, the
#   schema's server.config keys plus the options the chart sets must be exactly
#   the options of chatradio-server --help.
#   tests/deploy/check_chart.sh REPO_ROOT [CHATRADIO_SERVER_BINARY]
# Exit 0 = passed, 1 = failed, 77 = skipped (tools not installed: scripts/setup).
set -euo pipefail
ROOT=$(realpath "$1")
SERVER=${2:-}
TOOLS=$ROOT/.tools
HELM=$TOOLS/bin/helm
CHART=$ROOT/deploy/helm/chatradio
HERE=$ROOT/tests/deploy
for f in "$HELM" "$TOOLS/node_modules/kubernetes-models" "$TOOLS/node_modules/.bin/tsc"; do
  [ -e "$f" ] || { echo "check_chart: SKIP: $f missing (scripts/setup installs deploy/tools into .tools/)"; exit 77; }
done
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# helm warns (stderr) that files/ links to deploy/monitoring; that is intended.
helm_q() { "$HELM" "$@" 2> >(grep -v 'found symbolic link in path' >&2); }

# name: value files of deploy/helm/examples, or other helm arguments
SETS=(
  "default:"
  "gpu:gpu.yaml"
  "cpu:cpu.yaml"
  "autoscaling-queue:gpu.yaml autoscaling.yaml"
  "autoscaling-cpu:cpu.yaml autoscaling-cpu.yaml"
  "tls:tls.yaml"
  "monitoring:gpu.yaml monitoring.yaml"
  "everything:gpu.yaml autoscaling.yaml tls.yaml monitoring.yaml"
  "own-templates:cpu.yaml --set-file=templates=$ROOT/deploy/templates.json"
)
for set in "${SETS[@]}"; do
  name=${set%%:*}
  args=()
  for a in ${set#*:}; do
    if [[ "$a" == *.yaml ]]; then args+=(-f "$ROOT/deploy/helm/examples/$a"); else args+=("$a"); fi
  done
  helm_q lint --strict "$CHART" "${args[@]}" >"$OUT/lint-$name.txt" || { cat "$OUT/lint-$name.txt"; echo "check_chart: FAIL: helm lint $name"; exit 1; }
  helm_q template chatradio "$CHART" --namespace radiology "${args[@]}" >"$OUT/$name.yaml" ||
    { echo "check_chart: FAIL: helm template $name"; exit 1; }
done
echo "check_chart: helm lint --strict and helm template passed for ${#SETS[@]} value sets"
node "$HERE/validate_k8s.mjs" "$TOOLS" "$OUT"/*.yaml
node "$HERE/chart_invariants.mjs" "$TOOLS" "$OUT"/*.yaml

bad=0
for f in "$HERE"/bad-values/*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$f")
  if got=$(helm_q template chatradio "$CHART" -f "$f" 2>&1 >/dev/null); then
    echo "check_chart: FAIL: $(basename "$f") was accepted"; bad=1
  elif [[ "$got" != *"$expect"* ]]; then
    echo "check_chart: FAIL: $(basename "$f"): expected '$expect', got: $got"; bad=1
  fi
done
# The chart README lists every value (a leaf of values.yaml, or a map the user fills).
/usr/bin/python3 - "$CHART" <<'PY' || bad=1
import sys, yaml
chart = sys.argv[1]
readme = open(chart + "/README.md").read()
def leaves(d, prefix=""):
    for k, v in d.items():
        path = prefix + k
        user_map = path in ("server.config", "resources") or k.endswith(("Selector", "labels", "annotations"))
        if isinstance(v, dict) and v and not user_map:
            yield from leaves(v, path + ".")
        else:
            yield path
missing = [p for p in leaves(yaml.safe_load(open(chart + "/values.yaml"))) if "`%s`" % p not in readme]
if missing:
    sys.exit("check_chart: FAIL: values missing from the chart README: " + ", ".join(missing))
PY
[ "$bad" -eq 0 ] || exit 1
echo "check_chart: $(ls "$HERE"/bad-values/*.yaml | wc -l) bad value files refused with the expected messages"

if [ -n "$SERVER" ]; then
  # Options of the server vs the chart: the schema's server.config keys plus the
  # keys the chart renders itself (chatradio.serverConfig in _helpers.tpl).
  "$SERVER" --help 2>&1 | grep -oE '^ *--[a-z0-9-]+' | sed 's/^ *--//' | grep -vxE 'config|help' | sort -u >"$OUT/server-options" || true
  /usr/bin/python3 - "$CHART" "$OUT/chart-options" <<'PY'
import json, re, sys
chart, out = sys.argv[1], sys.argv[2]
keys = set(json.load(open(chart + "/values.schema.json"))["properties"]["server"]["properties"]["config"]["properties"])
keys |= set(re.findall(r'set \$c "([a-z0-9-]+)"', open(chart + "/templates/_helpers.tpl").read()))
open(out, "w").write("".join(k + "\n" for k in sorted(keys)))
PY
  sort -o "$OUT/chart-options" "$OUT/chart-options"
  if ! diff <(cat "$OUT/server-options") "$OUT/chart-options" >"$OUT/options.diff"; then
    echo "check_chart: FAIL: chart and chatradio-server --help disagree on the options (< server only, > chart only):"
    cat "$OUT/options.diff"
    exit 1
  fi
  echo "check_chart: the chart covers the $(wc -l <"$OUT/server-options") options of chatradio-server --help"
fi
echo "check_chart: PASS"
