/** Tests of kernels/swiglu.ts: silu by hand, the GPU kernel against the reference. */
import { assertClose, gpuTest } from "./_helpers.ts";
import { swiglu, swigluRef } from "../kernels/swiglu.ts";
import type { Gpu } from "../kernels/gpu.ts";

/** Runs swiglu() into a NaN-poisoned output of n + 13 values and reads all of it back. */
async function gpuSwiglu(gpu: Gpu, gate: Float32Array, up: Float32Array): Promise<Float32Array> {
  const n = gate.length;
  const out = gpu.poisoned(n + 13);
  await gpu.run((enc) => swiglu(gpu, enc, { gate: gpu.upload(gate), up: gpu.upload(up), out, n }));
  const all = await gpu.read(out);
  if (!all.subarray(n).every(Number.isNaN)) throw new Error(`swiglu wrote past n=${n}`);
  return all.subarray(0, n);
}

Deno.test("swigluRef() matches silu(g)·u computed by hand, including huge |g|", () => {
  // silu(g) = g / (1 + e^−g): silu(0) = 0, silu(1) = 0.7310585786, silu(−1) = −0.2689414214,
  // silu(20) = 19.9999999588, silu(−1000) = −1000·e^−1000 = −0 (no Inf/Inf on the way)
  const gate = new Float32Array([0, 1, -1, 20, -1000, 1000]);
  const up = new Float32Array([5, 2, 2, 1, 3, 0.5]);
  const want = [0, 1.4621171573, -0.5378828427, 19.9999999588, 0, 500];
  assertClose(swigluRef({ gate, up }), want, 1e-7, "hand values");
});

gpuTest("swiglu() matches swigluRef at awkward sizes", async (gpu, rng) => {
  for (const n of [1, 255, 257, 1000, 70001]) {
    const gate = rng.normals(n, 3), up = rng.normals(n, 2);
    assertClose(await gpuSwiglu(gpu, gate, up), swigluRef({ gate, up }), 1e-5, `n=${n}`);
  }
});

gpuTest("swiglu() matches swigluRef at Llama-3-8B MLP width (T=5, I=14336)", async (gpu, rng) => {
  const n = 5 * 14336;
  const gate = rng.normals(n, 2), up = rng.normals(n, 2);
  assertClose(await gpuSwiglu(gpu, gate, up), swigluRef({ gate, up }), 1e-5, "T=5 I=14336");
});

gpuTest("swiglu() stays finite for gates of ±88 to ±1e30", async (gpu, rng) => {
  // exp(−g) of g = −100 alone is 2.7e43: Inf in f32. The kernel only exponentiates −|g|.
  const mags = [88, 89, 100, 1000, 1e5, 1e30];
  const gate = new Float32Array(mags.flatMap((m) => [m, -m]));
  const up = rng.normals(gate.length);
  assertClose(await gpuSwiglu(gpu, gate, up), swigluRef({ gate, up }), 1e-5, "huge |gate|");
  const mid = rng.normals(1000, 40); // ±100 and beyond, compared on their own scale
  const midUp = rng.normals(1000);
  assertClose(
    await gpuSwiglu(gpu, mid, midUp),
    swigluRef({ gate: mid, up: midUp }),
    1e-5,
    "|gate| ~ 40",
  );
});
