// Types of weir/testing (testing.js): run a stage natively under a test runner.

import type { Failure, Level, Message, Output, Stage, Timer } from "./weir.js";

/** Runs a stage natively and records its calls to the host. */
export class Harness<S extends Stage = Stage> {
  constructor(stageClass: new () => S, config?: Record<string, string | number | boolean>);
  /** The stage object. */
  readonly stage: S;
  /** Handle one message: its outputs, or its Retry or Reject thrown. */
  handle(msg: Message): Output[];
  /** Handle a batch as weir would: one result per message. */
  handleBatch(batch: Message[]): Array<Output[] | Failure>;
  /** Move the watermark and fire the event-time timers it reaches. */
  advanceWatermark(ms: number | bigint): Array<[Timer, Output[] | Failure]>;
  /** Set the clock and fire the processing-time timers due. */
  advanceClock(nowMs: number | bigint): Array<[Timer, Output[] | Failure]>;
  /** The timers set and not yet fired. */
  timers(): Timer[];
  /** The lines logged so far. */
  logs(): Array<[Level, string]>;
  /** The value of custom counter `name`. */
  counter(name: string): bigint;
  /** The stored state for `key`. */
  state(key: string | Uint8Array): Uint8Array | undefined;
}
