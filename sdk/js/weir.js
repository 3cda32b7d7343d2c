// Write weir pipeline stages in JavaScript.
//
// A stage is a class extending `Stage`: weir creates one object per stage
// instance, calls `init(config)` with the stage's `[stage.config]` table,
// then `handle(msg)` with each message. `exportStage(MyStage)` at the
// bottom of `stage.js` names the class; `weir build` turns the project
// into a `weir:pipeline/stage` WebAssembly component with componentize-js.
//
//   import { Stage, Output, counterAdd, exportStage } from "weir";
//
//   class Shout extends Stage {
//     init(config) { this.suffix = config.get("suffix") ?? ""; }
//     handle(msg) {
//       counterAdd("shouted", 1);
//       return [Output.reply(msg, msg.text().toUpperCase() + this.suffix)];
//     }
//   }
//   exportStage(Shout);
//
// The same class runs natively under `node --test` with "weir/testing", no
// WebAssembly needed.

// One of each, made once: StarlingMonkey frees a decoder made per message
// too late, and a stage would run out of linear memory.
const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });
const lossyDecoder = new TextDecoder();

/** Bytes from a string (UTF-8), a Uint8Array or an array of byte values. */
export function bytes(value) {
  if (typeof value === "string") return encoder.encode(value);
  if (value instanceof Uint8Array) return value;
  if (Array.isArray(value) || ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return new Uint8Array(value);
  throw new TypeError(`expected bytes or a string, got ${typeof value}`);
}

/** Bytes as text, invalid UTF-8 shown as U+FFFD. Use this (or
 * Message.text()) rather than a new TextDecoder per message. */
export function text(value) {
  return lossyDecoder.decode(value);
}

/** Why a stage could not handle a message (throw a subclass). */
export class Failure extends Error {
  constructor(reason) {
    super(reason);
    this.reason = String(reason);
  }
}

/** A transient failure: the message is delivered again later, after the
 * stage's `retry_backoff_ms`, until `max_attempts`; then dead-lettered. */
export class Retry extends Failure {}

/** A permanent failure (a poison message): dead-lettered at once. */
export class Reject extends Failure {}

/** Severity of a log line. */
export const Level = Object.freeze({ TRACE: "trace", DEBUG: "debug", INFO: "info", WARN: "warn", ERROR: "error" });

/** The clock a timer follows. */
export const TimeDomain = Object.freeze({ EVENT_TIME: "event-time", PROCESSING_TIME: "processing-time" });

/** One message delivered to a stage (see wit/weir.wit for each field).
 * `new Message("hello")` makes one for tests: topic `test`, attempt 1. */
export class Message {
  constructor(payload, { key, headers = [], topic = "test", partition = 0, offset = 0n, timestampMs = 0n, eventTimeMs = 0n, attempt = 1 } = {}) {
    this.payload = bytes(payload);
    this.key = key === undefined || key === null ? undefined : bytes(key);
    this.headers = headers.map(([name, value]) => [name, bytes(value)]);
    this.topic = topic;
    this.partition = partition;
    this.offset = BigInt(offset);
    this.timestampMs = BigInt(timestampMs);
    this.eventTimeMs = BigInt(eventTimeMs);
    this.attempt = attempt;
  }

  /** The payload as UTF-8 text; throws Reject if it is not UTF-8. */
  text() {
    try {
      return strictDecoder.decode(this.payload);
    } catch (e) {
      throw new Reject(`payload is not UTF-8: ${e.message}`);
    }
  }

  /** The value of the first header called `name`. */
  header(name) {
    const found = this.headers.find(([k]) => k === name);
    return found ? found[1] : undefined;
  }
}

/** One message a stage emits. `topic` undefined sends it to the stage's
 * default next hop; a topic name routes it there instead. */
export class Output {
  constructor(payload, { key, headers = [], topic } = {}) {
    this.payload = bytes(payload);
    this.key = key === undefined || key === null ? undefined : bytes(key);
    this.headers = headers.map(([name, value]) => [name, bytes(value)]);
    this.topic = topic;
  }

  /** An output that keeps `msg`'s key and headers with a new payload. */
  static reply(msg, payload) {
    return new Output(payload, { key: msg.key, headers: msg.headers });
  }

  /** Pass `msg` on unchanged (payload, key, headers). */
  static forward(msg) {
    return new Output(msg.payload, { key: msg.key, headers: msg.headers });
  }

  /** The payload as text (for tests; invalid UTF-8 shows as U+FFFD). */
  text() {
    return text(this.payload);
  }
}

/** A stage's `[stage.config]` table, flattened to string values. */
export class Config {
  constructor(entries = []) {
    this.entries = new Map(entries);
  }

  /** The value of `key`, or `fallback`. */
  get(key, fallback = undefined) {
    return this.entries.has(key) ? this.entries.get(key) : fallback;
  }

  /** The value of `key`; throws naming it if it is missing (thrown from
   * `init`, it stops the pipeline at start). */
  require(key) {
    if (!this.entries.has(key)) throw new Error(`missing config key \`${key}\``);
    return this.entries.get(key);
  }

  /** `key` as an integer (undefined if missing); throws naming it if it is not one. */
  int(key) {
    if (!this.entries.has(key)) return undefined;
    const value = this.entries.get(key);
    if (!/^-?\d+$/.test(value)) throw new Error(`config key \`${key}\`: not an integer: ${JSON.stringify(value)}`);
    return Number(value);
  }
}

/** A pipeline stage. weir creates one object per stage instance (a stage
 * may run several, its `concurrency`), so keep what instances share in
 * `state`. */
export class Stage {
  /** Called once per instance before any message. Throwing stops the
   * pipeline at start and shows the message to the user. */
  init(config) {}

  /** Handle one message: return its outputs (an array of Output; strings
   * or Uint8Arrays become an Output with that payload and no key;
   * undefined or [] drops the message), or throw Retry or Reject. Any
   * other exception rejects the message with the exception as its reason. */
  handle(msg) {
    throw new Error("a stage must define handle(msg)");
  }

  /** Handle a batch; must return one result per message, in order: its
   * outputs, or a Failure. The default calls handle for each message. */
  handleBatch(batch) {
    return batch.map((m) => call(this, "handle", m));
  }

  /** A timer set with timers.set fired (weir deleted it; set it again to
   * repeat). Its outputs go on like a message's, with the timer's time as
   * their event time. Throw Retry to have it fire again later. */
  onTimer(timer) {
    return [];
  }
}

/** What handle returned, as an array of Output. */
export function outputs(result) {
  if (result === undefined || result === null) return [];
  if (!Array.isArray(result)) result = [result];
  return result.map((o) => (o instanceof Output ? o : new Output(o)));
}

/** One message's (or timer's) result: its outputs, or the Failure. */
export function call(stage, method, arg) {
  try {
    return outputs(stage[method](arg));
  } catch (e) {
    if (e instanceof Failure) return e;
    return new Reject(`${e?.name ?? "Error"}: ${e?.message ?? e}`);
  }
}

let exported;

/** Name the component's stage class (once, in stage.js). */
export function exportStage(stageClass) {
  if (typeof stageClass !== "function" || !(stageClass.prototype instanceof Stage)) {
    throw new TypeError("exportStage takes a class extending Stage");
  }
  exported = stageClass;
  return stageClass;
}

/** The class exportStage named. */
export function exportedStage() {
  return exported;
}

// The host functions: inside a component the `weir:pipeline/host` imports
// (component.js installs them); natively a recorder (testing.js installs it).
let host;

/** Install the host functions (the SDK's own use). */
export function setHost(h) {
  host = h;
}

function h() {
  if (!host) throw new Error("no weir host: in tests, create a Harness from \"weir/testing\" first");
  return host;
}

/** Write a log line; weir tags it with the pipeline and stage names. */
export function log(level, message) {
  h().log(level, String(message));
}

/** Add `delta` to the stage's custom counter `name`. */
export function counterAdd(name, delta = 1) {
  h().counterAdd(name, BigInt(delta));
}

/** The stage's durable key-value state, shared by its instances, committed
 * with the acknowledgement of the messages being handled: exactly once.
 * Keys and values are bytes (strings are encoded as UTF-8). */
export const state = Object.freeze({
  /** The value stored for `key` (a Uint8Array), or undefined. */
  get: (key) => h().stateGet(bytes(key)),
  /** Store `value` for `key`. */
  put: (key, value) => h().statePut(bytes(key), bytes(value)),
  /** Remove `key`. */
  delete: (key) => h().stateDelete(bytes(key)),
});

/** Durable timers: weir calls onTimer when one fires; committed like state. */
export const timers = Object.freeze({
  /** Set a timer for `key` at `atMs` (a number or BigInt, ms since the epoch). */
  set: (domain, key, atMs) => h().setTimer(domain, bytes(key), BigInt(atMs)),
  /** Delete the timer for `key` at `atMs`, if there is one. */
  delete: (domain, key, atMs) => h().deleteTimer(domain, bytes(key), BigInt(atMs)),
  /** The stage's event-time watermark (BigInt ms), undefined before the first message. */
  watermark: () => h().watermarkMs(),
  /** Processing time now (BigInt ms since the epoch; in a Harness, its clock). */
  nowMs: () => h().nowMs(),
});
