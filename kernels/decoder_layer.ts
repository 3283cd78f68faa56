/**
 * One Llama decoder layer, composed from the kernels in this folder and recorded into one
 * command encoder. This is `LlamaDecoderLayer.forward` from transformers, step by step:
 *
 * ```
 *  x (T, D) ─┬─ rmsnorm(input_layernorm) ─► xn
 *            │   q = xn·Wqᵀ (T, H·HD)   k = xn·Wkᵀ (T, KV·HD)   v = xn·Wvᵀ (T, KV·HD)
 *            │   ◄── capture point: Q, K, V as they leave the projections
 *            │   rope(q), rope(k)                 ◄── capture point: K after RoPE
 *            │   a = attention(q, k, v)  (T, H·HD)  query head h reads KV head h / (H/KV)
 *            └─► x += a·Woᵀ
 *  x ────────┬─ rmsnorm(post_attention_layernorm) ─► xn
 *            │   m = silu(xn·Wgateᵀ) ⊙ (xn·Wupᵀ)   (T, I)
 *            └─► x += m·Wdownᵀ
 * ```
 *
 * The residual stream `x` stays on the GPU from layer to layer; every layer reuses the same
 * weight and scratch buffers (all layers have the same shapes), so device memory is one
 * layer of weights plus activations, whatever the depth.
 *
 * With `capture` the layer copies Q, K, Q and K after RoPE, and V into capture buffers (and,
 * when asked, computes the attention weights into one); with `stop: "qkv"` it stops there:
 * that is all the GQA picture needs from the deepest captured layer.
 * @module
 */
import type { Gpu } from "./gpu.ts";
import { type GpuMatrix, matmul } from "./matmul.ts";
import { rmsnorm } from "./rmsnorm.ts";
import { rope } from "./rope.ts";
import { attention } from "./attention.ts";
import { attentionProbs } from "./attention_probs.ts";
import { swiglu } from "./swiglu.ts";
import { add } from "./add.ts";
import { type FiniteCheck, finiteCheck } from "./finite_check.ts";

/** The shapes of one layer, in the project's vocabulary. */
export interface LayerDims {
  /** Tokens in the prompt. */
  T: number;
  /** Model width (hidden_size). */
  D: number;
  /** Query heads. */
  H: number;
  /** Key/value heads; H / KV query heads share each. */
  KV: number;
  /** Head dimension. */
  HD: number;
  /** MLP width (intermediate_size). */
  I: number;
  /** RMSNorm epsilon (rms_norm_eps). */
  eps: number;
}

/**
 * One layer's weights on the GPU. Matrices keep their stored dtype; norm weights and
 * biases are small and uploaded as f32. `o`, `postNorm`, `gate`, `up`, `down` may be
 * absent for the capture layer, which stops after the projections.
 */
export interface LayerWeights {
  inputNorm: GPUBuffer; //           f32 (D)
  q: GpuMatrix; //                   (H*HD, D)
  k: GpuMatrix; //                   (KV*HD, D)
  v: GpuMatrix; //                   (KV*HD, D)
  qBias?: GPUBuffer; //              f32 (H*HD)
  kBias?: GPUBuffer; //              f32 (KV*HD)
  vBias?: GPUBuffer; //              f32 (KV*HD)
  o?: GpuMatrix; //                  (D, H*HD)
  postNorm?: GPUBuffer; //           f32 (D)
  gate?: GpuMatrix; //               (I, D)
  up?: GpuMatrix; //                 (I, D)
  down?: GpuMatrix; //               (D, I)
}

/** Activation buffers for one layer, allocated once and reused by every layer. */
export interface LayerScratch {
  xn: GPUBuffer; //    (T, D)      normalised input of attention, then of the MLP
  q: GPUBuffer; //     (T, H*HD)
  k: GPUBuffer; //     (T, KV*HD)
  v: GPUBuffer; //     (T, KV*HD)
  attn: GPUBuffer; //  (T, H*HD)   attention output before o_proj
  out: GPUBuffer; //   (T, D)      o_proj output, then down_proj output
  gate: GPUBuffer; //  (T, I)
  up: GPUBuffer; //    (T, I)
  act: GPUBuffer; //   (T, I)      silu(gate) * up
  cos: GPUBuffer; //   (T, HD/2)   RoPE tables for positions 0..T-1 (+ offset)
  sin: GPUBuffer; //   (T, HD/2)
}

