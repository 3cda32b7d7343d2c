// The component side of the SDK: the `weir:pipeline/consumer` export that
// componentize-js builds, and the `weir:pipeline/host` imports behind log,
// state and timers. Bundled into a component only (by `weir build`), where
// the `weir:pipeline/*` modules exist.

import * as host from "weir:pipeline/host@0.2.1";
import { Config, Failure, Message, Retry, Reject, call, exportedStage, outputs, setHost } from "./weir.js";

setHost({
  log: (level, message) => host.log(level, message),
  counterAdd: (name, delta) => host.counterAdd(name, delta),
  stateGet: (key) => host.stateGet(key),
  statePut: (key, value) => host.statePut(key, value),
  stateDelete: (key) => host.stateDelete(key),
  setTimer: (domain, key, atMs) => host.setTimer(domain, key, atMs),
  deleteTimer: (domain, key, atMs) => host.deleteTimer(domain, key, atMs),
  watermarkMs: () => host.watermarkMs(),
  nowMs: () => BigInt(Date.now()),
});

function result(r) {
  if (r instanceof Retry) return { tag: "err", val: { tag: "retry", val: r.reason } };
  if (r instanceof Failure) return { tag: "err", val: { tag: "reject", val: r.reason } };
  return { tag: "ok", val: outputs(r).map((o) => ({ topic: o.topic, key: o.key, payload: o.payload, headers: o.headers })) };
}

let stage;

export const consumer = {
  init(config) {
    const Cls = exportedStage();
    if (!Cls) throw "stage.js does not call exportStage(YourStage)";
    try {
      const s = new Cls();
      s.init(new Config(config));
      stage = s;
    } catch (e) {
      throw e?.message ?? String(e);
    }
  },

  handleBatch(batch) {
    if (!stage) return batch.map(() => result(new Reject("stage used before init")));
    const messages = batch.map((m) => {
      const msg = Object.create(Message.prototype);
      return Object.assign(msg, m);
    });
    let results;
    try {
      results = stage.handleBatch(messages);
    } catch (e) {
      // A handleBatch override that threw: every message fails alike.
      const f = e instanceof Failure ? e : new Reject(`${e?.name ?? "Error"}: ${e?.message ?? e}`);
      return batch.map(() => result(f));
    }
    return results.map(result);
  },

  onTimers(fired) {
    if (!stage) return fired.map(() => result(new Reject("stage used before init")));
    return fired.map((t) => result(call(stage, "onTimer", { domain: t.domain, key: t.key, atMs: t.atMs })));
  },
};
