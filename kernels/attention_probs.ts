/**
 * attentionProbs: the attention weights themselves, as Hugging Face's eager attention
 * returns them with `output_attentions=True`:
 *
 *   scores[h, t, j] = q[t, h] · k[j, g] / √HD          g = ⌊h / (H/KV)⌋ (repeat_kv)
 *   probs[h, t, :]  = softmax_j(scores[h, t, j] + mask[t, j])   in f32
 *   mask[t, j]      = 0 for j ≤ t, −∞ for j > t   →   probs[h, t, j] = 0 exactly for j > t
 *
 * q and k are taken after RoPE (what attention sees). The output is (H, T, T), head-major,
 * the layout of `attn_weights[0]` in transformers, so row (h, t) is the T floats at
 * (h·T + t)·T. The [`attention`](./attention.ts) kernel never materialises these: it folds
 * the softmax into an online sum. This kernel exists to show them.
 *
 * Invocations: one per row (h, t), 64 per workgroup on a 2-D grid. Each walks the keys
 * j = 0..t twice: first writing the scaled scores into its own output row and keeping the
 * max, then replacing each by exp(s − max) and summing, then dividing by the sum; keys
 * j > t are written 0. Every exponent is ≤ 0, so large scores cannot overflow, and the row
 * of the output is the only scratch memory.
 * @module
 */
import { type Gpu, grid2d } from "./gpu.ts";

const WG = 64;

/** WGSL of the kernel (q and k read as f32; HD any size). */
function shader(): string {
  return /* wgsl */ `
struct Params { T: u32, H: u32, KV: u32, HD: u32, scale: f32 }
@group(0) @binding(0) var<storage, read> q: array<f32>;           // (T, H*HD) after RoPE
@group(0) @binding(1) var<storage, read> k: array<f32>;           // (T, KV*HD) after RoPE
@group(0) @binding(2) var<storage, read_write> probs: array<f32>; // (H, T, T)
@group(0) @binding(3) var<uniform> p: Params;

const WG = ${WG}u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) grid: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = (wg.x + wg.y * grid.x) * WG + lid; // h * T + t
  if (row >= p.H * p.T) { return; }
  let h = row / p.T;
  let t = row % p.T;
  let g = h / (p.H / p.KV); // GQA: the KV head that query head h reads
  let qo = (t * p.H + h) * p.HD; // q[t, h, :]
  let out = row * p.T; //          probs[h, t, :]

  var m = -3.4028235e38;
  for (var j = 0u; j <= t; j++) {
    let ko = (j * p.KV + g) * p.HD; // k[j, g, :]
    var dot = 0.0;
    for (var d = 0u; d < p.HD; d++) { dot += q[qo + d] * k[ko + d]; }
    let s = dot * p.scale;
    probs[out + j] = s;
    m = max(m, s);
  }
  var sum = 0.0;
  for (var j = 0u; j <= t; j++) {
    let e = exp(probs[out + j] - m);
    probs[out + j] = e;
    sum += e;
  }
  for (var j = 0u; j <= t; j++) { probs[out + j] /= sum; }
  for (var j = t + 1u; j < p.T; j++) { probs[out + j] = 0.0; } // the causal mask
}`;
}

/** Arguments of {@linkcode attentionProbs}. */
export interface AttentionProbsArgs {
  /** Queries after RoPE, f32 (T, H·HD). */
  q: GPUBuffer;
  /** Keys after RoPE, f32 (T, KV·HD). */
  k: GPUBuffer;
  /** Output, f32 (H, T, T): row (h, t) at (h·T + t)·T. */
  probs: GPUBuffer;
  T: number;
  H: number;
  KV: number;
  HD: number;
}

/**
 * Records the causal softmax attention weights (H, T, T); query head h reads KV head
 * ⌊h / (H/KV)⌋.
 *
 * @example
 * ```ts ignore
 * attentionProbs(gpu, encoder, { q: qRope, k: kRope, probs, T, H: 32, KV: 8, HD: 128 });
 * ```
 */
export function attentionProbs(gpu: Gpu, encoder: GPUCommandEncoder, a: AttentionProbsArgs) {
  const { T, H, KV, HD } = a;
  if (!(KV > 0 && H % KV === 0)) {
    throw new RangeError(`attentionProbs: H=${H} must be a multiple of KV=${KV}`);
  }
  if (a.q.size < T * H * HD * 4 || a.k.size < T * KV * HD * 4 || a.probs.size < H * T * T * 4) {
    throw new RangeError(`attentionProbs: buffers too small for T=${T}, H=${H}, KV=${KV}`);
  }
  if (T * H * HD === 0) return;
  const words = new ArrayBuffer(20);
  new Uint32Array(words, 0, 4).set([T, H, KV, HD]);
  new Float32Array(words, 16, 1)[0] = 1 / Math.sqrt(HD);
  const params = gpu.uniform(new Uint32Array(words));
  const bindings = [a.q, a.k, a.probs, params];
  gpu.dispatch(encoder, gpu.pipeline(shader()), bindings, grid2d(Math.ceil((T * H) / WG)));
}

/**
 * CPU reference of {@linkcode attentionProbs} in float64: (H, T, T), zeros above the
 * diagonal.
 *
 * @example
 * ```ts
 * // One head, two tokens, equal scores: token 1 splits its attention evenly.
 * const p = attentionProbsRef({
 *   q: new Float32Array([1, 0, 1, 0]), k: new Float32Array([1, 0, 1, 0]), T: 2, H: 1, KV: 1, HD: 2,
 * });
 * // p = [1, 0, 0.5, 0.5]
 * ```
 */
export function attentionProbsRef(a: {
  q: ArrayLike<number>;
  k: ArrayLike<number>;
  T: number;
  H: number;
  KV: number;
  HD: number;
}): Float64Array {
  const { q, k, T, H, KV, HD } = a;
  const probs = new Float64Array(H * T * T); // (H, T, T)
  const scale = 1 / Math.sqrt(HD);
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / (H / KV));
    for (let t = 0; t < T; t++) {
      const row = (h * T + t) * T;
      let max = -Infinity;
      for (let j = 0; j <= t; j++) {
        let dot = 0;
        for (let d = 0; d < HD; d++) dot += q[(t * H + h) * HD + d] * k[(j * KV + g) * HD + d];
        probs[row + j] = dot * scale;
        max = Math.max(max, probs[row + j]);
      }
      let sum = 0;
      for (let j = 0; j <= t; j++) sum += probs[row + j] = Math.exp(probs[row + j] - max);
      for (let j = 0; j <= t; j++) probs[row + j] /= sum;
    }
  }
  return probs;
}
