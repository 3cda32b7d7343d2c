// Run with `npm test`: tsc compiles the stage and this test to build/,
// then node's test runner runs them natively.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Failure, Message, Output, Retry } from "weir";
import { Harness } from "weir/testing";
import { Count } from "./stage.js";

const text = (out: Output[]): string => out[0].text();

test("counts per key, exactly once across a retried call", () => {
  const h = new Harness(Count, { retry_every: 2 });
  assert.deepEqual(h.handleBatch([new Message("a"), new Message("b")]).map((r) => (r instanceof Failure ? r.reason : text(r))), ["a=1", "b=1"]);
  assert.throws(() => h.handle(new Message("a")), Retry);
  assert.equal(text(h.handle(new Message("a", { attempt: 2 }))), "a=2");
  assert.equal(h.counter("counted"), 3n);
  assert.throws(() => new Harness(Count, { retry_every: 0 }), /must be > 0/);
});
