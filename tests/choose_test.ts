/**
 * Tests of the kernel-family choice: kernels/choose.ts (timing, cache, the environment
 * switch) and the pieces of kernels/gpu.ts it rests on (the default family, clamped limits).
 */
import assert from "node:assert/strict";
import { chooseKernels } from "../kernels/choose.ts";
import { clampLimits, defaultKernelFamily, KERNELS_ENV } from "../kernels/gpu.ts";
import { gpuTest } from "./_helpers.ts";

/** Runs `fn` with `GQA_VIZ_KERNELS` set to `value` (or unset), restoring it after. */
async function withKernelsEnv<T>(value: string | undefined, fn: () => Promise<T> | T) {
  const before = Deno.env.get(KERNELS_ENV);
  if (value === undefined) Deno.env.delete(KERNELS_ENV);
  else Deno.env.set(KERNELS_ENV, value);
  try {
    return await fn();
  } finally {
    if (before === undefined) Deno.env.delete(KERNELS_ENV);
    else Deno.env.set(KERNELS_ENV, before);
  }
}

Deno.test("defaultKernelFamily() picks cpu on fallback adapters, gpu on hardware, env wins", async () => {
  await withKernelsEnv(undefined, () => {
    assert.equal(defaultKernelFamily(true).family, "cpu");
    assert.equal(defaultKernelFamily(false).family, "gpu");
  });
  await withKernelsEnv("gpu", () => assert.equal(defaultKernelFamily(true).family, "gpu"));
  await withKernelsEnv("cpu", () => {
    const d = defaultKernelFamily(false);
    assert.equal(d.family, "cpu");
    assert.match(d.reason, /GQA_VIZ_KERNELS=cpu/);
  });
});

Deno.test("clampLimits() keeps limits WebIDL accepts and clamps the rest", () => {
  const l = clampLimits({
    maxBufferSize: 2 ** 64, // a driver's u64::MAX: over [EnforceRange] unsigned long long
    maxStorageBufferBindingSize: 2 ** 40,
    maxComputeWorkgroupStorageSize: 2 ** 33, // over unsigned long
    maxComputeInvocationsPerWorkgroup: 1024,
  } as unknown as GPUSupportedLimits);
  assert.equal(l.maxBufferSize, Number.MAX_SAFE_INTEGER);
  assert.equal(l.maxStorageBufferBindingSize, 2 ** 40);
  assert.equal(l.maxComputeWorkgroupStorageSize, 0xffffffff);
  assert.equal(l.maxComputeInvocationsPerWorkgroup, 1024);
  assert.equal("maxComputeWorkgroupSizeX" in l, false); // absent stays absent
});

gpuTest(
  "chooseKernels() times both families, sets gpu.kernels and caches the answer per adapter",
  async (gpu) => {
    const before = [gpu.kernels, gpu.kernelsReason] as const;
    const cacheDir = await Deno.makeTempDir();
    try {
      const c = await withKernelsEnv(
        undefined,
        () => chooseKernels(gpu, { force: true, cacheDir, N: 256, K: 512, reps: 2 }),
      );
      assert.equal(c.measured, true);
      assert.ok(c.ms && c.ms.cpu.every((t) => t > 0) && c.ms.gpu.every((t) => t > 0), c.reason);
      assert.equal(gpu.kernels, c.family);
      const file = JSON.parse(await Deno.readTextFile(`${cacheDir}/kernels.json`));
      const [key] = Object.keys(file);
      assert.ok(key.startsWith(gpu.adapterName), key);
      assert.equal(file[key].family, c.family);
      const forced = await withKernelsEnv("gpu", () => chooseKernels(gpu, { cacheDir }));
      assert.equal(forced.family, "gpu");
      assert.equal(forced.measured, false);
      assert.equal(gpu.kernels, "gpu");
    } finally {
      [gpu.kernels, gpu.kernelsReason] = before;
      await Deno.remove(cacheDir, { recursive: true });
    }
  },
);
