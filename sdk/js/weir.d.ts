// Types of the weir JavaScript SDK (weir.js), for TypeScript stages
// (`stage.ts`, which `weir build` compiles) and for editors checking
// JavaScript ones. See weir.js for what each does.

/** Bytes, or what `bytes()` turns into bytes: a string (as UTF-8), an array of byte values, a typed array or an ArrayBuffer. */
export type BytesLike = string | Uint8Array | ArrayLike<number> | ArrayBufferView | ArrayBuffer;

/** Bytes from a string (UTF-8), a Uint8Array or an array of byte values. */
export function bytes(value: BytesLike): Uint8Array;

/** Bytes as text, invalid UTF-8 shown as U+FFFD. */
export function text(value: Uint8Array): string;

/** Why a stage could not handle a message (throw a subclass). */
export class Failure extends Error {
  constructor(reason: string);
  readonly reason: string;
}

/** A transient failure: delivered again after `retry_backoff_ms`, until `max_attempts`; then dead-lettered. */
export class Retry extends Failure {}

/** A permanent failure (a poison message): dead-lettered at once. */
export class Reject extends Failure {}

export type Level = "trace" | "debug" | "info" | "warn" | "error";
export const Level: Readonly<{ TRACE: "trace"; DEBUG: "debug"; INFO: "info"; WARN: "warn"; ERROR: "error" }>;

export type TimeDomain = "event-time" | "processing-time";
export const TimeDomain: Readonly<{ EVENT_TIME: "event-time"; PROCESSING_TIME: "processing-time" }>;

/** A header: its name and its value's bytes. */
export type Header = [name: string, value: Uint8Array];

export interface MessageOptions {
  key?: BytesLike | null;
  headers?: Array<[string, BytesLike]>;
  topic?: string;
  partition?: number;
  offset?: bigint | number;
  timestampMs?: bigint | number;
  eventTimeMs?: bigint | number;
  attempt?: number;
}

/** One message delivered to a stage. `new Message("hello")` makes one for tests. */
export class Message {
  constructor(payload: BytesLike, options?: MessageOptions);
  payload: Uint8Array;
  key: Uint8Array | undefined;
  headers: Header[];
  topic: string;
  partition: number;
  offset: bigint;
  timestampMs: bigint;
  eventTimeMs: bigint;
  /** 1 on the first delivery. */
  attempt: number;
  /** The payload as UTF-8 text; throws Reject if it is not UTF-8. */
  text(): string;
  /** The value of the first header called `name`. */
  header(name: string): Uint8Array | undefined;
}

export interface OutputOptions {
  key?: BytesLike | null;
  headers?: Array<[string, BytesLike]>;
  /** Route to this topic instead of the stage's next hop. */
  topic?: string;
}

/** One message a stage emits. */
export class Output {
  constructor(payload: BytesLike, options?: OutputOptions);
  payload: Uint8Array;
  key: Uint8Array | undefined;
  headers: Header[];
  topic: string | undefined;
  /** An output that keeps `msg`'s key and headers with a new payload. */
  static reply(msg: Message, payload: BytesLike): Output;
  /** Pass `msg` on unchanged. */
  static forward(msg: Message): Output;
  /** The payload as text (invalid UTF-8 as U+FFFD). */
  text(): string;
}

/** A stage's `[stage.config]` table, flattened to string values. */
export class Config {
  constructor(entries?: Iterable<[string, string]>);
  get(key: string): string | undefined;
  get<T>(key: string, fallback: T): string | T;
  /** Throws naming `key` if it is missing. */
  require(key: string): string;
  /** `key` as an integer (undefined if missing); throws if it is not one. */
  int(key: string): number | undefined;
}

/** What `handle` may return: outputs (strings and bytes become outputs with that payload), one of them, or nothing. */
export type Outputs = Array<Output | BytesLike> | Output | BytesLike | undefined | null | void;

/** A timer that fired. */
export interface Timer {
  domain: TimeDomain;
  key: Uint8Array;
  atMs: bigint;
}

/** A pipeline stage: extend it and name the class with `exportStage`. */
export class Stage {
  /** Called once per instance before any message; throwing stops the pipeline at start. */
  init(config: Config): void;
  /** Handle one message: its outputs, or throw Retry or Reject. */
  handle(msg: Message): Outputs;
  /** Handle a batch: one result per message, in order (its outputs, or a Failure). */
  handleBatch(batch: Message[]): Array<Outputs | Failure>;
  /** A timer set with `timers.set` fired. */
  onTimer(timer: Timer): Outputs;
}

/** Name the component's stage class (once, in the stage's module). */
export function exportStage<T extends new () => Stage>(stageClass: T): T;

/** Write a log line; weir tags it with the pipeline and stage names. */
export function log(level: Level, message: unknown): void;

/** Add `delta` to the stage's custom counter `name`. */
export function counterAdd(name: string, delta?: number | bigint): void;

/** The stage's durable key-value state, committed exactly once with the acknowledgements. */
export const state: Readonly<{
  get(key: BytesLike): Uint8Array | undefined;
  put(key: BytesLike, value: BytesLike): void;
  delete(key: BytesLike): void;
}>;

/** Durable timers: weir calls `onTimer` when one fires. */
export const timers: Readonly<{
  set(domain: TimeDomain, key: BytesLike, atMs: number | bigint): void;
  delete(domain: TimeDomain, key: BytesLike, atMs: number | bigint): void;
  /** The stage's event-time watermark, undefined before the first message. */
  watermark(): bigint | undefined;
  /** Processing time now (ms since the epoch; in a Harness, its clock). */
  nowMs(): bigint;
}>;