/** Buffers that receive the captured tensors at the capture layer. */
export interface CaptureBuffers {
  q: GPUBuffer; //     (T, H*HD)   as it leaves q_proj
  k: GPUBuffer; //     (T, KV*HD)  as it leaves k_proj
  kRope: GPUBuffer; // (T, KV*HD)  after RoPE
  qRope: GPUBuffer; // (T, H*HD)   after RoPE
  v: GPUBuffer; //     (T, KV*HD)
  /** Causal softmax attention weights (H, T, T) from q and k after RoPE, when present. */
  attn?: GPUBuffer;
}

/** Allocates the scratch buffers for `dims`; `cos`/`sin` are uploaded by the caller. */
export function allocScratch(gpu: Gpu, dims: LayerDims): LayerScratch {
  const { T, D, H, KV, HD, I } = dims;
  const f = (n: number, label: string) => gpu.buffer(n * 4, label);
  return {
    xn: f(T * D, "xn"),
    q: f(T * H * HD, "q"),
    k: f(T * KV * HD, "k"),
    v: f(T * KV * HD, "v"),
    attn: f(T * H * HD, "attn"),
    out: f(T * D, "out"),
    gate: f(T * I, "gate"),
    up: f(T * I, "up"),
    act: f(T * I, "act"),
    cos: f(T * HD / 2, "cos"),
    sin: f(T * HD / 2, "sin"),
  };
}

/** Allocates capture buffers for `dims` (with the attention weights when `attn` is true). */
export function allocCapture(
  gpu: Gpu,
  dims: LayerDims,
  opts: { attn?: boolean } = {},
): CaptureBuffers {
  const { T, H, KV, HD } = dims;
  return {
    ...(opts.attn ? { attn: gpu.buffer(H * T * T * 4, "capture attn") } : {}),
    q: gpu.buffer(T * H * HD * 4, "capture q"),
    k: gpu.buffer(T * KV * HD * 4, "capture k"),
    kRope: gpu.buffer(T * KV * HD * 4, "capture kRope"),
    qRope: gpu.buffer(T * H * HD * 4, "capture qRope"),
    v: gpu.buffer(T * KV * HD * 4, "capture v"),
  };
}

/** The steps of a layer, in order; the non-finite check names the first one that failed. */
export const LAYER_STEPS = [
  "input_layernorm",
  "q_proj",
  "k_proj",
  "v_proj",
  "rope",
  "attention",
  "o_proj",
  "attention residual",
  "post_attention_layernorm",
  "gate_proj",
  "up_proj",
  "silu(gate)*up",
  "down_proj",
  "mlp residual",
] as const;

/** Arguments of {@linkcode decoderLayer}. */
export interface DecoderLayerArgs {
  dims: LayerDims;
  w: LayerWeights;
  /** The residual stream (T, D), read and updated in place. */
  x: GPUBuffer;
  s: LayerScratch;
  /** "full" runs the whole layer; "qkv" stops after RoPE and fills `capture`. */
  stop?: "full" | "qkv";
  capture?: CaptureBuffers;
  /** Records a non-finite check after every step (see finite_check.ts). */
  check?: FiniteCheck;
}

/**
 * Records one decoder layer into `encoder`.
 *
 * @example
 * ```ts ignore
 * const enc = gpu.device.createCommandEncoder();
 * decoderLayer(gpu, enc, { dims, w, x, s });            // layers 0..L-1
 * decoderLayer(gpu, enc, { dims, w, x, s, stop: "qkv", capture }); // layer L
 * await gpu.submit(enc);
 * ```
 */
