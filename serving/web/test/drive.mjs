#!/usr/bin/env node
// Drive chapter 11's page in headless Chromium with playwright-core (the system's Chromium: no browser
// download) and print what the page computed, as one JSON line, for tests/test_serving_web.py.
//
//   node drive.mjs URL '{"sentences": [...], "prompts": [{"prompt": "...", "maxNewTokens": 20, "stopAtEos": true}]}' \
//        [--chromium /usr/bin/chromium] [--screenshot out.png] [--timeout-ms 120000]
//
// For the sentences: fills the textarea, clicks Compare, waits for a new data-run on #heatmap and reads
// data-similarities / data-ids / data-timings. For each prompt: fills the prompt and the token count,
// clicks Generate, records how many token spans the page holds after each DOM change (a stream adds them
// one at a time), waits for data-done, and reads data-ids / data-new-ids / data-prompt-ids / data-text /
// data-timings. Console errors and failed requests are reported too.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const [url, tasksJSON] = process.argv.slice(2);
if (!url || !tasksJSON) {
  console.error("usage: node drive.mjs URL TASKS_JSON [--chromium PATH] [--screenshot FILE] [--timeout-ms N]");
  process.exit(2);
}
const tasks = JSON.parse(tasksJSON);
const executablePath = option("chromium", process.env.CHROMIUM || "/usr/bin/chromium");
const timeout = Number(option("timeout-ms", "120000"));
const screenshot = option("screenshot", null);

// A fresh profile every run; the flags keep Chromium off the network (this machine has none but
// localhost) and quiet: no background services, no component updates, no sync, no QUIC, no GPU.
const profile = mkdtempSync(join(tmpdir(), "course-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu",
    "--disable-quic", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"],
});
const report = { console: [], failedRequests: [], pageErrors: [] };
try {
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(timeout);
  page.on("console", (msg) => { if (msg.type() === "error") report.console.push(msg.text()); });
  page.on("pageerror", (err) => report.pageErrors.push(String(err)));
  page.on("requestfailed", (req) => report.failedRequests.push(`${req.url()}: ${req.failure()?.errorText}`));
  page.on("response", (res) => {
    if (res.status() >= 400) report.failedRequests.push(`${res.url()}: HTTP ${res.status()}`);
  });

  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("status").dataset.ready !== "0");
  report.status = await page.locator("#status").textContent();
  report.ready = await page.locator("#status").getAttribute("data-ready");
  if (report.ready !== "1") throw new Error(`the page did not load its models: ${report.status}`);
  report.ortVersion = report.status.match(/onnxruntime-web ([\d.]+)/)?.[1] ?? null;

  if (tasks.sentences) {
    await page.fill("#sentences", tasks.sentences.join("\n"));
    const before = await page.locator("#heatmap").getAttribute("data-run");
    await page.click("#embed");
    await page.waitForFunction((b) => {
      const el = document.getElementById("heatmap");
      return el.dataset.error !== undefined || el.dataset.run !== (b ?? undefined);
    }, before);
    const heatmap = page.locator("#heatmap");
    report.embed = {
      error: await heatmap.getAttribute("data-error"),
      similarities: JSON.parse((await heatmap.getAttribute("data-similarities")) ?? "null"),
      ids: JSON.parse((await heatmap.getAttribute("data-ids")) ?? "null"),
      timings: JSON.parse((await heatmap.getAttribute("data-timings")) ?? "null"),
      cells: await heatmap.locator("td").count(),
    };
  }

  report.generate = [];
  for (const { prompt, maxNewTokens, stopAtEos = true } of tasks.prompts ?? []) {
    await page.fill("#prompt", prompt);
    await page.fill("#max-new-tokens", String(maxNewTokens));
    await page.setChecked("#stop-at-eos", stopAtEos);
    // count the token spans at every change of #output: a streamed page adds them one by one
    await page.evaluate(() => {
      const output = document.getElementById("output");
      window.__tokenCounts = [];
      window.__observer?.disconnect();
      window.__observer = new MutationObserver(() => {
        window.__tokenCounts.push(output.querySelectorAll(".token").length);
      });
      window.__observer.observe(output, { childList: true });
    });
    await page.click("#generate");
    await page.waitForFunction(() => {
      const el = document.getElementById("output");
      return el.dataset.error !== undefined || el.dataset.done === "1";
    });
    const output = page.locator("#output");
    report.generate.push({
      prompt,
      error: await output.getAttribute("data-error"),
      promptIds: JSON.parse((await output.getAttribute("data-prompt-ids")) ?? "null"),
      newIds: JSON.parse((await output.getAttribute("data-new-ids")) ?? "null"),
      ids: JSON.parse((await output.getAttribute("data-ids")) ?? "null"),
      text: await output.getAttribute("data-text"),
      shownText: await output.textContent(),
      spanIds: await output.locator(".token").evaluateAll((spans) => spans.map((s) => Number(s.dataset.id))),
      tokenCounts: await page.evaluate(() => window.__tokenCounts),
      timings: JSON.parse((await output.getAttribute("data-timings")) ?? "null"),
    });
  }
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
} catch (err) {
  report.error = String(err?.stack ?? err);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
process.exit(report.error ? 1 : 0);
