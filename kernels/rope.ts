/**
 * rope: rotary position embedding in Hugging Face's `rotate_half` convention, applied in
 * place to Q (T, H·HD) or K (T, KV·HD).
 *
 * Within each head, dimension i < HD/2 is paired with i + HD/2 (the two halves, not
 * neighbours) and the pair is rotated by the angle pos · inv_freq[i]:
 *
 *   out[i]        = x[i] · cos − x[i + HD/2] · sin
 *   out[i + HD/2] = x[i + HD/2] · cos + x[i] · sin        pos = posOffset + t
 *
 * which is `q * cos + rotate_half(q) * sin` with `rotate_half(x) = cat(−x2, x1)`.
 *
 * Frequencies (transformers `modeling_rope_utils.py`, all in float32):
 *   default: inv_freq[i] = 1 / theta^(2i / HD)
 *   llama3:  with wavelen = 2π / inv_freq, low_freq_wavelen = original / low_freq_factor,
 *            high_freq_wavelen = original / high_freq_factor:
 *              wavelen < high_freq_wavelen → inv_freq (unchanged)
 *              wavelen > low_freq_wavelen  → inv_freq / factor
 *              otherwise smooth = (original / wavelen − low_freq_factor)
 *                                 / (high_freq_factor − low_freq_factor)
 *                        inv_freq' = (1 − smooth) · inv_freq / factor + smooth · inv_freq
 *
 * The cos/sin tables (T, HD/2) are computed on the CPU by {@linkcode ropeTables}, the way
 * HF does: the angle is the float32 product pos · inv_freq, then cos and sin of it (here in
 * float64, rounded to f32). The GPU never evaluates cos of large arguments, whose accuracy
 * WGSL leaves to the implementation.
 *
 * Layouts:  x (T, heads·HD) f32, updated in place   cos, sin (T, HD/2) f32.
 *
 * Invocations: one per rotated pair (t, head, i): T · heads · HD/2 of them, flat index
 * ((t · heads + head) · HD/2 + i), 64 per workgroup, workgroups on a 2-D grid.
 * @module
 */
import { type Gpu, grid2d } from "./gpu.ts";
import { GqaError } from "../errors.ts";

/** RoPE settings from config.json (`rope_theta`, `rope_scaling`). */
export interface RopeConfig {
  /** `rope_theta` (10000 for Llama 2, 500000 for Llama 3). */
  theta: number;
  /** `rope_scaling` of type "llama3" (Llama 3.1 and later); absent for plain RoPE. */
  scaling?: {
    type: "llama3";
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositionEmbeddings: number;
  };
}

const WG = 64;

const SHADER = /* wgsl */ `
struct Params { T: u32, heads: u32, HD: u32 }
@group(0) @binding(0) var<storage, read_write> x: array<f32>; // (T, heads*HD)
@group(0) @binding(1) var<storage, read> cosT: array<f32>;    // (T, HD/2)
@group(0) @binding(2) var<storage, read> sinT: array<f32>;    // (T, HD/2)
@group(0) @binding(3) var<uniform> p: Params;

const WG = ${WG}u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) grid: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let half = p.HD / 2u;
  let pair = (wg.x + wg.y * grid.x) * WG + lid; // ((t * heads + head) * half + i)
  if (pair >= p.T * p.heads * half) { return; }
  let i = pair % half;
  let row = pair / half; //  t * heads + head
  let t = row / p.heads;
  let a = row * p.HD + i; // x[t, head, i]
  let b = a + half; //       x[t, head, i + HD/2]
  let c = cosT[t * half + i];
  let s = sinT[t * half + i];
  let x1 = x[a];
  let x2 = x[b];
  x[a] = x1 * c - x2 * s;
  x[b] = x2 * c + x1 * s;
}`;

const f32 = Math.fround;

/**
 * inv_freq (HD/2) exactly as transformers computes it in float32: `_compute_default_rope_parameters`
 * and, with `scaling`, `_compute_llama3_parameters`. Every intermediate is rounded to f32
 * as torch does; only `pow` may differ from torch's by an ulp.
 *
 * @example
 * ```ts
 * import { ropeInvFreq } from "./rope.ts";
 * ropeInvFreq(4, { theta: 10000 }); // Float32Array [1, 0.01]
 * ```
 */
