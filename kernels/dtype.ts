/**
 * The weight dtypes the kernels read as stored in safetensors, and CPU conversions
 * between them and f32 (used by the CPU references, the tests and the tiny-model writer).
 *
 * On the GPU a 16-bit matrix stays 16-bit: two values per u32, little-endian, element
 * 2i in the low half. F16 is unpacked with `unpack2x16float`; BF16 is the high half of
 * an f32, so `bitcast<f32>(w << 16u)` and `bitcast<f32>(w & 0xffff0000u)`.
 * @module
 */

/** A weight dtype the kernels accept. */
export type WeightDtype = "F32" | "F16" | "BF16";

/** Bytes per element of each weight dtype. */
export const DTYPE_BYTES: Record<WeightDtype, number> = { F32: 4, F16: 2, BF16: 2 };

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The f32 value of a bfloat16 bit pattern. */
export function bf16ToF32(bits: number): number {
  u32[0] = (bits & 0xffff) << 16;
  return f32[0];
}

/** The bfloat16 bit pattern nearest to `x` (round to nearest, ties to even; NaN stays NaN). */
export function f32ToBf16(x: number): number {
  f32[0] = x;
  const b = u32[0];
  if ((b & 0x7fffffff) > 0x7f800000) return (b >>> 16) | 0x40; // quiet NaN
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Decodes raw little-endian weight bytes of `dtype` into f32 values. */
export function decodeWeights(bytes: Uint8Array, dtype: WeightDtype): Float32Array {
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  if (dtype === "F32") return new Float32Array(aligned.buffer, aligned.byteOffset, n).slice();
  const h = new Uint16Array(aligned.buffer, aligned.byteOffset, n);
  const out = new Float32Array(n);
  if (dtype === "F16") {
    out.set(new Float16Array(aligned.buffer, aligned.byteOffset, n));
  } else {
    const o = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) o[i] = h[i] << 16;
  }
  return out;
}

/** Encodes f32 values as raw little-endian bytes of `dtype` (rounding to nearest even). */
export function encodeWeights(values: ArrayLike<number>, dtype: WeightDtype): Uint8Array {
  const n = values.length;
  if (dtype === "F32") return new Uint8Array(Float32Array.from(values).buffer);
  if (dtype === "F16") return new Uint8Array(Float16Array.from(values).buffer);
  const h = new Uint16Array(n);
  for (let i = 0; i < n; i++) h[i] = f32ToBf16(values[i]);
  return new Uint8Array(h.buffer);
}

/** `values` rounded to `dtype` and back: what a kernel sees after the weights are stored. */
export function roundTo(values: ArrayLike<number>, dtype: WeightDtype): Float32Array {
  return decodeWeights(encodeWeights(values, dtype), dtype);
}
