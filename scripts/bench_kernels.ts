/**
 * Kernel benchmarks: the machine's memory bandwidth, the streaming-read probe on the WebGPU
 * adapter, then matmul at Llama-3-8B shapes, as a table ready for docs/BENCHMARKS.md.
 *
 *   deno task bench            # full table, ~2-4 minutes on 2 cores
 *   deno task bench --quick    # BF16 and T = 1, 8 only, fewer runs
 *   deno task bench --families gpu   # one kernel family only (default: cpu,gpu, compared
 *                                    # row by row under the same load)
 *
 * How it measures (see DESIGN.md, "Measuring honestly"):
 * - Never one dispatch with a readback (Deno's mapAsync alone takes ~10 ms): each run
 *   records many dispatches in one encoder, submits once and waits with
 *   `onSubmittedWorkDone()`. A warm-up run first compiles the pipelines and faults the
 *   pages in. The figure is the median of several runs.
 * - Every run rotates over distinct weight buffers totalling ≥ 256 MB, so the CPU caches
 *   (lavapipe runs on the CPU) cannot hold the weights between dispatches.
 * - Correctness first: each dtype/variant is checked against `matmulRef` before it is timed.
 * - GB/s counts the weight bytes each matmul must read (N·K·dtype bytes), GFLOP/s counts
 *   2·T·N·K; "of probe" divides GB/s by the best read-probe pattern of the same storage
 *   (buffer, or texture for the CPU family's texture rows), timed in alternation with it
 *   because the load from other processes drifts.
 * @module
 */
import { type Gpu, type KernelFamily, requestGpu, type WeightStorage } from "../kernels/gpu.ts";
import {
  chooseMatmulVariant,
  destroyMatrix,
  type GpuMatrix,
  matmul,
  matmulRef,
  type MatmulVariant,
  matmulVariantInfo,
  planMatmul,
  uploadMatrix,
} from "../kernels/matmul.ts";
import {
  READ_PROBE_PATTERNS,
  readProbe,
  readProbeOutputBytes,
  type ReadProbePattern,
  readProbeTexture,
  readProbeTextureInvocations,
  TEXTURE_PROBE_PATTERNS,
  type TextureProbePattern,
} from "../kernels/read_probe.ts";
import { decodeWeights, DTYPE_BYTES, encodeWeights, type WeightDtype } from "../kernels/dtype.ts";
import { allocWeightTextures } from "../kernels/weight_texture.ts";

const argv = Deno.args;
const quick = argv.includes("--quick");
const RUNS = quick ? 3 : 5;
const TARGET_S = quick ? 0.12 : 0.25; // seconds per timed run
const ROTATION_BYTES = 256 * 1024 * 1024;
const TS = quick ? [1, 8] : [1, 8, 64];
const DTYPES: WeightDtype[] = quick ? ["BF16"] : ["BF16", "F16", "F32"];
const fi = argv.indexOf("--families");
const FAMILIES = (fi >= 0 ? argv[fi + 1] : "cpu,gpu").split(",") as KernelFamily[];
const SHAPES: [number, number][] = [[1024, 4096], [4096, 4096], [14336, 4096], [4096, 14336]]; // (N, K)

const gpu = await requestGpu();
if (!gpu) {
  console.error("no WebGPU adapter; see README for installing Mesa's lavapipe");
  Deno.exit(1);
}
const started = performance.now();
console.log(
  `adapter: ${gpu.adapterName}; shader-f16: ${gpu.hasF16}; ` +
    `CPU threads: ${navigator.hardwareConcurrency}; maxStorageBufferBindingSize: ` +
    `${(gpu.maxBindingBytes / 2 ** 20).toFixed(0)} MiB; load average: ${loadavg()}`,
);

// --- 1. the machine itself -------------------------------------------------------------
{
  const n = ROTATION_BYTES;
  const a = new Uint8Array(n).fill(1), b = new Uint8Array(n);
  b.set(a); // fault the pages in
  const ts: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    const t0 = performance.now();
    b.set(a);
    ts.push((performance.now() - t0) / 1000);
  }
  const t = median(ts);
  console.log(
    `\nmemory (Deno, one thread): 256 MB typed-array copy reads ${gb(n / t)} GB/s ` +
      `(${gb(2 * n / t)} GB/s read + write)`,
  );
}

