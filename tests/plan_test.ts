/**
 * Tests of model/plan.ts: byte counts worked out by hand for a small config, embedding
 * row coalescing, grouping by layer, and bad inputs.
 * @module
 */
import { assertGqa, freshSeed, Rng } from "./_helpers.ts";
import { mapLimit } from "../model/forward.ts";
import assert from "node:assert/strict";
import { expectedShape, type ModelConfig, parseConfig } from "../model/config.ts";
import { gatherEmbeddingRows, layerTensorNames, planCapture } from "../model/plan.ts";
import { headerLength, parseHeader, writeSafetensors } from "../model/safetensors.ts";
import type { TensorInfo } from "../model/safetensors.ts";

type Table = Map<string, TensorInfo & { file: string }>;

/**
 * A real checkpoint for `cfg` (every element of tensor `name` at flat index i holds byte
 * pattern (i + k) & 0xff), written with writeSafetensors into `shards` files, with
 * model.norm and an untied lm_head as real checkpoints have. Returns the table and bytes.
 */
function checkpoint(cfg: ModelConfig, dtype: string, shards = 1) {
  const bpe = dtype === "F32" ? 4 : 2;
  const names = ["model.embed_tokens.weight"];
  for (let l = 0; l < cfg.layers; l++) names.push(...layerTensorNames(cfg, l, "full"));
  const all = [
    ...names.map((n) => ({ name: n, shape: expectedShape(cfg, n)! })),
    { name: "model.norm.weight", shape: [cfg.D] },
    { name: "lm_head.weight", shape: [cfg.vocab, cfg.D] },
  ].map((t, k) => {
    const n = t.shape.reduce((p, d) => p * d, 1) * bpe;
    const data = new Uint8Array(n).map((_, i) => (i + k) & 0xff);
    return { ...t, dtype, data };
  });
  const files = new Map<string, Uint8Array>();
  const table: Table = new Map();
  const per = Math.ceil(all.length / shards);
  for (let s = 0; s < shards; s++) {
    const file = `model-${s + 1}-of-${shards}.safetensors`;
    const bytes = writeSafetensors(all.slice(s * per, (s + 1) * per));
    files.set(file, bytes);
    const n = headerLength(bytes.subarray(0, 8), { file, fileSize: bytes.byteLength });
    const h = parseHeader(bytes.subarray(8, 8 + n), { file, fileSize: bytes.byteLength });
    for (const [name, info] of h.tensors) table.set(name, { ...info, file });
  }
  return { table, files };
}

// D=8, H=4, KV=2, HD=2, I=12, 3 layers, vocab 10; BF16 (2 bytes per element).
const SMALL = parseConfig({
  architectures: ["LlamaForCausalLM"],
  hidden_size: 8,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  intermediate_size: 12,
  num_hidden_layers: 3,
  vocab_size: 10,
}, { where: "small" });
// Bytes, by hand:
//   embed (10, 8) = 160     one row = 8 × 2 = 16
//   norms (8) = 16 each     q (8, 8) = 128   k, v (4, 8) = 64 each   o (8, 8) = 128
//   gate, up (12, 8) = 192 each   down (8, 12) = 192
//   full layer = 16 + 128 + 64 + 64 + 128 + 16 + 3·192 = 992
//   capture part = 16 + 128 + 64 + 64 = 272
//   model = 160 + 3·992 + 16 (model.norm) + 160 (lm_head) = 3312
const FULL = 992, CAPTURE = 272, ROW = 16, MODEL = 3312;

Deno.test("planCapture() at layer 0 reads one embedding row and layer 0's norm + q/k/v", () => {
  const { table } = checkpoint(SMALL, "BF16");
  const plan = planCapture({ config: SMALL, tensors: table, layer: 0, tokenIds: [3] });
  assert.equal(plan.modelBytes, MODEL);
  assert.equal(plan.bytes, ROW + CAPTURE);
  assert.deepEqual(plan.reads.map((r) => r.tensor), [
    "model.embed_tokens.weight#row=3",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
  ]);
  const emb = table.get("model.embed_tokens.weight")!;
  assert.equal(plan.embedding[0].begin, emb.begin + 3 * ROW);
  assert.equal(plan.embedding[0].end, emb.begin + 4 * ROW);
  assert.equal(plan.layers.length, 1);
  assert.equal(plan.describe("org/small"), "layer 0 of org/small: reading 288 B of 3.31 kB");
});

