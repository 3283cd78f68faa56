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
import { type Gpu, GpuError } from "./gpu.ts";
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

/**
 * Activation buffers for one layer, allocated once and reused by every layer.
 *
 * Long prompts run in token chunks of `Tc` tokens, so that no binding exceeds the adapter's
 * `maxStorageBufferBindingSize` (a (T, I) MLP activation of Llama-3-8B passes 128 MiB at
 * T ≈ 2,340). Every step but attention is token-local, so a chunk's rows go through the
 * norm, the projections, RoPE and the MLP on their own; attention reads the whole K and V
 * with the chunk's queries placed at their positions (qPos0). With one chunk (Tc = T, every
 * prompt that fits) the chunk buffers *are* the full ones and no copies are made.
 */
export interface LayerScratch {
  /** Tokens per chunk (= T unless the prompt exceeds one binding). */
  Tc: number;
  xn: GPUBuffer; //    (Tc, D)     normalised input of attention, then of the MLP
  q: GPUBuffer; //     (T, H*HD)
  k: GPUBuffer; //     (T, KV*HD)
  v: GPUBuffer; //     (T, KV*HD)
  attn: GPUBuffer; //  (Tc, H*HD)  attention output before o_proj
  out: GPUBuffer; //   (Tc, D)     o_proj output, then down_proj output
  gate: GPUBuffer; //  (Tc, I)
  up: GPUBuffer; //    (Tc, I)
  act: GPUBuffer; //   (Tc, I)     silu(gate) * up
  cos: GPUBuffer; //   (T, HD/2)   RoPE tables for positions 0..T-1 (+ offset)
  sin: GPUBuffer; //   (T, HD/2)
  /** Chunk copies when Tc < T (else the full buffers above and `x` itself). */
  chunk?: {
    x: GPUBuffer; //   (Tc, D)     the chunk's rows of the residual stream
    q: GPUBuffer; //   (Tc, H*HD)
    k: GPUBuffer; //   (Tc, KV*HD)
    v: GPUBuffer; //   (Tc, KV*HD)
    cos: GPUBuffer; // (Tc, HD/2)
    sin: GPUBuffer; // (Tc, HD/2)
  };
}

/** Options of {@linkcode allocScratch}. */
export interface ScratchOptions {
  /** Bytes one chunk buffer may hold (default and maximum `gpu.maxBindingBytes`); tests set it low. */
  maxBindingBytes?: number;
}

/**
 * Tokens per chunk for `dims`: T when every (T, width) activation fits in `limit` bytes,
 * else the largest multiple of 64 that does (64-token steps keep binding offsets aligned).
 */
export function tokensPerChunk(dims: LayerDims, limit: number): number {
  const { T, D, H, HD, I } = dims;
  const widest = Math.max(D, H * HD, I) * 4;
  if (T * widest <= limit) return T;
  const Tc = Math.floor(limit / widest / 64) * 64;
  if (Tc < 1) {
    throw new RangeError(`decoderLayer: 64 tokens of ${widest} bytes exceed a binding of ${limit}`);
  }
  return Tc;
}

/** Allocates the scratch buffers for `dims`; `cos`/`sin` are uploaded by the caller. */
export function allocScratch(gpu: Gpu, dims: LayerDims, opts: ScratchOptions = {}): LayerScratch {
  const { T, D, H, KV, HD, I } = dims;
  const limit = Math.min(opts.maxBindingBytes ?? gpu.maxBindingBytes, gpu.maxBindingBytes);
  const Tc = tokensPerChunk(dims, limit);
  if (T * KV * HD * 4 > gpu.maxBindingBytes) {
    throw new GpuError(
      `A prompt of ${T} tokens needs K and V of ${T * KV * HD * 4} bytes each, more than one ` +
        `storage binding (${gpu.maxBindingBytes} bytes) on ${gpu.adapterName}; attention ` +
        `reads all keys at once. Use a shorter prompt.`,
    );
  }
  const f = (n: number, label: string) => gpu.buffer(n * 4, label);
  return {
    Tc,
    xn: f(Tc * D, "xn"),
    q: f(T * H * HD, "q"),
    k: f(T * KV * HD, "k"),
    v: f(T * KV * HD, "v"),
    attn: f(Tc * H * HD, "attn"),
    out: f(Tc * D, "out"),
    gate: f(Tc * I, "gate"),
    up: f(Tc * I, "up"),
    act: f(Tc * I, "act"),
    cos: f(T * HD / 2, "cos"),
    sin: f(T * HD / 2, "sin"),
    chunk: Tc === T ? undefined : {
      x: f(Tc * D, "x chunk"),
      q: f(Tc * H * HD, "q chunk"),
      k: f(Tc * KV * HD, "k chunk"),
      v: f(Tc * KV * HD, "v chunk"),
      cos: f(Tc * HD / 2, "cos chunk"),
      sin: f(Tc * HD / 2, "sin chunk"),
    },
  };
}