// --- 2. the read probe -------------------------------------------------------------------
const PROBE_BUF = 64 * 1024 * 1024;
const probeBufs = Array.from({ length: ROTATION_BYTES / PROBE_BUF }, (_, i) => {
  const w = new Uint32Array(PROBE_BUF / 4);
  for (let j = 0; j < w.length; j += 997) w[j] = j ^ i;
  return gpu.upload(w, `probe ${i}`);
});
console.log(`\nread probe (${probeBufs.length} × 64 MB buffers in rotation):`);
const probeOut = gpu.buffer(Math.max(...READ_PROBE_PATTERNS.map(readProbeOutputBytes)));
/** GB/s of one probe pattern, timed now. */
async function probeGbps(pattern: ReadProbePattern): Promise<number> {
  const t = await timeOps(gpu!, (enc, i) =>
    readProbe(gpu!, enc, {
      buffer: probeBufs[i % probeBufs.length],
      bytes: PROBE_BUF,
      out: probeOut,
      pattern,
    }));
  return PROBE_BUF / t / 1e9;
}
let probeBest = 0, best = READ_PROBE_PATTERNS[0];
for (const pattern of READ_PROBE_PATTERNS) {
  const gbps = await probeGbps(pattern);
  if (gbps > probeBest) [probeBest, best] = [gbps, pattern];
  console.log(`  ${pattern.name.padEnd(28)} ${gbps.toFixed(2).padStart(6)} GB/s`);
}
console.log(`  best: ${best.name}, ${probeBest.toFixed(2)} GB/s`);

// The texture twin (the CPU family may keep weights in textures): 4 × 64 MB textures of
// 512-texel rows, the width of a (N, 4096) BF16 matrix.
const TEX_W = 512, TEX_H = PROBE_BUF / (TEX_W * 16);
const probeTexs = Array.from({ length: ROTATION_BYTES / PROBE_BUF }, (_, i) => {
  const layout = { width: TEX_W, rowsPerTexture: TEX_H, textures: 1, rowBytes: TEX_W * 16 };
  const [texture] = allocWeightTextures(gpu, layout); // read as the matmul reads its weights
  const w = new Uint32Array(PROBE_BUF / 4).fill(i + 1);
  gpu.device.queue.writeTexture({ texture }, w, { bytesPerRow: TEX_W * 16 }, [TEX_W, TEX_H]);
  return texture;
});
const texOut = gpu.buffer(
  4 * Math.max(...TEXTURE_PROBE_PATTERNS.map((p) => readProbeTextureInvocations(p, TEX_H))),
);
const texRecord = (pattern: TextureProbePattern) => (enc: GPUCommandEncoder, i: number) =>
  readProbeTexture(gpu, enc, { texture: probeTexs[i % probeTexs.length], out: texOut, pattern });
console.log(
  `texture read probe (${probeTexs.length} × 64 MB textures of ${TEX_W} × ${TEX_H}, ` +
    `${gpu.textureReads} reads):`,
);
let texBest = 0, bestTex = TEXTURE_PROBE_PATTERNS[0];
for (const pattern of TEXTURE_PROBE_PATTERNS) {
  const gbps = PROBE_BUF / await timeOps(gpu, texRecord(pattern)) / 1e9;
  if (gbps > texBest) [texBest, bestTex] = [gbps, pattern];
  console.log(`  ${pattern.name.padEnd(28)} ${gbps.toFixed(2).padStart(6)} GB/s`);
}
console.log(`  best: ${bestTex.name}, ${texBest.toFixed(2)} GB/s`);

// --- 3. matmul ---------------------------------------------------------------------------
await chooseMatmulVariant(gpu);
const info = matmulVariantInfo(gpu);
console.log(`\nmatmul variant: ${info.variant} (${info.reason})`);

// The GPU family reads F16 packed whatever the variant; its rows say "-". So do the CPU
// family's texture rows: a texture is always read packed.
const variantsFor = (
  d: WeightDtype,
  f: KernelFamily = "cpu",
  storage: WeightStorage = "buffer",
): MatmulVariant[] =>
  d === "F16" && gpu.hasF16 && f === "cpu" && storage === "buffer" ? ["packed", "f16"] : ["packed"];
