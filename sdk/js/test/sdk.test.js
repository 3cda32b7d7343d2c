// The JavaScript SDK natively: what a stage returns becomes outputs or
// failures the way weir reads them, and the harness keeps weir's rules for
// state and timers.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Level, Message, Output, Reject, Retry, Stage, TimeDomain, counterAdd, exportStage, log, state, timers } from "weir";
import { Harness } from "weir/testing";

class Echo extends Stage {
  handle(msg) {
    switch (msg.text()) {
      case "none": return undefined;
      case "text": return "a string";
      case "many": return [new Uint8Array([111, 110, 101]), "two", new Output("three", { key: "k", topic: "side" })];
      case "bug": return null.field;
      default: return Output.forward(msg);
    }
  }
}

test("what handle returns becomes outputs", () => {
  const h = new Harness(Echo);
  assert.deepEqual(h.handle(new Message("none")), []);
  assert.deepEqual(h.handle(new Message("text")).map((o) => o.text()), ["a string"]);
  const many = h.handle(new Message("many"));
  assert.deepEqual(many.map((o) => [o.text(), o.topic]), [["one", undefined], ["two", undefined], ["three", "side"]]);
  assert.deepEqual(many[2].key, new TextEncoder().encode("k"));
  const fwd = h.handle(new Message("x", { key: "k", headers: [["h", "v"]] }))[0];
  assert.deepEqual([fwd.text(), fwd.key, fwd.headers], ["x", new TextEncoder().encode("k"), [["h", new TextEncoder().encode("v")]]]);
});

test("an exception in handle rejects only its message", () => {
  const h = new Harness(Echo);
  const out = h.handleBatch([new Message("x"), new Message("bug"), new Message("y")]);
  assert.equal(out[0][0].text(), "x");
  assert.equal(out[2][0].text(), "y");
  assert.ok(out[1] instanceof Reject);
  assert.match(out[1].reason, /^TypeError: Cannot read properties of null/);
});

class Sum extends Stage {
  init(config) {
    state.put("written in init", "x");
    this.step = config.int("step") ?? 1;
  }
  handle(msg) {
    const total = Number(new TextDecoder().decode(state.get(msg.key) ?? new TextEncoder().encode("0"))) + this.step;
    state.put(msg.key, String(total));
    counterAdd("seen");
    if (msg.text() === "flaky" && msg.attempt === 1) throw new Retry("try again");
    return [String(total)];
  }
}

test("state written in init or by a retried call is discarded", () => {
  const h = new Harness(Sum, { step: 2 });
  assert.equal(h.state("written in init"), undefined);
  const out = h.handleBatch([new Message("a", { key: "k" }), new Message("flaky", { key: "k" }), new Message("b", { key: "k" })]);
  // The batch asked for a retry: its writes were undone and it was replayed
  // one message at a time, as weir does.
  assert.equal(out[0][0].text(), "2");
  assert.ok(out[1] instanceof Retry);
  assert.equal(out[2][0].text(), "4");
  assert.deepEqual(h.state("k"), new TextEncoder().encode("4"));
  assert.equal(h.counter("seen"), 6n);
  assert.throws(() => new Harness(Sum, { step: "two" }), /config key `step`: not an integer/);
});

class Alarm extends Stage {
  handle(msg) {
    timers.set(TimeDomain.EVENT_TIME, msg.key, msg.eventTimeMs + 1000n);
    timers.set(TimeDomain.PROCESSING_TIME, msg.key, 5000);
    log(Level.INFO, `armed ${new TextDecoder().decode(msg.key)}`);
  }
  onTimer(timer) {
    if (new TextDecoder().decode(timer.key) === "flaky") {
      state.put("tried", "1");
      throw new Retry("later");
    }
    return [`${timer.domain} ${new TextDecoder().decode(timer.key)} ${timer.atMs} wm=${timers.watermark()}`];
  }
}

test("timers fire as the watermark and the clock pass them", () => {
  const h = new Harness(Alarm);
  h.handle(new Message("", { key: "a", eventTimeMs: 100 }));
  h.handle(new Message("", { key: "b", eventTimeMs: 2000 }));
  assert.deepEqual(h.timers().filter((t) => t.domain === TimeDomain.EVENT_TIME).map((t) => t.atMs), [1100n, 3000n]);
  const fired = h.advanceWatermark(1500);
  assert.deepEqual(fired.map(([, r]) => r[0].text()), ["event-time a 1100 wm=1500"]);
  assert.deepEqual(h.advanceWatermark(1000), [], "the watermark never goes back");
  assert.deepEqual(h.advanceClock(5000).map(([t]) => new TextDecoder().decode(t.key)), ["a", "b"]);
  assert.deepEqual(h.logs(), [["info", "armed a"], ["info", "armed b"]]);
});

test("a timer that asks to retry is undone and kept", () => {
  const h = new Harness(Alarm);
  h.handle(new Message("", { key: "flaky" }));
  const [[timer, result]] = h.advanceWatermark(2000);
  assert.ok(result instanceof Retry);
  assert.equal(h.state("tried"), undefined, "its writes are undone");
  assert.ok(h.timers().some((t) => t.atMs === timer.atMs && t.domain === timer.domain), "it fires again later");
});

test("exportStage and Harness take only stages; text rejects what is not UTF-8", () => {
  assert.throws(() => exportStage(Object), TypeError);
  assert.throws(() => new Harness(Echo.prototype), TypeError);
  assert.equal(exportStage(Echo), Echo);
  assert.throws(() => new Message(new Uint8Array([0xff])).text(), Reject);
  assert.equal(new Message("é").text(), "é");
  assert.deepEqual(new Message("x", { headers: [["a", "1"], ["a", "2"]] }).header("a"), new TextEncoder().encode("1"));
});
