import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { encodeWeights, roundTo, type WeightDtype } from "../kernels/dtype.ts";
import type { Gpu, KernelFamily, WeightStorage } from "../kernels/gpu.ts";
import { uploadMatrix } from "../kernels/matmul.ts";
import { ropeTables } from "../kernels/rope.ts";
import {
  allocCapture,
  allocScratch,
  decoderLayer,
  LAYER_STEPS,
  type LayerDims,
  type LayerWeights,
} from "../kernels/decoder_layer.ts";
import { createFiniteCheck, firstNonFinite } from "../kernels/finite_check.ts";
import { assertClose, gpuTest, type Rng } from "./_helpers.ts";
import { type RefConfig, referenceLayer, type RefLayer } from "./reference_llama.ts";

/** A small Llama-3-style layer: H/KV = 4, explicit head_dim (H·HD ≠ D), llama3 RoPE. */
const CFG: RefConfig = {
  D: 72,
  H: 8,
  KV: 2,
  HD: 16,
  I: 100,
  eps: 1e-5,
  theta: 500000,
  llama3: { factor: 8, low: 1, high: 4, original: 16 },
};
const ROPE = {
  theta: CFG.theta,
  scaling: {
    type: "llama3" as const,
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 16,
  },
};

function randomLayer(rng: Rng, dtype: WeightDtype, bias: boolean): RefLayer {
  const { D, H, KV, HD, I } = CFG;
  const m = (n: number, k: number) => roundTo(rng.normals(n * k, 1 / Math.sqrt(k)), dtype);
  const norm = (n: number) => roundTo(rng.normals(n, 0.1).map((x) => 1 + x), dtype);
  return {
    inputNorm: norm(D),
    q: m(H * HD, D),
    k: m(KV * HD, D),
    v: m(KV * HD, D),
    qBias: bias ? roundTo(rng.normals(H * HD, 0.1), dtype) : undefined,
    kBias: bias ? roundTo(rng.normals(KV * HD, 0.1), dtype) : undefined,
    vBias: bias ? roundTo(rng.normals(KV * HD, 0.1), dtype) : undefined,
    o: m(D, H * HD),
    postNorm: norm(D),
    gate: m(I, D),
    up: m(I, D),
    down: m(D, I),
  };
}

function uploadLayer(gpu: Gpu, w: RefLayer, dtype: WeightDtype): LayerWeights {
  const { D, H, KV, HD, I } = CFG;
  const mat = (a: Float32Array, N: number, K: number) =>
    uploadMatrix(gpu, { bytes: encodeWeights(a, dtype), dtype, N, K });
  const vec = (a?: Float32Array) => a && gpu.upload(a);
  return {
    inputNorm: gpu.upload(w.inputNorm),
    q: mat(w.q, H * HD, D),
    k: mat(w.k, KV * HD, D),
    v: mat(w.v, KV * HD, D),
    qBias: vec(w.qBias),
    kBias: vec(w.kBias),
    vBias: vec(w.vBias),
    o: mat(w.o, D, H * HD),
    postNorm: gpu.upload(w.postNorm),
    gate: mat(w.gate, I, D),
    up: mat(w.up, I, D),
    down: mat(w.down, D, I),
  };
}

/**
 * One case of the layer test: T tokens, the weights' dtype, q/k/v biases or not, the kernel
 * family (and for the CPU family where its weights live), and a binding limit that forces
 * chunks.
 */
interface LayerCase {
  T: number;
  dtype: WeightDtype;
  bias: boolean;
  family: KernelFamily;
  storage?: WeightStorage;
  maxBindingBytes?: number;
}

/** Every way a layer can run: the GPU family, and the CPU family from buffers and from textures. */
const RUNS = [
  { family: "cpu", storage: "buffer" },
  { family: "cpu", storage: "texture" },
  { family: "gpu" },
] as const;

async function runLayer(gpu: Gpu, rng: Rng, a: LayerCase) {
  const before = [gpu.kernels, gpu.weightStorage] as const;
  gpu.kernels = a.family; // what GQA_VIZ_KERNELS does for a whole run
  gpu.weightStorage = a.storage ?? "buffer"; // and GQA_VIZ_WEIGHTS
  try {
    return await runLayerOnce(gpu, rng, a);
  } finally {
    [gpu.kernels, gpu.weightStorage] = before;
  }
}

async function runLayerOnce(
  gpu: Gpu,
  rng: Rng,
  a: Omit<LayerCase, "family" | "storage">,
) {
  const dims: LayerDims = { ...CFG, T: a.T };
  const wRef = randomLayer(rng, a.dtype, a.bias);
  const x0 = rng.normals(a.T * CFG.D);
  const w = uploadLayer(gpu, wRef, a.dtype);
  const s = allocScratch(gpu, dims, { maxBindingBytes: a.maxBindingBytes });
  if (a.maxBindingBytes && !(s.Tc < a.T && s.chunk)) throw new Error(`no chunks: Tc = ${s.Tc}`);
  const { cos, sin } = ropeTables({ T: a.T, HD: CFG.HD, cfg: ROPE, posOffset: 0 });
  gpu.write(s.cos, cos);
  gpu.write(s.sin, sin);
  // Capture run: poisoned capture buffers, stop after RoPE.
  const cap = allocCapture(gpu, dims);
  for (const b of [cap.q, cap.k, cap.kRope, cap.qRope, cap.v]) {
    gpu.write(b, new Float32Array(b.size / 4).fill(NaN));
  }
  const xCap = gpu.upload(x0);
  await gpu.run((e) => decoderLayer(gpu, e, { dims, w, x: xCap, s, stop: "qkv", capture: cap }));
  // Full run on a fresh copy of x.
  const x = gpu.upload(x0);
  await gpu.run((e) => decoderLayer(gpu, e, { dims, w, x, s }));
  const ref = referenceLayer({ cfg: CFG, x: Float64Array.from(x0), T: a.T, w: wRef });
  return {
    ref,
    q: await gpu.read(cap.q),
    k: await gpu.read(cap.k),
    kRope: await gpu.read(cap.kRope),
    qRope: await gpu.read(cap.qRope),
    v: await gpu.read(cap.v),
    out: await gpu.read(x),
  };
}

