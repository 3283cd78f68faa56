/**
 * Tests of kernels/matmul.ts: Y = X·Wᵀ (+ bias) on the GPU against matmulRef (float64),
 * computed from the same rounded weights, for every dtype and every variant the adapter
 * has, at awkward sizes, Llama-3-8B sizes, forced weight splits and 2-D grids.
 * Tolerance: relative L2 error ≤ 1e-5 for F32 weights, ≤ 1e-4 for F16/BF16.
 */
import { assertClose, gpuTest, type Rng } from "./_helpers.ts";
import {
  allocMatrix,
  chooseMatmulVariant,
  destroyMatrix,
  matmul,
  type MatmulArgs,
  matmulRef,
  type MatmulVariant,
  matmulVariantInfo,
  planMatmul,
  uploadMatrix,
  writeMatrix,
  writeMatrixBytes,
} from "../kernels/matmul.ts";
import { decodeWeights, encodeWeights, type WeightDtype } from "../kernels/dtype.ts";
import type { Gpu, KernelFamily, TextureReads, WeightStorage } from "../kernels/gpu.ts";
import { GEMV_MAX_T, planMatmulGpu } from "../kernels/matmul_gpu.ts";
import { GqaError } from "../errors.ts";
import assert from "node:assert/strict";

const TOL: Record<WeightDtype, number> = { F32: 1e-5, F16: 1e-4, BF16: 1e-4 };
const DTYPES: WeightDtype[] = ["F32", "F16", "BF16"];

/** `n` values uniform in (-scale, scale): one rng call each, fast enough for 58M weights. */
function uniforms(rng: Rng, n: number, scale: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.next() * 2 - 1) * scale;
  return a;
}

/** A random (N, K) matrix stored as `dtype`, and its values after rounding (what the GPU sees). */
function randomMatrix(rng: Rng, N: number, K: number, dtype: WeightDtype) {
  const bytes = encodeWeights(uniforms(rng, N * K, 1 / Math.sqrt(K)), dtype);
  return { bytes, values: decodeWeights(bytes, dtype) };
}

function variantsOf(gpu: Gpu): MatmulVariant[] {
  return gpu.hasF16 ? ["packed", "f16"] : ["packed"];
}

interface Case {
  T: number;
  N: number;
  K: number;
  dtype: WeightDtype;
  bias: boolean;
  variant?: MatmulVariant;
  maxBindingBytes?: number;
  gridLimit?: number;
  family?: KernelFamily;
  storage?: WeightStorage;
  textureRows?: number;
  textureReads?: TextureReads;
}

const FAMILIES: KernelFamily[] = ["cpu", "gpu"];

/** Runs one case into a NaN-poisoned Y and checks every element against matmulRef. */
async function check(gpu: Gpu, rng: Rng, c: Case): Promise<void> {
  const { T, N, K, dtype } = c;
  const w = randomMatrix(rng, N, K, dtype);
  const x = uniforms(rng, T * K, 2);
  const bias = c.bias ? uniforms(rng, N, 1) : undefined;
  const m = uploadMatrix(gpu, {
    bytes: w.bytes,
    dtype,
    N,
    K,
    storage: c.storage ?? "buffer",
    textureRows: c.textureRows,
    textureReads: c.textureReads,
  });
  const y = gpu.poisoned(T * N); // (T, N) NaN: any element the kernel misses stays NaN
  const args: MatmulArgs = {
    x: gpu.upload(x),
    w: m,
    y,
    T,
    bias: bias ? gpu.upload(bias) : undefined,
    variant: c.variant,
    maxBindingBytes: c.maxBindingBytes,
    gridLimit: c.gridLimit,
    family: c.family,
  };
  await gpu.run((enc) => matmul(gpu, enc, args));
  const got = await gpu.read(y, 0, T * N * 4);
  const what = `T=${T} N=${N} K=${K} ${dtype} ${c.variant ?? "default"}${c.bias ? " +bias" : ""}` +
    (c.maxBindingBytes ? ` maxBindingBytes=${c.maxBindingBytes}` : "") +
    (c.gridLimit ? ` gridLimit=${c.gridLimit}` : "") + (c.family ? ` family=${c.family}` : "") +
    (c.storage ? ` storage=${c.storage}` : "") + (c.textureRows ? ` rows=${c.textureRows}` : "") +
    (c.textureReads ? ` reads=${c.textureReads}` : "");
  assertClose(got, matmulRef({ x, w: w.values, T, N, K, bias }), TOL[dtype], what);
  destroyMatrix(m);
  y.destroy();
}

