// Test a stage natively with `node --test`, without building WebAssembly.
//
// Harness runs a stage the way weir does (init with a config, then
// batches) and records what it logged, the counters it added, and the
// state and timers it wrote. State follows weir's rules: writes made in
// init are discarded, and so are a call's writes when it asks to retry any
// message (weir then replays the batch one message at a time).
//
//   import { Message } from "weir";
//   import { Harness } from "weir/testing";
//   const h = new Harness(Shout, { suffix: "!" });
//   assert.deepEqual(h.handle(new Message("hello"))[0].text(), "HELLO!");

import { Config, Failure, Retry, Stage, TimeDomain, bytes, call, outputs, setHost } from "./weir.js";

const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const unhex = (s) => Uint8Array.from(s.match(/../g) ?? [], (x) => parseInt(x, 16));
const timerId = (domain, key, atMs) => `${domain} ${String(atMs).padStart(20, "0")} ${hex(key)}`;

/** The host functions, natively: what a stage did, in memory. */
class Recorder {
  constructor() {
    this.logs = [];
    this.counters = new Map();
    this.state = new Map(); // hex key -> Uint8Array
    this.timers = new Set(); // timerId
    this.watermark = undefined;
    this.clock = undefined;
  }
  log(level, message) { this.logs.push([level, message]); }
  counterAdd(name, delta) { this.counters.set(name, (this.counters.get(name) ?? 0n) + delta); }
  stateGet(key) { return this.state.get(hex(key)); }
  statePut(key, value) { this.state.set(hex(key), Uint8Array.from(value)); }
  stateDelete(key) { this.state.delete(hex(key)); }
  setTimer(domain, key, atMs) { this.timers.add(timerId(domain, key, atMs)); }
  deleteTimer(domain, key, atMs) { this.timers.delete(timerId(domain, key, atMs)); }
  watermarkMs() { return this.watermark; }
  nowMs() { return this.clock ?? BigInt(Date.now()); }
}

function parseTimer(id) {
  const [domain, at, key] = id.split(" ");
  return { domain, key: unhex(key), atMs: BigInt(at) };
}

/** Runs a stage natively and records its calls to the host. Creating one
 * replaces what an earlier harness recorded. */
export class Harness {
  constructor(stageClass, config = {}) {
    if (typeof stageClass !== "function" || !(stageClass.prototype instanceof Stage)) {
      throw new TypeError("Harness takes a class extending Stage");
    }
    this.rec = new Recorder();
    setHost(this.rec);
    this.stage = new stageClass();
    this.stage.init(new Config(Object.entries(config).map(([k, v]) => [k, String(v)])));
    this.rec.state.clear(); // writes in init are discarded
    this.rec.timers.clear();
  }

  /** Handle one message: its outputs, or its Retry or Reject thrown. */
  handle(msg) {
    const [r] = this.handleBatch([msg]);
    if (r instanceof Failure) throw r;
    return r;
  }

  /** Handle a batch as weir would: one result per message (its outputs or
   * the Failure). */
  handleBatch(batch) {
    const out = this.#call(batch);
    if (batch.length === 1 || !out.some((r) => r instanceof Retry)) return out;
    return batch.flatMap((m) => this.#call([m]));
  }

  #call(batch) {
    const before = [new Map(this.rec.state), new Set(this.rec.timers)];
    const out = this.stage.handleBatch([...batch]).map((r) => (r instanceof Failure ? r : outputs(r)));
    if (out.length !== batch.length) throw new Error("a stage must return exactly one result per input message");
    if (out.some((r) => r instanceof Retry)) [this.rec.state, this.rec.timers] = before;
    return out;
  }

  /** Move the watermark to `ms` (it never goes back) and fire every
   * event-time timer it reaches, earliest first; returns [timer, result]
   * pairs. */
  advanceWatermark(ms) {
    ms = BigInt(ms);
    this.rec.watermark = this.rec.watermark === undefined || ms > this.rec.watermark ? ms : this.rec.watermark;
    return this.#fire(TimeDomain.EVENT_TIME, ms);
  }

  /** Set the clock timers.nowMs() reads (it never goes back) and fire every
   * processing-time timer due, earliest first. */
  advanceClock(nowMs) {
    nowMs = BigInt(nowMs);
    this.rec.clock = this.rec.clock === undefined || nowMs > this.rec.clock ? nowMs : this.rec.clock;
    return this.#fire(TimeDomain.PROCESSING_TIME, nowMs);
  }

  #fire(domain, until) {
    const fired = [];
    for (;;) {
      const due = [...this.rec.timers].map((id) => [id, parseTimer(id)]).filter(([, t]) => t.domain === domain && t.atMs <= until).sort(([a], [b]) => (a < b ? -1 : 1));
      if (due.length === 0) return fired;
      const [id, timer] = due[0];
      this.rec.timers.delete(id);
      const before = [new Map(this.rec.state), new Set(this.rec.timers)];
      const result = call(this.stage, "onTimer", timer);
      fired.push([timer, result]);
      if (result instanceof Retry) {
        // Undone, as weir does; it fires again later.
        [this.rec.state, this.rec.timers] = before;
        this.rec.timers.add(id);
        return fired;
      }
    }
  }

  /** The timers set and not yet fired, by domain, then time, then key. */
  timers() {
    return [...this.rec.timers].sort().map(parseTimer);
  }

  /** The lines logged so far, as [level, message]. */
  logs() {
    return [...this.rec.logs];
  }

  /** The value of custom counter `name` (a BigInt). */
  counter(name) {
    return this.rec.counters.get(name) ?? 0n;
  }

  /** The stored state for `key` (a Uint8Array), or undefined. */
  state(key) {
    return this.rec.state.get(hex(bytes(key)));
  }
}