/** Destroys every buffer of `s` (scratch is per prompt length). */
export function destroyScratch(s: LayerScratch): void {
  const { Tc: _, chunk, ...bufs } = s;
  for (const b of [...Object.values(bufs), ...Object.values(chunk ?? {})]) b.destroy();
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
  /**
   * "full" runs the whole layer; "qkv" stops after RoPE and fills `capture`; "attention"
   * stops after the attention residual (steps 1-6), and `start: "mlp"` runs the rest
   * (steps 7-9), so a caller can submit a layer in two halves.
   */
  stop?: "full" | "qkv" | "attention";
  start?: "input" | "mlp";
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
  const { T, H, KV, HD } = a.dims;
  const Tc = a.s.Tc;
  const stop = a.stop ?? "full";
  const chunks = (f: typeof projectChunk) => {
    for (let t0 = 0; t0 < T; t0 += Tc) f(gpu, encoder, a, t0, Math.min(Tc, T - t0));
  };
  if (a.start !== "mlp") {
    chunks(projectChunk); // steps 1-4 for every token: K and V complete before attention
    const c = a.capture;
    // The attention weights, (H, T, T): only to show them; attention() below never needs them.
    if (c?.attn) {
      attentionProbs(gpu, encoder, { q: a.s.q, k: a.s.k, probs: c.attn, T, H, KV, HD });
    }
    if (stop === "qkv") return;
    if (!a.w.o) throw new Error("decoderLayer: a full layer needs the o_proj weights");
    chunks(attendChunk); // steps 5-6
    if (stop === "attention") return;
  }
  const { w } = a;
  if (!w.postNorm || !w.gate || !w.up || !w.down) {
    throw new Error("decoderLayer: the MLP needs postNorm, gate, up and down weights");
  }
  chunks(mlpChunk); // steps 7-9
}

type StepName = (typeof LAYER_STEPS)[number];

function stepper(gpu: Gpu, encoder: GPUCommandEncoder, check?: FiniteCheck) {
  return (name: StepName, buf: GPUBuffer, n: number) =>
    check && finiteCheck(gpu, encoder, { check, step: LAYER_STEPS.indexOf(name), x: buf, n });
}

/**
 * Copies rows [t0, t0 + n) of width `width` f32 between a full buffer (the layer's, or a
 * capture buffer) and a chunk buffer; nothing when they are one buffer (no chunking).
 */
function rows(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  dir: "in" | "out",
  full: GPUBuffer,
  chunk: GPUBuffer,
  r: { t0: number; n: number; width: number },
): void {
  if (full === chunk) return;
  const off = r.t0 * r.width * 4, bytes = r.n * r.width * 4;
  if (dir === "in") gpu.copy(encoder, full, off, chunk, 0, bytes);
  else gpu.copy(encoder, chunk, 0, full, off, bytes);
}

/** Steps 1-4 for tokens [t0, t0 + n): input norm, q/k/v, capture, RoPE; K and V stored. */
function projectChunk(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  a: DecoderLayerArgs,
  t0: number,
  n: number,
): void {
  const { dims, w, s } = a;
  const { D, H, KV, HD, eps } = dims;
  const step = stepper(gpu, encoder, a.check);
  const c = s.chunk;
  const x = c?.x ?? a.x, q = c?.q ?? s.q, k = c?.k ?? s.k, v = c?.v ?? s.v;
  rows(gpu, encoder, "in", a.x, x, { t0, n, width: D });

  // 1. Attention input: xn = rmsnorm(x) · input_layernorm
  rmsnorm(gpu, encoder, { x, w: w.inputNorm, y: s.xn, T: n, D, eps });
  step("input_layernorm", s.xn, n * D);

  // 2. Projections. GQA shows here: q has H heads, k and v only KV heads.
  matmul(gpu, encoder, { x: s.xn, w: w.q, y: q, T: n, bias: w.qBias }); // (T, H*HD)
  step("q_proj", q, n * H * HD);
  matmul(gpu, encoder, { x: s.xn, w: w.k, y: k, T: n, bias: w.kBias }); // (T, KV*HD)
  step("k_proj", k, n * KV * HD);
  matmul(gpu, encoder, { x: s.xn, w: w.v, y: v, T: n, bias: w.vBias }); // (T, KV*HD)
  step("v_proj", v, n * KV * HD);

  // 3. Capture point: K exactly as it leaves k_proj (what a PyTorch forward hook sees).
  const cap = a.capture;
  if (cap) {
    rows(gpu, encoder, "out", cap.q, q, { t0, n, width: H * HD });
    rows(gpu, encoder, "out", cap.k, k, { t0, n, width: KV * HD });
    rows(gpu, encoder, "out", cap.v, v, { t0, n, width: KV * HD });
  }

  // 4. Rotary position embedding on q and k (rotate_half convention), in place.
  const cos = c?.cos ?? s.cos, sin = c?.sin ?? s.sin;
  rows(gpu, encoder, "in", s.cos, cos, { t0, n, width: HD / 2 });
  rows(gpu, encoder, "in", s.sin, sin, { t0, n, width: HD / 2 });
  rope(gpu, encoder, { x: q, cos, sin, T: n, heads: H, HD });
  rope(gpu, encoder, { x: k, cos, sin, T: n, heads: KV, HD });
  step("rope", k, n * KV * HD);
  if (cap) {
    rows(gpu, encoder, "out", cap.kRope, k, { t0, n, width: KV * HD });
    rows(gpu, encoder, "out", cap.qRope, q, { t0, n, width: H * HD });
  }
  rows(gpu, encoder, "out", s.q, q, { t0, n, width: H * HD });
  rows(gpu, encoder, "out", s.k, k, { t0, n, width: KV * HD });
  rows(gpu, encoder, "out", s.v, v, { t0, n, width: KV * HD });
}