Deno.test("planCapture() at layer 2 reads layers 0-1 whole and coalesces adjacent rows", () => {
  const { table } = checkpoint(SMALL, "BF16");
  const tokenIds = [1, 2, 2, 5, 9, 8];
  const plan = planCapture({ config: SMALL, tensors: table, layer: 2, tokenIds, model: "m" });
  // distinct ids {1, 2, 5, 8, 9} → runs 1..2, 5, 8..9 → 5 rows in 3 reads
  assert.deepEqual(plan.embedding.map((r) => [r.tensor, r.firstRow, r.rows]), [
    ["model.embed_tokens.weight#row=1..2", 1, 2],
    ["model.embed_tokens.weight#row=5", 5, 1],
    ["model.embed_tokens.weight#row=8..9", 8, 2],
  ]);
  assert.equal(plan.bytes, 5 * ROW + 2 * FULL + CAPTURE);
  assert.deepEqual(plan.layers.map((reads) => reads.length), [9, 9, 4]);
  assert.deepEqual(
    plan.reads,
    [...plan.embedding, ...plan.layers[0], ...plan.layers[1], ...plan.layers[2]],
  );
  for (const [l, reads] of plan.layers.entries()) {
    assert.ok(reads.every((r) => r.tensor.startsWith(`model.layers.${l}.`)));
    for (let i = 1; i < reads.length; i++) assert.ok(reads[i - 1].begin < reads[i].begin);
  }
  assert.equal(plan.describe(), "layer 2 of m: reading 2.34 kB of 3.31 kB");
  assert.ok(
    !plan.reads.some((r) => r.tensor.includes("lm_head") || r.tensor === "model.norm.weight"),
  );
});

Deno.test("planCapture() reads only existing bytes: the ranges hold exactly those tensors", () => {
  const { table, files } = checkpoint(SMALL, "F32", 3);
  const tokenIds = [0, 9, 4];
  const plan = planCapture({ config: SMALL, tensors: table, layer: 1, tokenIds });
  for (const r of plan.layers.flat()) {
    const t = table.get(r.tensor)!;
    assert.deepEqual([r.file, r.begin, r.end], [t.file, t.begin, t.end]);
    assert.ok(r.end <= files.get(r.file)!.byteLength);
  }
  // gatherEmbeddingRows lays the rows out in prompt order: (T, D).
  const chunks = plan.embedding.map((r) => files.get(r.file)!.slice(r.begin, r.end));
  const x = gatherEmbeddingRows(plan, tokenIds, chunks);
  const emb = table.get("model.embed_tokens.weight")!;
  const whole = files.get(emb.file)!.slice(emb.begin, emb.end);
  const rowB = 8 * 4;
  tokenIds.forEach((id, t) => {
    assert.deepEqual(
      x.subarray(t * rowB, (t + 1) * rowB),
      whole.subarray(id * rowB, (id + 1) * rowB),
    );
  });
});

Deno.test("planCapture() includes q/k/v biases when the model has them", () => {
  const q = parseConfig({
    architectures: ["Qwen2ForCausalLM"],
    hidden_size: 8,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    intermediate_size: 12,
    num_hidden_layers: 2,
    vocab_size: 10,
  }, { where: "q" });
  const { table } = checkpoint(q, "BF16");
  const plan = planCapture({ config: q, tensors: table, layer: 1, tokenIds: [1] });
  // biases: q (8) = 16 B, k, v (4) = 8 B each → 32 B per layer
  assert.equal(plan.bytes, ROW + (FULL + 32) + (CAPTURE + 32));
  assert.ok(plan.layers[1].some((r) => r.tensor === "model.layers.1.self_attn.k_proj.bias"));
});

