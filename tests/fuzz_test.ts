/**
 * A seeded mutational fuzzer over safetensors headers, shard indexes and config.json.
 *
 * Each case takes a valid tiny checkpoint (single file or two shards + index) and its
 * config, applies one to three random mutations — byte flips, truncation or extension,
 * length-field changes, structured JSON edits (huge, negative, fractional, string, nested
 * values; deleted, renamed, duplicated fields), dtype swaps, index and config edits — and
 * runs the whole path a real run takes before reading weights:
 *
 *   loadTensorIndex → parseConfig → checkShapes → planCapture
 *
 * Every case must either succeed, with its results consistent with the bytes (every
 * tensor and every planned read inside its file, sizes matching dtype × shape, tensors
 * not overlapping), or throw a GqaError with a one-paragraph message of bounded length.
 * Any other exception, a read outside the file (the parser sizing a buffer from an
 * unchecked length), or a case slower than a second fails the test with the seed and case
 * number; rerun with SEED=<seed>.
 * @module
 */
import assert from "node:assert/strict";
import { freshSeed, Rng } from "./_helpers.ts";
import { GqaError } from "../errors.ts";
import { checkShapes, expectedShape, layerTensorNames, parseConfig } from "../model/config.ts";
import { planCapture } from "../model/plan.ts";
import { DTYPE_BITS, type TensorInfo, writeSafetensors } from "../model/safetensors.ts";
import { INDEX_FILE, loadTensorIndex } from "../model/tensors.ts";
import type { ByteSource } from "../model/source/mod.ts";

const HEADER_CASES = 3000;
const CONFIG_CASES = 1500;