/** Each family with the weight storages it reads: the CPU family from buffers and textures. */
type KernelRun = { family: KernelFamily; storage: WeightStorage };
const KERNEL_RUNS = FAMILIES.flatMap((family): KernelRun[] =>
  family === "cpu"
    ? [{ family, storage: "buffer" }, { family, storage: "texture" }]
    : [{ family, storage: "buffer" }]
);

// Correctness first: each family/dtype/variant at an awkward shape of the table's paths.
for (const { family, storage } of KERNEL_RUNS) {
  for (const dtype of DTYPES) {
    for (const variant of variantsFor(dtype, family, storage)) {
      const [T, N, K] = [9, 77, 4096];
      const w = decodeWeights(encodeWeights(noise(N * K, 0.05, 7), dtype), dtype);
      const x = noise(T * K, 1, 8);
      const m = uploadMatrix(gpu, { bytes: encodeWeights(w, dtype), dtype, N, K, storage });
      const y = gpu.poisoned(T * N);
      await gpu.run((enc) => matmul(gpu, enc, { x: gpu.upload(x), w: m, y, T, variant, family }));
      const got = await gpu.read(y), want = matmulRef({ x, w, T, N, K });
      let num = 0, den = 0;
      for (let i = 0; i < got.length; i++) {
        num += (got[i] - want[i]) ** 2;
        den += want[i] ** 2;
      }
      const err = Math.sqrt(num / den);
      const tol = dtype === "F32" ? 1e-5 : 1e-4;
      if (!(err <= tol)) {
        console.error(
          `matmul ${family} ${storage} ${dtype} ${variant} is WRONG: relative L2 error ${err} > ${tol}`,
        );
        Deno.exit(1);
      }
      destroyMatrix(m);
    }
  }
}
console.log(
  `validated against matmulRef, families ${FAMILIES.join(", ")} (cpu from buffers and textures): ` +
    DTYPES.map((d) => `${d} (${variantsFor(d).join(", ")})`).join(", "),
);

console.log(
  "\nEach matmul is timed in alternation with the best probe pattern of its storage (buffer or\n" +
    'texture; same background load); "probe" is that pattern\'s median GB/s meanwhile, "of\n' +
    'probe" the median of the paired ratios.\n\n' +
    "| W (N, K) | dtype | family | weights in | variant | T | ms | GB/s | GFLOP/s | probe | of probe |\n" +
    "|---|---|---|---|---|---|---|---|---|---|---|",
);
const probeRecord = (enc: GPUCommandEncoder, i: number) =>
  readProbe(gpu, enc, {
    buffer: probeBufs[i % probeBufs.length],
    bytes: PROBE_BUF,
    out: probeOut,
    pattern: best,
  });
