// What the chart promises beyond schema validity, checked on rendered manifests
// (docs/deploy.md): the pod outlives the server's drain, probes are gRPC health
// checks (TCP with TLS), the container is locked down, GPU mode asks for a GPU
// and runs --backend cuda while CPU mode asks for none and runs --backend cpu,
// and both Services exist (one headless).
//   node tests/deploy/chart_invariants.mjs TOOLS_DIR RENDERED.yaml...
import { readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { pathToFileURL } from "node:url";

const [tools, ...files] = process.argv.slice(2);
const { parseAllDocuments } = await import(pathToFileURL(join(tools, "node_modules/yaml/dist/index.js")));
const failures = [];

for (const file of files) {
  const objs = parseAllDocuments(readFileSync(file, "utf8")).map((d) => d.toJS()).filter(Boolean);
  const find = (kind, pred = () => true) => objs.filter((o) => o.kind === kind && pred(o));
  const fail = (msg) => failures.push(`${basename(file)}: ${msg}`);
  const [deploy] = find("Deployment");
  const own = find("ConfigMap", (o) => o.data?.["templates.json"]).map((o) => o.data["templates.json"])[0];
  const config = find("ConfigMap", (o) => o.data?.["server.json"]).map((o) => JSON.parse(o.data["server.json"]))[0];
  if (!deploy || !config) {
    fail("no Deployment or no server.json ConfigMap");
    continue;
  }
  const pod = deploy.spec.template.spec;
  const [c] = pod.containers;
  const drain = config["drain-grace"] + config["drain-timeout"];
  if (!(pod.terminationGracePeriodSeconds > drain)) {
    fail(`terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} <= drain-grace + drain-timeout ${drain}`);
  }
  const live = c.livenessProbe;
  if (!(live.failureThreshold * live.periodSeconds > drain)) fail("liveness would kill a draining server");
  const tls = Boolean(config["tls-cert"]);
  for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
    const p = c[probe];
    const ok = tls ? p.tcpSocket : p.grpc?.port === config.port && p.grpc.service === "";
    if (!ok) fail(`${probe} is not a ${tls ? "TCP" : "gRPC health"} check of the gRPC port`);
  }
  if (!(c.startupProbe.failureThreshold * c.startupProbe.periodSeconds >= 300)) fail("startup probe allows < 5 min to load");
  const sc = c.securityContext;
  if (!(pod.securityContext.runAsNonRoot && sc.readOnlyRootFilesystem && sc.allowPrivilegeEscalation === false &&
        sc.capabilities?.drop?.includes("ALL"))) {
    fail("container is not non-root, read-only, without privilege escalation and capabilities");
  }
  if (!c.args.join(" ").includes("--config /etc/chatradio/config/server.json")) fail("server does not read the rendered config");
  if (config.model !== "/models" || !c.volumeMounts.some((m) => m.name === "model" && m.mountPath === "/models" && m.readOnly)) {
    fail("model volume is not mounted read-only at /models");
  }
  if (own !== undefined) {
    try {
      if (!Array.isArray(JSON.parse(own).templates)) fail("templates.json has no templates array");
    } catch (e) {
      fail(`templates.json is not JSON: ${e.message}`);
    }
  }
  const templates = own === undefined ? "/usr/share/chatradio/templates.json" : "/etc/chatradio/config/templates.json";
  if (config.templates !== templates) fail(`templates ${config.templates}, expected ${templates}`);
  if (config["metrics-host"] !== "0.0.0.0" || config.host !== "0.0.0.0") fail("server does not listen on the pod's address");
  const gpuLimit = Object.keys(c.resources?.limits || {}).find((k) => k.endsWith("/gpu"));
  if (config.backend === "cuda" && !gpuLimit) fail("backend cuda without a GPU limit");
  if (config.backend === "cpu" && gpuLimit) fail("backend cpu with a GPU limit");
  if (!["cuda", "cpu"].includes(config.backend)) fail(`backend ${config.backend}`);
  const services = find("Service");
  if (!services.some((s) => s.spec.clusterIP === "None") || !services.some((s) => s.spec.clusterIP !== "None")) {
    fail("needs a ClusterIP and a headless Service");
  }
  const hpa = find("HorizontalPodAutoscaler").length + find("ScaledObject").length;
  if (hpa > 1) fail("both an HPA and a KEDA ScaledObject");
  if (hpa && deploy.spec.replicas !== undefined) fail("replicas set while an autoscaler owns them");
}
if (failures.length) {
  console.error("chart_invariants: FAIL\n" + failures.join("\n"));
  process.exit(1);
}
console.log(`chart_invariants: ${files.length} renderings keep the drain, probe, security and GPU/CPU rules`);
