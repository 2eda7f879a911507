// The browser soak (docs/reliability.md, section 6): the web build in Debian's headless Chromium
// (SwiftShader's software WebGPU) trains one long run and, beside it, attacks test images in the
// attack lab back to back, for SOAK_MINUTES (20) minutes. Once a minute it samples
//   - the JS heap in use after a full garbage collection (the DevTools protocol's
//     HeapProfiler.collectGarbage, then Runtime.getHeapUsage),
//   - the wasm module's linear memory (its size; wasm memory grows and never shrinks, so this is
//     the high-water mark of everything the app holds in Rust),
//   - the resident memory of every Chromium process (browser, renderer, GPU process with
//     SwiftShader's buffers), from /proc.
// A sample waits for the page's thread (which trains between yields), so samples land when the
// page lets them, and each is plotted at its own time.
// Writes target/web/e2e/soak.json and a plot (SOAK_PLOT, default target/web/e2e/soak-browser.png,
// drawn as SVG by this script and rendered to PNG by a browser), and fails if a series
// grows by 5% or more from minute 5 to the end.
//
// Usage: node web/e2e/soak.mjs  (after web/build.sh; SOAK_MINUTES shortens it);
//        node web/e2e/soak.mjs --plot soak.json  draws an earlier soak's plot again.

import { readdirSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";
import { serve } from "../static.mjs";
import { TRAIN, attack, dist, fail, FLAGS, launch, launchServer, openPage, out } from "./lib.mjs";

const MINUTES = Number(process.env.SOAK_MINUTES ?? 20);
const WARMUP_MINUTES = Math.min(5, MINUTES / 4);
const GROWTH_BOUND = 0.05;
const plotFile = process.env.SOAK_PLOT ?? path.join(out, "soak-browser.png");
const MiB = 1024 * 1024;

// Resident bytes of `pid` and all its descendants (Linux /proc): in all, and by Chromium's
// process type (the renderer runs the page and its wasm; the GPU process runs SwiftShader).
function treeRss(pid) {
  const children = new Map();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  const page = 4096;
  const rss = { all: 0, renderer: 0, gpu: 0 };
  const stack = [pid];
  while (stack.length) {
    const p = stack.pop();
    try {
      const bytes = Number(readFileSync(`/proc/${p}/statm`, "utf8").split(" ")[1]) * page;
      const type = /--type=([a-z-]+)/.exec(readFileSync(`/proc/${p}/cmdline`, "utf8"))?.[1];
      rss.all += bytes;
      if (type === "renderer") rss.renderer += bytes;
      if (type === "gpu-process") rss.gpu += bytes;
    } catch {
      continue;
    }
    stack.push(...(children.get(p) ?? []));
  }
  return rss;
}

// The samples as SVG: one panel per series (MiB against minutes), each on its own scale, the
// end of the warm-up dashed and the growth after it in the panel's title.
function chart(samples, growth) {
  const series = [
    ["Chromium processes, resident", "rss", "#1f77b4"],
    ["wasm linear memory", "wasm", "#d62728"],
    ["JS heap in use (after a GC)", "js_heap", "#2ca02c"],
  ];
  const [pw, ph, left, bottom, top] = [380, 300, 60, 45, 45];
  const w = pw * series.length;
  const h = ph + 40;
  const xMax = Math.max(...samples.map((s) => s.minute), 1);
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif" font-size="12">`];
  parts.push(`<rect width="${w}" height="${h}" fill="white"/>`);
  parts.push(
    `<text x="10" y="20" font-size="14">AdvMoE Lab in headless Chromium (SwiftShader WebGPU): one training with attack-lab attacks beside it, memory sampled each minute</text>`
  );
  series.forEach(([name, key, color], p) => {
    const x0 = p * pw;
    const values = samples.map((s) => s[key] / MiB);
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const pad = Math.max((hi - lo) * 0.2, hi * 0.02);
    const [yMin, yMax] = [Math.max(0, lo - pad), hi + pad];
    const x = (m) => x0 + left + (m / xMax) * (pw - left - 15);
    const y = (v) => 40 + ph - bottom - ((v - yMin) / (yMax - yMin)) * (ph - top - bottom);
    const g = growth[key];
    parts.push(`<text x="${x0 + left}" y="48" font-size="13">${name}</text>`);
    parts.push(`<text x="${x0 + left}" y="64">${g >= 0 ? "+" : ""}${(100 * g).toFixed(1)}% from the first sample after minute ${WARMUP_MINUTES} to the last</text>`);
    for (let i = 0; i <= 4; i++) {
      const v = yMin + ((yMax - yMin) * i) / 4;
      parts.push(`<line x1="${x0 + left}" x2="${x0 + pw - 15}" y1="${y(v)}" y2="${y(v)}" stroke="#e4e4e4"/>`);
      parts.push(`<text x="${x0 + left - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(1)}</text>`);
    }
    const step = Math.max(1, Math.round(xMax / 5));
    for (let m = 0; m <= xMax; m += step) {
      parts.push(`<text x="${x(m)}" y="${40 + ph - bottom + 16}" text-anchor="middle">${m}</text>`);
    }
    parts.push(`<text x="${x0 + left + (pw - left) / 2}" y="${40 + ph - 12}" text-anchor="middle">minutes (MiB on the left)</text>`);
    parts.push(`<line x1="${x(WARMUP_MINUTES)}" x2="${x(WARMUP_MINUTES)}" y1="${y(yMax)}" y2="${y(yMin)}" stroke="#999" stroke-dasharray="4 4"/>`);
    const points = samples.map((s, i) => `${x(s.minute).toFixed(1)},${y(values[i]).toFixed(1)}`).join(" ");
    parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${points}"/>`);
  });
  parts.push("</svg>");
  return { svg: parts.join("\n"), width: w, height: h };
}

// Draw the plot of a soak's samples into `plotFile`, in `browser`.
async function plot(browser, summary) {
  const { svg, width, height } = chart(summary.samples, summary.growth_after_warmup);
  const page = await browser.newPage({ viewport: { width, height } });
  await page.setContent(svg);
  await mkdir(path.dirname(plotFile), { recursive: true });
  await page.screenshot({ path: plotFile });
  await page.close();
}

// `node web/e2e/soak.mjs --plot soak.json` draws the plot of an earlier soak again.
async function replot(file) {
  const summary = JSON.parse(readFileSync(file, "utf8"));
  const browser = await launch([]);
  try {
    await plot(browser, summary);
  } finally {
    await browser.close();
  }
  console.log(`web soak: plotted ${file} into ${plotFile}`);
}

async function main() {
  await mkdir(out, { recursive: true });
  const server = await serve(dist);
  const url = `http://127.0.0.1:${server.address().port}/`;
  const browserServer = await launchServer(FLAGS);
  const pid = browserServer.process().pid;
  const browser = await chromium.connect(browserServer.wsEndpoint());
  const timeoutMs = (MINUTES + 15) * 60 * 1000;
  try {
    const session = await openPage(browser, () => false, timeoutMs);
    const { page, status, send, until } = session;
    const cdp = await page.context().newCDPSession(page);
    await page.goto(url);
    const first = await until("the first frame", (s) => (s.frames > 0 ? s : null), 100);
    if (!first.on_gpu) fail(`the app fell back to the CPU: ${first.fallback_reason}`);
    const ready = await until("the bundled demo models", (s) => (s.models?.length >= 3 ? s : null));
    const moe = ready.models.find((m) => m.name.includes("vanilla MoE AT")) ?? fail("no MoE-AT demo model");

    // One run long enough to outlast the soak; stopped at its end.
    await send({ ...TRAIN, steps: 100000, eval_every: 50, eval_size: 50 });
    await until("the run's first steps", (s) => (s.train?.state === "Running" && s.train.step > 0 ? s : null));

    const samples = [];
    const start = Date.now();
    const end = start + MINUTES * 60000;
    let attacks = 0;
    const sample = async () => {
      await cdp.send("HeapProfiler.collectGarbage");
      const heap = await cdp.send("Runtime.getHeapUsage");
      const wasm = await page.evaluate(() => window.advmoeWasmMemory?.buffer.byteLength ?? 0);
      if (!wasm) fail("the page does not expose its wasm memory (window.advmoeWasmMemory)");
      const s = await status();
      const rss = treeRss(pid);
      const point = {
        minute: (Date.now() - start) / 60000,
        rss: rss.all,
        rss_renderer: rss.renderer,
        rss_gpu_process: rss.gpu,
        wasm,
        js_heap: heap.usedSize,
        step: s.train.step,
        attacks,
      };
      samples.push(point);
      console.log(
        `soak: ${point.minute.toFixed(1)} min, step ${point.step}, ${attacks} attacks: ` +
          `Chromium ${(point.rss / MiB).toFixed(1)} MiB (renderer ${(rss.renderer / MiB).toFixed(1)}, ` +
          `GPU process ${(rss.gpu / MiB).toFixed(1)}), wasm ${(wasm / MiB).toFixed(1)} MiB, ` +
          `JS heap ${(heap.usedSize / MiB).toFixed(1)} MiB`
      );
    };
    // The sampler, once a minute, beside the attacks.
    const sampler = (async () => {
      let next = start;
      for (;;) {
        await page.waitForTimeout(Math.max(0, next - Date.now()));
        if (Date.now() >= end) return;
        await sample();
        // A sample that waited long for the page is followed by the next one 30 s later.
        next = Math.max(next + 60000, Date.now() + 30000);
      }
    })();
    while (Date.now() < end) {
      const s = await status();
      if (s.train?.state !== "Running") fail(`the run is ${s.train?.state} at step ${s.train?.step}`);
      // PGD-5 at 8/255 on test images 0..99 in turn, as a class clicking through the lab would.
      await attack(session, moe.id, attacks % 100, 8, undefined, 5);
      attacks++;
    }
    await sampler;
    await sample();

    const after = samples.filter((s) => s.minute >= WARMUP_MINUTES);
    const growth = {};
    for (const key of ["rss", "rss_renderer", "rss_gpu_process", "wasm", "js_heap"]) {
      const base = after[0][key];
      growth[key] = (after.at(-1)[key] - base) / base;
    }
    const summary = {
      minutes: MINUTES,
      warmup_minutes: WARMUP_MINUTES,
      steps: samples.at(-1).step,
      attacks,
      compute: first.compute,
      growth_after_warmup: growth,
      samples,
    };
    await writeFile(path.join(out, "soak.json"), JSON.stringify(summary, null, 2));
    // The plot, drawn by the same browser.
    await plot(browser, summary);
    console.log(JSON.stringify({ ...summary, samples: undefined }, null, 2));
    // The bound holds for what the app owns (its wasm memory and JS heap) and for Chromium's
    // processes together; the split by process is reported, for where growth comes from.
    const grown = ["rss", "wasm", "js_heap"].map((k) => [k, growth[k]]).filter(([, g]) => !(g < GROWTH_BOUND));
    if (grown.length)
      fail(`memory grew by ${GROWTH_BOUND * 100}% or more after minute ${WARMUP_MINUTES}: ${JSON.stringify(grown)}`);
    console.log(`web soak: passed (${plotFile})`);
  } finally {
    await browser.close();
    await browserServer.close();
    server.close();
  }
}

const plotArg = process.argv.indexOf("--plot");
(plotArg > 0 ? replot(process.argv[plotArg + 1]) : main()).catch((e) => {
  console.error(`web soak: FAILED\n${e.stack ?? e}`);
  process.exit(1);
});
