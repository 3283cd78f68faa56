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
 *   2·T·N·K; "of probe" divides GB/s by the best read-probe pattern, timed again just before
 *   each block of rows because the load from other processes drifts.
 * @module
 */
import { type Gpu, type KernelFamily, requestGpu } from "../kernels/gpu.ts";
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
} from "../kernels/read_probe.ts";
import { decodeWeights, DTYPE_BYTES, encodeWeights, type WeightDtype } from "../kernels/dtype.ts";

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

// --- 3. matmul ---------------------------------------------------------------------------
await chooseMatmulVariant(gpu);
const info = matmulVariantInfo(gpu);
console.log(`\nmatmul variant: ${info.variant} (${info.reason})`);

// The GPU family reads F16 packed whatever the variant; its rows say "-".
const variantsFor = (d: WeightDtype, f: KernelFamily = "cpu"): MatmulVariant[] =>
  d === "F16" && gpu.hasF16 && f === "cpu" ? ["packed", "f16"] : ["packed"];

// Correctness first: each family/dtype/variant at an awkward shape of the table's paths.
for (const family of FAMILIES) {
  for (const dtype of DTYPES) {
    for (const variant of variantsFor(dtype, family)) {
      const [T, N, K] = [9, 77, 4096];
      const w = decodeWeights(encodeWeights(noise(N * K, 0.05, 7), dtype), dtype);
      const x = noise(T * K, 1, 8);
      const m = uploadMatrix(gpu, { bytes: encodeWeights(w, dtype), dtype, N, K });
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
          `matmul ${family} ${dtype} ${variant} is WRONG: relative L2 error ${err} > ${tol}`,
        );
        Deno.exit(1);
      }
      destroyMatrix(m);
    }
  }
}
console.log(
  `validated against matmulRef, families ${FAMILIES.join(", ")}: ` +
    DTYPES.map((d) => `${d} (${variantsFor(d).join(", ")})`).join(", "),
);

console.log(
  "\nEach matmul is timed in alternation with the best probe pattern (same background load);\n" +
    '"probe" is that pattern\'s median GB/s meanwhile, "of probe" the median of the paired\n' +
    "ratios.\n\n" +
    "| W (N, K) | dtype | family | variant | T | ms | GB/s | GFLOP/s | probe | of probe |\n" +
    "|---|---|---|---|---|---|---|---|---|---|",
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
    const mats: GpuMatrix[] = Array.from(
      { length: count },
      () => uploadMatrix(gpu, { bytes: data, dtype, N, K }),
    );
    for (const T of TS) {
      const x = gpu.upload(noise(T * K, 1, T)), y = gpu.buffer(T * N * 4);
      for (const family of FAMILIES) {
        for (const variant of variantsFor(dtype, family)) {
          const m = await timePaired(
            gpu,
            (enc, i) => matmul(gpu, enc, { x, w: mats[i % count], y, T, variant, family }),
            probeRecord,
          );
          const t = m.a, gbps = bytes / t / 1e9, probe = PROBE_BUF / m.b / 1e9;
          const ofProbe = m.speedup * bytes / PROBE_BUF; // (bytes / ta) / (PROBE_BUF / tb)
          const plan = planMatmul(gpu, { w: mats[0], T, variant });
          console.log(
            `| (${N}, ${K}) | ${dtype} | ${family} | ${
              dtype === "F16" && family === "cpu" ? variant : "-"
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
    for (const m of mats) destroyMatrix(m);
  }
}
for (const b of probeBufs) b.destroy();
console.log(
  `\nprobe best: ${probeBest.toFixed(2)} GB/s (${best.name}); load average at the end: ` +
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
