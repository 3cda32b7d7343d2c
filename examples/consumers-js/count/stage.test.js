import assert from "node:assert/strict";
import { test } from "node:test";
import { Message, Retry } from "weir";
import { Harness } from "weir/testing";
import { Count } from "./stage.js";

const text = (out) => new TextDecoder().decode(out[0].payload);
const le = (n) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
};

test("counts per key", () => {
  const h = new Harness(Count);
  const out = h.handleBatch([new Message("a"), new Message("b"), new Message("a")]);
  assert.deepEqual(out.map(text), ["a=1", "b=1", "a=2"]);
  assert.deepEqual(h.state("a"), le(2));
});

test("retry_every fails first attempts only, and a retried call's writes are undone", () => {
  const h = new Harness(Count, { retry_every: 2 });
  h.handle(new Message("a"));
  assert.throws(() => h.handle(new Message("a")), Retry);
  assert.deepEqual(h.state("a"), le(1));
  assert.equal(text(h.handle(new Message("a", { attempt: 2 }))), "a=2");
  assert.throws(() => new Harness(Count, { retry_every: 0 }), /must be > 0/);
});