export function ropeInvFreq(HD: number, cfg: RopeConfig): Float32Array {
  if (!Number.isInteger(HD) || HD < 2 || HD % 2 !== 0) {
    throw new GqaError(
      "unsupported",
      `RoPE needs an even head dimension, but head_dim is ${HD}. Rotary embeddings rotate ` +
        `pairs of dimensions (i, i + head_dim/2); check head_dim (or hidden_size / ` +
        `num_attention_heads) in config.json.`,
    );
  }
  const half = HD / 2;
  const inv = new Float32Array(half);
  const theta = f32(cfg.theta);
  for (let i = 0; i < half; i++) inv[i] = f32(1 / f32(Math.pow(theta, f32((2 * i) / HD))));
  const s = cfg.scaling;
  if (!s) return inv;

  const old = f32(s.originalMaxPositionEmbeddings);
  const lowWavelen = f32(old / s.lowFreqFactor);
  const highWavelen = f32(old / s.highFreqFactor);
  const twoPi = f32(2 * Math.PI);
  const span = f32(s.highFreqFactor - s.lowFreqFactor);
  const factor = f32(s.factor);
  for (let i = 0; i < half; i++) {
    const f = inv[i];
    const wavelen = f32(twoPi / f);
    if (wavelen < highWavelen) continue; // high frequency: unchanged
    if (wavelen > lowWavelen) { //          low frequency: slowed down by `factor`
      inv[i] = f32(f / factor);
      continue;
    }
    const smooth = f32(f32(f32(old / wavelen) - f32(s.lowFreqFactor)) / span);
    inv[i] = f32(f32(f32(f32(1 - smooth) * f) / factor) + f32(smooth * f));
  }
  return inv;
}

/**
 * The cos and sin tables, each (T, HD/2), for positions posOffset .. posOffset + T − 1:
 * angle = f32(pos · inv_freq[i]) (float32, as HF's `inv_freq @ position_ids`), then cos and
 * sin in float64, stored as f32. Upload them once per prompt; every layer uses the same.
 *
 * @example
 * ```ts
 * import { ropeTables } from "./rope.ts";
 * const { cos, sin } = ropeTables({ T: 3, HD: 4, cfg: { theta: 10000 } });
 * cos[2]; // cos(1 · 1) at t = 1, i = 0: 0.5403023
 * ```
 */
export function ropeTables(
  a: { T: number; HD: number; cfg: RopeConfig; posOffset?: number },
): { cos: Float32Array; sin: Float32Array } {
  const { T, HD } = a;
  const posOffset = a.posOffset ?? 0;
  const inv = ropeInvFreq(HD, a.cfg);
  const half = HD / 2;
  const cos = new Float32Array(T * half); // (T, HD/2)
  const sin = new Float32Array(T * half); // (T, HD/2)
  for (let t = 0; t < T; t++) {
    const pos = f32(posOffset + t);
    for (let i = 0; i < half; i++) {
      const angle = f32(pos * inv[i]);
      cos[t * half + i] = Math.cos(angle);
      sin[t * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/** Arguments of {@linkcode rope}. */
export interface RopeArgs {
  /** Q or K, f32 (T, heads·HD), rotated in place. */
  x: GPUBuffer;
  /** cos table, f32 (T, HD/2), from {@linkcode ropeTables}. */
  cos: GPUBuffer;
  /** sin table, f32 (T, HD/2). */
  sin: GPUBuffer;
  T: number;
  /** H for Q, KV for K. */
  heads: number;
  HD: number;
}

/**
 * Records the rotation of every head of x by the angles in the cos/sin tables.
 *
 * @example
 * ```ts ignore
 * const { cos, sin } = ropeTables({ T, HD, cfg: config.rope });
 * const cosBuf = gpu.upload(cos), sinBuf = gpu.upload(sin);
 * rope(gpu, encoder, { x: q, cos: cosBuf, sin: sinBuf, T, heads: H, HD });
 * rope(gpu, encoder, { x: k, cos: cosBuf, sin: sinBuf, T, heads: KV, HD });
 * ```
 */
export function rope(gpu: Gpu, encoder: GPUCommandEncoder, a: RopeArgs): void {
  const { T, heads, HD } = a;
  if (HD % 2 !== 0) throw new RangeError(`rope: HD must be even, got ${HD}`);
  const half = HD / 2;
  if (a.x.size < T * heads * HD * 4 || a.cos.size < T * half * 4 || a.sin.size < T * half * 4) {
    throw new RangeError(`rope: buffers too small for T=${T}, heads=${heads}, HD=${HD}`);
  }
  const pairs = T * heads * half;
  if (pairs === 0) return;
  const params = gpu.uniform(new Uint32Array([T, heads, HD]));
  const bindings = [a.x, a.cos, a.sin, params];
  gpu.dispatch(encoder, gpu.pipeline(SHADER), bindings, grid2d(Math.ceil(pairs / WG)));
}

/**
 * CPU reference of {@linkcode rope}: the same f32 tables as {@linkcode ropeTables}, the
 * rotation in float64. Returns a new (T, heads·HD) array; `x` is not modified.
 */
export function ropeRef(
  a: { x: Float32Array; T: number; heads: number; HD: number; cfg: RopeConfig; posOffset?: number },
): Float32Array {
  const { x, T, heads, HD } = a;
  const { cos, sin } = ropeTables({ T, HD, cfg: a.cfg, posOffset: a.posOffset });
  const half = HD / 2;
  const out = new Float32Array(T * heads * HD); // (T, heads*HD)
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * HD;
      for (let i = 0; i < half; i++) {
        const c = cos[t * half + i], s = sin[t * half + i];
        const x1 = x[base + i], x2 = x[base + i + half];
        out[base + i] = x1 * c - x2 * s;
        out[base + i + half] = x2 * c + x1 * s;
      }
    }
  }
  return out;
}
