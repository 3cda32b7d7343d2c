// The console in a real browser, against a running `weir run --listen`
// under load (started by tests/e2e/console.rs):
//
//   node console.mjs BASE_URL TOKEN STAGE,STAGE,... SCREENSHOT_DIR
//
// Signs in with TOKEN, checks that the graph shows each stage, that the
// figures change between two reads while messages flow, that once they
// settle they equal /metrics, opens a dead letter (text and hex), looks at
// the topics, and saves screenshots. Exits 1 with the reason on any failure.
import assert from "node:assert/strict";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, token, stageList, shots] = process.argv.slice(2);
const stages = stageList.split(",");
const step = (what) => console.error(`console test: ${what}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base);

  step("the page asks for a token, then takes it");
  await page.waitForSelector("#login:not([hidden])", { timeout: 10_000 });
  await page.fill("#token", token);
  await page.click("#login button");

  step("the graph shows every stage");
  for (const s of stages) await page.waitForSelector(`#graph [data-stage="${s}"]`, { timeout: 15_000 });
  for (const s of stages) await page.waitForSelector(`[data-stage-row="${s}"]`);

  const read = () =>
    page.$$eval("[data-stage-row]", (rows) =>
      Object.fromEntries(rows.map((r) => [r.dataset.stageRow, Number(r.querySelector('[data-field="received"]').textContent.replace(/,/g, ""))])),
    );

  step("the figures change while messages flow");
  const first = await read();
  await page.waitForTimeout(2_000);
  const second = await read();
  assert.ok(stages.some((s) => second[s] > first[s]), `no stage's count moved in 2 s: ${JSON.stringify(first)} then ${JSON.stringify(second)}`);

  step("once the load ends the figures settle and equal /metrics");
  let settled = await read();
  for (let i = 0; ; i++) {
    await page.waitForTimeout(2_500);
    const again = await read();
    if (JSON.stringify(again) === JSON.stringify(settled) && Object.values(again).every((n) => n > 0)) break;
    settled = again;
    assert.ok(i < 40, "the figures never settled");
  }
  const metrics = await page.evaluate(async (t) => (await fetch("/metrics", { headers: { Authorization: `Bearer ${t}` } })).text(), token);
  for (const s of stages) {
    const line = metrics.split("\n").find((l) => l.startsWith("weir_stage_received_total{") && l.includes(`stage="${s}"`));
    assert.ok(line, `/metrics has no weir_stage_received_total for ${s}`);
    assert.equal(Number(line.trim().split(/\s+/).pop()), settled[s], `stage ${s}: the console shows ${settled[s]}, /metrics ${line}`);
  }
  const charted = await page.$$eval("#chart-rate polyline", (ls) => ls.map((l) => l.getAttribute("points").split(" ").length));
  assert.ok(charted.length === stages.length && charted.every((n) => n >= 3), `the rate chart has ${charted} points per stage`);
  await page.screenshot({ path: join(shots, "console.png"), fullPage: true });

  step("the topics page lists the topics and the pipeline's group");
  await page.click('[data-tab="topics"]');
  await page.waitForSelector('[data-topic="in"]');
  const groups = await page.textContent('[data-topic="in"] td:last-child');
  assert.match(groups, /\(0\)/, `the pipeline's group has caught up: ${groups}`);

  step("a dead letter opens, as text and as hex");
  await page.click('[data-tab="dead"]');
  await page.waitForSelector("[data-dead-letter]", { timeout: 10_000 });
  const shown = await page.$$eval("[data-dead-letter]", (rows) => rows.length);
  const ofKind = (kind) => page.locator("[data-dead-letter]", { has: page.locator('[data-field="kind"]', { hasText: kind }) }).first();

  step("a payload and a reason written as HTML show as text and run nothing");
  await ofKind("routing").click();
  await page.waitForSelector("#dlq-detail:not([hidden])");
  const hostile = await page.textContent("#dlq-payload");
  assert.match(hostile, /^route:<img src=x onerror=/, `the payload, as text: ${hostile}`);
  assert.equal(await page.evaluate(() => window.__pwned), undefined, "a script in a payload ran");
  assert.equal(await page.$$eval("main img, main script", (e) => e.length), 0, "a payload became markup");

  await ofKind("guest").click();
  await page.waitForFunction(() => document.querySelector("#dlq-payload").textContent === "reject");
  const text = await page.textContent("#dlq-payload");
  const reason = await page.textContent("#dlq-headers");
  assert.equal(text, "reject", "the payload as text");
  assert.match(reason, /asked to reject/, "the reason is among the headers");
  await page.click("#as-hex");
  assert.match(await page.textContent("#dlq-payload"), /72 65 6a 65 63 74/, "the payload as hex");
  await page.screenshot({ path: join(shots, "console-dead-letters.png"), fullPage: true });

  assert.deepEqual(errors, [], "the page threw");
  console.log(JSON.stringify({ received: settled, dead_letters_shown: shown }));
} finally {
  await browser.close();
}
