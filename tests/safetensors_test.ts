/**
 * Tests of model/safetensors.ts (header and index validation, the writer) and
 * model/tensors.ts (the tensor table read by range through a ByteSource).
 * @module
 */
import { assertGqa } from "./_helpers.ts";
import assert from "node:assert/strict";
import { GqaError } from "../errors.ts";
import {
  headerLength,
  MAX_HEADER_BYTES,
  parseHeader,
  parseIndex,
  writeSafetensors,
} from "../model/safetensors.ts";
import { INDEX_FILE, loadTensorIndex } from "../model/tensors.ts";
import type { ByteSource } from "../model/source/mod.ts";

/** A file from a raw header text and `dataBytes` bytes of data, length field = header length. */
function rawFile(header: string, dataBytes: number, lengthField?: bigint): Uint8Array {
  const h = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + h.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, lengthField ?? BigInt(h.byteLength), true);
  out.set(h, 8);
  return out;
}

/** Parses a whole in-memory file the way loadTensorIndex does. */
function parseFile(bytes: Uint8Array, file = "m.safetensors") {
  const fileSize = bytes.byteLength;
  const n = headerLength(bytes.subarray(0, 8), { file, fileSize });
  return parseHeader(bytes.subarray(8, 8 + n), { file, fileSize });
}

const T = (dtype: string, shape: number[], b: number, e: number) => ({
  dtype,
  shape,
  data_offsets: [b, e],
});

