/**
 * Tests of model/config.ts: parseConfig on real model configs and on every malformed or
 * unsupported case, and checkShapes against tensor tables.
 * @module
 */
import { assertGqa } from "./_helpers.ts";
import assert from "node:assert/strict";
import {
  checkShapes,
  expectedShape,
  layerTensorNames,
  type ModelConfig,
  parseConfig,
  parseConfigText,
} from "../model/config.ts";
import type { TensorInfo } from "../model/safetensors.ts";

// config.json of real checkpoints (fields that matter, as published on the Hub).
const LLAMA3_8B = {
  architectures: ["LlamaForCausalLM"],
  attention_bias: false,
  bos_token_id: 128000,
  eos_token_id: 128001,
  hidden_act: "silu",
  hidden_size: 4096,
  intermediate_size: 14336,
  max_position_embeddings: 8192,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  rope_theta: 500000.0,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  vocab_size: 128256,
};
const LLAMA31_8B = {
  ...LLAMA3_8B,
  eos_token_id: [128001, 128008, 128009],
  max_position_embeddings: 131072,
  rope_scaling: {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 8192,
    rope_type: "llama3",
  },
};
const LLAMA32_1B = {
  ...LLAMA31_8B,
  head_dim: 64,
  hidden_size: 2048,
  intermediate_size: 8192,
  num_hidden_layers: 16,
  rope_scaling: { ...LLAMA31_8B.rope_scaling, factor: 32.0 },
  tie_word_embeddings: true,
};
const LLAMA2_7B = {
  architectures: ["LlamaForCausalLM"],
  bos_token_id: 1,
  hidden_act: "silu",
  hidden_size: 4096,
  intermediate_size: 11008,
  model_type: "llama",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 32,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  vocab_size: 32000,
};
const MISTRAL_7B = {
  architectures: ["MistralForCausalLM"],
  bos_token_id: 1,
  hidden_act: "silu",
  hidden_size: 4096,
  intermediate_size: 14336,
  model_type: "mistral",
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  vocab_size: 32000,
};
const QWEN25_05B = {
  architectures: ["Qwen2ForCausalLM"],
  bos_token_id: 151643,
  hidden_act: "silu",
  hidden_size: 896,
  intermediate_size: 4864,
  max_window_layers: 21,
  model_type: "qwen2",
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

const where = "org/model/config.json";

Deno.test("parseConfig() reads Meta-Llama-3-8B", () => {
  const c = parseConfig(LLAMA3_8B, { where });
  assert.deepEqual(c, {
    architecture: "LlamaForCausalLM",
    D: 4096,
    H: 32,
    KV: 8,
    HD: 128,
    I: 14336,
    layers: 32,
    vocab: 128256,
    eps: 1e-5,
    rope: { theta: 500000 },
    attentionBias: false,
    tieWordEmbeddings: false,
    bosTokenId: 128000,
  });
});

Deno.test("parseConfig() reads Llama 3.1's llama3 rope_scaling and Llama 3.2's head_dim", () => {
  const c31 = parseConfig(LLAMA31_8B, { where });
  assert.deepEqual(c31.rope, {
    theta: 500000,
    scaling: {
      type: "llama3",
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    },
  });
  const c32 = parseConfig(LLAMA32_1B, { where });
  assert.equal(c32.HD, 64);
  assert.equal(c32.D, 2048);
  assert.equal(c32.rope.scaling?.factor, 32);
  assert.equal(c32.tieWordEmbeddings, true);
  // "type" (older spelling) works as well as "rope_type".
  const { rope_type: _, ...old } = LLAMA31_8B.rope_scaling;
  const cOld = parseConfig({ ...LLAMA31_8B, rope_scaling: { ...old, type: "llama3" } }, { where });
  assert.deepEqual(cOld.rope, c31.rope);
});

Deno.test("parseConfig() applies transformers' defaults (Llama 2: KV, theta; eps)", () => {
  const c = parseConfig(LLAMA2_7B, { where });
  assert.equal(c.KV, 32);
  assert.equal(c.rope.theta, 10000);
  assert.equal(c.rope.scaling, undefined);
  const { num_key_value_heads: _, rms_norm_eps: __, ...bare } = LLAMA2_7B;
  const d = parseConfig(bare, { where });
  assert.equal(d.KV, 32);
  assert.equal(d.eps, 1e-6);
  assert.deepEqual(
    parseConfig({ ...LLAMA2_7B, rope_scaling: { rope_type: "default" } }, { where }).rope,
    {
      theta: 10000,
    },
  );
});

Deno.test("parseConfig() reads Mistral (sliding window) and Qwen2 (q/k/v biases)", () => {
  const m = parseConfig(MISTRAL_7B, { where });
  assert.equal(m.architecture, "MistralForCausalLM");
  assert.equal(m.slidingWindow, 4096);
  assert.equal(m.attentionBias, false);
  const q = parseConfig(QWEN25_05B, { where });
  assert.equal(q.attentionBias, true);
  assert.equal(q.HD, 64);
  assert.equal(q.slidingWindow, undefined, "use_sliding_window is false");
  assert.equal(q.rope.theta, 1e6);
});

Deno.test("parseConfig() reads transformers 5's rope_parameters", () => {
  const { rope_scaling: _, rope_theta: __, ...rest } = LLAMA31_8B;
  const c = parseConfig(
    { ...rest, rope_parameters: { ...LLAMA31_8B.rope_scaling, rope_theta: 500000 } },
    { where },
  );
  assert.deepEqual(c.rope, parseConfig(LLAMA31_8B, { where }).rope);
  const d = parseConfig({ ...rest, rope_parameters: { rope_type: "default", rope_theta: 1234 } }, {
    where,
  });
  assert.deepEqual(d.rope, { theta: 1234 });
});

Deno.test("parseConfig() falls back to model_type when architectures is absent", () => {
  const { architectures: _, ...rest } = MISTRAL_7B;
  assert.equal(parseConfig(rest, { where }).architecture, "MistralForCausalLM");
});

Deno.test("parseConfig() names each missing required field", async () => {
  for (
    const f of [
      "hidden_size",
      "num_attention_heads",
      "intermediate_size",
      "num_hidden_layers",
      "vocab_size",
    ]
  ) {
    const c: Record<string, unknown> = { ...LLAMA3_8B };
    delete c[f];
    await assertGqa(() => parseConfig(c, { where }), "bad-config", where, `"${f}" is missing`);
  }
});

Deno.test("parseConfig() rejects non-positive, non-integer and non-numeric sizes", async () => {
  for (const f of ["hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim"]) {
    for (const v of [0, -8, 2.5, "32", [32], 1e300]) {
      await assertGqa(
        () => parseConfig({ ...LLAMA3_8B, [f]: v }, { where }),
        "bad-config",
        `"${f}"`,
        "positive integer",
      );
    }
  }
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, rms_norm_eps: -1 }, { where }),
    "bad-config",
    "rms_norm_eps",
  );
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, rope_theta: 0 }, { where }),
    "bad-config",
    "rope_theta",
  );
});

