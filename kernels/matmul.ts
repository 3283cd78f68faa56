/**
 * TEMPORARY STUB written by the lead so the pipeline can be tested while the real kernel is
 * being tuned. The matmul helper owns this file: overwrite it freely.
 * @module
 */
import type { Gpu } from "./gpu.ts";
import { DTYPE_BYTES, type WeightDtype } from "./dtype.ts";

export type MatmulVariant = "packed" | "f16";
export interface GpuMatrix {
  buffer: GPUBuffer;
  dtype: WeightDtype;
  N: number;
  K: number;
}
export function uploadMatrix(
  gpu: Gpu,
  m: { bytes: Uint8Array; dtype: WeightDtype; N: number; K: number; label?: string },
): GpuMatrix {
  return { buffer: gpu.upload(m.bytes, m.label), dtype: m.dtype, N: m.N, K: m.K };
}
export function writeMatrix(gpu: Gpu, m: GpuMatrix, bytes: Uint8Array): void {
  gpu.write(m.buffer, bytes);
}
const shader = (dtype: WeightDtype, bias: boolean) => `
struct P { T: u32, N: u32, K: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
${bias ? "@group(0) @binding(4) var<storage, read> b: array<f32>;" : ""}
fn wAt(e: u32) -> f32 {
  ${
  dtype === "F32"
    ? "return bitcast<f32>(w[e]);"
    : dtype === "F16"
    ? "let v = unpack2x16float(w[e >> 1u]); return select(v.x, v.y, (e & 1u) == 1u);"
    : "let u = w[e >> 1u]; return bitcast<f32>(select(u << 16u, u & 0xffff0000u, (e & 1u) == 1u));"
}
}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
  let i = g.x + g.y * nw.x * 64u;
  if (i >= p.T * p.N) { return; }
  let t = i / p.N; let n = i % p.N;
  var s = 0.0;
  for (var k = 0u; k < p.K; k++) { s += x[t * p.K + k] * wAt(n * p.K + k); }
  ${bias ? "s += b[n];" : ""}
  y[i] = s;
}`;
export function matmul(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  a: { x: GPUBuffer; w: GpuMatrix; y: GPUBuffer; T: number; bias?: GPUBuffer; variant?: MatmulVariant },
): void {
  const n = a.T * a.w.N;
  const groups = Math.ceil(n / 64);
  const gx = Math.min(groups, 65535), gy = Math.ceil(groups / 65535);
  const params = gpu.uniform(new Uint32Array([a.T, a.w.N, a.w.K]));
  const binds = [a.x, a.w.buffer, a.y, params, ...(a.bias ? [a.bias] : [])];
  gpu.dispatch(encoder, gpu.pipeline(shader(a.w.dtype, !!a.bias)), binds, [gx, gy]);
  void DTYPE_BYTES;
}
export function matmulRef(
  a: { x: Float32Array; w: Float32Array; T: number; N: number; K: number; bias?: Float32Array },
): Float32Array {
  const y = new Float32Array(a.T * a.N);
  for (let t = 0; t < a.T; t++) {
    for (let n = 0; n < a.N; n++) {
      let s = a.bias ? a.bias[n] : 0;
      for (let k = 0; k < a.K; k++) s += a.x[t * a.K + k] * a.w[n * a.K + k];
      y[t * a.N + n] = s;
    }
  }
  return y;
}
export function chooseMatmulVariant(_gpu: Gpu): Promise<MatmulVariant> {
  return Promise.resolve("packed");
}
