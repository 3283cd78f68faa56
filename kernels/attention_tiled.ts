/**
 * The GPU family of attention: causal grouped-query attention in tiles, the
 * FlashAttention shape, for adapters where the CPU family's one-invocation-per-row kernel
 * (attention.ts) would reload q and read-modify-write its output row in global memory for
 * every key. Same formula and layouts as attention.ts:
 *
 *   out[t, h] = Σ_{j ≤ t} softmax_j(q[t, h] · k[j, g] / √HD) · v[j, g],   g = ⌊h / (H/KV)⌋
 *
 *   q, out (Tq, H·HD)   k, v (Tk, KV·HD)   f32, row-major
 *
 * ## Shape
 * One workgroup per (tile of 16 queries, query head h): 64 invocations, 4 per query. The
 * 4 lanes of a query split its HD dimensions (lane l owns d = l, l + 4, l + 8, …) and keep
 * their share of q (pre-scaled by 1/√HD) and of the output accumulator in registers, as
 * named scalars (no private arrays). For each tile of BK keys (BK·HD·2·4 bytes of K and V
 * plus the partial dots stay within `gpu.workgroupBudget`, 16 KiB on hardware adapters:
 * BK = 12 at HD = 128; 4 KiB, BK = 3, on fallback adapters, see gpu.ts):
 *
 * ```
 *   all 64:      K[j0 … j0+BK, g, :], V[…] ──► ks, vs (workgroup)        coalesced rows
 *   each lane:   partial dot over its dims for every key ──► ps (workgroup)
 *   each query:  s_j = Σ of its 4 partials; m' = max(m, max_j s_j);
 *                acc = acc·e^(m−m') + Σ_j e^(s_j−m')·v_j;  l likewise      registers
 * ```
 *
 * Causal by skipping keys past each query (whole tiles past the query tile are never
 * loaded); GQA by indexing (head h reads KV head g, no copies). The running max makes every
 * exponent ≤ 0, as in attention.ts.
 *
 * `qPos0` places the queries at positions qPos0 … qPos0 + Tq − 1 of the key sequence, so a
 * long prompt can run in query windows (decoder_layer.ts does this when Q is larger than
 * one storage binding); keys 0 … qPos0 + Tq − 1 must be in k and v.
 *
 * ## Versions
 * - v1 (this file). Not yet measured on a GPU. Each K/V element is loaded once per query
 *   tile and head (H/KV heads of a group load the same tile separately; L2 serves the
 *   repeats). On lavapipe it is slower than attention.ts (barriers cost there, as the
 *   notes in attention.ts found).
 * @module
 */
import type { Gpu } from "./gpu.ts";

const BQ = 16; // queries per workgroup
const LANES = 4; // invocations per query
/**
 * Keys per tile for head dimension HD: K, V and partial dots fit in `budget` bytes of
 * workgroup memory (`gpu.workgroupBudget`: 16 KiB, 4 KiB on fallback adapters).
 */
export function keysPerTile(HD: number, budget = 16384): number {
  const floats = budget / 4 - 2 * LANES; // a little padding past the V tile
  return Math.max(1, Math.min(32, Math.floor(floats / (2 * HD + BQ * LANES))));
}

/** Arguments of {@linkcode attentionTiled}. */
export interface TiledAttentionArgs {
  /** Queries after RoPE, f32 (T, H·HD): positions qPos0 … qPos0 + T − 1. */
  q: GPUBuffer;
  /** Keys after RoPE, f32 (≥ qPos0 + T, KV·HD). */
  k: GPUBuffer;
  /** Values, f32 (≥ qPos0 + T, KV·HD). */
  v: GPUBuffer;
  /** Output, f32 (T, H·HD). */
  out: GPUBuffer;
  /** Queries in this call. */
  T: number;
  H: number;
  KV: number;
  HD: number;
  /** Position of the first query (default 0). */
  qPos0?: number;
}

/**
 * Records tiled causal attention; query head h reads KV head ⌊h / (H/KV)⌋.
 *
 * @example
 * ```ts ignore
 * attentionTiled(gpu, encoder, { q, k, v, out: attn, T, H: 32, KV: 8, HD: 128 });
 * ```
 */
export function attentionTiled(gpu: Gpu, encoder: GPUCommandEncoder, a: TiledAttentionArgs): void {
  const { T, H, KV, HD } = a;
  const qPos0 = a.qPos0 ?? 0;
  if (!(KV > 0 && H % KV === 0)) {
    throw new RangeError(`attention: H=${H} must be a multiple of KV=${KV}`);
  }
  const Tk = qPos0 + T;
  if (
    a.q.size < T * H * HD * 4 || a.out.size < T * H * HD * 4 ||
    a.k.size < Tk * KV * HD * 4 || a.v.size < Tk * KV * HD * 4
  ) {
    throw new RangeError(
      `attention: buffers too small for T=${T} (from ${qPos0}), H=${H}, KV=${KV}, HD=${HD}`,
    );
  }
  if (T * H * HD === 0) return;
  const words = new ArrayBuffer(24);
  new Uint32Array(words, 0, 5).set([T, H, KV, HD, qPos0]);
  new Float32Array(words, 20, 1)[0] = 1 / Math.sqrt(HD);
  const params = gpu.uniform(new Uint32Array(words));
  const bindings = [
    { buffer: a.q, size: T * H * HD * 4 },
    { buffer: a.k, size: Tk * KV * HD * 4 },
    { buffer: a.v, size: Tk * KV * HD * 4 },
    { buffer: a.out, size: T * H * HD * 4 },
    params,
  ];
  gpu.dispatch(encoder, gpu.pipeline(tiledShader(HD, gpu.workgroupBudget)), bindings, [
    Math.ceil(T / BQ),
    H,
  ]);
}

