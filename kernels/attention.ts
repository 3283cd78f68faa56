/**
 * attention: causal scaled-dot-product attention with grouped-query heads,
 *
 *   out[t, h] = Σ_{j ≤ t} softmax_j(q[t, h] · k[j, g] / √HD) · v[j, g],   g = ⌊h / (H/KV)⌋
 *
 * GQA by indexing: the H/KV query heads h = g·(H/KV) + r, r < H/KV, all read KV head g
 * straight out of k and v — the same mapping as transformers' `repeat_kv`, without the
 * copies. H = KV is ordinary multi-head attention, KV = 1 multi-query attention.
 *
 * Layouts:  q (T, H·HD)   k, v (T, KV·HD)   out (T, H·HD), all f32, row-major; head h of
 *           token t is the HD floats at t·H·HD + h·HD (k, v: t·KV·HD + g·HD).
 *
 * Invocations: one per output row (token t, query head h), row = t·H + h, 64 per
 * workgroup on a 2-D grid of workgroups. Each invocation walks the keys j = 0..t once with
 * an online softmax: a running max m, a running sum l = Σ exp(s_j − m), and a running
 * weighted sum of values, Σ exp(s_j − m)·v[j], kept in its own output row out[t, h, :];
 * when a score exceeds m, l and that row are first rescaled by exp(m − s) and m = s; at
 * the end the row is divided by l. Every exponent is ≤ 0, so huge scores cannot overflow,
 * and nothing grows with T (no row of scores, no workgroup memory). Invocations share
 * nothing, so there are no barriers. Loads are vec4 when HD is a multiple of 4.
 *
 * Why this shape: it is the fastest of the versions tried on the CPU adapters the tests
 * run on (lavapipe, llvmpipe). A workgroup per row, with tiles of scores shared through
 * workgroup memory, was 6–9× slower (barriers are costly there); an accumulator in a
 * private or workgroup array of HD floats ran no faster and took seconds to compile on
 * llvmpipe, where wgpu zero-initialises such arrays element by element.
 * @module
 */
import { type Gpu, grid2d, type KernelFamily } from "./gpu.ts";
import { attentionTiled, type TiledAttentionArgs } from "./attention_tiled.ts";

const WG = 64;

/** WGSL reading V = vec4<f32> when 4 divides HD, else f32 (p.HDV = HD in units of V). */
function shader(HD: number): string {
  const w = HD % 4 === 0 ? 4 : 1;
  return /* wgsl */ `
alias V = ${w === 4 ? "vec4<f32>" : "f32"};
fn hsum(x: V) -> f32 { return ${w === 4 ? "x.x + x.y + x.z + x.w" : "x"}; }

struct Params { T: u32, H: u32, KV: u32, HDV: u32, scale: f32 }
@group(0) @binding(0) var<storage, read> q: array<V>;         // (T, H*HD)
@group(0) @binding(1) var<storage, read> k: array<V>;         // (T, KV*HD)
@group(0) @binding(2) var<storage, read> v: array<V>;         // (T, KV*HD)
@group(0) @binding(3) var<storage, read_write> out: array<V>; // (T, H*HD)
@group(0) @binding(4) var<uniform> p: Params;

const WG = ${WG}u;
const LOWEST = -3.4028235e38; // below every score: the running max before the first key

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) grid: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = (wg.x + wg.y * grid.x) * WG + lid; // t * H + h
  if (row >= p.T * p.H) { return; }
  let t = row / p.H;
  let h = row % p.H;
  let g = h / (p.H / p.KV); // GQA: the KV head that query head h reads
  let qRow = row * p.HDV; //  q[t, h, :]
  let kvStride = p.KV * p.HDV; // from one token to the next in k and v

  var m = LOWEST; // running max of the scores
  var l = 0.0; //    running Σ exp(s - m)
  for (var d = 0u; d < p.HDV; d++) { out[qRow + d] = V(); } // running Σ exp(s - m) * v[j, g, :]
  for (var j = 0u; j <= t; j++) { // causal: token t sees keys 0..t
    let kv = j * kvStride + g * p.HDV; // k[j, g, :] and v[j, g, :]
    var dot = V();
    for (var d = 0u; d < p.HDV; d++) { dot += q[qRow + d] * k[kv + d]; }
    let s = hsum(dot) * p.scale;
    if (s > m) { // a new max: rescale what was summed under the old one
      let alpha = exp(m - s);
      l *= alpha;
      for (var d = 0u; d < p.HDV; d++) { out[qRow + d] *= alpha; }
      m = s;
    }
    let wj = exp(s - m);
    l += wj;
    for (var d = 0u; d < p.HDV; d++) { out[qRow + d] += wj * v[kv + d]; }
  }
  for (var d = 0u; d < p.HDV; d++) { out[qRow + d] /= l; }
}`;
}