/** An in-memory ByteSource that records every read. */
export class MemSource implements ByteSource {
  readonly revision = "local";
  readonly stats = { bytesFetched: 0, requests: 0 };
  readonly log: [string, number, number][] = [];
  constructor(readonly name: string, readonly files: Map<string, Uint8Array>) {}
  #get(file: string): Uint8Array {
    const f = this.files.get(file);
    if (!f) throw new GqaError("not-found", `${this.name} has no file ${file}.`);
    return f;
  }
  readText(file: string): Promise<string> {
    return Promise.resolve(new TextDecoder().decode(this.#get(file)));
  }
  size(file: string): Promise<number> {
    return Promise.resolve(this.#get(file).byteLength);
  }
  exists(file: string): Promise<boolean> {
    return Promise.resolve(this.files.has(file));
  }
  read(file: string, begin: number, end: number): Promise<Uint8Array> {
    const f = this.#get(file);
    if (!(Number.isSafeInteger(begin) && Number.isSafeInteger(end))) {
      throw new Error(`read(${file}, ${begin}, ${end}): offsets are not integers`);
    }
    if (begin < 0 || end < begin || end > f.byteLength) {
      throw new Error(`read(${file}, ${begin}, ${end}) outside the ${f.byteLength}-byte file`);
    }
    this.log.push([file, begin, end]);
    this.stats.requests++;
    this.stats.bytesFetched += end - begin;
    return Promise.resolve(f.slice(begin, end));
  }
}

Deno.test("writeSafetensors() round-trips through headerLength()/parseHeader()", () => {
  const a = new Uint8Array(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);
  const b = new Uint8Array([1, 2, 3, 4, 5, 6]); // BF16 (3)
  const c = new Uint8Array([0xab]); // F4 (2): two 4-bit values in one byte
  const meta: Record<string, string> = { model: "x/y", token_ids: "[1,2]" };
  Object.defineProperty(meta, "__proto__", { value: "kept as a key", enumerable: true });
  const file = writeSafetensors([
    { name: "z.first", dtype: "F32", shape: [2, 3], data: a },
    { name: "0", dtype: "BF16", shape: [3], data: b },
    { name: "scalar", dtype: "F4", shape: [2], data: c },
    { name: "empty", dtype: "F16", shape: [0, 4], data: new Uint8Array(0) },
  ], meta);
  const n = Number(new DataView(file.buffer).getBigUint64(0, true));
  assert.equal((8 + n) % 8, 0, "data section starts 8-byte aligned");
  const h = parseFile(file);
  assert.equal(h.dataStart, 8 + n);
  assert.deepEqual([...h.tensors.keys()], ["z.first", "0", "scalar", "empty"]);
  const first = h.tensors.get("z.first")!;
  assert.deepEqual(first, {
    name: "z.first",
    dtype: "F32",
    shape: [2, 3],
    begin: 8 + n,
    end: 8 + n + 24,
  });
  assert.deepEqual(file.slice(first.begin, first.end), a);
  const zero = h.tensors.get("0")!;
  assert.deepEqual(file.slice(zero.begin, zero.end), b);
  assert.deepEqual(file.slice(h.tensors.get("scalar")!.begin, h.tensors.get("scalar")!.end), c);
  assert.equal(h.metadata.model, "x/y");
  assert.equal(Object.getOwnPropertyDescriptor(h.metadata, "__proto__")?.value, "kept as a key");
  assert.equal(Object.getPrototypeOf(h.metadata), Object.prototype);
});

Deno.test("parseHeader() accepts tensors listed out of offset order and returns file order", () => {
  const h = parseFile(rawFile(
    JSON.stringify({ b: T("U8", [2], 2, 4), a: T("U8", [2], 0, 2), e: T("U8", [0], 4, 4) }),
    4,
  ));
  assert.deepEqual([...h.tensors.keys()], ["a", "b", "e"]);
  assert.equal(h.tensors.get("b")!.begin, h.dataStart + 2);
});

Deno.test("writeSafetensors() refuses data that does not match shape × dtype", () => {
  assert.throws(
    () => writeSafetensors([{ name: "x", dtype: "F32", shape: [3], data: new Uint8Array(8) }]),
    /12 bytes/,
  );
});

Deno.test("headerLength() rejects a length larger than the file", async () => {
  const f = rawFile('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1, 1000n);
  await assertGqa(() => parseFile(f, "big.safetensors"), "bad-file", "big.safetensors", "1000");
});

Deno.test("headerLength() rejects a length over 100 MB before comparing with the file", async () => {
  const f = new Uint8Array(8);
  new DataView(f.buffer).setBigUint64(0, BigInt(MAX_HEADER_BYTES + 1), true);
  await assertGqa(
    () => headerLength(f, { file: "h.safetensors", fileSize: 2 ** 40 }),
    "bad-file",
    "h.safetensors",
    "100 MB",
  );
  new DataView(f.buffer).setBigUint64(0, 0xffff_ffff_ffff_ffffn, true);
  await assertGqa(() => headerLength(f, { file: "h", fileSize: 2 ** 40 }), "bad-file", "100 MB");
});

Deno.test("headerLength() rejects 0 and a file shorter than 8 bytes", async () => {
  await assertGqa(() => parseFile(rawFile("", 8)), "bad-file", "is 0");
  await assertGqa(
    () => headerLength(new Uint8Array(3), { file: "t.safetensors", fileSize: 3 }),
    "bad-file",
    "t.safetensors",
    "3 bytes",
  );
});

Deno.test("parseHeader() rejects a header that is not JSON, not UTF-8 or not an object", async () => {
  await assertGqa(() => parseFile(rawFile('{"a": nope}', 0)), "bad-file", "not valid JSON");
  await assertGqa(() => parseFile(rawFile("[1, 2]", 0)), "bad-file", 'start with "{"');
  await assertGqa(() => parseFile(rawFile(" {}", 0)), "bad-file", 'start with "{"');
  const f = rawFile('{"\u00e9":1}', 0);
  f[10] = 0xff; // break the UTF-8 sequence of é
  await assertGqa(() => parseFile(f), "bad-file", "UTF-8");
});

Deno.test("parseHeader() rejects an unknown dtype, naming the tensor", async () => {
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ "w.q": T("F33", [1], 0, 4) }), 4), "m1.safetensors"),
    "bad-file",
    "m1.safetensors",
    '"w.q"',
    "F33",
  );
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ "w.q": T("f32", [1], 0, 4) }), 4)),
    "bad-file",
    '"w.q"',
  );
});

Deno.test("parseHeader() rejects shape × dtype ≠ byte range", async () => {
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ k: T("BF16", [2, 3], 0, 10) }), 10)),
    "bad-file",
    '"k"',
    "12 bytes",
    "10 bytes",
  );
  // A product that would overflow a double's integers is caught without computing it.
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ k: T("F64", [2 ** 52, 2 ** 52], 0, 8) }), 8)),
    "bad-file",
    '"k"',
  );
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ k: T("F4", [3], 0, 1) }), 1)),
    "bad-file",
    "whole number of bytes",
  );
});