// 32 KiB chunk buffers hold 64 tokens of the widest activation (H·HD = 128 f32).
const CHUNKED = 64 * 128 * 4;
for (
  const { T, dtype, bias, maxBindingBytes } of [
    { T: 1, dtype: "BF16", bias: false },
    { T: 7, dtype: "BF16", bias: false },
    { T: 17, dtype: "F16", bias: true },
    { T: 5, dtype: "F32", bias: true },
    { T: 150, dtype: "BF16", bias: true, maxBindingBytes: CHUNKED }, // chunks 64 + 64 + 22
    { T: 600, dtype: "F16", bias: false, maxBindingBytes: CHUNKED }, // 10 chunks
  ] as const
) {
  gpuTest(
    `decoderLayer() matches the float64 reference layer for both kernel families and weight storages (T=${T}, ${dtype}${
      bias ? ", q/k/v bias" : ""
    }${maxBindingBytes ? ", chunked past one binding" : ""})`,
    async (gpu, rng) => {
      for (const run of RUNS) {
        await checkLayer(gpu, rng, { T, dtype, bias, ...run, maxBindingBytes });
      }
    },
  );
}

async function checkLayer(
  gpu: Gpu,
  rng: Rng,
  a: LayerCase,
): Promise<void> {
  const r = await runLayer(gpu, rng, a);
  const tol = 1e-4;
  const f = `${a.family} family${a.storage ? ` (weights in ${a.storage}s)` : ""}:`;
  assertClose(r.q, r.ref.q, tol, `${f} q at the capture point`);
  assertClose(r.k, r.ref.k, tol, `${f} k at the capture point`);
  assertClose(r.kRope, r.ref.kRope, tol, `${f} k after RoPE`);
  assertClose(r.qRope, r.ref.qRope, tol, `${f} q after RoPE`);
  assertClose(r.v, r.ref.v, tol, `${f} v at the capture point`);
  assertClose(r.out, r.ref.out, tol, `${f} residual stream after the layer`);
}

gpuTest(
  "decoderLayer() in two halves (stop: attention, then start: mlp) gives the full layer's x",
  async (gpu, rng) => {
    const T = 5;
    const dims: LayerDims = { ...CFG, T };
    const w = uploadLayer(gpu, randomLayer(rng, "BF16", true), "BF16");
    const s = allocScratch(gpu, dims);
    const { cos, sin } = ropeTables({ T, HD: CFG.HD, cfg: ROPE, posOffset: 0 });
    gpu.write(s.cos, cos);
    gpu.write(s.sin, sin);
    const x0 = rng.normals(T * CFG.D);
    const full = gpu.upload(x0);
    await gpu.run((e) => decoderLayer(gpu, e, { dims, w, x: full, s }));
    const halves = gpu.upload(x0);
    await gpu.run((e) => decoderLayer(gpu, e, { dims, w, x: halves, s, stop: "attention" }));
    const mid = await gpu.read(halves); // after the attention residual only
    await gpu.run((e) => decoderLayer(gpu, e, { dims, w, x: halves, s, start: "mlp" }));
    const [a, b] = [await gpu.read(full), await gpu.read(halves)];
    assertEquals(Array.from(b), Array.from(a)); // the same kernels in the same order
    assertEquals(mid.some((v, i) => v !== a[i]), true, "the MLP half changes x");
  },
);

gpuTest(
  "decoderLayer() with a finite check names the step where NaN first appears",
  async (gpu, rng) => {
    const T = 3;
    const dims: LayerDims = { ...CFG, T };
    const wRef = randomLayer(rng, "F32", false);
    wRef.up[5] = NaN; // a corrupt up_proj weight: gate_proj is still finite, up_proj is not
    const w = uploadLayer(gpu, wRef, "F32");
    const s = allocScratch(gpu, dims);
    const { cos, sin } = ropeTables({ T, HD: CFG.HD, cfg: ROPE, posOffset: 0 });
    gpu.write(s.cos, cos);
    gpu.write(s.sin, sin);
    const check = createFiniteCheck(gpu, LAYER_STEPS.length);
    const x = gpu.upload(rng.normals(T * CFG.D));
    await gpu.run((e) => decoderLayer(gpu, e, { dims, w, x, s, check }));
    assertEquals(LAYER_STEPS[await firstNonFinite(gpu, check)], "up_proj");

    const clean = uploadLayer(gpu, randomLayer(rng, "F32", false), "F32");
    const check2 = createFiniteCheck(gpu, LAYER_STEPS.length);
    const x2 = gpu.upload(rng.normals(T * CFG.D));
    await gpu.run((e) => decoderLayer(gpu, e, { dims, w: clean, x: x2, s, check: check2 }));
    assertEquals(await firstNonFinite(gpu, check2), -1);
  },
);
