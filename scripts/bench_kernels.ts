/**
 * Kernel benchmarks: the machine's memory bandwidth, the streaming-read probe on the WebGPU
 * adapter, then matmul at Llama-3-8B shapes, as a table ready for docs/BENCHMARKS.md.
 *
 *   deno task bench            # full table, ~2-4 minutes on 2 cores
 *   deno task bench --quick    # BF16 and T = 1, 8 only, fewer runs
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
 *   2·T·N·K; "of probe" divides GB/s by the best read-probe pattern.
 * @module
 */
import { type Gpu, requestGpu } from "../kernels/gpu.ts";
import {
  chooseMatmulVariant,
  type GpuMatrix,
  matmul,
  matmulRef,
  type MatmulVariant,
  matmulVariantInfo,
  planMatmul,
  uploadMatrix,
} from "../kernels/matmul.ts";
import { READ_PROBE_PATTERNS, readProbe, readProbeOutputBytes } from "../kernels/read_probe.ts";
import { decodeWeights, DTYPE_BYTES, encodeWeights, type WeightDtype } from "../kernels/dtype.ts";

const argv = Deno.args;
const quick = argv.includes("--quick");
const RUNS = quick ? 3 : 5;
const TARGET_S = quick ? 0.12 : 0.25; // seconds per timed run
const ROTATION_BYTES = 256 * 1024 * 1024;
const TS = quick ? [1, 8] : [1, 8, 64];
const DTYPES: WeightDtype[] = quick ? ["BF16"] : ["BF16", "F16", "F32"];
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
let probeBest = 0, probeBestName = "";
for (const pattern of READ_PROBE_PATTERNS) {
  const out = gpu.buffer(readProbeOutputBytes(pattern));
  const t = await timeOps(gpu, (enc, i) =>
    readProbe(gpu, enc, {
      buffer: probeBufs[i % probeBufs.length],
      bytes: PROBE_BUF,
      out,
      pattern,
    }));
  const gbps = PROBE_BUF / t / 1e9;
  if (gbps > probeBest) [probeBest, probeBestName] = [gbps, pattern.name];
  console.log(`  ${pattern.name.padEnd(28)} ${gbps.toFixed(2).padStart(6)} GB/s`);
}
console.log(`  best: ${probeBestName}, ${probeBest.toFixed(2)} GB/s`);
for (const b of probeBufs) b.destroy();

// --- 3. matmul ---------------------------------------------------------------------------
await chooseMatmulVariant(gpu);
const info = matmulVariantInfo(gpu);
console.log(`\nmatmul variant: ${info.variant} (${info.reason})`);

const variantsFor = (d: WeightDtype): MatmulVariant[] =>
  d === "F16" && gpu.hasF16 ? ["packed", "f16"] : ["packed"];

// Correctness first: each dtype/variant at an awkward shape of the same path as the table.
for (const dtype of DTYPES) {
  for (const variant of variantsFor(dtype)) {
    const [T, N, K] = [9, 77, 4096];
    const w = decodeWeights(encodeWeights(noise(N * K, 0.05, 7), dtype), dtype);
    const x = noise(T * K, 1, 8);
    const m = uploadMatrix(gpu, { bytes: encodeWeights(w, dtype), dtype, N, K });
    const y = gpu.poisoned(T * N);
    await gpu.run((enc) => matmul(gpu, enc, { x: gpu.upload(x), w: m, y, T, variant }));
    const got = await gpu.read(y), want = matmulRef({ x, w, T, N, K });
    let num = 0, den = 0;
    for (let i = 0; i < got.length; i++) {
      num += (got[i] - want[i]) ** 2;
      den += want[i] ** 2;
    }
    const err = Math.sqrt(num / den);
    const tol = dtype === "F32" ? 1e-5 : 1e-4;
    if (!(err <= tol)) {
      console.error(`matmul ${dtype} ${variant} is WRONG: relative L2 error ${err} > ${tol}`);
      Deno.exit(1);
    }
    m.buffer.destroy();
  }
}
console.log(
  "validated against matmulRef: " +
    DTYPES.map((d) => `${d} (${variantsFor(d).join(", ")})`).join(", "),
);

const rows: string[] = [];
console.log(
  "\n| W (N, K) | dtype | variant | T | ms | GB/s | GFLOP/s | of probe |\n" +
    "|---|---|---|---|---|---|---|---|",
);
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
      for (const variant of variantsFor(dtype)) {
        const t = await timeOps(
          gpu,
          (enc, i) => matmul(gpu, enc, { x, w: mats[i % count], y, T, variant }),
        );
        const gbps = bytes / t / 1e9;
        const plan = planMatmul(gpu, { w: mats[0], T, variant });
        const row = `| (${N}, ${K}) | ${dtype} | ${dtype === "F16" ? variant : "-"} | ${T} | ` +
          `${(t * 1000).toFixed(1)} | ${gbps.toFixed(2)} | ${
            (2 * T * N * K / t / 1e9).toFixed(1)
          } | ` +
          `${(100 * gbps / probeBest).toFixed(0)} % |` +
          (plan.chunks.length > 1 ? ` (${plan.chunks.length} chunks)` : "");
        rows.push(row);
        console.log(row);
      }
      x.destroy();
      y.destroy();
    }
    for (const m of mats) m.buffer.destroy();
  }
}
console.log(
  `\nprobe best: ${probeBest.toFixed(2)} GB/s (${probeBestName}); load average at the end: ` +
    `${loadavg()}; total ${((performance.now() - started) / 1000).toFixed(0)} s`,
);

// --- helpers -----------------------------------------------------------------------------

/**
 * Median seconds per op: `record(enc, i)` records op i. One warm-up run (compiles, faults
 * pages in), then RUNS runs of `reps` ops each in one submit, reps sized to ~TARGET_S.
 */
async function timeOps(
  gpu: Gpu,
  record: (enc: GPUCommandEncoder, i: number) => void,
): Promise<number> {
  const run = async (reps: number, from: number): Promise<number> => {
    const enc = gpu.device.createCommandEncoder();
    for (let i = 0; i < reps; i++) record(enc, from + i);
    const t0 = performance.now();
    await gpu.submit(enc);
    return (performance.now() - t0) / 1000;
  };
  await run(1, 0); // compile
  const est = await run(2, 1) / 2;
  const reps = Math.max(2, Math.min(400, Math.round(TARGET_S / est)));
  const ts: number[] = [];
  for (let r = 0; r < RUNS; r++) ts.push(await run(reps, r * reps) / reps);
  return median(ts);
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