Deno.test("parseHeader() rejects malformed shapes and offsets", async () => {
  const cases: [unknown, string][] = [
    [{ k: T("U8", [-1], 0, 0) }, "non-negative integer"],
    [{ k: T("U8", [1.5], 0, 1) }, "non-negative integer"],
    [{ k: T("U8", ["2"] as unknown as number[], 0, 2) }, "non-negative integer"],
    [{ k: { dtype: "U8", shape: 2, data_offsets: [0, 2] } }, "not an array"],
    [{ k: { dtype: "U8", shape: [2], data_offsets: [0, 1, 2] } }, "[begin, end]"],
    [{ k: { dtype: "U8", shape: [2], data_offsets: [0, -2] } }, "non-negative integers"],
    [{ k: { dtype: "U8", shape: [2], data_offsets: [0, 1e300] } }, "non-negative integers"],
    [{ k: { dtype: "U8", shape: [2] } }, "data_offsets missing"],
    [{ k: [1, 2] }, "not an object"],
    [{ __metadata__: { a: 1 } }, "not a string"],
    [{ __metadata__: [] }, "not an object of strings"],
  ];
  for (const [header, part] of cases) {
    await assertGqa(() => parseFile(rawFile(JSON.stringify(header), 2)), "bad-file", part);
  }
});

Deno.test("parseHeader() rejects offsets out of bounds of the data section", async () => {
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ a: T("U8", [4], 0, 4), b: T("U8", [4], 4, 8) }), 6)),
    "bad-file",
    '"b"',
    "past the end of the 6-byte data section",
  );
});

Deno.test("parseHeader() rejects overlapping tensors, naming both", async () => {
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ a: T("U8", [4], 0, 4), b: T("U8", [4], 2, 6) }), 6)),
    "bad-file",
    '"a"',
    '"b"',
    "overlaps",
  );
  // Two tensors on the same bytes (a polyglot layout).
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ a: T("U8", [4], 0, 4), b: T("I8", [4], 0, 4) }), 4)),
    "bad-file",
    "overlaps",
  );
});

Deno.test("parseHeader() rejects unsorted data_offsets (begin after end)", async () => {
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ a: T("U8", [4], 4, 0) }), 4)),
    "bad-file",
    '"a"',
    "wrong order",
  );
});

Deno.test("parseHeader() rejects gaps and bytes after the last tensor", async () => {
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ a: T("U8", [2], 0, 2), b: T("U8", [2], 4, 6) }), 6)),
    "bad-file",
    "bytes 2..4",
    '"b"',
  );
  await assertGqa(
    () => parseFile(rawFile(JSON.stringify({ a: T("U8", [2], 0, 2) }), 5)),
    "bad-file",
    "cover only 2",
  );
});

Deno.test("parseIndex() maps tensors to shards and refuses paths", async () => {
  const ok = parseIndex(
    JSON.stringify({
      metadata: { total_size: 10 },
      weight_map: { a: "model-00001-of-00002.safetensors", b: "model-00002-of-00002.safetensors" },
    }),
    { file: "i.json" },
  );
  assert.deepEqual([...ok], [["a", "model-00001-of-00002.safetensors"], [
    "b",
    "model-00002-of-00002.safetensors",
  ]]);
  for (
    const shard of [
      "../x.safetensors",
      "/etc/x.safetensors",
      "a/b.safetensors",
      "..\\x.safetensors",
      "..",
      "C:x.safetensors",
      "x.bin",
      "",
    ]
  ) {
    await assertGqa(
      () => parseIndex(JSON.stringify({ weight_map: { "w.q": shard } }), { file: "idx.json" }),
      "bad-file",
      "idx.json",
      '"w.q"',
    );
  }
  await assertGqa(() => parseIndex("{", { file: "idx.json" }), "bad-file", "not valid JSON");
  await assertGqa(() => parseIndex("[]", { file: "idx.json" }), "bad-file", "not a JSON object");
  await assertGqa(() => parseIndex("{}", { file: "idx.json" }), "bad-file", "weight_map");
  await assertGqa(
    () => parseIndex('{"weight_map":{"a":3}}', { file: "idx.json" }),
    "bad-file",
    '"a"',
  );
  await assertGqa(() => parseIndex('{"weight_map":{}}', { file: "i" }), "bad-file", "no tensors");
});

