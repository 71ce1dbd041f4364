// End-to-end test of `gd view` in a real browser: Debian's Chromium, headless, driven by
// playwright-core (no browser download). Run by viewer_e2e_test.sh, which starts gd-server and
// gd view and passes, in the environment:
//   VIEW_URL     the page, e.g. http://127.0.0.1:41234/
//   METRICS_URL  gd-server's Prometheus endpoint
//   OUT_DIR      where the screenshots go
//   NODE_DIR     the npm prefix holding node_modules/playwright-core
//   CHROMIUM     the browser binary
//   STEPS        timestep_respacing of the sampling run (a few steps), e.g. ddim20
//   LONG_STEPS   timestep_respacing of the run that is cancelled (long enough to cancel)
//   RECOMMENDED_SCALE  the default_classifier_scale the page must start at, "none" for none
import { createRequire } from "node:module";
import { strict as assert } from "node:assert";
import path from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const VIEW_URL = env("VIEW_URL");
const METRICS_URL = env("METRICS_URL");
const OUT_DIR = env("OUT_DIR");
const STEPS = env("STEPS");
const LONG_STEPS = env("LONG_STEPS");
const RECOMMENDED_SCALE = env("RECOMMENDED_SCALE");  // the model's default scale, or "none"
const { chromium } = createRequire(path.join(env("NODE_DIR"), "node_modules", "x.js"))("playwright-core");

const SAMPLING_TIMEOUT_MS = 300_000;  // CPU sampling on a shared machine is slow
const log = (...args) => console.log("[viewer-e2e]", ...args);

async function screenshot(page, name) {
  const file = path.join(OUT_DIR, name);
  await page.screenshot({ path: file, fullPage: true });
  log("screenshot", file);
}

// Sets a form control as a user would (input + change events).
async function setValue(page, selector, value) {
  await page.$eval(selector, (el, v) => {
    el.value = v;
    el.dispatchEvent(new Event("input", { bubbles: true }));
    el.dispatchEvent(new Event("change", { bubbles: true }));
  }, value);
}

async function panels(page) {
  return page.$$eval("article.run", (runs) => runs.map((run) => ({
    state: run.dataset.state,
    frames: Number(run.dataset.frames || 0),
    runId: run.dataset.runId || "",
    status: run.querySelector(".status").textContent,
    error: run.querySelector(".error").hidden ? "" : run.querySelector(".error").textContent,
    title: run.querySelector("h2").textContent,
    images: [...run.querySelectorAll("figure img")].map((img) => img.getAttribute("src") || ""),
    loaded: [...run.querySelectorAll("figure img")].every((img) => img.complete && img.naturalWidth > 0),
  })));
}

async function cancelledRequests() {
  const text = await (await fetch(METRICS_URL)).text();
  let total = 0;
  for (const line of text.split("\n")) {
    const match = /^gd_requests_total\{[^}]*code="CANCELLED"[^}]*\} (\d+)/.exec(line);
    if (match) total += Number(match[1]);
  }
  return total;
}