/** Steps 5-6 for tokens [t0, t0 + n): attention over keys 0..t, o_proj, first residual. */
function attendChunk(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  a: DecoderLayerArgs,
  t0: number,
  n: number,
): void {
  const { dims, s } = a;
  const w = a.w as Required<LayerWeights>;
  const { D, H, KV, HD } = dims;
  const step = stepper(gpu, encoder, a.check);
  const c = s.chunk;
  const x = c?.x ?? a.x, q = c?.q ?? s.q;
  rows(gpu, encoder, "in", s.q, q, { t0, n, width: H * HD });

  // 5. Causal attention; query head h reads KV head floor(h / (H/KV)) — no copies of K/V.
  attention(gpu, encoder, { q, k: s.k, v: s.v, out: s.attn, T: n, H, KV, HD, qPos0: t0 });
  step("attention", s.attn, n * H * HD);

  // 6. Output projection and the first residual: x += attn · Woᵀ
  matmul(gpu, encoder, { x: s.attn, w: w.o, y: s.out, T: n }); // (T, D)
  step("o_proj", s.out, n * D);
  rows(gpu, encoder, "in", a.x, x, { t0, n, width: D });
  add(gpu, encoder, { x, y: s.out, n: n * D });
  step("attention residual", x, n * D);
  rows(gpu, encoder, "out", a.x, x, { t0, n, width: D });
}

/** Steps 7-9 for tokens [t0, t0 + n): x += mlp(rmsnorm(x)). */
function mlpChunk(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  a: DecoderLayerArgs,
  t0: number,
  n: number,
): void {
  const { dims, s } = a;
  const w = a.w as Required<LayerWeights>;
  const { D, I, eps } = dims;
  const step = stepper(gpu, encoder, a.check);
  const x = s.chunk?.x ?? a.x;
  rows(gpu, encoder, "in", a.x, x, { t0, n, width: D });

  // 7. MLP input: xn = rmsnorm(x) · post_attention_layernorm
  rmsnorm(gpu, encoder, { x, w: w.postNorm, y: s.xn, T: n, D, eps });
  step("post_attention_layernorm", s.xn, n * D);

  // 8. SwiGLU MLP: act = silu(xn · Wgateᵀ) ⊙ (xn · Wupᵀ)   (T, I)
  matmul(gpu, encoder, { x: s.xn, w: w.gate, y: s.gate, T: n });
  step("gate_proj", s.gate, n * I);
  matmul(gpu, encoder, { x: s.xn, w: w.up, y: s.up, T: n });
  step("up_proj", s.up, n * I);
  swiglu(gpu, encoder, { gate: s.gate, up: s.up, out: s.act, n: n * I });
  step("silu(gate)*up", s.act, n * I);

  // 9. Down projection and the second residual: x += act · Wdownᵀ
  matmul(gpu, encoder, { x: s.act, w: w.down, y: s.out, T: n }); // (T, D)
  step("down_proj", s.out, n * D);
  add(gpu, encoder, { x, y: s.out, n: n * D });
  step("mlp residual", x, n * D);
  rows(gpu, encoder, "out", a.x, x, { t0, n, width: D });
}
