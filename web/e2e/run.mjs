// End-to-end test of the web build in a real browser: Debian's headless Chromium with
// SwiftShader's software WebGPU adapter loads the built page (target/web/dist) from a local
// server and works it through its test hooks (window.advmoeLab, crates/advmoe-app/src/hooks.rs):
//
//  1. the app draws on a WebGPU device and the bundled demo models load;
//  2. a short training on `synthetic` runs until its clean accuracy is above chance;
//  3. an attack changes the trained model's prediction, and one on the bundled MoE-AT model
//     changes both its prediction and its routing map;
//  4. "Save checkpoint" downloads the model pair, and the native CLI (`advmoe eval`) measures
//     the same clean accuracy on it as the browser did;
//  5. a natively trained model (a bundled demo's files) is opened through the file picker and
//     attacked in the browser;
//  6. a screenshot is saved;
//  6b. the WebGPU device is destroyed in the middle of a run (as a driver reset loses it): the
//     app reports it, keeps the run at its last evaluation, and continues it on a new WebGPU
//     device to its end; the picked model is attacked again there;
//  7. in a second browser without WebGPU (--disable-features=WebGPU) the page says so and falls
//     back to Burn's CPU backend in wasm: an attack on a bundled model still changes its
//     prediction; a shared link (view, model, image, attack) loaded as a fresh page opens that
//     attack, keeps the link in the address, and agrees with the native CLI's attack on the
//     predictions and routes; with the network cut, the page loads again from its service
//     worker's cache and the link's attack gives the same result; a link to a lesson's "predict
//     first" card opens it with the result hidden, a committed guess runs the attack, is judged
//     as the lesson expects and agrees with the native CLI, and the figure exports as a 2x PNG
//     and JSON (downloads); a short training on MNIST-format IDX files handed over through the file
//     picker (written by this test: ten classes, each a bar at its own row) rises above chance;
//     then a .tar.gz image folder of 300 real CIFAR-10 JPEGs (cut from ../shared/data's archive)
//     is picked, selects the image-folder dataset, is read whole and trains (with
//     E2E_CIFAR_FULL=1 the whole 60,000-image archive too, reporting its load time).
//
// Any console error, page error or panic fails the test. Prints a JSON summary (time to first
// frame, steps/s, accuracies) and writes it to target/web/e2e/summary.json.
//
// Usage: node web/e2e/run.mjs  (after web/build.sh and `cargo build -p advmoe-cli`). The
// 20-minute memory soak is web/e2e/soak.mjs; both use lib.mjs.

