/**
 * Writes a synthetic checkpoint with Meta-Llama-3-8B's exact tensor shapes and dtype (BF16)
 * for its first `--layers` layers (default 6), for benchmarks: the real weights cannot be
 * downloaded here, but the bytes to read and the work per layer are the same.
 *
 * ```
 * deno run -A scripts/make_8b_shaped.ts [DIR] [--layers 6]   # default DIR /tmp/llama3-8b-shaped
 * ```
 *
 * Shapes (D = 4096, H = 32, KV = 8, HD = 128, I = 14336, vocab 128256), per layer 436 MB:
 *   q_proj (4096, 4096)  k_proj (1024, 4096)  v_proj (1024, 4096)  o_proj (4096, 4096)
 *   gate_proj, up_proj (14336, 4096)  down_proj (4096, 14336)  two norms (4096)
 * Two shards with an index, like the real repo; `lm_head` is left out (no plan reads it).
 *
 * Values: each matrix is N(0, 1/K) (so activations keep their scale through the layers),
 * norms are 1 and the embedding N(0, 0.02²), drawn from a fixed table of 65536 BF16 normal
 * values indexed by a seeded xorshift: fast (~1 s per layer) and the same on every run.
 * Tensors are streamed to disk; the file is never held in memory whole.
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { safetensorsPrefix, type TensorSpec } from "../model/safetensors.ts";
import { f32ToBf16 } from "../kernels/dtype.ts";

/** Llama-3-8B's config.json, with `num_hidden_layers` cut to `layers`. */
export function llama3_8bConfig(layers: number) {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: 4096,
    intermediate_size: 14336,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    num_hidden_layers: layers,
    vocab_size: 128256,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: null,
    max_position_embeddings: 8192,
    bos_token_id: 128000,
    eos_token_id: 128001,
    tie_word_embeddings: false,
    torch_dtype: "bfloat16",
    attention_bias: false,
  };
}

type Spec = TensorSpec & { std: number; fill?: number };

function layerTensors(l: number): Spec[] {
  const D = 4096, I = 14336, KVD = 1024, p = `model.layers.${l}.`;
  const m = (name: string, N: number, K: number) => ({
    name: p + name,
    dtype: "BF16",
    shape: [N, K],
    std: 1 / Math.sqrt(K),
  });
  return [
    { name: p + "input_layernorm.weight", dtype: "BF16", shape: [D], std: 0, fill: 1 },
    m("self_attn.q_proj.weight", D, D),
    m("self_attn.k_proj.weight", KVD, D),
    m("self_attn.v_proj.weight", KVD, D),
    m("self_attn.o_proj.weight", D, D),
    { name: p + "post_attention_layernorm.weight", dtype: "BF16", shape: [D], std: 0, fill: 1 },
    m("mlp.gate_proj.weight", I, D),
    m("mlp.up_proj.weight", I, D),
    m("mlp.down_proj.weight", D, I),
  ];
}

/** 65536 BF16 values ~ N(0, std²), two per u32 (deterministic: a fixed inverse-CDF grid). */
function normalTable(std: number, fill?: number): Uint32Array {
  const t = new Uint32Array(65536);
  for (let i = 0; i < 65536; i++) {
    const pair = [0, 1].map((j) => {
      if (fill !== undefined) return f32ToBf16(fill);
      // Box–Muller on a fixed grid of (u1, u2) pairs.
      const u1 = (((i * 2 + j) * 40503) % 65536 + 0.5) / 65536;
      const u2 = ((i * 2 + j) * 0.6180339887) % 1;
      return f32ToBf16(std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2));
    });
    t[i] = pair[0] | (pair[1] << 16);
  }
  return t;
}

async function writeShard(path: string, specs: Spec[], seed: number): Promise<number> {
  const { prefix, dataBytes } = safetensorsPrefix(specs);
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await f.write(prefix);
    let s = seed >>> 0 || 1;
    const CHUNK = 1 << 24; // u32 words per write (64 MiB)
    const buf = new Uint32Array(CHUNK);
    for (const t of specs) {
      const table = normalTable(t.std, t.fill);
      let words = t.shape.reduce((a, b) => a * b, 1) / 2;
      while (words > 0) {
        const n = Math.min(words, CHUNK);
        for (let i = 0; i < n; i++) {
          s ^= s << 13;
          s ^= s >>> 17;
          s ^= s << 5;
          buf[i] = table[s & 0xffff];
        }
        const bytes = new Uint8Array(buf.buffer, 0, n * 4);
        for (let off = 0; off < bytes.byteLength;) off += await f.write(bytes.subarray(off));
        words -= n;
      }
    }
  } finally {
    f.close();
  }
  return prefix.byteLength + dataBytes;
}

/** Writes the checkpoint into `dir` (skipped when a complete one is already there). */
export async function make8bShaped(dir: string, layers = 6): Promise<void> {
  const stamp = join(dir, "make_8b_shaped.stamp");
  if ((await Deno.readTextFile(stamp).catch(() => "")) === `layers=${layers}`) return;
  await Deno.mkdir(dir, { recursive: true });
  const embed: Spec = {
    name: "model.embed_tokens.weight",
    dtype: "BF16",
    shape: [128256, 4096],
    std: 0.02,
  };
  const half = Math.ceil(layers / 2);
  const shards: Spec[][] = [[embed], []];
  for (let l = 0; l < layers; l++) shards[l < half ? 0 : 1].push(...layerTensors(l));
  shards[1].push({ name: "model.norm.weight", dtype: "BF16", shape: [4096], std: 0, fill: 1 });
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let i = 0; i < shards.length; i++) {
    const file = `model-0000${i + 1}-of-0000${shards.length}.safetensors`;
    const t0 = performance.now();
    total += await writeShard(join(dir, file), shards[i], 12345 + i);
    for (const t of shards[i]) weightMap[t.name] = file;
    console.error(`wrote ${file} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  await Deno.writeTextFile(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2),
  );
  await Deno.writeTextFile(
    join(dir, "config.json"),
    JSON.stringify(llama3_8bConfig(layers), null, 2),
  );
  await Deno.writeTextFile(stamp, `layers=${layers}`);
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: { layers: { type: "string", default: "6" } },
    allowPositionals: true,
  });
  const dir = positionals[0] ?? "/tmp/llama3-8b-shaped";
  await make8bShaped(dir, Number(values.layers));
  console.log(dir);
}