/**
 * Arguments of {@linkcode attention}: those of the tiled kernel it may hand the call to
 * (q, out (T, H·HD) and k, v (T, KV·HD), f32; head h of token t at t·H·HD + h·HD), plus the
 * kernel family. A `qPos0` above 0 (query windows of a long prompt) always runs the tiled
 * kernel.
 */
export interface AttentionArgs extends TiledAttentionArgs {
  /** Force a kernel family; default `gpu.kernels` ("gpu": attention_tiled.ts). */
  family?: KernelFamily;
}

/**
 * Records causal attention over T tokens; query head h reads KV head ⌊h / (H/KV)⌋.
 *
 * @example
 * ```ts ignore
 * attention(gpu, encoder, { q, k, v, out: attn, T, H: 32, KV: 8, HD: 128 });
 * ```
 */
export function attention(gpu: Gpu, encoder: GPUCommandEncoder, a: AttentionArgs): void {
  // Family hook: tiles on GPUs (or when forced), and for query windows (qPos0 > 0).
  if ((a.family ?? gpu.kernels) === "gpu" || a.qPos0) return attentionTiled(gpu, encoder, a);
  const { T, H, KV, HD } = a;
  if (!(KV > 0 && H % KV === 0)) {
    throw new RangeError(`attention: H=${H} must be a multiple of KV=${KV}`);
  }
  if (
    a.q.size < T * H * HD * 4 || a.out.size < T * H * HD * 4 ||
    a.k.size < T * KV * HD * 4 || a.v.size < T * KV * HD * 4
  ) {
    throw new RangeError(`attention: buffers too small for T=${T}, H=${H}, KV=${KV}, HD=${HD}`);
  }
  if (T * H * HD === 0) return;
  const words = new ArrayBuffer(20);
  new Uint32Array(words, 0, 4).set([T, H, KV, HD % 4 === 0 ? HD / 4 : HD]);
  new Float32Array(words, 16, 1)[0] = 1 / Math.sqrt(HD);
  const params = gpu.uniform(new Uint32Array(words));
  const bindings = [a.q, a.k, a.v, a.out, params];
  gpu.dispatch(encoder, gpu.pipeline(shader(HD)), bindings, grid2d(Math.ceil((T * H) / WG)));
}

/** CPU reference of {@linkcode attention}, in float64 (scores, softmax and weighted sum). */
export function attentionRef(
  a: {
    q: Float32Array;
    k: Float32Array;
    v: Float32Array;
    T: number;
    H: number;
    KV: number;
    HD: number;
  },
): Float32Array {
  const { q, k, v, T, H, KV, HD } = a;
  const out = new Float32Array(T * H * HD); // (T, H*HD)
  const scale = 1 / Math.sqrt(HD);
  const s = new Float64Array(T);
  const acc = new Float64Array(HD);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / KV));
      const qo = (t * H + h) * HD;
      let max = -Infinity;
      for (let j = 0; j <= t; j++) {
        const ko = (j * KV + g) * HD;
        let dot = 0;
        for (let d = 0; d < HD; d++) dot += q[qo + d] * k[ko + d];
        s[j] = dot * scale;
        if (s[j] > max) max = s[j];
      }
      let sum = 0;
      acc.fill(0);
      for (let j = 0; j <= t; j++) {
        const wj = Math.exp(s[j] - max);
        sum += wj;
        const vo = (j * KV + g) * HD;
        for (let d = 0; d < HD; d++) acc[d] += wj * v[vo + d];
      }
      for (let d = 0; d < HD; d++) out[qo + d] = acc[d] / sum;
    }
  }
  return out;
}
