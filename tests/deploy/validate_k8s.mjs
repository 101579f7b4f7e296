// Validates every object of rendered Helm manifests against the Kubernetes API
// schemas: kubernetes-models (core and apps, autoscaling, policy, networking),
// @kubernetes-models/keda and @kubernetes-models/prometheus-operator. Each
// object goes through the package's validate() (types, formats, required
// fields) and through tsc against the package's interface (which also rejects
// unknown fields, which validate() lets pass).
//   node tests/deploy/validate_k8s.mjs TOOLS_DIR RENDERED.yaml...
import { existsSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { pathToFileURL } from "node:url";
import { typeCheck } from "./typecheck.mjs";

const [tools, ...files] = process.argv.slice(2);
const { parseAllDocuments } = await import(pathToFileURL(join(tools, "node_modules/yaml/dist/index.js")));

// apiVersion group → the npm package that models it.
function packageOf(apiVersion) {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  if (group === "keda.sh") return "@kubernetes-models/keda";
  if (group === "monitoring.coreos.com") return "@kubernetes-models/prometheus-operator";
  if (group === "" || group.endsWith(".k8s.io") || !group.includes(".")) return "kubernetes-models";
  return null;
}

const failures = [];
const checks = [];
const imports = new Set();
let count = 0;
for (const file of files) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const doc of docs) {
    if (doc.errors.length) {
      failures.push(`${basename(file)}: YAML: ${doc.errors[0].message}`);
      continue;
    }
    const obj = doc.toJS();
    if (obj === null) continue;  // an empty document (a template that rendered nothing)
    const where = `${basename(file)}: ${obj.kind} ${obj.metadata?.name}`;
    const pkg = packageOf(obj.apiVersion || "");
    const module = pkg && `${pkg}/${obj.apiVersion}/${obj.kind}`;
    const path = module && [".mjs", ".js"].map((ext) => join(tools, "node_modules", module + ext)).find(existsSync);
    if (!path) {
      failures.push(`${where}: no schema for ${obj.apiVersion} ${obj.kind}`);
      continue;
    }
    const Model = (await import(pathToFileURL(path)))[obj.kind];
    try {
      new Model(obj).validate();
    } catch (e) {
      failures.push(`${where}: ${e.message}`);
    }
    const alias = `${obj.kind}_${pkg.replace(/\W/g, "_")}`;
    imports.add(`import type { I${obj.kind} as ${alias} } from "${module}";`);
    checks.push({ name: where, type: alias, value: obj });
    count++;
  }
}
const tsErrors = typeCheck(tools, { imports: [...imports], checks });
if (tsErrors) failures.push("unknown fields or wrong types (tsc):\n" + tsErrors);
if (failures.length) {
  console.error("validate_k8s: FAIL\n" + failures.join("\n"));
  process.exit(1);
}
console.log(`validate_k8s: ${count} objects from ${files.length} files valid`);
