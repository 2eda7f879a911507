// What the browser scripts share (run.mjs, the end-to-end test; soak.mjs, the 20-minute soak;
// speed.mjs, the page against the native CLI):
// where things are, Debian's headless Chromium with SwiftShader's software WebGPU adapter, and a
// page of the app worked through its test hooks (window.advmoeLab, crates/advmoe-app/src/hooks.rs).

import { chromium } from "playwright-core";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const dist = path.join(root, "target/web/dist");
export const out = path.join(root, "target/web/e2e");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS ?? 25 * 60 * 1000);

// Training on SwiftShader is slow: a few minutes in all on two cores.
// The app's default model (ResNet-10, b = 16, N = 2); without augmentation it is well above
// chance after 80 steps (natively on the CPU: 33% at step 60, 38% at step 80).
export const TRAIN = {
  action: "train",
  steps: 80,
  eval_every: 40,
  batch_size: 16,
  eval_size: 100,
  method: "standard",
  augment: false,
};

export function fail(message) {
  throw new Error(message);
}

export const FLAGS = [
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--enable-features=Vulkan",
  "--use-vulkan=swiftshader",
  "--use-webgpu-adapter=swiftshader",
  "--enable-unsafe-swiftshader",
  "--disable-gpu-sandbox",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export function launch(args) {
  return chromium.launch({ executablePath: chromiumPath, headless: true, args });
}

// The same browser as a server, whose process (and so its children) is known.
export function launchServer(args) {
  return chromium.launchServer({ executablePath: chromiumPath, headless: true, args });
}

// A page of the app, with its problems (console errors, page errors) collected and helpers to
// read the hooks' status, send commands and wait for a condition (failing on any problem, or on
// an error the app shows unless `expected(error)` says it is the one the test provoked). A
// console error that `session.expectedConsole` (a regex, null unless set) matches is one the
// test provoked too.
export async function openPage(browser, expected = () => false, timeoutMs = TIMEOUT_MS) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, acceptDownloads: true });
  const page = await context.newPage();
  const problems = [];
  const session = { page, problems, expectedConsole: null };
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    if (session.expectedConsole?.test(msg.text())) return;
    problems.push(`console error: ${msg.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  const deadline = Date.now() + timeoutMs;
  const status = () => page.evaluate(() => (window.advmoeLab ? JSON.parse(window.advmoeLab.status()) : {}));
  const send = (command) => page.evaluate((c) => window.advmoeLab.send(JSON.stringify(c)), command);
  async function until(what, check, poll = 500) {
    for (;;) {
      if (problems.length) fail(`${problems.join("\n")}\n(while waiting for ${what})`);
      const s = await status();
      if (s.error && !expected(s.error)) fail(`the app reports an error while waiting for ${what}: ${s.error}`);
      const value = check(s);
      if (value) return value;
      if (Date.now() > deadline) fail(`timed out waiting for ${what}; last status ${JSON.stringify(s)}`);
      await page.waitForTimeout(poll);
    }
  }
  return Object.assign(session, { status, send, until });
}

// Attack test image `image` of library model `model` with PGD-`steps` at `eps_255`/255 (the full
// target unless said) and return what the app reports; fails if it leaves its ε-ball.
export async function attack({ status, send, until }, model, image, eps_255, target, steps = 10) {
  const before = (await status()).attack?.seq ?? 0;
  await send({ action: "attack", model, image, eps_255, steps, ...(target ? { target } : {}) });
  const a = await until(`the attack on model ${model}, test image ${image}`, (s) =>
    s.attack && s.attack.seq > before && !s.analysis_busy ? s.attack : null
  );
  if (a.linf > a.eps + 1e-6) fail(`the attack left its ε-ball: ${a.linf} > ${a.eps}`);
  return { model, image, clean: a.clean, adversarial: a.adversarial, flipped_layers: a.flipped_layers };
}

// Send `command` and return the `count` downloads it starts (Playwright Download objects).
export async function downloadsOf({ page, send, until }, command, what, count = 2) {
  const downloads = [];
  const take = (d) => downloads.push(d);
  page.on("download", take);
  try {
    await send(command);
    await until(what, () => (downloads.length >= count ? true : null));
  } finally {
    page.off("download", take);
  }
  return downloads;
}