/** Source of the tiled kernel for head dimension HD (registers are named per dimension). */
export function tiledShader(HD: number, budget = 16384): string {
  const BK = keysPerTile(HD, budget);
  const M = Math.ceil(HD / LANES); // dimensions per lane (the last may be past HD)
  const ms = [...Array(M).keys()];
  const dim = (m: number) => `lane + ${m * LANES}u`;
  const valid = (m: number) => ((m + 1) * LANES <= HD ? "true" : `${dim(m)} < HD`);
  return /* wgsl */ `// attention GPU family: ${BQ} queries x 1 head per workgroup, ${LANES} lanes per query, ${BK} keys per tile, HD = ${HD}
struct Params { T: u32, H: u32, KV: u32, HD: u32, qPos0: u32, scale: f32 }
@group(0) @binding(0) var<storage, read> q: array<f32>;         // (T, H*HD)
@group(0) @binding(1) var<storage, read> k: array<f32>;         // (qPos0 + T, KV*HD)
@group(0) @binding(2) var<storage, read> v: array<f32>;         // (qPos0 + T, KV*HD)
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (T, H*HD)
@group(0) @binding(4) var<uniform> p: Params;

const HD = ${HD}u;
const BK = ${BK}u;
const LOWEST = -3.4028235e38; // below every score: the running max before the first key
var<workgroup> ks: array<f32, ${BK * HD + LANES}>; // K tile (BK, HD), padded
var<workgroup> vs: array<f32, ${BK * HD + LANES}>; // V tile (BK, HD), padded
var<workgroup> ps: array<f32, ${BQ * BK * LANES}>; // partial dots (query, key, lane)

@compute @workgroup_size(${BQ * LANES})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let qi = lid / ${LANES}u; //   query within the tile
  let lane = lid % ${LANES}u;
  let h = wg.y;
  let g = h / (p.H / p.KV); // GQA: the KV head that query head h reads
  let row = wg.x * ${BQ}u + qi; // query row in q and out
  let live = row < p.T;
  let pos = p.qPos0 + row; //     its position: it sees keys 0 … pos
  let kvStride = p.KV * HD;
  // The tile's keys end after its last query (uniform per workgroup).
  let kEnd = p.qPos0 + min(wg.x * ${BQ}u + ${BQ}u, p.T);
  let qo = min(row, p.T - 1u) * p.H * HD + h * HD;
  ${
    ms.map((m) => `let q${m} = select(0.0, q[qo + ${dim(m)}] * p.scale, ${valid(m)});`).join("\n  ")
  }
  ${ms.map((m) => `var a${m} = 0.0;`).join(" ")}
  var mx = LOWEST; // running max of the scores
  var l = 0.0;     // running Σ exp(s - mx)
  for (var j0 = 0u; j0 < kEnd; j0 += BK) {
    for (var i = lid; i < BK * HD; i += ${BQ * LANES}u) { // stage K and V rows j0 … j0+BK-1
      let j = j0 + i / HD;
      var kx = 0.0; var vx = 0.0;
      if (j < kEnd) {
        let o = j * kvStride + g * HD + i % HD;
        kx = k[o]; vx = v[o];
      }
      ks[i] = kx; vs[i] = vx;
    }
    workgroupBarrier();
    for (var jj = 0u; jj < BK; jj++) { // this lane's share of every score
      let kb = jj * HD;
      ps[(qi * BK + jj) * ${LANES}u + lane] = ${
    ms.map((m) => `q${m} * ks[kb + ${dim(m)}]`).join(" + ")
  };
    }
    workgroupBarrier();
    var tileMax = LOWEST;
    let n = min(BK, kEnd - j0);
    for (var jj = 0u; jj < n; jj++) {
      if (j0 + jj <= pos) {
        let b = (qi * BK + jj) * ${LANES}u;
        tileMax = max(tileMax, ps[b] + ps[b + 1u] + ps[b + 2u] + ps[b + 3u]);
      }
    }
    if (tileMax > mx) { // a new max: rescale what was summed under the old one
      let alpha = exp(mx - tileMax);
      l *= alpha;
      ${ms.map((m) => `a${m} *= alpha;`).join(" ")}
      mx = tileMax;
    }
    for (var jj = 0u; jj < n; jj++) {
      if (j0 + jj <= pos) {
        let b = (qi * BK + jj) * ${LANES}u;
        let w = exp(ps[b] + ps[b + 1u] + ps[b + 2u] + ps[b + 3u] - mx);
        l += w;
        let vb = jj * HD;
        ${ms.map((m) => `a${m} += w * vs[vb + ${dim(m)}];`).join(" ")}
      }
    }
    workgroupBarrier();
  }
  if (live) {
    let oo = row * p.H * HD + h * HD;
    ${ms.map((m) => `if (${valid(m)}) { out[oo + ${dim(m)}] = a${m} / l; }`).join("\n    ")}
  }
}`;
}
