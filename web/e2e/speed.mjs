// Browser steps/s ÷ native steps/s, on the same machine and the same adapter: the built page
// (target/web/dist) in headless Chromium, worked through its test hooks, and the release CLI
// (`advmoe train --json`) train the same run, and each reports the seconds its steps took the
// same way (the engine's `Run::advance`: steps and their loss readbacks, evaluations not). The
// first 10 steps (shader compilation, allocation: the CLI's first chunk of steps, the page's
// first two) are left out on both sides.
//
// Two adapter kinds, each compared like for like:
//   webgpu  the page on WebGPU through Chromium's SwiftShader Vulkan device, against the CLI's
//           wgpu on the same SwiftShader device (its Vulkan ICD, which Chromium ships, chosen
//           with VK_ICD_FILENAMES);
//   cpu     the page's CPU backend (wasm, one thread: the "Train on the CPU" switch), against
//           the CLI's CPU backend on one thread (RAYON_NUM_THREADS=1).
//
// Before any figure is kept, the page's saved config.json must equal the CLI's (the same model,
// data, method, batch and steps), or the script fails.
//
// Usage: bench/browser.sh (it builds nothing: web/build.sh and the release CLI first).
// Settings (environment): ADVMOE (the CLI), STEPS (40 on WebGPU), CPU_STEPS (200: a CPU step takes
// milliseconds, and the timed window should last seconds), BATCH (16), METHODS
// (standard,advmoe), KINDS (webgpu,cpu), OUT (runs/bench-browser), EXTRA_FLAGS (more Chromium
// flags, space-separated). Writes OUT/browser.json and prints a table.

import { mkdir, readFile, writeFile } from "node:fs/promises";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import path from "node:path";
import { serve } from "../static.mjs";
import { dist, downloadsOf, fail, FLAGS, launch, openPage, root } from "./lib.mjs";

const run = promisify(execFile);
const cli = process.env.ADVMOE ?? path.join(root, "target/release/advmoe");
// Steps per run, by adapter kind.
const STEPS = { webgpu: Number(process.env.STEPS ?? 40), cpu: Number(process.env.CPU_STEPS ?? 200) };
const WARM = 10;
const BATCH = Number(process.env.BATCH ?? 16);
const EVAL_SIZE = 50;
const METHODS = (process.env.METHODS ?? "standard,advmoe").split(",");
const KINDS = (process.env.KINDS ?? "webgpu,cpu").split(",");
const OUT = path.resolve(root, process.env.OUT ?? "runs/bench-browser");
const SWIFTSHADER_ICD = process.env.SWIFTSHADER_ICD ?? "/usr/lib/chromium/vk_swiftshader_icd.json";
for (const [kind, steps] of Object.entries(STEPS))
  if (!(steps >= WARM + 20)) fail(`${kind} steps (${steps}) must be at least ${WARM + 20}`);

// How each kind runs natively.
const NATIVE = {
  webgpu: { device: "gpu", env: { VK_ICD_FILENAMES: SWIFTSHADER_ICD } },
  cpu: { device: "cpu", env: { RAYON_NUM_THREADS: "1" } },
};

// The CLI's flags for the run the page's hook starts: the quick-start preset (ResNet-10,
// b = 16, N = 2, r = 0.5, image router, `synthetic`), without augmentation.
function nativeArgs(method, kind, out) {
  return [
    "train", "--dataset", "synthetic", "--no-augment", "--method", method,
    "--steps", String(STEPS[kind]), "--eval-every", String(STEPS[kind]), "--eval-size", String(EVAL_SIZE),
    "--batch-size", String(BATCH), "--device", NATIVE[kind].device, "--out", out, "--json",
  ];
}

// The parts of a run's config.json that decide its work (where its data lies does not).
function work(config) {
  const { data_dir, ...data } = config.data;
  return JSON.stringify({ ...config, data });
}

async function native(method, kind) {
  const out = path.join(OUT, `native-${kind}-${method}`);
  const env = { ...process.env, ...NATIVE[kind].env };
  const { stdout } = await run(cli, nativeArgs(method, kind, out), { env, maxBuffer: 1 << 24 });
  const timing = stdout.trim().split("\n").map((l) => JSON.parse(l)).find((l) => l.timing)?.timing;
  if (!timing) fail(`no timing line from ${cli} ${nativeArgs(method, kind, out).join(" ")}`);
  if (timing.first_chunk_steps !== WARM) fail(`the CLI's first chunk took ${timing.first_chunk_steps} steps, not ${WARM}`);
  const config = JSON.parse(await readFile(path.join(out, "config.json"), "utf8"));
  const steps = timing.steps - timing.first_chunk_steps;
  const secs = timing.secs - timing.first_chunk_secs;
  const adapter = kind === "cpu" ? `${timing.device}, one thread` : timing.device;
  return { adapter, steps, secs, steps_per_sec: steps / secs, first_chunk: timing, config };
}

