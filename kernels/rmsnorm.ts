/**
 * rmsnorm: y = x / sqrt(mean(x²) + eps) · w, row by row — Llama's RMSNorm
 * (`LlamaRMSNorm` in transformers: in f32, `variance = mean(x²)`,
 * `x * rsqrt(variance + eps)`, then `weight *` that).
 *
 * Layouts:  x (T, D) f32   w (D) f32   y (T, D) f32, row-major; y must not alias x.
 *
 * Invocations: one workgroup of 256 per row (token). Each invocation sums x² over a
 * strided share of the row (d = lid, lid + 256, …), the workgroup adds the 256 partial
 * sums with a tree reduction in workgroup memory, and every invocation then writes its
 * share of the normalised row. Rows are laid out on a 2-D grid of workgroups
 * (row = wg.x + wg.y · gridX) so T may exceed 65535.
 * @module
 */
import { type Gpu, grid2d } from "./gpu.ts";

const WG = 256;

const SHADER = /* wgsl */ `
struct Params { T: u32, D: u32, eps: f32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;       // (T, D)
@group(0) @binding(1) var<storage, read> w: array<f32>;       // (D)
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // (T, D)
@group(0) @binding(3) var<uniform> p: Params;

const WG = ${WG}u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) grid: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let row = wg.x + wg.y * grid.x;
  if (row >= p.T) { return; } // the grid may overshoot T; uniform per workgroup
  let base = row * p.D;

  var sum = 0.0;
  for (var d = lid; d < p.D; d += WG) {
    let v = x[base + d];
    sum += v * v;
  }
  partial[lid] = sum;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lid < stride) { partial[lid] += partial[lid + stride]; }
    workgroupBarrier();
  }

  let r = inverseSqrt(partial[0] / f32(p.D) + p.eps);
  for (var d = lid; d < p.D; d += WG) {
    y[base + d] = w[d] * (x[base + d] * r);
  }
}`;

/** Arguments of {@linkcode rmsnorm}. */
export interface RmsnormArgs {
  /** Input rows, f32 (T, D). */
  x: GPUBuffer;
  /** Norm weight, f32 (D). */
  w: GPUBuffer;
  /** Output, f32 (T, D); a different buffer from `x`. */
  y: GPUBuffer;
  T: number;
  D: number;
  /** `rms_norm_eps` from config.json (1e-5 for Llama 3). */
  eps: number;
}

/**
 * Records y = x / sqrt(mean(x²) + eps) · w for each of the T rows of x.
 *
 * @example
 * ```ts ignore
 * rmsnorm(gpu, encoder, { x, w: inputNorm, y: xn, T, D, eps: 1e-5 });
 * ```
 */
export function rmsnorm(gpu: Gpu, encoder: GPUCommandEncoder, a: RmsnormArgs): void {
  const { T, D } = a;
  if (a.x === a.y) throw new RangeError("rmsnorm: y must not alias x");
  if (a.x.size < T * D * 4 || a.y.size < T * D * 4 || a.w.size < D * 4) {
    throw new RangeError(`rmsnorm: buffers too small for T=${T}, D=${D}`);
  }
  if (T === 0) return;
  const words = new ArrayBuffer(12);
  new Uint32Array(words, 0, 2).set([T, D]);
  new Float32Array(words, 8, 1)[0] = a.eps;
  const params = gpu.uniform(new Uint32Array(words));
  gpu.dispatch(encoder, gpu.pipeline(SHADER), [a.x, a.w, a.y, params], grid2d(T));
}

/** CPU reference of {@linkcode rmsnorm}: float64 throughout, rounded to f32 at the end. */
export function rmsnormRef(
  a: { x: Float32Array; w: Float32Array; T: number; D: number; eps: number },
): Float32Array {
  const { x, w, T, D, eps } = a;
  const y = new Float32Array(T * D); // (T, D)
  for (let t = 0; t < T; t++) {
    let sum = 0;
    for (let d = 0; d < D; d++) sum += x[t * D + d] * x[t * D + d];
    const r = 1 / Math.sqrt(sum / D + eps);
    for (let d = 0; d < D; d++) y[t * D + d] = w[d] * (x[t * D + d] * r);
  }
  return y;
}
