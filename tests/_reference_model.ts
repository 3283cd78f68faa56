/**
 * Loads a checkpoint's weights as f32 for the float64 reference (reference_llama.ts), with
 * none of the GPU path's code: the safetensors index, dtype decoding and nothing else.
 * @module
 */
import { parseConfigText } from "../model/config.ts";
import { openSource } from "../model/source/mod.ts";
import { loadTensorIndex } from "../model/tensors.ts";
import { decodeWeights, type WeightDtype } from "../kernels/dtype.ts";
import type { RefConfig, RefLayer } from "./reference_llama.ts";

/** The tiny model's weights as f32, read without any of the GPU path's code. */
export async function loadReference(dir: string) {
  const src = await openSource({ model: dir });
  const cfg = parseConfigText(await src.readText("config.json"), { where: dir });
  const tensors = await loadTensorIndex(src);
  const get = async (name: string) => {
    const t = tensors.get(name)!;
    return decodeWeights(await src.read(t.file, t.begin, t.end), t.dtype as WeightDtype);
  };
  const layers: RefLayer[] = [];
  for (let l = 0; l < cfg.layers; l++) {
    const p = `model.layers.${l}.`;
    layers.push({
      inputNorm: await get(p + "input_layernorm.weight"),
      q: await get(p + "self_attn.q_proj.weight"),
      k: await get(p + "self_attn.k_proj.weight"),
      v: await get(p + "self_attn.v_proj.weight"),
      ...(cfg.attentionBias
        ? {
          qBias: await get(p + "self_attn.q_proj.bias"),
          kBias: await get(p + "self_attn.k_proj.bias"),
          vBias: await get(p + "self_attn.v_proj.bias"),
        }
        : {}),
      o: await get(p + "self_attn.o_proj.weight"),
      postNorm: await get(p + "post_attention_layernorm.weight"),
      gate: await get(p + "mlp.gate_proj.weight"),
      up: await get(p + "mlp.up_proj.weight"),
      down: await get(p + "mlp.down_proj.weight"),
    });
  }
  const emb = await get("model.embed_tokens.weight");
  const s = cfg.rope.scaling;
  const ref: RefConfig = {
    D: cfg.D,
    H: cfg.H,
    KV: cfg.KV,
    HD: cfg.HD,
    I: cfg.I,
    eps: cfg.eps,
    theta: cfg.rope.theta,
    llama3: s && {
      factor: s.factor,
      low: s.lowFreqFactor,
      high: s.highFreqFactor,
      original: s.originalMaxPositionEmbeddings,
    },
  };
  const embeds = (ids: number[]) => {
    const x = new Float32Array(ids.length * cfg.D);
    ids.forEach((id, t) => x.set(emb.subarray(id * cfg.D, (id + 1) * cfg.D), t * cfg.D));
    return x;
  };
  return { cfg, ref, layers, embeds };
}