Deno.test("planCapture() reproduces the Meta-Llama-3-8B numbers at layer 5", () => {
  const cfg = parseConfig({
    architectures: ["LlamaForCausalLM"],
    hidden_size: 4096,
    intermediate_size: 14336,
    num_attention_heads: 32,
    num_hidden_layers: 32,
    num_key_value_heads: 8,
    vocab_size: 128256,
  }, { where: "8b" });
  // A table with the real shapes and offsets (no bytes behind it).
  const table: Table = new Map();
  let at = 0;
  const add = (name: string, shape: number[]) => {
    const n = shape.reduce((p, d) => p * d, 1) * 2;
    table.set(name, { name, dtype: "BF16", shape, begin: at, end: at + n, file: "m.safetensors" });
    at += n;
  };
  add("model.embed_tokens.weight", [128256, 4096]);
  for (let l = 0; l < 32; l++) {
    for (const n of layerTensorNames(cfg, l, "full")) add(n, expectedShape(cfg, n)!);
  }
  add("model.norm.weight", [4096]);
  add("lm_head.weight", [128256, 4096]);
  const plan = planCapture({ config: cfg, tensors: table, layer: 5, tokenIds: [128000, 791] });
  assert.equal(plan.modelBytes, 16_060_522_496); // 8.03 B parameters × 2 bytes
  assert.equal(
    plan.describe("meta-llama/Meta-Llama-3-8B"),
    "layer 5 of meta-llama/Meta-Llama-3-8B: reading 2.23 GB of 16.06 GB",
  );
});

Deno.test("planCapture() rejects token ids outside the vocabulary and an empty prompt", async () => {
  const { table } = checkpoint(SMALL, "BF16");
  for (const id of [10, -1, 2.5, NaN]) {
    await assertGqa(
      () => planCapture({ config: SMALL, tensors: table, layer: 0, tokenIds: [1, id] }),
      "bad-input",
      "0 to 9",
    );
  }
  await assertGqa(
    () => planCapture({ config: SMALL, tensors: table, layer: 0, tokenIds: [] }),
    "bad-input",
    "no tokens",
  );
});

Deno.test("planCapture() rejects a layer out of range, stating the valid range", async () => {
  const { table } = checkpoint(SMALL, "BF16");
  for (const layer of [3, -1, 1.5]) {
    await assertGqa(
      () => planCapture({ config: SMALL, tensors: table, layer, tokenIds: [1] }),
      "bad-input",
      "0 to 2",
    );
  }
});

Deno.test("planCapture() refuses a prompt longer than a sliding window", async () => {
  const m = parseConfig({
    architectures: ["MistralForCausalLM"],
    hidden_size: 8,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    intermediate_size: 12,
    num_hidden_layers: 3,
    vocab_size: 10,
    sliding_window: 3,
  }, { where: "m" });
  const { table } = checkpoint(m, "BF16");
  planCapture({ config: m, tensors: table, layer: 0, tokenIds: [1, 2, 3] });
  await assertGqa(
    () => planCapture({ config: m, tensors: table, layer: 0, tokenIds: [1, 2, 3, 4] }),
    "unsupported",
    "sliding",
  );
});

Deno.test("layerTensorNames() lists HF names: capture ⊂ full", () => {
  const cap = layerTensorNames(SMALL, 7, "capture");
  const full = layerTensorNames(SMALL, 7, "full");
  assert.deepEqual(cap, [
    "model.layers.7.input_layernorm.weight",
    "model.layers.7.self_attn.q_proj.weight",
    "model.layers.7.self_attn.k_proj.weight",
    "model.layers.7.self_attn.v_proj.weight",
  ]);
  assert.deepEqual(full.slice(0, 4), cap);
  assert.deepEqual(full.slice(4), [
    "model.layers.7.self_attn.o_proj.weight",
    "model.layers.7.post_attention_layernorm.weight",
    "model.layers.7.mlp.gate_proj.weight",
    "model.layers.7.mlp.up_proj.weight",
    "model.layers.7.mlp.down_proj.weight",
  ]);
});

Deno.test("mapLimit (the embedding-row reads) keeps the order and never runs more than the limit at once", async () => {
  const rng = new Rng(freshSeed());
  for (const [n, limit] of [[0, 8], [3, 8], [37, 8], [20, 1]]) {
    let running = 0, most = 0;
    const out = await mapLimit(Array.from({ length: n }, (_, i) => i), limit, async (x) => {
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setTimeout(r, Math.floor(rng.next() * 3)));
      running--;
      return x * 2;
    });
    assert.deepEqual(out, Array.from({ length: n }, (_, i) => i * 2));
    assert.ok(most <= limit && (n < limit || most === limit), `${most} at once for limit ${limit}`);
  }
});