async function main() {
  const browser = await chromium.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const problems = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
    page.on("console", (message) => {
      if (message.type() === "error") problems.push(`console error: ${message.text()}`);
    });
    // Offline by construction: the page asks nothing of any other origin.
    page.on("request", (request) => {
      const url = request.url();
      if (!url.startsWith(VIEW_URL) && !url.startsWith("data:")) problems.push(`foreign request: ${url}`);
    });

    // ---- The page and its models ----
    await page.goto(VIEW_URL);
    await page.waitForSelector("#model:not([disabled])", { timeout: 30_000 });
    const model = await page.$eval("#model", (el) => el.value);
    const classOptions = await page.$$eval("#class option", (options) => options.length);
    log(`model "${model}", ${classOptions} class options`);
    assert.ok(model, "a model is selected");
    assert.ok(classOptions > 1, "the class picker lists the classes");
    const hasClassifier = await page.$eval("#scale", (el) => !el.disabled);
    // The scale starts at the model's recommended one (model.json's default_classifier_scale,
    // passed on by GetModel), and the hint names it.
    const listed = await page.evaluate(async () => (await (await fetch("/api/models")).json()));
    const reported = listed.models.find((m) => m.name === model).default_classifier_scale;
    if (RECOMMENDED_SCALE === "none") {
      assert.ok(!reported, `no recommended scale is reported (got ${reported})`);
    } else {
      assert.ok(hasClassifier, "the model with a recommended scale has a classifier");
      assert.equal(Number(reported), Number(RECOMMENDED_SCALE),
                   "GetModel reports model.json's scale");
      assert.equal(Number(await page.$eval("#scale", (el) => el.value)), Number(RECOMMENDED_SCALE),
                   "the scale slider starts at the model's recommended scale");
      assert.ok((await page.$eval("#scale-hint", (el) => el.textContent)).includes(
                    `${RECOMMENDED_SCALE} recommended`), "the hint names the recommended scale");
    }

    // ---- A sampling run: intermediate frames, then the final grid ----
    await setValue(page, "#count", "2");
    await setValue(page, "#class", "cycle");
    await setValue(page, "#sampler", "SAMPLER_KIND_DDIM");
    await setValue(page, "#steps", STEPS);
    await setValue(page, "#seed", "7");
    if (hasClassifier) await setValue(page, "#scale", "2");
    await page.click("#sample");
    // Two intermediate frames (a fast server may have finished by the time they are seen).
    await page.waitForFunction(() => {
      const run = document.querySelector("article.run");
      return run && Number(run.dataset.frames) >= 2;
    }, null, { timeout: SAMPLING_TIMEOUT_MS });
    const [running] = await panels(page);
    log(`running: ${running.status} (${running.frames} frames)`);
    assert.ok(running.images.every((src) => src.startsWith("data:image/png;base64,")), "frames are PNGs");
    if (running.state === "running") assert.match(running.status, /step \d+\/\d+ · [0-9.]+ images\/s/);
    await screenshot(page, "viewer-running.png");

    await page.waitForSelector("article.run[data-state=done]", { timeout: SAMPLING_TIMEOUT_MS });
    const [done] = await panels(page);
    log(`done: ${done.status} (${done.frames} frames seen)`);
    assert.ok(done.frames >= 2, "intermediate frames arrived before the result");
    assert.equal(done.images.length, 2);
    assert.ok(done.loaded, "the final images decode");
    const gridUrl = await page.$eval("a.grid-download", (a) => a.href);
    const grid = await page.request.get(gridUrl);
    assert.equal(grid.status(), 200);
    const gridBytes = await grid.body();
    assert.equal(gridBytes.subarray(1, 4).toString(), "PNG", "grid.png is a PNG");
    const downloads = await page.$$eval(".downloads a[download]", (links) => links.length);
    assert.equal(downloads, 3, "a grid link and one link per image");
    await page.click("label:has(> input[name=view][value=x_t])");
    assert.equal(await page.$eval("input[name=view][value=x_t]", (el) => el.checked), true);
    await screenshot(page, "viewer-done.png");
    await page.click("label:has(> input[name=view][value=pred_xstart])");

    // ---- Side by side: the same seed at two classifier scales, two concurrent streams ----
    if (hasClassifier) {
      await setValue(page, "#count", "1");
      await page.check("#compare");
      await setValue(page, "#scales", "0, 4");
      await setValue(page, "#steps", "ddim5");
      await page.click("#sample");
      await page.waitForFunction(() => {
        const runs = [...document.querySelectorAll("article.run")];
        return runs.length === 2 && runs.every((run) => run.dataset.state === "done");
      }, null, { timeout: SAMPLING_TIMEOUT_MS });
      const pair = await panels(page);
      log(`side by side: ${pair.map((p) => `${p.title}: ${p.state}`).join(", ")}`);
      assert.deepEqual(pair.map((p) => p.title), ["scale 0", "scale 4"]);
      await screenshot(page, "viewer-side-by-side.png");
      await page.uncheck("#compare");
    }

    // ---- DPM-Solver++: offered with its step count and order; run when the server has it ----
    const dpmOffered = await page.$eval("#sampler option[value=SAMPLER_KIND_DPM_SOLVER_PP]",
                                        (option) => !option.disabled);
    log(`DPM-Solver++ ${dpmOffered ? "offered by the server" : "not offered by this server"}`);
    // Its controls replace the respacing field (checked even where the option is disabled).
    await setValue(page, "#sampler", "SAMPLER_KIND_DPM_SOLVER_PP");
    assert.equal(await page.$eval("#dpm-fields", (el) => el.hidden), false, "steps and order shown");
    assert.equal(await page.$eval("#respacing-field", (el) => el.hidden), true);
    assert.equal(await page.$eval("#eta", (el) => el.disabled), true);
    assert.equal(await page.$eval("#dpm-steps", (el) => el.value), "15");
    assert.equal(await page.$eval("#order", (el) => el.value), "2");
    await setValue(page, "#sampler", "SAMPLER_KIND_DDIM");
    assert.equal(await page.$eval("#dpm-fields", (el) => el.hidden), true);
    if (dpmOffered) {
      await setValue(page, "#count", "2");
      await setValue(page, "#sampler", "SAMPLER_KIND_DPM_SOLVER_PP");
      await setValue(page, "#dpm-steps", "5");
      await page.click("#sample");
      await page.waitForSelector("article.run[data-state=done]", { timeout: SAMPLING_TIMEOUT_MS });
      const [dpmRun] = await panels(page);
      log(`DPM-Solver++: ${dpmRun.status}`);
      assert.match(dpmRun.status, /^done: 5 steps/);
      await setValue(page, "#sampler", "SAMPLER_KIND_DDIM");
    }

    // ---- A server-side error is shown with its gRPC code ----
    // No integer stride cuts a process of T < 99999 steps into 99999: the server refuses it.
    await setValue(page, "#steps", "ddim99999");
    await page.click("#sample");
    await page.waitForSelector("article.run[data-state=failed]", { timeout: 60_000 });
    const [failed] = await panels(page);
    log(`error shown: ${failed.error}`);
    assert.match(failed.error, /^INVALID_ARGUMENT: /);

    // ---- Cancel: the run stops, and the server counts a CANCELLED request ----
    const cancelledBefore = await cancelledRequests();
    await setValue(page, "#count", "2");
    await setValue(page, "#steps", LONG_STEPS);
    await page.click("#sample");
    await page.waitForFunction(() => {
      const run = document.querySelector("article.run");
      return run && (Number(run.dataset.frames) >= 1 || run.dataset.state === "failed");
    }, null, { timeout: SAMPLING_TIMEOUT_MS });
    const [long] = await panels(page);
    assert.equal(long.error || "", "", `the ${LONG_STEPS}-step run started`);
    assert.equal(await page.$eval("#cancel", (el) => el.disabled), false, "Cancel is enabled");
    await page.click("#cancel");
    await page.waitForSelector("article.run[data-state=cancelled]", { timeout: 60_000 });
    const [cancelled] = await panels(page);
    log(`cancelled: ${cancelled.status}; ${cancelled.error}`);
    assert.match(cancelled.error, /^CANCELLED: /);
    assert.match(cancelled.status, /cancelled at step \d+\/\d+/);
    const steps = Number(/\/(\d+)/.exec(cancelled.status)[1]);
    const reached = Number(/step (\d+)\//.exec(cancelled.status)[1]);
    assert.ok(reached < steps, "cancelled before the end");
    await screenshot(page, "viewer-cancelled.png");
    let cancelledAfter = cancelledBefore;
    for (let i = 0; i < 50 && cancelledAfter <= cancelledBefore; i++) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      cancelledAfter = await cancelledRequests();
    }
    log(`gd_requests_total{code="CANCELLED"}: ${cancelledBefore} -> ${cancelledAfter}`);
    assert.ok(cancelledAfter > cancelledBefore, "gd-server counted the cancelled request");

    assert.deepEqual(problems, [], "no page errors, console errors or foreign requests");
  } finally {
    await browser.close();
  }
  log("PASS");
}

main().catch((error) => {
  console.error("[viewer-e2e] FAIL:", error && error.stack ? error.stack : error);
  process.exit(1);
});