Deno.test("matmulRef() matches a product computed by hand", () => {
  // X (2, 3) · Wᵀ with W (2, 3), plus bias:
  // [1 2 3]·[1 0 -1] = -2, [1 2 3]·[2 1 0] = 4, [4 5 6]·[1 0 -1] = -2, [4 5 6]·[2 1 0] = 13
  const y = matmulRef({
    x: new Float32Array([1, 2, 3, 4, 5, 6]),
    w: new Float32Array([1, 0, -1, 2, 1, 0]),
    T: 2,
    N: 2,
    K: 3,
    bias: new Float32Array([0.5, -1]),
  });
  assert.deepEqual(Array.from(y), [-1.5, 3, -1.5, 12]);
});

Deno.test("uploadMatrix() and writeMatrix() reject bytes that do not match the shape", async () => {
  const stub = {} as Gpu; // the check runs before anything touches the device
  assert.throws(
    () => uploadMatrix(stub, { bytes: new Uint8Array(10), dtype: "BF16", N: 2, K: 3 }),
    GqaError,
  );
  const m = { buffer: {} as GPUBuffer, dtype: "F32" as const, N: 2, K: 2 };
  await assert.rejects(writeMatrix(stub, m, new Uint8Array(12)), GqaError);
});

Deno.test("matmul() rejects bad T, short buffers and f16 on an adapter without it", () => {
  const stub = { hasF16: false, adapterName: "stub" } as unknown as Gpu;
  const buf = (size: number) => ({ size } as GPUBuffer);
  const w = { buffer: buf(24), dtype: "F32" as const, N: 2, K: 3 };
  const enc = {} as GPUCommandEncoder;
  const ok = { x: buf(12), w, y: buf(8), T: 1 };
  assert.throws(() => matmul(stub, enc, { ...ok, T: 0 }), GqaError);
  assert.throws(() => matmul(stub, enc, { ...ok, x: buf(8) }), GqaError);
  assert.throws(() => matmul(stub, enc, { ...ok, y: buf(4) }), GqaError);
  assert.throws(() => matmul(stub, enc, { ...ok, variant: "f16" }), GqaError);
});

gpuTest(
  "chooseMatmulVariant() returns a variant this adapter supports and says why",
  async (gpu) => {
    const v = await chooseMatmulVariant(gpu);
    const info = matmulVariantInfo(gpu);
    console.log(`matmul variant: ${info.variant} (${info.reason})`);
    assert.deepEqual(info.variant, v);
    assert.deepEqual(info.measured, true);
    if (!gpu.hasF16) assert.deepEqual(v, "packed");
    if (!["packed", "f16"].includes(v) || info.reason.length < 10) throw new Error(`bad info ${v}`);
    assert.deepEqual(await chooseMatmulVariant(gpu), v); // cached: same answer, no new timing
  },
);

gpuTest(
  "matmul() matches matmulRef at awkward sizes for every family, dtype, variant, with and without bias",
  async (gpu, rng) => {
    // [T, N, K]: fast path / GEMV / GEMM (K % 8 == 0) and general path (odd K, K % 8 != 0)
    const shapes: [number, number, number][] = [
      [1, 1000, 4101], // general path, odd K: rows start mid-word for 16-bit weights
      [3, 1030, 4096], // fast path, N not a multiple of 16 rows × 16 invocations
      [17, 1030, 72], // fast path, three token passes (8 + 8 + 1); GEMM, partial tiles
      [7, 45, 520], // GEMV: 7 tokens, K one step past a 512 tile
      [1, 9, 8], // GEMV: one k-step, rows past the end of the last workgroup
      [5, 33, 37], // general path, tiny odd K
      [2, 9, 6], // general path, K even but not a multiple of 8
    ];
    for (const family of FAMILIES) {
      for (const [T, N, K] of shapes) {
        for (const dtype of DTYPES) {
          for (const variant of dtype === "F16" ? variantsOf(gpu) : ["packed" as const]) {
            for (const bias of [false, true]) {
              await check(gpu, rng, { T, N, K, dtype, bias, variant, family });
            }
          }
        }
      }
    }
  },
);

// [T, N, K, family]: cpu fast path, cpu general path, GPU-family GEMV and GEMM
const WARM_CASES: [number, number, number, KernelFamily][] = [
  [8, 70, 64, "cpu"],
  [3, 9, 37, "cpu"],
  [8, 70, 64, "gpu"],
  [20, 70, 64, "gpu"],
];

