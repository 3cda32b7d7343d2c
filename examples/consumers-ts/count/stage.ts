// Counts messages per key in durable stage state and emits `key=count`: the
// JavaScript example's count, in TypeScript (`weir build` compiles
// stage.ts; the SDK's types come with it). Counters are 8-byte
// little-endian integers, as in the other languages, so the stages can
// share a pipeline's state format.
import { Config, Message, Outputs, Reject, Retry, Stage, bytes, counterAdd, exportStage, state } from "weir";

export class Count extends Stage {
  private retryEvery: number | undefined;

  override init(config: Config): void {
    this.retryEvery = config.int("retry_every");
    if (this.retryEvery !== undefined && this.retryEvery <= 0) throw new Error("config key `retry_every` must be > 0");
  }

  override handle(msg: Message): Outputs {
    const key: Uint8Array = msg.key ?? msg.payload;
    const stored = state.get(key);
    if (stored !== undefined && stored.length !== 8) throw new Reject("corrupt counter");
    const count = (stored ? new DataView(stored.buffer, stored.byteOffset, 8).getBigUint64(0, true) : 0n) + 1n;
    const value = new Uint8Array(8);
    new DataView(value.buffer).setBigUint64(0, count, true);
    state.put(key, value);
    if (msg.attempt === 1 && this.retryEvery && count % BigInt(this.retryEvery) === 0n) {
      throw new Retry(`count ${count} asks for a retry`);
    }
    counterAdd("counted");
    const suffix = bytes(`=${count}`);
    const out = new Uint8Array(key.length + suffix.length);
    out.set(key);
    out.set(suffix, key.length);
    return [out];
  }
}

exportStage(Count);