/** Two shards and an index for tensors a (shard 1), b and c (shard 2). */
function sharded() {
  const s1 = writeSafetensors([{ name: "a", dtype: "F32", shape: [4], data: new Uint8Array(16) }]);
  const s2 = writeSafetensors([
    { name: "b", dtype: "BF16", shape: [2, 2], data: new Uint8Array(8) },
    { name: "c", dtype: "F16", shape: [3], data: new Uint8Array(6) },
  ]);
  const index = {
    weight_map: { a: "model-1.safetensors", b: "model-2.safetensors", c: "model-2.safetensors" },
  };
  return { s1, s2, index };
}

function indexSource(index: unknown, shards: Record<string, Uint8Array>): MemSource {
  const files = new Map(Object.entries(shards));
  files.set(INDEX_FILE, new TextEncoder().encode(JSON.stringify(index)));
  return new MemSource("org/model", files);
}

Deno.test("loadTensorIndex() reads a sharded checkpoint's headers by range only", async () => {
  const { s1, s2, index } = sharded();
  const src = indexSource(index, { "model-1.safetensors": s1, "model-2.safetensors": s2 });
  const t = await loadTensorIndex(src);
  assert.deepEqual([...t.keys()], ["a", "b", "c"]);
  assert.equal(t.get("c")!.file, "model-2.safetensors");
  assert.deepEqual(t.get("c")!.shape, [3]);
  const n2 = Number(new DataView(s2.buffer).getBigUint64(0, true));
  assert.deepEqual(t.get("c")!.begin, 8 + n2 + 8);
  assert.equal(t.get("c")!.end, s2.byteLength);
  // Exactly [0, 8) and [8, 8 + n) of each shard; no tensor bytes.
  const n1 = Number(new DataView(s1.buffer).getBigUint64(0, true));
  assert.deepEqual(src.log.toSorted(), [
    ["model-1.safetensors", 0, 8],
    ["model-1.safetensors", 8, 8 + n1],
    ["model-2.safetensors", 0, 8],
    ["model-2.safetensors", 8, 8 + n2],
  ]);
});

Deno.test("loadTensorIndex() reads a single model.safetensors", async () => {
  const file = writeSafetensors([{ name: "x", dtype: "F32", shape: [1], data: new Uint8Array(4) }]);
  const t = await loadTensorIndex(new MemSource("dir", new Map([["model.safetensors", file]])));
  assert.equal(t.get("x")!.file, "model.safetensors");
  assert.equal(t.get("x")!.end, file.byteLength);
});

Deno.test("loadTensorIndex() names the index and the shard when a shard is missing", async () => {
  const { s1, index } = sharded();
  await assertGqa(
    () => loadTensorIndex(indexSource(index, { "model-1.safetensors": s1 })),
    "bad-file",
    INDEX_FILE,
    '"model-2.safetensors"',
    "org/model",
  );
});

Deno.test("loadTensorIndex() rejects a tensor the index lists but its shard lacks", async () => {
  const { s1, s2, index } = sharded();
  (index.weight_map as Record<string, string>).d = "model-1.safetensors";
  await assertGqa(
    () =>
      loadTensorIndex(indexSource(index, { "model-1.safetensors": s1, "model-2.safetensors": s2 })),
    "bad-file",
    '"d"',
    '"model-1.safetensors"',
  );
});

Deno.test("loadTensorIndex() refuses path traversal in the index before any read", async () => {
  const { s1 } = sharded();
  const src = indexSource({ weight_map: { a: "../model-1.safetensors" } }, {
    "model-1.safetensors": s1,
  });
  await assertGqa(() => loadTensorIndex(src), "bad-file", '"../model-1.safetensors"');
  assert.equal(src.log.length, 0);
});

Deno.test("loadTensorIndex() reports a corrupt shard by its name and never over-reads", async () => {
  const { s1, s2, index } = sharded();
  const bad = s2.slice();
  new DataView(bad.buffer).setBigUint64(0, BigInt(bad.byteLength), true); // longer than the file
  const src = indexSource(index, { "model-1.safetensors": s1, "model-2.safetensors": bad });
  await assertGqa(() => loadTensorIndex(src), "bad-file", "org/model/model-2.safetensors");
  assert.ok(src.log.every(([, b, e]) => e - b <= 8 + 200), JSON.stringify(src.log));
});

Deno.test("loadTensorIndex() says what is missing when there is no safetensors file", async () => {
  await assertGqa(
    () => loadTensorIndex(new MemSource("dir", new Map())),
    "not-found",
    INDEX_FILE,
    "model.safetensors",
  );
});