async function browser(session, method, kind) {
  const { status, send, until } = session;
  const before = (await status()).models.length;
  await send({
    action: "train", steps: STEPS[kind], eval_every: STEPS[kind], batch_size: BATCH, eval_size: EVAL_SIZE,
    method, augment: false, on_cpu: kind === "cpu",
  });
  // The previous run's figures stay in the status until this run has started.
  await until(`the ${method} run on ${kind} to start`, (s) => s.train?.state === "Running", 20);
  let warm = null;
  let finished = null;
  const done = await until(`the ${method} run on ${kind}`, (s) => {
    const t = s.train;
    if (!warm && t.timed_steps >= WARM) warm = { steps: t.timed_steps, secs: t.timed_secs, at: Date.now(), frames: s.frames };
    if (t.state !== "Finished" || s.models.length <= before) return null;
    finished = Date.now();
    return s;
  }, 50);
  const t = done.train;
  if (t.step !== STEPS[kind] || t.timed_steps !== STEPS[kind]) fail(`the page's run ended at step ${t.step} (timed ${t.timed_steps})`);
  // Its config, as "Save checkpoint" downloads it.
  const downloads = await downloadsOf(session, { action: "save" }, "the saved model's two downloads");
  const json = downloads.find((d) => d.suggestedFilename().endsWith(".json")) ?? fail("no config download");
  const file = path.join(OUT, `browser-${kind}-${method}.json`);
  await json.saveAs(file);
  const config = JSON.parse(await readFile(file, "utf8"));
  const steps = t.timed_steps - warm.steps;
  const secs = t.timed_secs - warm.secs;
  return {
    adapter: kind === "cpu" ? "Burn's CPU backend in wasm (one thread)" : done.compute,
    steps,
    secs,
    steps_per_sec: steps / secs,
    // What a user sees: the same steps over the wall clock, frames drawn in between included
    // (from the poll that saw the warm-up end to the one that saw the run finish; evaluation
    // included, a few tens of test images).
    wall_steps_per_sec: steps / ((finished - warm.at) / 1000),
    // The frames the page drew in that window (each one on the same CPU as SwiftShader).
    frames: done.frames - warm.frames,
    config,
  };
}

async function main() {
  await mkdir(OUT, { recursive: true });
  const server = await serve(dist);
  const url = `http://127.0.0.1:${server.address().port}/`;
  // EXTRA_FLAGS (space-separated) are added to Chromium's: for experiments such as Dawn's
  // toggles, or `--js-flags=--perf-basic-prof` to name the module's functions in `perf`.
  const extra = (process.env.EXTRA_FLAGS ?? "").split(" ").filter((f) => f);
  const b = await launch([...FLAGS, ...extra]);
  const rows = [];
  try {
    const session = await openPage(b);
    await session.page.goto(url);
    const first = await session.until("the first frame", (s) => (s.frames > 0 ? s : null), 100);
    if (!first.on_gpu) fail(`the page fell back to the CPU: ${first.fallback_reason}`);
    await session.until("the bundled demo models", (s) => s.models?.length >= 3);
    for (const method of METHODS) {
      for (const kind of KINDS) {
        console.error(`bench browser: ${method} on ${kind}: the page…`);
        const page = await browser(session, method, kind);
        console.error(`bench browser: ${method} on ${kind}: the CLI…`);
        const cliRun = await native(method, kind);
        if (work(page.config) !== work(cliRun.config))
          fail(`the page and the CLI ran different configurations:\n${work(page.config)}\n${work(cliRun.config)}`);
        const row = {
          method,
          kind,
          steps: STEPS[kind],
          browser_adapter: page.adapter,
          native_adapter: cliRun.adapter,
          browser_steps_per_sec: page.steps_per_sec,
          native_steps_per_sec: cliRun.steps_per_sec,
          ratio: page.steps_per_sec / cliRun.steps_per_sec,
          browser_wall_steps_per_sec: page.wall_steps_per_sec,
          browser_frames: page.frames,
          timed_steps: { browser: page.steps, native: cliRun.steps },
        };
        console.error(`bench browser: ${JSON.stringify(row)}`);
        rows.push(row);
      }
    }
  } finally {
    await b.close();
    server.close();
  }
  const report = { steps: STEPS, warm: WARM, batch: BATCH, eval_size: EVAL_SIZE, rows };
  await writeFile(path.join(OUT, "browser.json"), JSON.stringify(report, null, 2));
  console.log("| step | adapter kind | browser steps/s | native steps/s | browser ÷ native | browser, wall clock |");
  console.log("|---|---|---|---|---|---|");
  for (const r of rows)
    console.log(
      `| ${r.method} | ${r.kind} | ${r.browser_steps_per_sec.toFixed(3)} | ${r.native_steps_per_sec.toFixed(3)} | ` +
        `**${r.ratio.toFixed(2)}** | ${r.browser_wall_steps_per_sec.toFixed(3)} |`
    );
  console.log(`adapters: ${[...new Set(rows.map((r) => `${r.kind}: page ${r.browser_adapter}; CLI ${r.native_adapter}`))].join(" / ")}`);
  console.log(`written: ${path.join(OUT, "browser.json")}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
