/**
 * Tests of the kernel-family and weight-storage choices: kernels/choose.ts (timing, cache,
 * the environment switches) and the pieces of kernels/gpu.ts they rest on (the default
 * family, clamped limits).
 */
import assert from "node:assert/strict";
import { chooseKernels, chooseWeightStorage, WEIGHTS_ENV } from "../kernels/choose.ts";
import { clampLimits, defaultKernelFamily, KERNELS_ENV } from "../kernels/gpu.ts";
import { gpuTest, withEnv } from "./_helpers.ts";

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
      const key = Object.keys(file).find((k) => !k.includes("|weights"))!;
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

gpuTest(
  "chooseWeightStorage() times buffer against texture, sets gpu.weightStorage, caches it; GQA_VIZ_WEIGHTS forces it",
  async (gpu) => {
    const before = [gpu.weightStorage, gpu.weightStorageReason] as const;
    const cacheDir = await Deno.makeTempDir();
    try {
      const c = await withEnv(
        { [WEIGHTS_ENV]: undefined },
        () => chooseWeightStorage(gpu, { force: true, cacheDir, N: 64, K: 512, reps: 2 }),
      );
      assert.equal(c.measured, true, c.reason);
      const ms = c.ms!;
      assert.ok(ms.buffer.every((t) => t > 0) && ms.texture.every((t) => t > 0), c.reason);
      // The rule: texture only when its total is at least 5 % below the buffer's.
      const texture = ms.texture[0] + ms.texture[1] < 0.95 * (ms.buffer[0] + ms.buffer[1]);
      assert.equal(c.storage, texture ? "texture" : "buffer");
      assert.equal(gpu.weightStorage, c.storage);
      const file = JSON.parse(await Deno.readTextFile(`${cacheDir}/kernels.json`));
      const key = Object.keys(file).find((k) => k.includes("|weights"))!;
      assert.ok(key.startsWith(gpu.adapterName), key);
      assert.ok(key.endsWith(`|weights|${gpu.textureReads}`), key); // re-timed per read path
      assert.equal(file[key].storage, c.storage);
      const again = await withEnv(
        { [WEIGHTS_ENV]: undefined },
        () => chooseWeightStorage(gpu, { cacheDir }),
      );
      assert.deepEqual([again.storage, again.reason], [c.storage, c.reason + " (cached)"]);
      for (const forced of ["buffer", "texture"] as const) {
        const f = await withEnv({ [WEIGHTS_ENV]: forced }, () => chooseWeightStorage(gpu));
        assert.deepEqual([f.storage, f.measured, gpu.weightStorage], [forced, false, forced]);
      }
    } finally {
      [gpu.weightStorage, gpu.weightStorageReason] = before;
      await Deno.remove(cacheDir, { recursive: true });
    }
  },
);