gpuTest(
  "matmul({ warmUpOnly }) leaves Y untouched in both families; the next real call is still exact",
  async (gpu, rng) => {
    for (const [T, N, K, family] of WARM_CASES) {
      const wf = rng.normals(N * K, 0.1);
      const w = uploadMatrix(gpu, { bytes: encodeWeights(wf, "BF16"), dtype: "BF16", N, K });
      const xf = rng.normals(T * K);
      const x = gpu.upload(xf), y = gpu.poisoned(T * N);
      await gpu.run((e) => matmul(gpu, e, { x, w, y, T, warmUpOnly: true, family }));
      assert(
        (await gpu.read(y)).every(Number.isNaN),
        `(${T}, ${N}, ${K}) ${family}: Y was written`,
      );
      await gpu.run((e) => matmul(gpu, e, { x, w, y, T, family }));
      const ref = matmulRef({
        x: xf,
        w: decodeWeights(encodeWeights(wf, "BF16"), "BF16"),
        T,
        N,
        K,
      });
      assertClose(await gpu.read(y), ref, 1e-5, `(${T}, ${N}, ${K})`);
    }
  },
);

gpuTest("matmul() handles T up to 600 (passes of tokens, GEMM tiles)", async (gpu, rng) => {
  for (const family of FAMILIES) {
    await check(gpu, rng, { T: 600, N: 40, K: 64, dtype: "BF16", bias: true, family });
    await check(gpu, rng, { T: 300, N: 21, K: 63, dtype: "F16", bias: false, family });
    await check(gpu, rng, { T: 129, N: 50, K: 128, dtype: "F32", bias: true, family });
  }
});

gpuTest(
  "matmul() GPU family binds X and Y as token windows when Y exceeds one binding",
  async (gpu, rng) => {
    const c: Case = {
      T: 200,
      N: 72,
      K: 64,
      dtype: "BF16",
      bias: true,
      family: "gpu",
      maxBindingBytes: 20000,
    };
    const plan = planMatmulGpu(gpu, { ...c, w: { buffer: {} as GPUBuffer, ...c } });
    assert.deepEqual(plan.windows.map((w) => w.tokens), [64, 64, 64, 8]);
    assert.deepEqual(plan.kind, "gemm");
    await check(gpu, rng, c);
    await check(gpu, rng, { ...c, T: GEMV_MAX_T, maxBindingBytes: 1000, dtype: "F32" });
  },
);

gpuTest(
  "matmul() splits weights larger than maxBindingBytes into aligned row chunks",
  async (gpu, rng) => {
    const cases: Case[] = [
      { T: 3, N: 301, K: 72, dtype: "BF16", bias: true, maxBindingBytes: 1000 }, // fast
      { T: 2, N: 101, K: 75, dtype: "F16", bias: true, maxBindingBytes: 777 }, // general, odd K
      { T: 9, N: 64, K: 64, dtype: "F32", bias: false, maxBindingBytes: 2048 }, // fast, 2 passes
    ];
    if (gpu.hasF16) cases.push({ ...cases[0], dtype: "F16", variant: "f16" });
    cases.push(
      ...cases.filter((c) => c.K % 8 === 0).map((c) => ({ ...c, family: "gpu" as const })),
    );
    for (const c of cases) {
      const w = { buffer: {} as GPUBuffer, dtype: c.dtype, N: c.N, K: c.K };
      const plan = c.family === "gpu"
        ? planMatmulGpu(gpu, { ...c, w })
        : planMatmul(gpu, { ...c, w });
      if (plan.chunks.length < 2) throw new Error(`no split for ${JSON.stringify(c)}`);
      for (const ch of plan.chunks) {
        if (ch.offset % gpu.bindAlign !== 0 || ch.size > c.maxBindingBytes!) {
          throw new Error(`bad chunk ${JSON.stringify(ch)}`);
        }
      }
      await check(gpu, rng, c);
    }
  },
);

gpuTest(
  "matmul() spreads workgroups over a 2-D grid when one dimension is full",
  async (gpu, rng) => {
    for (const family of FAMILIES) {
      await check(gpu, rng, {
        T: 2,
        N: 1000,
        K: 64,
        dtype: "BF16",
        bias: true,
        gridLimit: 3,
        family,
      });
      await check(gpu, rng, {
        T: 2,
        N: 1000,
        K: 65,
        dtype: "F32",
        bias: false,
        gridLimit: 2,
        family,
      });
      await check(gpu, rng, {
        T: 70,
        N: 1000,
        K: 64,
        dtype: "F16",
        bias: true,
        gridLimit: 3,
        family,
      });
    }
  },
);