for (const [N, K] of SHAPES) {
  for (const dtype of DTYPES) {
    const bytes = N * K * DTYPE_BYTES[dtype];
    const count = Math.max(2, Math.ceil(ROTATION_BYTES / bytes));
    const data = encodeWeights(noise(N * K, 0.05, N + K), dtype);
    const mats: Record<WeightStorage, GpuMatrix[]> = { buffer: [], texture: [] };
    for (const storage of ["buffer", "texture"] as const) {
      for (let i = 0; i < count; i++) {
        mats[storage].push(uploadMatrix(gpu, { bytes: data, dtype, N, K, storage }));
      }
    }
    for (const T of TS) {
      const x = gpu.upload(noise(T * K, 1, T)), y = gpu.buffer(T * N * 4);
      for (const { family, storage } of KERNEL_RUNS) {
        for (const variant of variantsFor(dtype, family, storage)) {
          const ms = mats[storage];
          const m = await timePaired(
            gpu,
            (enc, i) => matmul(gpu, enc, { x, w: ms[i % count], y, T, variant, family }),
            storage === "texture" ? texRecord(bestTex) : probeRecord,
          );
          const t = m.a, gbps = bytes / t / 1e9, probe = PROBE_BUF / m.b / 1e9;
          const ofProbe = m.speedup * bytes / PROBE_BUF; // (bytes / ta) / (PROBE_BUF / tb)
          const plan = planMatmul(gpu, { w: ms[0], T, variant });
          console.log(
            `| (${N}, ${K}) | ${dtype} | ${family} | ${storage}s | ${
              dtype === "F16" && family === "cpu" && storage === "buffer" ? variant : "-"
            } | ${T} | ` +
              `${(t * 1000).toFixed(1)} | ${gbps.toFixed(2)} | ${
                (2 * T * N * K / t / 1e9).toFixed(1)
              } | ${probe.toFixed(2)} | ${(100 * ofProbe).toFixed(0)} % |` +
              (family === "cpu" && plan.chunks.length > 1 ? ` ${plan.chunks.length} chunks` : ""),
          );
        }
      }
      x.destroy();
      y.destroy();
    }
    for (const m of [...mats.buffer, ...mats.texture]) destroyMatrix(m);
  }
}
for (const b of probeBufs) b.destroy();
for (const t of probeTexs) t.destroy();
console.log(
  `\nprobe best: ${probeBest.toFixed(2)} GB/s (${best.name}), texture ${texBest.toFixed(2)} GB/s ` +
    `(${bestTex.name}); load average at the end: ` +
    `${loadavg()}; total ${((performance.now() - started) / 1000).toFixed(0)} s`,
);

// --- helpers -----------------------------------------------------------------------------

/**
 * A timer for one kind of op: `record(enc, i)` records op i. `warm()` runs it once (compiles
 * the pipelines, faults pages in) and sizes a run to ~TARGET_S; `once()` is one timed run of
 * that many ops in one submit, returning seconds per op.
 */
function timer(gpu: Gpu, record: (enc: GPUCommandEncoder, i: number) => void) {
  let reps = 2, next = 0;
  const run = async (n: number): Promise<number> => {
    const enc = gpu.device.createCommandEncoder();
    for (let i = 0; i < n; i++) record(enc, next++);
    const t0 = performance.now();
    await gpu.submit(enc);
    return (performance.now() - t0) / 1000 / n;
  };
  return {
    async warm() {
      await run(1);
      reps = Math.max(2, Math.min(400, Math.round(TARGET_S / await run(2))));
    },
    once: () => run(reps),
  };
}

/** Median seconds per op over RUNS runs. */
async function timeOps(
  gpu: Gpu,
  record: (enc: GPUCommandEncoder, i: number) => void,
): Promise<number> {
  const t = timer(gpu, record);
  await t.warm();
  const ts: number[] = [];
  for (let r = 0; r < RUNS; r++) ts.push(await t.once());
  return median(ts);
}

/**
 * Times `a` and `b` in alternating runs (a, b, a, b, …) so that both see the same
 * background load; returns each one's median seconds per op and the median of the
 * per-run ratios tb/ta (how many times faster a ran than b, pair by pair).
 */
async function timePaired(
  gpu: Gpu,
  a: (enc: GPUCommandEncoder, i: number) => void,
  b: (enc: GPUCommandEncoder, i: number) => void,
): Promise<{ a: number; b: number; speedup: number }> {
  const ta = timer(gpu, a), tb = timer(gpu, b);
  await ta.warm();
  await tb.warm();
  const as: number[] = [], bs: number[] = [], rs: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    as.push(await ta.once());
    bs.push(await tb.once());
    rs.push(bs[r] / as[r]);
  }
  return { a: median(as), b: median(bs), speedup: median(rs) };
}

function median(a: number[]): number {
  const s = [...a].sort((p, q) => p - q);
  return s[s.length >> 1];
}

function gb(bytesPerSecond: number): string {
  return (bytesPerSecond / 1e9).toFixed(2);
}

function loadavg(): string {
  try {
    return Deno.loadavg().map((v) => v.toFixed(2)).join(" ");
  } catch {
    return "n/a";
  }
}

/** Cheap deterministic noise (a sine hash), good enough for timing and a correctness check. */
function noise(n: number, scale: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const s = Math.sin((i + 1) * 12.9898 + seed * 78.233) * 43758.5453;
    a[i] = (s - Math.floor(s) - 0.5) * 2 * scale;
  }
  return a;
}