import { mkdir, stat, writeFile } from "node:fs/promises";
import { gunzipSync, gzipSync } from "node:zlib";
import { existsSync, readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { serve } from "../static.mjs";
import { TRAIN, attack, dist, downloadsOf, fail, FLAGS, launch, openPage, out, root } from "./lib.mjs";

const cli = path.join(process.env.CARGO_TARGET_DIR ?? path.join(root, "target"), "debug/advmoe");
// The shared CIFAR-10 image folder (../shared/data, see its README), cut down to a small archive
// for the test; E2E_CIFAR_FULL=1 also hands the whole archive to the page and reports how long it
// took to read and decode its 60,000 JPEGs there.
const cifarArchive = process.env.CIFAR_ARCHIVE ?? path.join(root, "../shared/data/cifar10-jpg.tar.gz");
const cifarFull = process.env.E2E_CIFAR_FULL === "1";

// Seconds since the test started, at each of its phases: printed as it goes (CI's log shows where
// the time went, even when a later phase fails) and kept in the summary.
const testStart = Date.now();
const phases = {};
function phase(name) {
  phases[name] = (Date.now() - testStart) / 1000;
  console.log(`web e2e: ${name} (${phases[name].toFixed(1)} s)`);
}

// MNIST-format IDX files (the official names; the labels gzipped, as downloaded): `count`
// 28×28 images of ten classes, class c a bright bar on rows 2c+4..2c+6 over noise.
function idxFiles(dir, split, count, seed) {
  let state = seed;
  const random = () => ((state = (state * 1103515245 + 12345) >>> 0) >>> 8) / (1 << 24);
  const images = Buffer.alloc(16 + count * 784);
  images.writeUInt32BE(0x803, 0);
  images.writeUInt32BE(count, 4);
  images.writeUInt32BE(28, 8);
  images.writeUInt32BE(28, 12);
  const labels = Buffer.alloc(8 + count);
  labels.writeUInt32BE(0x801, 0);
  labels.writeUInt32BE(count, 4);
  for (let i = 0; i < count; i++) {
    const c = i % 10;
    labels[8 + i] = c;
    for (let p = 0; p < 784; p++) {
      const row = Math.floor(p / 28);
      const bar = row >= 2 * c + 4 && row < 2 * c + 6;
      images[16 + i * 784 + p] = Math.floor(bar ? 200 + 55 * random() : 80 * random());
    }
  }
  const prefix = split === "train" ? "train" : "t10k";
  return [
    [path.join(dir, `${prefix}-images-idx3-ubyte`), images],
    [path.join(dir, `${prefix}-labels-idx1-ubyte.gz`), gzipSync(labels)],
  ];
}

// A .tar.gz of an image folder holding the first `train` files of every class folder of
// `train/` and the first `test` of `test/` in `archive` (a .tar.gz of that layout), with the
// folders' own entries; pax and GNU long-name headers travel with the entry they describe.
function imageFolderSubset(archive, train, test) {
  const tar = gunzipSync(readFileSync(archive));
  const kept = [];
  const counts = new Map();
  let pending = [];
  let files = 0;
  for (let at = 0; at + 512 <= tar.length; ) {
    const header = tar.subarray(at, at + 512);
    if (header.every((b) => b === 0)) break;
    const field = (from, len) => header.subarray(from, from + len).toString("latin1").replace(/\0.*$/s, "");
    const size = parseInt(field(124, 12).trim() || "0", 8);
    const type = field(156, 1) || "0";
    const end = at + 512 + Math.ceil(size / 512) * 512;
    const entry = tar.subarray(at, end);
    at = end;
    if (type === "x" || type === "L" || type === "K") {
      pending.push(entry);
      continue;
    }
    const prefix = field(345, 155);
    const name = (prefix ? `${prefix}/` : "") + field(0, 100);
    const parts = name.split("/").filter((p) => p !== "");
    let keep = type === "5" || type === "g";
    if (type === "0" && parts.length >= 3) {
      const [split, cls] = parts.slice(-3);
      const key = `${split}/${cls}`;
      const seen = counts.get(key) ?? 0;
      keep = seen < (split === "train" ? train : split === "test" ? test : 0);
      if (keep) {
        counts.set(key, seen + 1);
        files++;
      }
    }
    if (keep) kept.push(...pending, entry);
    pending = [];
  }
  kept.push(Buffer.alloc(1024));
  return { bytes: gzipSync(Buffer.concat(kept)), files };
}

// An image folder's .tar.gz handed over through the file picker: the app selects the
// `image-folder` dataset; a short training run reads it. Returns the run's report of its dataset.
async function trainOnImageFolder({ page, send, until }, file, steps) {
  const chooser = page.waitForEvent("filechooser");
  await send({ action: "pick" });
  await (await chooser).setFiles(file);
  const name = path.basename(file);
  await until(`the picked ${name}`, (s) => (s.tab === "Setup" && s.train?.data_dir?.endsWith(name) ? s : null));
  const start = Date.now();
  await send({ ...TRAIN, dataset: "image-folder", steps, eval_every: steps });
  // The previous run stays "Finished" in the status until this one starts: wait for this one's
  // own step count and the data it read.
  const trained = await until(`the training on ${name}`, (s) =>
    s.train?.state === "Finished" && s.train.total_steps === steps && s.train.data_images != null ? s : null
  );
  return {
    archive: name,
    images: trained.train.data_images,
    load_s: trained.train.data_load_s,
    steps,
    wall_s: (Date.now() - start) / 1000,
    evals: trained.train.evals,
  };
}

// A lost WebGPU device (destroyed through the hooks, as a driver reset or a GPU process crash
// loses it) in the middle of a run: the app says so, keeps the run at its last evaluation, and
// "Continue on a new WebGPU device" finishes it there; the library's models move too (an attack
// on the picked model runs on the new device).
async function loseDevice(session, picked) {
  const { status, send, until } = session;
  const run = { ...TRAIN, steps: 10, eval_every: 5, eval_size: 50 };
  await send(run);
  // Lost once the copy made at the first evaluation (step 5) is kept.
  await until("the copy of the run at its first evaluation", (s) =>
    s.train?.state === "Running" && s.train.total_steps === run.steps && s.train.kept_step === 5 ? s : null
  );
  // Burn logs the loss as an error in the console, and the browser may too: expected here.
  session.expectedConsole = /lost|destroy/i;
  const lostAt = Date.now();
  await send({ action: "lose_device" });
  const lost = await until("the lost device to be reported", (s) => s.train?.lost);
  const failedState = (await status()).train.state;
  if (failedState !== "Failed") fail(`after the loss the run is ${failedState}`);
  const shown_s = (Date.now() - lostAt) / 1000;
  await send({ action: "recover", on_cpu: false });
  const done = await until("the continued run's end", (s) =>
    s.train?.state === "Finished" && s.train.total_steps === run.steps ? s : null
  );
  session.expectedConsole = null;
  if (lost.kept_step !== 5) fail(`the copy kept is at step ${lost.kept_step}, not 5`);
  const steps = done.train.evals.map((e) => e.step);
  if (steps.join() !== "5,10") fail(`the continued run's evaluations: ${JSON.stringify(done.train.evals)}`);
  if (!done.on_gpu) fail(`the run did not continue on a GPU: ${done.compute}`);
  const after = await attack(session, picked, 1, 8, "router");
  return { kept_step: lost.kept_step, reason: lost.reason, shown_s, compute_after: done.compute, evals: done.train.evals, attack_after: after };
}

// The native CLI's attack lab attack (PGD-10 at 8/255 from the clean image) on test image
// `index` of the bundled MoE-AT model, aimed at `target`: its attack.json.
function nativeAttack(index, target, dir) {
  return JSON.parse(
    execFileSync(
      cli,
      ["attack", "--model", path.join(root, "crates/advmoe-app/demo/moe-at"), "--index", String(index), "--attack", "pgd",
        "--target", target, "--eps", "8/255", "--steps", "10", "--no-random-start", "--seed", "0", "--out", dir],
      { encoding: "utf8" }
    )
  );
}

// A shared link, loaded as a fresh page: the app opens the view, model, image and attack it
// names, runs the attack, and keeps the link in its address; the native CLI attacking the same
// image of the same model on the CPU (the page runs Burn's CPU backend here too) must agree on
// the predictions and the routes, and on the confidences to 1e-4.
async function sharedLink({ page, until }, url) {
  const fragment = "v=1&view=attack&model=moe-at&image=4&attack=pgd&target=full&eps=8&steps=10&seed=0&projector=0";
  await page.goto("about:blank");
  await page.goto(`${url}#${fragment}`);
  const opened = await until("the shared link's attack", (s) =>
    s.link_pending === false && s.attack && !s.analysis_busy ? s : null
  );
  if (opened.tab !== "Attack") fail(`the link opened the ${opened.tab} view`);
  if (opened.link !== fragment) fail(`the app's link ${opened.link} is not the one opened, ${fragment}`);
  if (!page.url().endsWith(`#${fragment}`)) fail(`the page's address lost the link: ${page.url()}`);
  const web = opened.attack;
  const native = nativeAttack(4, "full", path.join(out, "shared-link"));
  for (const which of ["clean", "adversarial"]) {
    const [w, n] = [web[which], native[which]];
    const same = w.prediction === n.prediction && JSON.stringify(w.routes) === JSON.stringify(n.routes);
    if (!same || Math.abs(w.confidence - n.confidence) > 1e-4)
      fail(`the ${which} result differs: page ${JSON.stringify(w)}, native ${JSON.stringify({ ...n, probs: undefined })}`);
  }
  return { fragment, clean: web.clean, adversarial: web.adversarial, native_confidence: native.adversarial.confidence };
}

// Offline: once the service worker (web/sw.js) has cached the site, the page loads with the
// network cut, and the shared link's attack gives the same result as online.
async function offline({ page, until }, url, online) {
  const cache = await page.evaluate(async () => {
    await navigator.serviceWorker.ready;
    const name = (await caches.keys()).find((k) => k.startsWith("advmoe-lab-"));
    return { name, files: name ? (await (await caches.open(name)).keys()).length : 0 };
  });
  if (!cache.name || cache.files < 8) fail(`the service worker cached too little: ${JSON.stringify(cache)}`);
  await page.context().setOffline(true);
  try {
    await page.goto("about:blank");
    const start = Date.now();
    await page.goto(`${url}#${online.fragment}`);
    await until("the first demo model, offline", (s) => (s.models?.length >= 1 ? s : null), 50);
    const first_attackable_ms = Date.now() - start;
    const ready = await until("the demo models, offline", (s) => (s.models?.length >= 3 ? s : null), 50);
    const attackable_ms = Date.now() - start;
    const opened = await until("the shared link's attack, offline", (s) =>
      s.link_pending === false && s.attack && !s.analysis_busy ? s : null
    );
    for (const which of ["clean", "adversarial"]) {
      if (JSON.stringify(opened.attack[which]) !== JSON.stringify(online[which]))
        fail(`offline, the ${which} result changed: ${JSON.stringify(opened.attack[which])} vs ${JSON.stringify(online[which])}`);
    }
    return { cache: cache.name, cached_files: cache.files, first_attackable_ms, attackable_ms, models: ready.models.length };
  } finally {
    await page.context().setOffline(false);
  }
}

// A lesson: a link to the router-only lesson's "predict first" card, loaded as a fresh page,
// opens the card with its attack set up but not run; once a guess is committed the attack runs
// and is judged as the lesson expects, and agrees with the native CLI's same attack. The card's
// figure then exports as two downloads: a 2x PNG and its numbers as JSON.
async function lesson({ page, send, until }, url) {
  await page.goto("about:blank");
  await page.goto(`${url}#v=1&lesson=router-only&card=2`);
  const opened = await until("the lesson's card", (s) =>
    s.lesson === "router-only" && s.card === 2 && s.link_pending === false && s.models?.length >= 3 && !s.analysis_busy ? s : null
  );
  if (!opened.lesson_hidden) fail("the card shows its result before the class has guessed");
  if (opened.attack) fail(`the card ran its attack before the guess: ${JSON.stringify(opened.attack)}`);
  if (!/image=27&attack=pgd&target=router&eps=8/.test(opened.link)) fail(`the card did not set up its attack: ${opened.link}`);
  await send({ action: "predict", choice: 1 });
  const shown = await until("the card's attack and verdict", (s) => (s.lesson_revealed && s.attack && !s.analysis_busy ? s : null));
  const verdict = shown.lesson_revealed;
  if (verdict.expected !== true || verdict.right[1] !== true || verdict.right[0] !== false)
    fail(`the verdict is not the lesson's: ${JSON.stringify(verdict)}`);
  const dir = path.join(out, "lesson");
  const native = nativeAttack(27, "router", dir);
  // The router attack's KL gradient has many entries near zero, whose signs wasm's and native
  // float rounding can set differently (natively the CPU kernels' matrix products use FMA and
  // another summation order than wasm's), and from there the two attacks take different paths
  // to the routers' margins: which layer's route flips can differ. So the clean result must
  // agree exactly (routes) and to 1e-4 (confidence); the adversarial one in its prediction, its
  // confidence to 1e-2 and the number of routes it flipped, give or take one. (On the demo
  // models of 2026-12-01 and test image 18: one route flipped on each side, layer 6 in the page
  // and layer 7 natively. The lesson uses test image 27 since 2026-12-04, where image 18's one
  // flip came and went with the GPU kernels' rounding: 3 of 8 routes flipped in the page and
  // natively that day, the prediction held at 86% and 85%.)
  const clean = shown.attack.clean;
  const flips = (result) => result.routes.filter((r, i) => r !== clean.routes[i]).length;
  for (const [which, tolerance] of [["clean", 1e-4], ["adversarial", 1e-2]]) {
    const [w, n] = [shown.attack[which], native[which]];
    const routesAgree =
      which === "clean"
        ? JSON.stringify(w.routes) === JSON.stringify(n.routes)
        : w.routes.length === n.routes.length && Math.abs(flips(w) - flips(n)) <= 1;
    if (w.prediction !== n.prediction || !routesAgree || Math.abs(w.confidence - n.confidence) > tolerance)
      fail(`the card's ${which} result differs from the native CLI's: ${JSON.stringify(w)} vs ${JSON.stringify({ ...n, probabilities: undefined })}`);
  }
  const downloads = await downloadsOf({ page, send, until }, { action: "export_figure" }, "the figure's two downloads");
  const files = {};
  for (const d of downloads) {
    const file = path.join(dir, d.suggestedFilename());
    await d.saveAs(file);
    files[path.extname(file)] = file;
  }
  const png = readFileSync(files[".png"] ?? fail(`no PNG among ${Object.values(files)}`));
  if (png.toString("latin1", 1, 4) !== "PNG") fail("the figure is not a PNG");
  const [width, height] = [png.readUInt32BE(16), png.readUInt32BE(20)];
  if (width < 1400) fail(`the figure is ${width} px wide, not drawn at 2x`);
  const numbers = JSON.parse(readFileSync(files[".json"] ?? fail("no JSON figure numbers"), "utf8"));
  if (JSON.stringify(numbers.adversarial.routes) !== JSON.stringify(shown.attack.adversarial.routes))
    fail(`the figure's routes ${JSON.stringify(numbers.adversarial.routes)} are not the attack's`);
  return { verdict, figure: { width, height, png_bytes: png.length, caption: numbers.caption } };
}

// Without WebGPU the page must say so and still work, on Burn's CPU backend in wasm. (Chromium
// on Linux has WebGPU only with --enable-unsafe-webgpu; the fallback browser is started without
// it and without the SwiftShader adapter, and with WebGPU disabled outright.)
async function fallback(url, summary) {
  const gpuFlags = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"];
  const browser = await launch([...FLAGS.filter((f) => !gpuFlags.includes(f)), "--disable-features=WebGPU"]);
  try {
    // The app shows why it runs on the CPU in its error bar: that message is expected.
    const session = await openPage(browser, (error) => error.startsWith("No WebGPU device"));
    const { page, status, send, until } = session;
    await page.goto(url);
    const first = await until("the first frame without WebGPU", (s) => (s.frames > 0 ? s : null), 100);
    if (first.on_gpu) fail(`with WebGPU disabled the app still reports a GPU: ${first.compute}`);
    if (!/WebGPU/.test(first.fallback_reason ?? "")) fail(`no reason given for the CPU fallback: ${JSON.stringify(first)}`);
    const ready = await until("the bundled demo models on the CPU", (s) => (s.models?.length >= 3 ? s : null));
    const moe = ready.models.find((m) => m.name.includes("vanilla MoE AT")) ?? fail("no MoE-AT demo model");
    let attacked = null;
    for (let image = 0; image < 10 && !attacked; image++) {
      const a = await attack(session, moe.id, image, 32);
      if (a.clean.prediction !== a.adversarial.prediction) attacked = a;
    }
    if (!attacked) fail("on the CPU fallback no attack changed a prediction of the MoE-AT demo");
    phase("no WebGPU: first frame, demo models, attacks");
    summary.shared_link = await sharedLink(session, url);
    phase("no WebGPU: a shared link opened, its attack as the native CLI's");
    summary.offline = await offline(session, url, summary.shared_link);
    phase("no WebGPU: loaded again with the network cut, the link's attack the same");
    summary.lesson = await lesson(session, url);
    phase("no WebGPU: a lesson card's link, its prediction judged, its figure exported");

    const dir = path.join(out, "mnist-format");
    await mkdir(dir, { recursive: true });
    const files = [...idxFiles(dir, "train", 600, 1), ...idxFiles(dir, "test", 100, 2)];
    for (const [file, bytes] of files) await writeFile(file, bytes);
    const chooser = page.waitForEvent("filechooser");
    await send({ action: "pick" });
    await (await chooser).setFiles(files.map(([file]) => file));
    // Dataset files become the setup's data folder, and the app shows the setup view (the
    // attacks above left it on the attack lab).
    await until("the picked dataset files", (s) => s.tab === "Setup");
    const steps = 40;
    const trainStart = Date.now();
    await send({ ...TRAIN, dataset: "mnist", steps, eval_every: steps });
    const trained = await until("the training on the picked MNIST-format files", (s) =>
      s.train?.state === "Finished" ? s : null
    );
    const last = trained.train.evals.at(-1);
    if (!last || !(last.clean_acc > 0.3)) fail(`CPU training on the picked files: ${JSON.stringify(trained.train.evals)}`);
    phase(`no WebGPU: trained ${steps} steps on picked MNIST-format files`);

    // Real images: a small image folder cut from the shared CIFAR-10 archive, as a .tar.gz.
    if (!existsSync(cifarArchive)) fail(`no CIFAR-10 image folder at ${cifarArchive} (set CIFAR_ARCHIVE)`);
    const subset = imageFolderSubset(cifarArchive, 20, 10);
    const subsetFile = path.join(out, "cifar10-subset.tar.gz");
    await writeFile(subsetFile, subset.bytes);
    const cifar = await trainOnImageFolder(session, subsetFile, 4);
    if (subset.files !== 300 || cifar.images !== subset.files)
      fail(`the picked image folder: ${subset.files} files cut, the app read ${cifar.images} images`);
    if (!(cifar.load_s >= 0) || cifar.evals.at(-1)?.step !== 4) fail(`training on the picked image folder: ${JSON.stringify(cifar)}`);
    phase("no WebGPU: trained on a picked CIFAR-10 image folder");
    const cifarWhole = cifarFull ? await trainOnImageFolder(session, cifarArchive, 2) : null;
    if (cifarWhole && cifarWhole.images !== 60000) fail(`the whole CIFAR-10 archive: ${JSON.stringify(cifarWhole)}`);

    summary.no_webgpu = {
      first_frame_ms: first.first_frame_ms,
      compute: first.compute,
      attack: attacked,
      picked_dataset: { files: files.length, steps, wall_s: (Date.now() - trainStart) / 1000, evals: trained.train.evals },
      picked_image_folder: cifar,
      ...(cifarWhole ? { cifar10_whole_archive: cifarWhole } : {}),
    };
  } finally {
    await browser.close();
  }
}

async function main() {
  if (!existsSync(path.join(dist, "index.html"))) fail(`no web build in ${dist}: run web/build.sh`);
  if (!existsSync(cli)) fail(`no native CLI at ${cli}: run cargo build -p advmoe-cli`);
  await mkdir(out, { recursive: true });
  const server = await serve(dist);
  const url = `http://127.0.0.1:${server.address().port}/`;
  const summary = { url };
  const browser = await launch(FLAGS);
  try {
    const web = await openPage(browser);
    const { page, problems, status, send, until } = web;
    const started = Date.now();
    await page.goto(url);
    const first = await until("the first frame", (s) => (s.frames > 0 ? s : null), 100);
    summary.first_frame_ms = first.first_frame_ms;
    summary.compute = first.compute;
    if (!first.on_gpu) fail(`the app fell back to the CPU: ${first.fallback_reason}`);
    // From opening the page to the first demo model that can be attacked (the goal is under
    // 3 s), and to all three.
    await until("the first demo model", (s) => s.models?.length >= 1, 50);
    summary.first_attackable_ms = Date.now() - started;
    await until("the bundled demo models", (s) => s.models?.length >= 3, 50);
    summary.attackable_ms = Date.now() - started;
    // The page counted the module's download as it showed it.
    const download = await page.evaluate(() => window.advmoeDownload);
    const wasmBytes = (await stat(path.join(dist, "advmoe-lab_bg.wasm"))).size;
    if (!download || download.loaded !== wasmBytes || download.total !== wasmBytes)
      fail(`the page's download count ${JSON.stringify(download)} is not the module's ${wasmBytes} bytes`);
    if (await page.$("#download")) fail("the download line is still shown after the app started");
    summary.download_bytes = download.loaded;
    phase("WebGPU: first frame and demo models");

    // Train, sampling the throughput the app reports after each chunk of steps.
    await send(TRAIN);
    const rates = [];
    const trainStart = Date.now();
    const trained = await until("the training to finish", (s) => {
      if (s.train?.state === "Running" && s.train.steps_per_sec > 0) rates.push(s.train.steps_per_sec);
      return s.train?.state === "Finished" && s.models.some((m) => m.origin === "trained in this session") ? s : null;
    });
    rates.sort((a, b) => a - b);
    summary.train_wall_s = (Date.now() - trainStart) / 1000;
    summary.steps_per_sec_median = rates[Math.floor(rates.length / 2)];
    summary.evals = trained.train.evals;
    const last = trained.train.evals.at(-1);
    if (!last || last.step !== TRAIN.steps) fail(`no evaluation at the last step: ${JSON.stringify(trained.train.evals)}`);
    if (!(last.clean_acc > 0.2)) fail(`clean accuracy ${last.clean_acc} is not above chance (0.1) by a margin`);
    phase(`WebGPU: trained ${TRAIN.steps} steps`);

    // Attack the trained model: the prediction must change on one of a few test images. (After
    // 80 steps of standard training its routers often send every image to one expert, so its
    // routes may not move.)
    const model = trained.models.find((m) => m.origin === "trained in this session").id;
    const session = { status, send, until };
    const attackOn = (model, image, eps_255) => attack(session, model, image, eps_255);
    const tried = [];
    for (let image = 0; image < 4; image++) {
      const a = await attackOn(model, image, 32);
      tried.push(a);
      if (a.clean.prediction !== a.adversarial.prediction) break;
    }
    summary.attack_on_trained = tried.at(-1);
    if (tried.at(-1).clean.prediction === tried.at(-1).adversarial.prediction)
      fail(`PGD-10 at 32/255 changed no prediction of the trained model: ${JSON.stringify(tried)}`);

    // The routing map and the prediction change together under one attack: the bundled MoE
    // (vanilla MoE AT, balanced routers) attacked on the full target.
    const moe = trained.models.find((m) => m.name.includes("vanilla MoE AT")) ?? fail("no MoE-AT demo model");
    let attacked = null;
    for (let image = 0; image < 10 && !attacked; image++) {
      const a = await attackOn(moe.id, image, 32);
      tried.push(a);
      if (a.clean.prediction !== a.adversarial.prediction && a.flipped_layers > 0) attacked = a;
    }
    if (!attacked) fail(`no attack changed both the prediction and the routes: ${JSON.stringify(tried)}`);
    summary.attack = attacked;
    // The lab shows this attack now: the screenshot of the routing map is taken here rather
    // than after attacking it again at the end (one attack, about 40 s on SwiftShader, less).
    await page.waitForTimeout(1000);
    summary.screenshot = path.join(out, "screenshot.png");
    await page.screenshot({ path: summary.screenshot });
    phase(`WebGPU: ${tried.length} attacks, screenshot`);

    // Save: the model pair downloads; the native CLI evaluates it.
    const downloads = await downloadsOf(web, { action: "save" }, "the two downloads");
    const saved = [];
    for (const d of downloads) {
      const file = path.join(out, d.suggestedFilename());
      await d.saveAs(file);
      saved.push(file);
    }
    const weights = saved.find((f) => f.endsWith(".safetensors")) ?? fail(`no .safetensors among ${saved}`);
    const native = JSON.parse(
      execFileSync(cli, ["eval", "--model", weights, "--limit", String(TRAIN.eval_size), "--json"], { encoding: "utf8" })
        .trim()
        .split("\n")
        .at(-1)
    );
    summary.native_eval_of_download = native;
    const diff = Math.abs(native.clean_acc - last.clean_acc);
    if (diff > 1.5 / TRAIN.eval_size)
      fail(`the native CLI measures ${native.clean_acc} on the downloaded model, the browser ${last.clean_acc}`);
    phase("WebGPU: saved, and evaluated natively");

    // Open a natively trained model through the file picker, then attack it.
    const count = (await status()).models.length;
    const chooser = page.waitForEvent("filechooser");
    await send({ action: "pick" });
    await (await chooser).setFiles([
      path.join(root, "crates/advmoe-app/demo/moe-at/config.json"),
      path.join(root, "crates/advmoe-app/demo/moe-at/model.safetensors"),
    ]);
    const opened = await until("the picked model", (s) => (s.models.length > count ? s.models.at(-1) : null));
    const routerAttack = await attack(session, opened.id, 1, 8, "router");
    summary.picked_model = { name: opened.name, router_attack_flipped_layers: routerAttack.flipped_layers };
    phase("WebGPU: picked model attacked");

    summary.device_loss = await loseDevice(web, opened.id);
    if (problems.length) fail(problems.join("\n"));
    await browser.close();
    phase("WebGPU: device lost mid-run, the run continued on a new device");

    await fallback(url, summary);
    summary.total_s = (Date.now() - started) / 1000;
    summary.phases_s = phases;
  } finally {
    await browser.close();
    server.close();
  }
  await writeFile(path.join(out, "summary.json"), JSON.stringify(summary, null, 2));
  console.log(JSON.stringify(summary, null, 2));
  console.log("web e2e: passed");
}

main().catch((e) => {
  console.error(`web e2e: FAILED\n${e.stack ?? e}`);
  process.exit(1);
});