gpuTest(
  "matmul() fast path: matrices of different K share one pipeline in one encoder, each exact",
  async (gpu, rng) => {
    // K is a parameter of the fast-path kernel, not part of its source: a shorter K after a
    // longer one (and the reverse) must not read the other's X or row stride.
    const T = 3, N = 40;
    for (const storage of ["buffer", "texture"] as const) {
      const cases = [1000, 24, 4096].map((K) => {
        const w = randomMatrix(rng, N, K, "BF16"), x = uniforms(rng, T * K, 1);
        const m = uploadMatrix(gpu, { bytes: w.bytes, dtype: "BF16", N, K, storage });
        return { K, w, x, m, xb: gpu.upload(x), y: gpu.poisoned(T * N) };
      });
      await gpu.run((enc) => {
        for (const c of cases) matmul(gpu, enc, { x: c.xb, w: c.m, y: c.y, T, family: "cpu" });
      });
      for (const c of cases) {
        const ref = matmulRef({ x: c.x, w: c.w.values, T, N, K: c.K });
        assertClose(await gpu.read(c.y), ref, TOL.BF16, `K=${c.K} (${storage})`);
        destroyMatrix(c.m);
      }
    }
  },
);

gpuTest(
  "matmul() reads the new weights after writeMatrix(), from a buffer or a texture",
  async (gpu, rng) => {
    const [T, N, K] = [2, 50, 64];
    for (const storage of ["buffer", "texture"] as const) {
      const a = randomMatrix(rng, N, K, "BF16"), b = randomMatrix(rng, N, K, "BF16");
      const x = uniforms(rng, T * K, 1);
      const m = uploadMatrix(gpu, { bytes: a.bytes, dtype: "BF16", N, K, storage });
      await writeMatrix(gpu, m, b.bytes);
      const y = gpu.poisoned(T * N);
      await gpu.run((enc) => matmul(gpu, enc, { x: gpu.upload(x), w: m, y, T, family: "cpu" }));
      const ref = matmulRef({ x, w: b.values, T, N, K });
      assertClose(await gpu.read(y), ref, 1e-4, `after write (${storage})`);
      destroyMatrix(m);
    }
  },
);

gpuTest(
  "matmul() reads weights from textures, as storage and as sampled textures: every dtype, " +
    "awkward sizes, bias, several textures",
  async (gpu, rng) => {
    // Storage reads (image loads) where WGSL has read-only storage textures; sampled reads
    // (texel fetches) everywhere.
    const modes: TextureReads[] = gpu.textureReads === "storage"
      ? ["storage", "sampled"]
      : ["sampled"];
    // [T, N, K, rows per texture]: the fast path's shapes (K % 8 == 0)
    const shapes: [number, number, number, number?][] = [
      [3, 1030, 4096], // N not a multiple of 16 rows × 8 invocations
      [17, 1030, 72], // three token passes (8 + 8 + 1)
      [7, 45, 520],
      [1, 9, 8], // one k-step, rows past the end of the last workgroup
      [600, 40, 64], // 75 token passes
      [5, 301, 72, 64], // five textures, the last one partial
      [2, 70, 8, 1], // one row per texture
    ];
    for (const [T, N, K, textureRows] of shapes) {
      for (const dtype of DTYPES) {
        for (const bias of [false, true]) {
          for (const textureReads of modes) {
            await check(gpu, rng, {
              T,
              N,
              K,
              dtype,
              bias,
              family: "cpu",
              storage: "texture",
              textureRows,
              textureReads,
            });
          }
        }
      }
    }
    // The GPU family reads buffers only: a texture matrix handed to it runs the CPU kernel.
    await check(gpu, rng, {
      T: 3,
      N: 130,
      K: 64,
      dtype: "BF16",
      bias: true,
      family: "gpu",
      storage: "texture",
    });
    const w = allocMatrix(gpu, {
      dtype: "BF16",
      N: 301,
      K: 72,
      storage: "texture",
      textureRows: 64,
    });
    assert.deepEqual(planMatmul(gpu, { w, T: 1 }).chunks.map((c) => [c.row0, c.rows, c.texture]), [
      [0, 64, 0],
      [64, 64, 1],
      [128, 64, 2],
      [192, 64, 3],
      [256, 45, 4],
    ]);
    destroyMatrix(w);
  },
);

