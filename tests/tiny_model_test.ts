/**
 * Tests for scripts/make_tiny_model.ts: the tiny Llama-3.1-shaped checkpoint is complete,
 * consistent (config ↔ shards ↔ index ↔ tokenizer), realistic enough to draw, and
 * byte-identical on every run.
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  GENERATOR_VERSION,
  makeTinyModel,
  TINY_MODEL_DIR,
  tinyModelDir,
  type TinyModelOptions,
} from "../scripts/make_tiny_model.ts";
import { headerLength, parseHeader, type SafetensorsHeader } from "../model/safetensors.ts";
import { parseConfig } from "../model/config.ts";
import { loadTokenizer } from "../model/tokenizer.ts";
import { decodeWeights, roundTo } from "../kernels/dtype.ts";

/**
 * sha256 of the stamp's file list for the default options. The generator must write the
 * same bytes on every machine; if you changed it on purpose, bump GENERATOR_VERSION and
 * update this digest (the failure message prints the new one).
 */
const PINNED = {
  version: "tiny-llama-1",
  digest: "718359f909df8ebaa84df48bdfde58616949fef8b586c47ff8cb3278bd8c45ea",
};

const SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];

async function sha256(bytes: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Every file of `dir` (stamp included) → sha256. */
async function hashes(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const names = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  for (const n of names.sort()) out[n] = await sha256(await Deno.readFile(join(dir, n)));
  return out;
}

async function tempModel(opts: TinyModelOptions = {}) {
  const dir = await Deno.makeTempDir({ prefix: "tiny-llama-" });
  const result = await makeTinyModel(dir, opts);
  return { dir, result, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

async function header(dir: string, file: string): Promise<SafetensorsHeader> {
  const bytes = await Deno.readFile(join(dir, file));
  const n = headerLength(bytes.subarray(0, 8), { file, fileSize: bytes.byteLength });
  return parseHeader(bytes.subarray(8, 8 + n), { file, fileSize: bytes.byteLength });
}

async function readTensor(dir: string, file: string, name: string, dtype: "BF16" | "F32") {
  const h = await header(dir, file);
  const t = h.tensors.get(name)!;
  const bytes = await Deno.readFile(join(dir, file));
  return decodeWeights(bytes.slice(t.begin, t.end), dtype);
}

Deno.test("makeTinyModel() writes byte-identical folders in two runs and skips an up-to-date one", async () => {
  await using a = await tempModel();
  await using b = await tempModel();
  assert.equal(a.result.generated, true);
  const ha = await hashes(a.dir);
  assert.deepEqual(ha, await hashes(b.dir));
  assert.deepEqual(Object.keys(ha), [
    "config.json",
    ...SHARDS,
    "model.safetensors.index.json",
    "tiny-model.stamp.json",
    "tokenizer.json",
    "tokenizer_config.json",
  ]);
  const again = await makeTinyModel(a.dir);
  assert.equal(again.generated, false);
  assert.deepEqual(again.files, a.result.files);
  assert.equal(again.totalBytes, a.result.totalBytes);
  const forced = await makeTinyModel(a.dir, { force: true });
  assert.equal(forced.generated, true);
  assert.deepEqual(await hashes(a.dir), ha);
});

Deno.test("makeTinyModel() output matches the pinned digest of this generator version", async () => {
  await using m = await tempModel();
  const stamp = JSON.parse(await Deno.readTextFile(join(m.dir, "tiny-model.stamp.json")));
  const digest = await sha256(new TextEncoder().encode(JSON.stringify(stamp.files)));
  assert.equal(
    `${GENERATOR_VERSION} ${digest}`,
    `${PINNED.version} ${PINNED.digest}`,
    "the tiny model's bytes changed: if on purpose, bump GENERATOR_VERSION and PINNED",
  );
});

Deno.test("makeTinyModel() regenerates a folder whose shard was altered or whose stamp is gone", async () => {
  await using m = await tempModel();
  const before = await hashes(m.dir);
  const shard = join(m.dir, SHARDS[1]);
  const bytes = await Deno.readFile(shard);
  bytes[bytes.byteLength - 1] ^= 1;
  await Deno.writeFile(shard, bytes);
  assert.equal((await makeTinyModel(m.dir)).generated, true);
  assert.deepEqual(await hashes(m.dir), before);
  await Deno.remove(join(m.dir, "tiny-model.stamp.json"));
  assert.equal((await makeTinyModel(m.dir)).generated, true);
  assert.deepEqual(await hashes(m.dir), before);
});

Deno.test("tiny config.json is Llama-3.1-shaped: 32 query heads, 8 KV heads, explicit head_dim, llama3 rope", async () => {
  const r = await makeTinyModel(); // the shared, git-ignored folder the demo uses
  assert.equal(r.dir, TINY_MODEL_DIR);
  const c = JSON.parse(await Deno.readTextFile(join(r.dir, "config.json")));
  assert.deepEqual(r.config, c);
  assert.deepEqual(c.architectures, ["LlamaForCausalLM"]);
  assert.equal(c.model_type, "llama");
  assert.equal(c.num_attention_heads, 32);
  assert.equal(c.num_key_value_heads, 8);
  assert.equal(c.head_dim, 16);
  assert.equal(c.hidden_size, 256);
  assert.notEqual(c.num_attention_heads * c.head_dim, c.hidden_size);
  assert.equal(c.intermediate_size, 512);
  assert.equal(c.num_hidden_layers, 4);
  assert.equal(c.rms_norm_eps, 1e-5);
  assert.equal(c.rope_theta, 500000);
  assert.deepEqual(c.rope_scaling, {
    factor: 8,
    high_freq_factor: 4,
    low_freq_factor: 1,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  });
  assert.equal(c.max_position_embeddings, 131072);
  assert.equal(c.tie_word_embeddings, false);
  assert.equal(c.torch_dtype, "bfloat16");
  assert.equal(c.bos_token_id, 752);
  assert.equal(c.eos_token_id, 753);

  const cfg = parseConfig(c, { where: "tiny config.json" });
  assert.deepEqual(
    [cfg.architecture, cfg.D, cfg.H, cfg.KV, cfg.HD, cfg.I, cfg.layers, cfg.vocab],
    ["LlamaForCausalLM", 256, 32, 8, 16, 512, 4, 768],
  );
  assert.equal(cfg.rope.scaling?.type, "llama3");
});

Deno.test("tiny shards hold every tensor once, BF16, with the shapes the config implies, as the index says", async () => {
  const r = await makeTinyModel();
  const c = r.config as Record<string, number>;
  const [D, H, KV, HD, I, V] = [
    c.hidden_size,
    c.num_attention_heads,
    c.num_key_value_heads,
    c.head_dim,
    c.intermediate_size,
    c.vocab_size,
  ];
  const want = new Map<string, number[]>([
    ["model.embed_tokens.weight", [V, D]],
    ["model.norm.weight", [D]],
    ["lm_head.weight", [V, D]],
  ]);
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    want.set(`${p}.input_layernorm.weight`, [D]);
    want.set(`${p}.self_attn.q_proj.weight`, [H * HD, D]);
    want.set(`${p}.self_attn.k_proj.weight`, [KV * HD, D]);
    want.set(`${p}.self_attn.v_proj.weight`, [KV * HD, D]);
    want.set(`${p}.self_attn.o_proj.weight`, [D, H * HD]);
    want.set(`${p}.post_attention_layernorm.weight`, [D]);
    want.set(`${p}.mlp.gate_proj.weight`, [I, D]);
    want.set(`${p}.mlp.up_proj.weight`, [I, D]);
    want.set(`${p}.mlp.down_proj.weight`, [D, I]);
  }
  const index = JSON.parse(await Deno.readTextFile(join(r.dir, "model.safetensors.index.json")));
  const found = new Map<string, string>();
  let bytes = 0;
  for (const file of SHARDS) {
    const h = await header(r.dir, file); // validates the layout too
    assert.equal(h.metadata.format, "pt");
    assert.ok(h.tensors.size > 0, `${file} is empty`);
    for (const [name, t] of h.tensors) {
      assert.ok(!found.has(name), `${name} is in two shards`);
      found.set(name, file);
      assert.equal(t.dtype, "BF16", name);
      assert.deepEqual(t.shape, want.get(name), name);
      bytes += t.end - t.begin;
    }
  }
  assert.deepEqual([...found.keys()].sort(), [...want.keys()].sort());
  assert.deepEqual(index.weight_map, Object.fromEntries([...found].sort()));
  assert.equal(index.metadata.total_size, bytes);
  // The shard boundary falls inside layer 2, as real checkpoints split inside a layer.
  assert.equal(found.get("model.layers.2.self_attn.k_proj.weight"), SHARDS[0]);
  assert.equal(found.get("model.layers.2.self_attn.v_proj.weight"), SHARDS[1]);
});

Deno.test("tiny tokenizer.json starts prompts with BOS and round-trips ASCII and UTF-8", async () => {
  const r = await makeTinyModel();
  const tok = await loadTokenizer(await Deno.readTextFile(join(r.dir, "tokenizer.json")));
  assert.equal(tok.vocabSize, r.config.vocab_size);
  const hello = tok.encode("Hello world");
  assert.equal(hello[0], r.config.bos_token_id);
  assert.equal(tok.tokenText(hello[0]), "<|begin_of_text|>");
  assert.equal(hello.slice(1).map((id) => tok.tokenText(id)).join(""), "Hello world");
  for (
    const s of [
      "The quick brown fox jumps over the lazy dog",
      "  leading spaces, tabs\tand\nnew lines\r\n",
      "digits 1234567 and punctuation: ([{<>}]) ... don't!",
      "émigré, Grüße, 日本語, Привет, 🦙🤗",
    ]
  ) {
    const ids = tok.encode(s);
    assert.equal(ids[0], r.config.bos_token_id, s);
    assert.equal(tok.decode(ids.slice(1)), s);
    assert.ok(ids.every((id) => id < (r.config.vocab_size as number)));
  }
  // The learned merges make whole words of the training text single tokens.
  const fox = tok.encode(" quick brown fox");
  assert.deepEqual(fox.slice(1).map((id) => tok.tokenText(id)), [" quick", " brown", " fox"]);
});

Deno.test("tiny weights look like an initialisation: norms near 1, projections near 0.02, K outliers per head", async () => {
  const dir = TINY_MODEL_DIR;
  await makeTinyModel(dir);
  const stats = (a: Float32Array) => {
    let s = 0, s2 = 0;
    for (const x of a) [s, s2] = [s + x, s2 + x * x];
    const mean = s / a.length;
    return { mean, std: Math.sqrt(s2 / a.length - mean * mean) };
  };
  const ln = stats(
    await readTensor(dir, SHARDS[0], "model.layers.0.input_layernorm.weight", "BF16"),
  );
  assert.ok(Math.abs(ln.mean - 1) < 0.03 && ln.std > 0.05 && ln.std < 0.2, JSON.stringify(ln));
  const v = stats(
    await readTensor(dir, SHARDS[0], "model.layers.0.self_attn.v_proj.weight", "BF16"),
  );
  assert.ok(Math.abs(v.mean) < 0.001 && Math.abs(v.std - 0.02) < 0.002, JSON.stringify(v));

  // K of one token at layer 0: every KV head has one dimension far above the others.
  const emb = await readTensor(dir, SHARDS[0], "model.embed_tokens.weight", "BF16");
  const wk = await readTensor(dir, SHARDS[0], "model.layers.0.self_attn.k_proj.weight", "BF16");
  const w = await readTensor(dir, SHARDS[0], "model.layers.0.input_layernorm.weight", "BF16");
  const [D, HD, KV] = [256, 16, 8];
  const tokenId = 752; // BOS
  const x = emb.subarray(tokenId * D, (tokenId + 1) * D);
  const r = 1 / Math.sqrt(x.reduce((a, e) => a + e * e, 0) / D + 1e-5);
  const peaks = new Set<number>();
  for (let g = 0; g < KV; g++) {
    const k = Array.from({ length: HD }, (_, d) => {
      let s = 0;
      for (let i = 0; i < D; i++) s += wk[(g * HD + d) * D + i] * x[i] * r * w[i];
      return s;
    });
    const order = k.map((v, d) => [Math.abs(v), d]).sort((a, b) => b[0] - a[0]);
    assert.ok(order[0][0] > 3 * order[2][0], `KV head ${g}: K = ${k.map((v) => v.toFixed(2))}`);
    peaks.add(order[0][1]);
  }
  assert.ok(peaks.size >= 6, "the outlier dimension should differ between KV heads");
});

Deno.test("makeTinyModel() dtype and shard options: F32 in one file holds the same values before rounding", async () => {
  await using bf = await tempModel({ layers: 2 });
  await using f32 = await tempModel({ layers: 2, dtype: "F32", shards: 1 });
  assert.deepEqual(f32.result.files, [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
  ]);
  assert.equal(f32.result.config.torch_dtype, "float32");
  assert.equal(f32.result.config.num_hidden_layers, 2);
  const name = "model.layers.1.self_attn.k_proj.weight";
  const index = JSON.parse(await Deno.readTextFile(join(bf.dir, "model.safetensors.index.json")));
  const a = await readTensor(bf.dir, index.weight_map[name], name, "BF16");
  const b = await readTensor(f32.dir, "model.safetensors", name, "F32");
  assert.deepEqual(roundTo(b, "BF16"), a);
  assert.ok(b.some((x, i) => x !== a[i]), "F32 values should carry more bits than BF16");
});

Deno.test("tinyModelDir() gives each set of options its own folder", () => {
  assert.equal(tinyModelDir(), TINY_MODEL_DIR);
  assert.equal(tinyModelDir({ dtype: "BF16", layers: 4, shards: 2, seed: 1 }), TINY_MODEL_DIR);
  const dirs = [{ dtype: "F32" as const }, { layers: 2 }, { shards: 1 }, { seed: 2 }].map(
    tinyModelDir,
  );
  assert.equal(new Set([TINY_MODEL_DIR, ...dirs]).size, 5);
  assert.ok(dirs.every((d) => d.startsWith(TINY_MODEL_DIR + "-")));
});

Deno.test("make_tiny_model.ts CLI writes a model into the folder it is given", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tiny-cli-" });
  try {
    const script = new URL("../scripts/make_tiny_model.ts", import.meta.url);
    const run = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script.href, ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const out = await run([dir, "--layers", "3", "--shards", "3"]);
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match(
      text,
      /^wrote .*: 3 layers, D=256 H=32 KV=8 HD=16 I=512 vocab=768, bfloat16, 3 shard/,
    );
    const h = await hashes(dir);
    assert.ok("model-00003-of-00003.safetensors" in h);
    const bad = await run([dir, "--shards", "9"]);
    assert.notEqual(bad.code, 0);
    assert.match(new TextDecoder().decode(bad.stderr), /9 shards is too many for 4 layers/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