Deno.test("parseConfig() rejects H not divisible by KV", async () => {
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, num_key_value_heads: 5 }, { where }),
    "bad-config",
    "num_attention_heads (32)",
    "num_key_value_heads (5)",
  );
});

Deno.test("parseConfig() rejects an odd head dimension", async () => {
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, head_dim: 127 }, { where }),
    "bad-config",
    "127",
    "odd",
  );
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, hidden_size: 32 * 3 }, { where }),
    "bad-config",
    "odd",
  );
});

Deno.test("parseConfig() rejects unsupported rope_scaling types", async () => {
  for (const type of ["linear", "dynamic", "yarn", "longrope"]) {
    await assertGqa(
      () => parseConfig({ ...LLAMA3_8B, rope_scaling: { type, factor: 2 } }, { where }),
      "unsupported",
      type,
      '"llama3"',
    );
  }
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, rope_scaling: { factor: 2 } }, { where }),
    "bad-config",
    "rope_type",
  );
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, rope_scaling: "llama3" }, { where }),
    "bad-config",
    "not an object",
  );
});

Deno.test("parseConfig() rejects incomplete or inconsistent llama3 scaling", async () => {
  const { low_freq_factor: _, ...noLow } = LLAMA31_8B.rope_scaling;
  await assertGqa(
    () => parseConfig({ ...LLAMA31_8B, rope_scaling: noLow }, { where }),
    "bad-config",
    '"low_freq_factor"',
  );
  await assertGqa(
    () =>
      parseConfig({
        ...LLAMA31_8B,
        rope_scaling: { ...LLAMA31_8B.rope_scaling, high_freq_factor: 1 },
      }, { where }),
    "bad-config",
    "high_freq_factor",
  );
  await assertGqa(
    () =>
      parseConfig({
        ...LLAMA31_8B,
        rope_scaling: { ...LLAMA31_8B.rope_scaling, original_max_position_embeddings: 81.5 },
      }, { where }),
    "bad-config",
    "integer",
  );
});

Deno.test("parseConfig() rejects an unsupported architecture, listing the supported ones", async () => {
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, architectures: ["GPT2LMHeadModel"] }, { where }),
    "unsupported",
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
  );
  const { architectures: _, ...rest } = LLAMA3_8B;
  await assertGqa(
    () => parseConfig({ ...rest, model_type: "gpt2" }, { where }),
    "bad-config",
    "model_type",
  );
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, architectures: "LlamaForCausalLM" }, { where }),
    "bad-config",
    "architectures",
  );
});

Deno.test("parseConfig() rejects features the kernels do not implement", async () => {
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, hidden_act: "gelu" }, { where }),
    "unsupported",
    "gelu",
  );
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, mlp_bias: true }, { where }),
    "unsupported",
    "mlp_bias",
  );
  await assertGqa(
    () => parseConfig({ ...LLAMA3_8B, attention_bias: true }, { where }),
    "unsupported",
    "o_proj",
  );
});

