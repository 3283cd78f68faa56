/** Tests of kernels/add.ts: x += y against the reference, bounds, and very long vectors. */
import { assertClose, gpuTest } from "./_helpers.ts";
import { add, addRef } from "../kernels/add.ts";
import type { Gpu } from "../kernels/gpu.ts";

/** Runs add() on x (with 11 NaN values past n, which must survive) and reads x back. */
async function gpuAdd(gpu: Gpu, x: Float32Array, y: Float32Array): Promise<Float32Array> {
  const n = x.length;
  const padded = new Float32Array(n + 11).fill(NaN);
  padded.set(x);
  const xb = gpu.upload(padded);
  await gpu.run((enc) => add(gpu, enc, { x: xb, y: gpu.upload(y), n }));
  const all = await gpu.read(xb);
  if (!all.subarray(n).every(Number.isNaN)) throw new Error(`add wrote past n=${n}`);
  return all.subarray(0, n);
}

Deno.test("addRef() adds elementwise", () => {
  const out = addRef({ x: new Float32Array([1, 2, -3]), y: new Float32Array([3, -5, 0.5]) });
  assertClose(out, [4, -3, -2.5], 0, "hand values");
});

gpuTest("add() matches addRef at awkward sizes and Llama-3-8B width", async (gpu, rng) => {
  for (const n of [1, 3, 255, 257, 4101, 17 * 4096]) {
    const x = rng.normals(n, 50), y = rng.normals(n, 3);
    assertClose(await gpuAdd(gpu, x, y), addRef({ x, y }), 1e-7, `n=${n}`); // one f32 rounding
  }
});

gpuTest("add() covers n above 65535 workgroups of 256 (2-D workgroup grid)", async (gpu, rng) => {
  const n = 65535 * 256 + 1000;
  const x = new Float32Array(n), y = new Float32Array(n);
  for (let i = 0; i < n; i++) [x[i], y[i]] = [i % 1013, rng.next()]; // cheap, seeded inputs
  assertClose(await gpuAdd(gpu, x, y), addRef({ x, y }), 1e-7, `n=${n}`);
});
