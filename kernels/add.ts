/**
 * add: x += y, the residual connection of a decoder layer (`hidden = residual + hidden`).
 *
 * Layouts:  x, y f32 (n), elementwise; x is updated in place. For the residual stream,
 *           n = T·D of (T, D) buffers.
 *
 * Invocations: one per element, 256 per workgroup, workgroups on a 2-D grid
 * (element = (wg.x + wg.y · gridX) · 256 + lid) so n may exceed 65535 · 256.
 * @module
 */
import { type Gpu, grid2d } from "./gpu.ts";

const WG = 256;

const SHADER = /* wgsl */ `
struct Params { n: u32 }
@group(0) @binding(0) var<storage, read_write> x: array<f32>; // (n)
@group(0) @binding(1) var<storage, read> y: array<f32>;       // (n)
@group(0) @binding(2) var<uniform> p: Params;

const WG = ${WG}u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) grid: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * grid.x) * WG + lid;
  if (i >= p.n) { return; }
  x[i] += y[i];
}`;

/** Arguments of {@linkcode add}. */
export interface AddArgs {
  /** The residual stream, f32 (n), updated in place. */
  x: GPUBuffer;
  /** What is added, f32 (n); a different buffer from `x`. */
  y: GPUBuffer;
  /** Number of elements (T·D). */
  n: number;
}

/**
 * Records x += y over n elements.
 *
 * @example
 * ```ts ignore
 * add(gpu, encoder, { x: residual, y: attnOut, n: T * D });
 * ```
 */
export function add(gpu: Gpu, encoder: GPUCommandEncoder, a: AddArgs): void {
  const { n } = a;
  if (a.x === a.y) throw new RangeError("add: y must not alias x");
  if (a.x.size < n * 4 || a.y.size < n * 4) {
    throw new RangeError(`add: buffers too small for n=${n}`);
  }
  if (n === 0) return;
  const params = gpu.uniform(new Uint32Array([n]));
  gpu.dispatch(encoder, gpu.pipeline(SHADER), [a.x, a.y, params], grid2d(Math.ceil(n / WG)));
}

/** CPU reference of {@linkcode add}: a new array x + y (float64 sum, rounded to f32). */
export function addRef(a: { x: Float32Array; y: Float32Array }): Float32Array {
  const out = new Float32Array(a.x.length);
  for (let i = 0; i < out.length; i++) out[i] = a.x[i] + a.y[i];
  return out;
}
