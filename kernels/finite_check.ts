/**
 * finiteCheck: flags[step] |= 1 if any of x[0..n) is NaN or ±Inf.
 *
 * The forward pass records one check after every step of a layer, into a flags buffer of
 * one u32 per step, and reads the flags back once per layer. A set flag names the layer and
 * the operation where a non-finite value first appeared, instead of a picture full of NaN.
 *
 * Layout: x is f32 (n); flags is u32 (steps). Each invocation scans a grid-strided share
 * of x and, if it saw a non-finite value, stores 1 into flags[step] (a benign race: every
 * writer writes the same value). NaN and Inf are detected from the bit pattern
 * (exponent all ones), because `x != x` may be folded away by a compiler assuming no NaN.
 * @module
 */
import type { Gpu } from "./gpu.ts";

/** A flags buffer with one u32 per step, cleared with {@linkcode resetFiniteCheck}. */
export interface FiniteCheck {
  flags: GPUBuffer; // u32 (steps)
  steps: number;
}

const WG = 64;
const GROUPS = 64;

const SHADER = /* wgsl */ `
struct Params { n: u32, step: u32 }
@group(0) @binding(0) var<storage, read> x: array<u32>;          // f32 bits (n)
@group(0) @binding(1) var<storage, read_write> flags: array<u32>; // (steps)
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  var bad = false;
  for (var i = gid.x; i < p.n; i += ${WG * GROUPS}u) {
    bad = bad || ((x[i] & 0x7f800000u) == 0x7f800000u);
  }
  if (bad) { flags[p.step] = 1u; }
}`;

/** Allocates a zeroed flags buffer for `steps` steps. */
export function createFiniteCheck(gpu: Gpu, steps: number): FiniteCheck {
  return { flags: gpu.upload(new Uint32Array(steps), "finite flags"), steps };
}

/** Clears every flag (queued before the next submit). */
export function resetFiniteCheck(gpu: Gpu, check: FiniteCheck): void {
  gpu.write(check.flags, new Uint32Array(check.steps));
}

/** Records a scan of x (n f32 values) that sets `flags[step]` if any is non-finite. */
export function finiteCheck(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  a: { check: FiniteCheck; step: number; x: GPUBuffer; n: number },
): void {
  const params = gpu.uniform(new Uint32Array([a.n, a.step]));
  gpu.dispatch(encoder, gpu.pipeline(SHADER), [a.x, a.check.flags, params], [GROUPS]);
}

/** Reads the flags back: the index of the first step that saw a non-finite value, or -1. */
export async function firstNonFinite(gpu: Gpu, check: FiniteCheck): Promise<number> {
  const flags = new Uint32Array(await gpu.readBytes(check.flags, 0, check.steps * 4));
  return flags.findIndex((f) => f !== 0);
}

/** CPU reference: the index of the first non-finite value in `x`, or -1. */
export function firstNonFiniteRef(x: ArrayLike<number>): number {
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i])) return i;
  return -1;
}