gpuTest(
  "matmul() reads X from a storage texture when K % 64 == 0 and from uniforms otherwise, " +
    "exact either way",
  async (gpu, rng) => {
    const before = gpu.textureReads;
    try {
      const modes: TextureReads[] = before === "storage" ? ["storage", "sampled"] : ["sampled"];
      for (const reads of modes) {
        gpu.textureReads = reads; // "sampled": no storage textures, so X from uniforms too
        for (const [T, N, K] of [[9, 70, 128], [3, 37, 72], [1, 19, 4096], [8, 33, 520]]) {
          const want = reads === "storage" && K % 64 === 0 ? "texture" : "uniform";
          for (const storage of ["buffer", "texture"] as const) {
            const m = allocMatrix(gpu, { dtype: "BF16", N, K, storage });
            assert.equal(planMatmul(gpu, { w: m, T }).xFrom, want, `K = ${K}, ${reads}`);
            destroyMatrix(m);
            await check(gpu, rng, {
              T,
              N,
              K,
              dtype: "BF16",
              bias: T % 2 === 1,
              family: "cpu",
              storage,
            });
          }
        }
      }
    } finally {
      gpu.textureReads = before;
    }
  },
);

gpuTest(
  "writeMatrixBytes() lands pieces that split texture rows and textures; matmul() reads them all",
  async (gpu, rng) => {
    const [T, N, K] = [3, 37, 24]; // F32 rows: 96 bytes = 6 texels
    for (const dtype of DTYPES) {
      const w = randomMatrix(rng, N, K, dtype);
      const m = allocMatrix(gpu, { dtype, N, K, storage: "texture", textureRows: 5 });
      // Random 16-byte-aligned pieces, written in shuffled order.
      const cuts = [0, w.bytes.byteLength];
      for (let i = 0; i < 12; i++) cuts.push(rng.int(w.bytes.byteLength / 16) * 16);
      cuts.sort((p, q) => p - q);
      const pieces = cuts.slice(1).map((end, i) => [cuts[i], end]).sort(() => rng.next() - 0.5);
      for (const [a, b] of pieces) writeMatrixBytes(gpu, m, w.bytes.subarray(a, b), a);
      const x = uniforms(rng, T * K, 1), y = gpu.poisoned(T * N);
      await gpu.run((enc) => matmul(gpu, enc, { x: gpu.upload(x), w: m, y, T, family: "cpu" }));
      assertClose(await gpu.read(y), matmulRef({ x, w: w.values, T, N, K }), TOL[dtype], dtype);
      destroyMatrix(m);
    }
  },
);

Deno.test("allocMatrix() refuses a texture where the fast path cannot read one", () => {
  const limits = { maxUniformBufferBindingSize: 65536, maxTextureDimension2D: 8192 };
  const stub = {
    adapterName: "stub",
    kernels: "cpu",
    weightStorage: "texture",
    device: { limits },
    buffer: (bytes: number) => ({ size: bytes }) as GPUBuffer,
  } as unknown as Gpu;
  for (const K of [37, 6, 20000]) {
    assert.throws(
      () => allocMatrix(stub, { dtype: "BF16", N: 4, K, storage: "texture" }),
      (e: unknown) => e instanceof GqaError && /storage "buffer"/.test(e.message),
    );
    // Unasked (the device's choice is "texture"), such a matrix simply stays in a buffer.
    const m = allocMatrix(stub, { dtype: "BF16", N: 4, K });
    assert(m.buffer && !m.textures);
  }
});

gpuTest("matmul() matches matmulRef at Llama-3-8B shapes", async (gpu, rng) => {
  // D = 4096, I = 14336, KV·HD = 1024. F32 (14336, 4096) is 235 MB: more than one 128 MiB
  // binding on lavapipe, so it also exercises the real split.
  const cases: Case[] = [
    { T: 3, N: 1024, K: 4096, dtype: "BF16", bias: true }, // k_proj / v_proj
    { T: 3, N: 4096, K: 4096, dtype: "F16", bias: false }, // q_proj / o_proj
    { T: 1, N: 14336, K: 4096, dtype: "BF16", bias: false }, // gate_proj / up_proj
    { T: 1, N: 4096, K: 14336, dtype: "BF16", bias: false }, // down_proj
    { T: 1, N: 14336, K: 4096, dtype: "F32", bias: false }, // up_proj in F32: split
  ];
  for (const c of cases) {
    for (const family of FAMILIES) await check(gpu, rng, { ...c, family });
  }
});