Deno.test("parseConfig()/parseConfigText() reject a config that is not a JSON object", async () => {
  await assertGqa(() => parseConfig([1], { where }), "bad-config", "not a JSON object");
  await assertGqa(() => parseConfig(null, { where }), "bad-config", "not a JSON object");
  await assertGqa(() => parseConfigText("{", { where }), "bad-config", where, "not valid JSON");
  assert.equal(parseConfigText(JSON.stringify(LLAMA3_8B), { where }).H, 32);
});

/** A tensor table for `cfg` with sequential offsets (no bytes behind it). */
function table(
  cfg: ModelConfig,
  dtype = "BF16",
  edit: (name: string, t: { dtype: string; shape: number[] }) => void = () => {},
): Map<string, TensorInfo & { file: string }> {
  const out = new Map<string, TensorInfo & { file: string }>();
  const bytes = dtype === "F32" ? 4 : 2;
  let at = 64;
  const names = ["model.embed_tokens.weight"];
  for (let l = 0; l < cfg.layers; l++) names.push(...layerTensorNames(cfg, l, "full"));
  for (const name of names) {
    const t = { dtype, shape: expectedShape(cfg, name)! };
    edit(name, t);
    const n = t.shape.reduce((p, d) => p * d, 1) * bytes;
    out.set(name, { name, ...t, begin: at, end: at + n, file: "model.safetensors" });
    at += n;
  }
  return out;
}

const SMALL = {
  architectures: ["LlamaForCausalLM"],
  hidden_size: 16,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  intermediate_size: 24,
  num_hidden_layers: 3,
  vocab_size: 50,
};

Deno.test("checkShapes() accepts a consistent checkpoint in F32, F16 and BF16", () => {
  const cfg = parseConfig(SMALL, { where });
  for (const dtype of ["F32", "F16", "BF16"]) {
    for (let l = 0; l < 3; l++) checkShapes(cfg, table(cfg, dtype), l);
  }
  const q = parseConfig({ ...SMALL, architectures: ["Qwen2ForCausalLM"] }, { where });
  checkShapes(q, table(q), 2);
});

Deno.test("checkShapes() explains head_dim inconsistent with the q_proj shape", async () => {
  // The checkpoint was made with head_dim 8 (q_proj (32, 16)); config.json omits it.
  const truth = parseConfig({ ...SMALL, head_dim: 8 }, { where });
  const cfg = parseConfig(SMALL, { where });
  await assertGqa(
    () => checkShapes(cfg, table(truth), 0),
    "bad-config",
    "model.layers.0.self_attn.q_proj.weight",
    "[32, 16]",
    "[16, 16]",
    "head dimension of 8",
  );
});

Deno.test("checkShapes() names a tensor with the wrong shape and both shapes", async () => {
  const cfg = parseConfig(SMALL, { where });
  await assertGqa(
    () =>
      checkShapes(
        cfg,
        table(cfg, "BF16", (n, t) => {
          if (n === "model.layers.1.mlp.down_proj.weight") t.shape = [24, 16];
        }),
        2,
      ),
    "bad-config",
    "model.layers.1.mlp.down_proj.weight",
    "[24, 16]",
    "[16, 24]",
  );
});

Deno.test("checkShapes() reports a missing tensor the plan needs", async () => {
  const cfg = parseConfig(SMALL, { where });
  const t = table(cfg);
  t.delete("model.layers.1.self_attn.k_proj.weight");
  checkShapes(cfg, t, 0); // layer 0 does not need layer 1
  await assertGqa(
    () => checkShapes(cfg, t, 1),
    "bad-file",
    '"model.layers.1.self_attn.k_proj.weight"',
    "model.safetensors",
  );
  const q = parseConfig({ ...SMALL, architectures: ["Qwen2ForCausalLM"] }, { where });
  await assertGqa(() => checkShapes(q, table(cfg), 0), "bad-file", "q_proj.bias");
});

Deno.test("checkShapes() rejects dtypes the kernels cannot read and mixed dtypes", async () => {
  const cfg = parseConfig(SMALL, { where });
  await assertGqa(() => checkShapes(cfg, table(cfg, "I8"), 0), "unsupported", "I8");
  await assertGqa(
    () =>
      checkShapes(
        cfg,
        table(cfg, "BF16", (n, t) => {
          if (n === "model.layers.1.self_attn.o_proj.weight") t.dtype = "F16";
        }),
        2,
      ),
    "unsupported",
    "model.layers.1.self_attn.o_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
  );
});

Deno.test("checkShapes() rejects a layer out of range, stating the valid range", async () => {
  const cfg = parseConfig(SMALL, { where });
  await assertGqa(() => checkShapes(cfg, table(cfg), 3), "bad-input", "0 to 2");
  await assertGqa(() => checkShapes(cfg, table(cfg), -1), "bad-input", "0 to 2");
});
