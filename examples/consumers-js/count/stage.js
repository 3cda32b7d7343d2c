// Counts messages per key in durable stage state and emits `key=count`.
//
// The key is the message key, or the payload when there is none. State is
// committed with the acknowledgements, so after any crash each key's counts
// go 1, 2, 3 ... with none skipped and none counted twice (an output may be
// repeated: outputs are at-least-once, state is exactly-once). Counters are
// 8-byte little-endian integers, as in the Rust and Python examples.
//
//   [stage.config]
//   retry_every = "7"   # optional: ask to retry a message on its first attempt
//                       # whenever its count is a multiple of 7 (to exercise retries)
import { Reject, Retry, Stage, bytes, exportStage, state } from "weir";

export class Count extends Stage {
  init(config) {
    this.retryEvery = config.int("retry_every");
    if (this.retryEvery !== undefined && this.retryEvery <= 0) throw new Error("config key `retry_every` must be > 0");
  }

  handle(msg) {
    const key = msg.key ?? msg.payload;
    const stored = state.get(key);
    if (stored !== undefined && stored.length !== 8) throw new Reject("corrupt counter");
    const count = (stored ? new DataView(stored.buffer, stored.byteOffset, 8).getBigUint64(0, true) : 0n) + 1n;
    const value = new Uint8Array(8);
    new DataView(value.buffer).setBigUint64(0, count, true);
    // Written before deciding to retry: weir must discard it.
    state.put(key, value);
    if (msg.attempt === 1 && this.retryEvery && count % BigInt(this.retryEvery) === 0n) {
      throw new Retry(`count ${count} asks for a retry`);
    }
    const suffix = bytes(`=${count}`);
    const out = new Uint8Array(key.length + suffix.length);
    out.set(key);
    out.set(suffix, key.length);
    return [out];
  }
}

exportStage(Count);
