/**
 * swiglu: out = silu(gate) ⊙ up, the gated activation of Llama's MLP
 * (`down_proj(act_fn(gate_proj(x)) * up_proj(x))` with `hidden_act: "silu"`), where
 *
 *   silu(g) = g · sigmoid(g),   sigmoid(g) = 1 / (1 + e^−g)  for g ≥ 0
 *                                          = e^g / (1 + e^g)  for g < 0
 *
 * Both branches exponentiate −|g| ≤ 0, so no exponent overflows however large |g| is
 * (a single 1 / (1 + exp(−g)) would take exp of +1000 for g = −1000).
 *
 * Layouts:  gate, up, out f32 (n), elementwise — for the MLP, n = T·I of (T, I) buffers.
 *
 * Invocations: one per element, 256 per workgroup, workgroups on a 2-D grid
 * (element = (wg.x + wg.y · gridX) · 256 + lid) so n may exceed 65535 · 256.
 * @module
 */
import { type Gpu, grid2d } from "./gpu.ts";

const WG = 256;

const SHADER = /* wgsl */ `
struct Params { n: u32 }
@group(0) @binding(0) var<storage, read> gate: array<f32>;      // (n)
@group(0) @binding(1) var<storage, read> up: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (n)
@group(0) @binding(3) var<uniform> p: Params;

const WG = ${WG}u;

fn silu(g: f32) -> f32 {
  let e = exp(-abs(g)); // in (0, 1]
  let sigmoid = select(e / (1.0 + e), 1.0 / (1.0 + e), g >= 0.0);
  return g * sigmoid;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) grid: vec3u,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wg.x + wg.y * grid.x) * WG + lid;
  if (i >= p.n) { return; }
  out[i] = silu(gate[i]) * up[i];
}`;

/** Arguments of {@linkcode swiglu}. */
export interface SwigluArgs {
  /** gate_proj output, f32 (n). */
  gate: GPUBuffer;
  /** up_proj output, f32 (n). */
  up: GPUBuffer;
  /** Result, f32 (n); a third buffer (WebGPU forbids binding a written buffer twice). */
  out: GPUBuffer;
  /** Number of elements (T·I). */
  n: number;
}

/**
 * Records out = silu(gate) ⊙ up over n elements.
 *
 * @example
 * ```ts ignore
 * swiglu(gpu, encoder, { gate, up, out: act, n: T * I });
 * ```
 */
export function swiglu(gpu: Gpu, encoder: GPUCommandEncoder, a: SwigluArgs): void {
  const { n } = a;
  if (a.out === a.gate || a.out === a.up) {
    throw new RangeError("swiglu: out must not alias gate or up");
  }
  if (a.gate.size < n * 4 || a.up.size < n * 4 || a.out.size < n * 4) {
    throw new RangeError(`swiglu: buffers too small for n=${n}`);
  }
  if (n === 0) return;
  const params = gpu.uniform(new Uint32Array([n]));
  const bindings = [a.gate, a.up, a.out, params];
  gpu.dispatch(encoder, gpu.pipeline(SHADER), bindings, grid2d(Math.ceil(n / WG)));
}

/** CPU reference of {@linkcode swiglu}, in float64 with the same overflow-free sigmoid. */
export function swigluRef(a: { gate: Float32Array; up: Float32Array }): Float32Array {
  const { gate, up } = a;
  const out = new Float32Array(gate.length);
  for (let i = 0; i < gate.length; i++) {
    const g = gate[i];
    const e = Math.exp(-Math.abs(g));
    const sigmoid = g >= 0 ? 1 / (1 + e) : e / (1 + e);
    out[i] = g * sigmoid * up[i];
  }
  return out;
}
