// Type-checks JSON values against TypeScript types with tsc --strict, in a
// fresh folder under .tools/ (so the npm packages installed there resolve).
// Object literals get TypeScript's excess-property check: an unknown key is an
// error, as is a wrong type, a missing required field or an unknown enum value.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";

// tools: the .tools folder; imports: lines of TypeScript imports; checks:
// [{name, type, value}]; copy: files placed next to the generated check.ts.
// Returns tsc's error text, "" when everything type-checks.
export function typeCheck(tools, { imports, checks, copy = [] }) {
  mkdirSync(join(tools, "tmp"), { recursive: true });
  const dir = mkdtempSync(join(tools, "tmp", "typecheck-"));
  try {
    for (const f of copy) copyFileSync(f, join(dir, basename(f)));
    // starts[i]: the line of check.ts where checks[i] begins, to name it in errors.
    let text = imports.join("\n") + "\n";
    const starts = [];
    checks.forEach((c, i) => {
      starts.push(text.split("\n").length);
      text += `export const v${i}: ${c.type} = ${JSON.stringify(c.value, null, 1)};\n`;
    });
    writeFileSync(join(dir, "check.ts"), text);
    writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, module: "nodenext", moduleResolution: "nodenext",
                         target: "es2022", skipLibCheck: true },
      files: ["check.ts"],
    }));
    try {
      execFileSync(join(tools, "node_modules", ".bin", "tsc"), ["-p", dir], { encoding: "utf8", stdio: "pipe" });
      return "";
    } catch (e) {
      const out = (e.stdout || "") + (e.stderr || "") || String(e);
      // "…/check.ts(181,5): error …" → "<name of the value>, line 12: error …"
      return out.replace(/^.*check\.ts\((\d+),\d+\): /gm, (_, line) => {
        let i = starts.length - 1;
        while (i > 0 && starts[i] > Number(line)) i--;
        return `${checks[i].name}, line ${Number(line) - starts[i] + 1}: `;
      });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