export function decoderLayer(gpu: Gpu, encoder: GPUCommandEncoder, a: DecoderLayerArgs): void {
  const { dims, w, x, s, check } = a;
  const { T, D, H, KV, HD, I, eps } = dims;
  const stop = a.stop ?? "full";
  const step = (name: (typeof LAYER_STEPS)[number], buf: GPUBuffer, n: number) =>
    check && finiteCheck(gpu, encoder, { check, step: LAYER_STEPS.indexOf(name), x: buf, n });

  // 1. Attention input: xn = rmsnorm(x) · input_layernorm
  rmsnorm(gpu, encoder, { x, w: w.inputNorm, y: s.xn, T, D, eps });
  step("input_layernorm", s.xn, T * D);

  // 2. Projections. GQA shows here: q has H heads, k and v only KV heads.
  matmul(gpu, encoder, { x: s.xn, w: w.q, y: s.q, T, bias: w.qBias }); // (T, H*HD)
  step("q_proj", s.q, T * H * HD);
  matmul(gpu, encoder, { x: s.xn, w: w.k, y: s.k, T, bias: w.kBias }); // (T, KV*HD)
  step("k_proj", s.k, T * KV * HD);
  matmul(gpu, encoder, { x: s.xn, w: w.v, y: s.v, T, bias: w.vBias }); // (T, KV*HD)
  step("v_proj", s.v, T * KV * HD);

  // 3. Capture point: K exactly as it leaves k_proj (what a PyTorch forward hook sees).
  const c = a.capture;
  if (c) {
    encoder.copyBufferToBuffer(s.q, 0, c.q, 0, T * H * HD * 4);
    encoder.copyBufferToBuffer(s.k, 0, c.k, 0, T * KV * HD * 4);
    encoder.copyBufferToBuffer(s.v, 0, c.v, 0, T * KV * HD * 4);
  }

  // 4. Rotary position embedding on q and k (rotate_half convention), in place.
  rope(gpu, encoder, { x: s.q, cos: s.cos, sin: s.sin, T, heads: H, HD });
  rope(gpu, encoder, { x: s.k, cos: s.cos, sin: s.sin, T, heads: KV, HD });
  step("rope", s.k, T * KV * HD);
  if (c) {
    encoder.copyBufferToBuffer(s.k, 0, c.kRope, 0, T * KV * HD * 4);
    encoder.copyBufferToBuffer(s.q, 0, c.qRope, 0, T * H * HD * 4);
    // The attention weights, (H, T, T): only to show them; attention() below never needs them.
    if (c.attn) attentionProbs(gpu, encoder, { q: s.q, k: s.k, probs: c.attn, T, H, KV, HD });
  }
  if (stop === "qkv") return;

  if (!w.o || !w.postNorm || !w.gate || !w.up || !w.down) {
    throw new Error("decoderLayer: a full layer needs o, postNorm, gate, up and down weights");
  }

  // 5. Causal attention; query head h reads KV head floor(h / (H/KV)) — no copies of K/V.
  attention(gpu, encoder, { q: s.q, k: s.k, v: s.v, out: s.attn, T, H, KV, HD });
  step("attention", s.attn, T * H * HD);

  // 6. Output projection and the first residual: x += attn · Woᵀ
  matmul(gpu, encoder, { x: s.attn, w: w.o, y: s.out, T }); // (T, D)
  step("o_proj", s.out, T * D);
  add(gpu, encoder, { x, y: s.out, n: T * D });
  step("attention residual", x, T * D);

  // 7. MLP input: xn = rmsnorm(x) · post_attention_layernorm
  rmsnorm(gpu, encoder, { x, w: w.postNorm, y: s.xn, T, D, eps });
  step("post_attention_layernorm", s.xn, T * D);

  // 8. SwiGLU MLP: act = silu(xn · Wgateᵀ) ⊙ (xn · Wupᵀ)   (T, I)
  matmul(gpu, encoder, { x: s.xn, w: w.gate, y: s.gate, T });
  step("gate_proj", s.gate, T * I);
  matmul(gpu, encoder, { x: s.xn, w: w.up, y: s.up, T });
  step("up_proj", s.up, T * I);
  swiglu(gpu, encoder, { gate: s.gate, up: s.up, out: s.act, n: T * I });
  step("silu(gate)*up", s.act, T * I);

  // 9. Down projection and the second residual: x += act · Wdownᵀ
  matmul(gpu, encoder, { x: s.act, w: w.down, y: s.out, T }); // (T, D)
  step("down_proj", s.out, T * D);
  add(gpu, encoder, { x, y: s.out, n: T * D });
  step("mlp residual", x, T * D);
}