/** A ByteSource over in-memory files that fails (with a plain Error) on any bad read. */
class FuzzSource implements ByteSource {
  readonly name = "fuzz/model";
  readonly revision = "local";
  readonly stats = { bytesFetched: 0, requests: 0 };
  constructor(readonly files: Map<string, Uint8Array>) {}
  #get(file: string): Uint8Array {
    const f = this.files.get(file);
    if (!f) throw new GqaError("not-found", `${this.name} has no file ${file}.`);
    return f;
  }
  readText(file: string) {
    return Promise.resolve(new TextDecoder().decode(this.#get(file)));
  }
  size(file: string) {
    return Promise.resolve(this.#get(file).byteLength);
  }
  exists(file: string) {
    return Promise.resolve(this.files.has(file));
  }
  read(file: string, begin: number, end: number) {
    const f = this.#get(file);
    if (!Number.isSafeInteger(begin) || !Number.isSafeInteger(end)) {
      throw new Error(`OVER-READ: read(${file}, ${begin}, ${end}) with non-integer offsets`);
    }
    if (begin < 0 || end < begin || end > f.byteLength) {
      throw new Error(`OVER-READ: read(${file}, ${begin}, ${end}) of a ${f.byteLength}-byte file`);
    }
    this.stats.requests++;
    this.stats.bytesFetched += end - begin;
    return Promise.resolve(f.slice(begin, end));
  }
}

// ---------------------------------------------------------------------------------------
// The valid starting point: a 2-layer Llama 3.1-style config and its BF16 checkpoint.

const BASE_CONFIG: Record<string, unknown> = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 8,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  intermediate_size: 12,
  num_hidden_layers: 2,
  vocab_size: 10,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
  rope_scaling: {
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
  hidden_act: "silu",
  tie_word_embeddings: false,
  bos_token_id: 1,
};
const CFG = parseConfig(BASE_CONFIG, { where: "base" });

type Spec = { name: string; dtype: string; shape: number[]; data: Uint8Array };

function baseTensors(): Spec[] {
  const names = ["model.embed_tokens.weight"];
  for (let l = 0; l < CFG.layers; l++) names.push(...layerTensorNames(CFG, l, "full"));
  const specs = [
    ...names.map((name) => ({ name, shape: expectedShape(CFG, name)! })),
    { name: "model.norm.weight", shape: [CFG.D] },
    { name: "lm_head.weight", shape: [CFG.vocab, CFG.D] },
  ];
  return specs.map((s, k) => ({
    ...s,
    dtype: "BF16",
    data: new Uint8Array(s.shape.reduce((p, d) => p * d, 1) * 2).map((_, i) => (i * 7 + k) & 0xff),
  }));
}

const TENSORS = baseTensors();
const SPLIT = 1 + layerTensorNames(CFG, 0, "full").length; // shard 1: embed + layer 0
const SHARDS: [string, Spec[]][] = [
  ["model-00001-of-00002.safetensors", TENSORS.slice(0, SPLIT)],
  ["model-00002-of-00002.safetensors", TENSORS.slice(SPLIT)],
];

function baseFiles(sharded: boolean): Map<string, Uint8Array> {
  if (!sharded) return new Map([["model.safetensors", writeSafetensors(TENSORS)]]);
  const files = new Map<string, Uint8Array>();
  const weightMap: Record<string, string> = {};
  for (const [file, specs] of SHARDS) {
    files.set(file, writeSafetensors(specs, { format: "pt" }));
    for (const s of specs) weightMap[s.name] = file;
  }
  const index = { metadata: { total_size: 0 }, weight_map: weightMap };
  files.set(INDEX_FILE, new TextEncoder().encode(JSON.stringify(index, null, 2)));
  return files;
}

// ---------------------------------------------------------------------------------------
// Mutations.

function nest(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = i % 2 ? [v] : { a: v };
  return v;
}

/** Values a hostile or broken file might hold where a number, string or list belongs. */
function weird(rng: Rng): unknown {
  // A third of the time, plain type confusion.
  if (rng.next() < 0.3) return pick(rng, [null, true, [], {}, "s", 1, -1, [null], { a: null }]);
  const pool: (() => unknown)[] = [
    () => -1,
    () => 0,
    () => 1,
    () => 1.5,
    () => -0.5,
    () => 2 ** 31,
    () => 2 ** 32 + 1,
    () => 2 ** 53,
    () => 2 ** 53 + 2,
    () => 2 ** 64,
    () => 1e308,
    () => -1e308,
    () => rng.int(100),
    () => rng.int(2 ** 20),
    () => "",
    () => "12",
    () => "F32",
    () => "x".repeat(rng.int(5000)),
    () => null,
    () => true,
    () => false,
    () => [],
    () => ({}),
    () => [rng.int(10), rng.int(10)],
    () => [-1, 4],
    () => [4, 0],
    () => [0, 0, 0],
    () => [1e308, 1],
    () => nest(1 + rng.int(3000)),
    () => ({ type: "llama3", factor: -1 }),
    () => [[1, 2], [3]],
  ];
  return pool[rng.int(pool.length)]();
}

function pick<T>(rng: Rng, a: readonly T[]): T {
  return a[rng.int(a.length)];
}

/** Sets an own property even for "__proto__". */
function setKey(o: Record<string, unknown>, k: string, v: unknown) {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}

const DTYPES = [...DTYPE_BITS.keys(), "F33", "f32", "", "BF 16", "FLOAT32", "Q4_K"];

/** Splits a safetensors file into its length-field value, header text and data section. */
function split(file: Uint8Array) {
  const n = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  return {
    header: new TextDecoder().decode(file.subarray(8, 8 + n)),
    data: file.subarray(8 + n),
  };
}

function assemble(header: string, data: Uint8Array, lengthField?: bigint): Uint8Array {
  const h = new TextEncoder().encode(header);
  const out = new Uint8Array(8 + h.byteLength + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, lengthField ?? BigInt(h.byteLength), true);
  out.set(h, 8);
  out.set(data, 8 + h.byteLength);
  return out;
}

/** A structured edit of the header's JSON; returns a new file. */
function editJson(rng: Rng, file: Uint8Array): Uint8Array {
  const { header, data } = split(file);
  const obj = JSON.parse(header) as Record<string, unknown>;
  const names = Object.keys(obj).filter((k) => k !== "__metadata__");
  const name = pick(rng, names);
  const t = obj[name] as Record<string, unknown>;
  switch (rng.int(12)) {
    case 0: // one field replaced by a weird value
      setKey(t, pick(rng, ["dtype", "shape", "data_offsets"]), weird(rng));
      break;
    case 1: { // one shape entry
      const s = t.shape as unknown[];
      if (s.length) s[rng.int(s.length)] = weird(rng);
      else s.push(weird(rng));
      break;
    }
    case 2: { // one offset: weird, or nudged
      const o = t.data_offsets as unknown[];
      const i = rng.int(2);
      o[i] = rng.next() < 0.5 ? weird(rng) : (o[i] as number) + pick(rng, [-2, -1, 1, 2, 64]);
      break;
    }
    case 3: // a field deleted, or an extra one added
      if (rng.next() < 0.5) delete t[pick(rng, ["dtype", "shape", "data_offsets"])];
      else setKey(t, pick(rng, ["extra", "__proto__", "dtype2"]), weird(rng));
      break;
    case 4: // the whole entry replaced
      setKey(obj, name, weird(rng));
      break;
    case 5: { // two tensors swap offsets
      const other = obj[pick(rng, names)] as Record<string, unknown>;
      [t.data_offsets, other.data_offsets] = [other.data_offsets, t.data_offsets];
      break;
    }
    case 6: { // renamed (possibly onto another tensor, dropping it)
      const to = pick(rng, [...names, "", "__metadata__", "__proto__", "constructor", "x"]);
      delete obj[name];
      setKey(obj, to, t);
      break;
    }
    case 7: // an extra tensor anywhere, or aliasing an existing one's bytes exactly
      setKey(
        obj,
        `extra.${rng.int(9)}`,
        rng.next() < 0.5 ? structuredClone(t) : {
          dtype: pick(rng, DTYPES),
          shape: [rng.int(5), rng.int(5)],
          data_offsets: [rng.int(data.byteLength + 8), rng.int(data.byteLength + 8)],
        },
      );
      break;
    case 8: // __metadata__ edited
      setKey(
        obj,
        "__metadata__",
        rng.next() < 0.5
          ? weird(rng)
          : { format: weird(rng), [pick(rng, ["a", "__proto__"])]: "x" },
      );
      break;
    case 9: // a tensor removed
      delete obj[name];
      break;
    case 10: { // the shape reshaped to another factorisation of the same size, or not
      const s = t.shape as number[];
      t.shape = rng.next() < 0.5 ? [...s].reverse() : [s.reduce((p, d) => p * d, 1) + rng.int(3)];
      break;
    }
    default: { // a duplicated key, textually (JSON.parse keeps the last)
      const text = JSON.stringify(obj);
      const dup = `,${JSON.stringify(name)}:${JSON.stringify(obj[name] ?? null)}}`;
      return assemble(
        text.slice(0, -1) + dup,
        data,
        rng.next() < 0.9 ? undefined : BigInt(header.length),
      );
    }
  }
  let text = JSON.stringify(obj);
  if (rng.next() < 0.5) text += " ".repeat((8 - (text.length % 8)) % 8);
  return assemble(text, data, rng.next() < 0.95 ? undefined : BigInt(header.length));
}

/** A dtype swapped for another (same size or not, known or not). */
function swapDtype(rng: Rng, file: Uint8Array): Uint8Array {
  const { header, data } = split(file);
  const obj = JSON.parse(header) as Record<string, Record<string, unknown>>;
  const names = Object.keys(obj).filter((k) => k !== "__metadata__");
  obj[pick(rng, names)].dtype = rng.next() < 0.5
    ? pick(rng, ["F16", "I16", "U16"])
    : pick(rng, DTYPES);
  return assemble(JSON.stringify(obj), data);
}

function flipBytes(rng: Rng, file: Uint8Array): Uint8Array {
  const out = file.slice();
  if (out.length === 0) return out;
  const n = out.length < 8 ? 0 : Number(new DataView(out.buffer).getBigUint64(0, true));
  const flips = 1 + rng.int(4);
  for (let i = 0; i < flips; i++) {
    // Mostly inside the length field and header, sometimes anywhere.
    const at = rng.next() < 0.85 ? rng.int(Math.min(out.length, 8 + n)) : rng.int(out.length);
    out[at] = rng.next() < 0.5 ? out[at] ^ (1 << rng.int(8)) : rng.int(256);
  }
  return out;
}

function resize(rng: Rng, file: Uint8Array): Uint8Array {
  if (rng.next() < 0.7) return file.slice(0, rng.int(file.length)); // truncated
  const out = new Uint8Array(file.length + 1 + rng.int(64)); // extended with junk
  out.set(file);
  for (let i = file.length; i < out.length; i++) out[i] = rng.int(256);
  return out;
}

function lengthField(rng: Rng, file: Uint8Array): Uint8Array {
  if (file.length < 8) return resize(rng, file);
  const out = file.slice();
  const view = new DataView(out.buffer);
  const n = view.getBigUint64(0, true);
  const size = BigInt(file.length);
  const v = pick(rng, [
    0n,
    1n,
    n - 1n,
    n + 1n,
    n + 8n,
    size - 8n,
    size - 7n,
    size,
    100_000_000n,
    100_000_001n,
    2n ** 32n,
    2n ** 53n + 1n,
    2n ** 63n,
    2n ** 64n - 1n,
    BigInt(rng.int(2 ** 30)),
  ]);
  view.setBigUint64(0, BigInt.asUintN(64, v), true);
  return out;
}

function mutateShard(rng: Rng, file: Uint8Array): Uint8Array {
  const r = rng.next();
  if (r < 0.25) return flipBytes(rng, file);
  if (r < 0.35) return resize(rng, file);
  if (r < 0.47) return lengthField(rng, file);
  // Structured edits need a header that still parses (an earlier mutation may have
  // broken it); otherwise they fall back to byte flips.
  try {
    return r < 0.87 ? editJson(rng, file) : swapDtype(rng, file);
  } catch {
    return flipBytes(rng, file);
  }
}

function mutateIndex(rng: Rng, files: Map<string, Uint8Array>) {
  const text = new TextDecoder().decode(files.get(INDEX_FILE)!);
  if (rng.next() < 0.25) {
    const bytes = new TextEncoder().encode(text);
    for (let i = 0; i < 1 + rng.int(3); i++) bytes[rng.int(bytes.length)] = rng.int(256);
    files.set(INDEX_FILE, bytes);
    return;
  }
  const idx = JSON.parse(text) as { weight_map: Record<string, unknown>; metadata?: unknown };
  const names = Object.keys(idx.weight_map);
  switch (rng.int(6)) {
    case 0:
      idx.weight_map[pick(rng, names)] = pick(rng, [
        "../model-00001-of-00002.safetensors",
        "/etc/passwd.safetensors",
        "sub/model.safetensors",
        "..",
        "C:model.safetensors",
        "model-00003-of-00002.safetensors",
        "config.json",
        "",
      ]);
      break;
    case 1:
      idx.weight_map[pick(rng, names)] = weird(rng);
      break;
    case 2: // a tensor moved to the other shard (absent from its header)
      idx.weight_map[pick(rng, names)] = pick(rng, SHARDS)[0];
      break;
    case 3:
      delete idx.weight_map[pick(rng, names)];
      break;
    case 4:
      (idx as Record<string, unknown>)[pick(rng, ["weight_map", "metadata"])] = weird(rng);
      break;
    default: // a shard deleted from the folder
      files.delete(pick(rng, SHARDS)[0]);
  }
  files.set(INDEX_FILE, new TextEncoder().encode(JSON.stringify(idx)));
}

function mutateConfig(rng: Rng, c: Record<string, unknown>) {
  const keys = Object.keys(c);
  switch (rng.int(9)) {
    case 0:
      delete c[pick(rng, keys)];
      break;
    case 1:
      setKey(c, pick(rng, keys), weird(rng));
      break;
    case 2: // plausible but inconsistent sizes
      setKey(
        c,
        pick(rng, [
          "hidden_size",
          "num_attention_heads",
          "num_key_value_heads",
          "intermediate_size",
          "num_hidden_layers",
          "vocab_size",
          "head_dim",
        ]),
        pick(rng, [1, 2, 3, 4, 6, 8, 12, 16, 0, -4]),
      );
      break;
    case 3:
      setKey(
        c,
        "architectures",
        pick(rng, [["MistralForCausalLM"], ["Qwen2ForCausalLM"], ["GPT2LMHeadModel"], [], "x", [
          3,
        ]]),
      );
      break;
    case 4: {
      const s = { ...(c.rope_scaling as Record<string, unknown> ?? {}) };
      setKey(
        s,
        pick(rng, [...Object.keys(s), "type", "rope_type"]),
        rng.next() < 0.5
          ? weird(rng)
          : pick(rng, ["linear", "yarn", "default", "dynamic", "llama3"]),
      );
      c.rope_scaling = s;
      break;
    }
    case 5:
      c.rope_parameters = rng.next() < 0.5
        ? weird(rng)
        : { rope_type: "default", rope_theta: weird(rng) };
      break;
    case 6:
      setKey(
        c,
        pick(rng, ["attention_bias", "mlp_bias", "tie_word_embeddings", "use_sliding_window"]),
        weird(rng),
      );
      break;
    case 7:
      setKey(
        c,
        pick(rng, ["hidden_act", "model_type", "sliding_window", "bos_token_id"]),
        weird(rng),
      );
      break;
    default:
      setKey(c, pick(rng, ["rope_theta", "rms_norm_eps"]), weird(rng));
  }
}

// ---------------------------------------------------------------------------------------
// Checking a case.

type Table = Map<string, TensorInfo & { file: string }>;

/** What must hold when a mutated checkpoint is accepted. */
function checkTable(files: Map<string, Uint8Array>, table: Table) {
  const byFile = new Map<string, (TensorInfo & { file: string })[]>();
  for (const t of table.values()) {
    const size = files.get(t.file)?.byteLength;
    assert.ok(size !== undefined, `tensor ${t.name} in unknown file ${t.file}`);
    assert.ok(0 <= t.begin && t.begin <= t.end && t.end <= size, `${t.name} outside its file`);
    const bits = DTYPE_BITS.get(t.dtype);
    assert.ok(bits !== undefined, `${t.name}: unknown dtype accepted`);
    assert.equal(t.shape.reduce((p, d) => p * d, 1) * bits / 8, t.end - t.begin, t.name);
    byFile.set(t.file, [...(byFile.get(t.file) ?? []), t]);
  }
  for (const list of byFile.values()) {
    list.sort((a, b) => a.begin - b.begin);
    for (let i = 1; i < list.length; i++) {
      assert.ok(list[i - 1].end <= list[i].begin, `${list[i - 1].name} overlaps ${list[i].name}`);
    }
  }
}

function checkPlanAgainst(
  files: Map<string, Uint8Array>,
  table: Table,
  layer: number,
  ids: number[],
  cfg = CFG,
) {
  const plan = planCapture({ config: cfg, tensors: table, layer, tokenIds: ids });
  for (const r of plan.reads) {
    const size = files.get(r.file)!.byteLength;
    assert.ok(
      0 <= r.begin && r.begin < r.end && r.end <= size,
      `read ${r.tensor} outside its file`,
    );
  }
  assert.ok(plan.bytes <= plan.modelBytes);
  assert.ok(plan.describe().startsWith(`layer ${layer} of`));
}

interface Tally {
  ok: number;
  errors: Map<string, number>;
}

/** Runs one case; anything but success or a well-formed GqaError is a failure. */
async function runCase(tally: Tally, what: string, fn: () => Promise<void> | void) {
  const t0 = performance.now();
  try {
    await fn();
    tally.ok++;
  } catch (e) {
    if (!(e instanceof GqaError)) {
      throw new Error(`${what}: threw ${e instanceof Error ? `${e.name}: ${e.message}` : e}`, {
        cause: e,
      });
    }
    assert.ok(
      e.message.length > 20 && e.message.length < 1500,
      `${what}: message length ${e.message.length}`,
    );
    assert.ok(
      !e.message.includes("\n"),
      `${what}: message is not one paragraph: ${JSON.stringify(e.message)}`,
    );
    tally.errors.set(e.code, (tally.errors.get(e.code) ?? 0) + 1);
  }
  const ms = performance.now() - t0;
  if (ms > 1000) throw new Error(`${what}: took ${ms.toFixed(0)} ms`);
}

function randomIds(rng: Rng): number[] {
  const n = 1 + rng.int(6);
  return Array.from(
    { length: n },
    () => (rng.next() < 0.03 ? pick(rng, [-1, 10, 1.5]) : rng.int(10)),
  );
}

Deno.test("fuzz: mutated safetensors headers and indexes end in success or a GqaError", async () => {
  const seed = freshSeed();
  const rng = new Rng(seed);
  const tally: Tally = { ok: 0, errors: new Map() };
  try {
    for (let i = 0; i < HEADER_CASES; i++) {
      const sharded = rng.next() < 0.6;
      const files = baseFiles(sharded);
      const shardNames = [...files.keys()].filter((f) => f !== INDEX_FILE);
      if (sharded && rng.next() < 0.2) mutateIndex(rng, files);
      else {
        for (let m = 1 + rng.int(3); m > 0; m--) {
          const f = pick(rng, shardNames);
          if (files.has(f)) files.set(f, mutateShard(rng, files.get(f)!));
        }
      }
      const layer = rng.next() < 0.05 ? pick(rng, [-1, 2, 3]) : rng.int(2);
      const ids = randomIds(rng);
      await runCase(tally, `seed ${seed} case ${i}`, async () => {
        const table = await loadTensorIndex(new FuzzSource(files));
        checkTable(files, table);
        checkShapes(CFG, table, Math.max(0, Math.min(layer, 1)));
        checkPlanAgainst(files, table, layer, ids);
      });
    }
  } catch (e) {
    (e as Error).message += ` [rerun with SEED=${seed}]`;
    throw e;
  }
  console.log(`seed ${seed}: ${tally.ok} accepted, errors`, Object.fromEntries(tally.errors));
  // The mutations must exercise both outcomes, and mostly find errors.
  assert.ok(tally.ok > HEADER_CASES * 0.02, `only ${tally.ok} mutated checkpoints were accepted`);
  assert.ok((tally.errors.get("bad-file") ?? 0) > HEADER_CASES * 0.5, "too few bad-file errors");
});

Deno.test("fuzz: mutated configs end in success or a GqaError before any weight is read", async () => {
  const seed = freshSeed();
  const rng = new Rng(seed);
  const files = baseFiles(true);
  const table = await loadTensorIndex(new FuzzSource(files));
  const tally: Tally = { ok: 0, errors: new Map() };
  try {
    for (let i = 0; i < CONFIG_CASES; i++) {
      const c = structuredClone(BASE_CONFIG);
      for (let m = 1 + rng.int(3); m > 0; m--) mutateConfig(rng, c);
      const layer = rng.next() < 0.1 ? pick(rng, [-1, 2, 5]) : rng.int(2);
      const ids = randomIds(rng);
      await runCase(tally, `seed ${seed} case ${i}`, () => {
        const cfg = parseConfig(JSON.parse(JSON.stringify(c)), { where: "fuzz/config.json" });
        checkPlanAgainst(files, table, layer, ids, cfg);
      });
    }
  } catch (e) {
    (e as Error).message += ` [rerun with SEED=${seed}]`;
    throw e;
  }
  console.log(`seed ${seed}: ${tally.ok} accepted, errors`, Object.fromEntries(tally.errors));
  assert.ok(tally.ok > CONFIG_CASES * 0.05, `only ${tally.ok} mutated configs were accepted`);
  assert.ok(
    (tally.errors.get("bad-config") ?? 0) > CONFIG_CASES * 0.2,
    "too few bad-config errors",
  );
});
