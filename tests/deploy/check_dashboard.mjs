// deploy/monitoring/dashboard.json against Grafana's published types
// (@grafana/schema, through deploy/monitoring/dashboard.types.ts).
//   node tests/deploy/check_dashboard.mjs REPO_ROOT
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { typeCheck } from "./typecheck.mjs";

const root = process.argv[2];
const tools = join(root, ".tools");
if (!existsSync(join(tools, "node_modules/@grafana/schema"))) {
  console.log("check_dashboard: SKIP: .tools/node_modules/@grafana/schema missing (scripts/setup installs deploy/tools)");
  process.exit(77);
}
const dashboard = JSON.parse(readFileSync(join(root, "deploy/monitoring/dashboard.json"), "utf8"));
const errors = typeCheck(tools, {
  imports: ['import type { ChatradioDashboard } from "./dashboard.types.js";'],
  checks: [{ name: "dashboard.json", type: "ChatradioDashboard", value: dashboard }],
  copy: [join(root, "deploy/monitoring/dashboard.types.ts")],
});
// Panel ids must be unique and every panel needs a query (Grafana does not check either).
const ids = dashboard.panels.map((p) => p.id);
const dup = ids.filter((id, i) => ids.indexOf(id) !== i);
const empty = dashboard.panels.filter((p) => p.type !== "row" && !(p.targets || []).length).map((p) => p.title);
if (errors || dup.length || empty.length) {
  console.error("check_dashboard: FAIL\n" + errors + (dup.length ? `duplicate panel ids: ${dup}\n` : "") +
                (empty.length ? `panels without a query: ${empty}\n` : ""));
  process.exit(1);
}
const panels = dashboard.panels.filter((p) => p.type !== "row");
console.log(`check_dashboard: dashboard.json type-checks against @grafana/schema (${panels.length} panels)`);
