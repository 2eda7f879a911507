// Fails when several of the web build's exported functions begin by calling one function that
// takes and returns nothing: the sign that wasm-ld linked the module "command-style" and wraps
// its exports with the static constructors (cubecl's 4,900 `inventory` registrations), so they
// run again on every call from JavaScript into the module. The page makes many such
// calls per training step (wasm-bindgen's allocation and externref-table exports, for every
// object WebGPU hands back), and the rerun was most of the page's CPU time in a step
// (bench/README.md, `browser.sh`). The app's `main` calls the constructors
// itself (crates/advmoe-app/src/main.rs), which stops wasm-ld from wrapping the exports; this
// check keeps it so. (In the wrapped build, 8 of the 19 exported functions began with the call,
// `main` and wasm-bindgen's seven helpers; in the fixed one, none.)
//
// Usage: node web/check-exports.mjs FILE.wasm (web/build.sh runs it on the built module).

import { readFile } from "node:fs/promises";
import binaryen from "./tools/node_modules/binaryen/index.js";

const file = process.argv[2];
if (!file) throw new Error("usage: node web/check-exports.mjs FILE.wasm");
const module = binaryen.readBinary(new Uint8Array(await readFile(file)));

// The function an expression calls first, if it starts with a call that passes nothing and
// returns nothing (and that function is the module's own).
function firstCall(expression) {
  const info = binaryen.getExpressionInfo(expression);
  if (info.id === binaryen.BlockId) return info.children.length ? firstCall(info.children[0]) : null;
  if (info.id !== binaryen.CallId || info.operands.length !== 0 || info.type !== binaryen.none) return null;
  return binaryen.getFunctionInfo(module.getFunction(info.target)).module ? null : info.target;
}

// The exported functions (each once, however many names it has) that each target starts.
const starts = new Map();
const seen = new Set();
for (let i = 0; i < module.getNumExports(); i++) {
  const info = binaryen.getExportInfo(module.getExportByIndex(i));
  if (info.kind !== binaryen.ExternalFunction || seen.has(info.value)) continue;
  seen.add(info.value);
  const func = binaryen.getFunctionInfo(module.getFunction(info.value));
  if (func.module) continue; // an import exported again has no body
  const target = firstCall(func.body);
  if (target !== null) starts.set(target, [...(starts.get(target) ?? []), info.name]);
}
module.dispose();

const wrapped = [...starts].filter(([, names]) => names.length >= 3);
if (wrapped.length) {
  for (const [target, names] of wrapped)
    console.error(
      `check-exports: ${names.length} of the ${seen.size} exported functions of ${file} begin by ` +
        `calling ${target} (${names.join(", ")}): wasm-ld wrapped them with the static ` +
        "constructors, which then run again on every call into the module. The web binary's main " +
        "must call __wasm_call_ctors itself (crates/advmoe-app/src/main.rs).",
    );
  process.exit(1);
}
console.log(`check-exports: ${seen.size} exported functions, none wrapped with the static constructors`);
