import assert from "node:assert/strict";
import { test } from "node:test";
import { Message, Reject } from "weir";
import { Harness } from "weir/testing";
import { Uppercase } from "./stage.js";

test("upper-cases text", () => {
  const h = new Harness(Uppercase);
  assert.equal(h.handle(new Message("Hello World!"))[0].text(), "HELLO WORLD!");
});

test("rejects binary", () => {
  const h = new Harness(Uppercase);
  assert.throws(() => h.handle(new Message(new Uint8Array([0xff, 0xfe]))), Reject);
});
