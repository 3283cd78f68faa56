/** Tests of kernels/rmsnorm.ts: the reference by hand, the GPU kernel against the reference. */
import { assertClose, gpuTest } from "./_helpers.ts";
import { rmsnorm, rmsnormRef } from "../kernels/rmsnorm.ts";
import type { Gpu } from "../kernels/gpu.ts";

/** Runs rmsnorm() into a NaN-poisoned output and reads it back. */
async function gpuRmsnorm(
  gpu: Gpu,
  a: { x: Float32Array; w: Float32Array; T: number; D: number; eps: number },
): Promise<Float32Array> {
  const y = gpu.poisoned(a.T * a.D);
  await gpu.run((enc) => rmsnorm(gpu, enc, { ...a, x: gpu.upload(a.x), w: gpu.upload(a.w), y }));
  return await gpu.read(y);
}

Deno.test("rmsnormRef() matches values computed by hand", () => {
  // row [3, 4]: mean(x²) = 12.5, rms = √12.5 = 3.5355339; x / rms = [0.8485281, 1.1313708];
  // times w = [1, 2] → [0.8485281, 2.2627417]. Row [0, 0]: 0 / √eps = 0.
  const x = new Float32Array([3, 4, 0, 0]);
  const y = rmsnormRef({ x, w: new Float32Array([1, 2]), T: 2, D: 2, eps: 0 });
  assertClose(y.subarray(0, 2), [0.8485281, 2.2627417], 1e-7, "row [3, 4]");
  // eps = 0.5 matters: mean(x²) + eps = 13, x / √13 · w = [0.8320503, 2.2188008]
  const e = rmsnormRef({ x, w: new Float32Array([1, 2]), T: 2, D: 2, eps: 0.5 });
  assertClose(e, [0.8320503, 2.2188008, 0, 0], 1e-7, "eps 0.5");
});

gpuTest("rmsnorm() matches rmsnormRef at awkward sizes", async (gpu, rng) => {
  for (const [T, D] of [[1, 1], [3, 17], [17, 255], [5, 1000], [2, 4101]]) {
    const a = { x: rng.normals(T * D, 3), w: rng.normals(D), T, D, eps: 1e-5 };
    assertClose(await gpuRmsnorm(gpu, a), rmsnormRef(a), 1e-5, `T=${T} D=${D}`);
  }
});

gpuTest(
  "rmsnorm() matches rmsnormRef at Llama-3-8B width with residual outliers",
  async (gpu, rng) => {
    // D = 4096; Llama 3's residual stream has a few dimensions in the hundreds
    const T = 7, D = 4096;
    const x = rng.normals(T * D, 0.5);
    for (let t = 0; t < T; t++) {
      for (const d of [13, 2298, 4095]) {
        x[t * D + d] = 300 * (rng.next() - 0.5);
      }
    }
    const a = { x, w: rng.normals(D, 0.2), T, D, eps: 1e-5 };
    assertClose(await gpuRmsnorm(gpu, a), rmsnormRef(a), 1e-5, "T=7 D=4096");
  },
);

gpuTest("rmsnorm() applies eps: tiny rows and zero rows as the reference", async (gpu, rng) => {
  // With |x| ≈ 1e-3, mean(x²) ≈ 1e-6 is comparable to eps: a kernel that drops eps (or
  // adds it after the square root) fails; a zero row must give zeros, not NaN.
  const T = 4, D = 300;
  const x = rng.normals(T * D, 1e-3);
  x.fill(0, 2 * D, 3 * D);
  for (const eps of [1e-5, 1e-6]) {
    const a = { x, w: rng.normals(D), T, D, eps };
    assertClose(await gpuRmsnorm(gpu, a), rmsnormRef(a), 1e-5, `eps=${eps}`);
  }
});

gpuTest("rmsnorm() covers T above 65535 rows (2-D workgroup grid)", async (gpu, rng) => {
  const T = 65600, D = 3;
  const a = { x: rng.normals(T * D), w: rng.normals(D), T, D, eps: 1e-5 };
  assertClose(await gpuRmsnorm(gpu, a), rmsnormRef(a), 1e-5, `T=${T} D=${D}`);
});
