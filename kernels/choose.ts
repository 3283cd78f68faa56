/**
 * Choosing the kernel family by measurement: on first use per adapter, time the CPU
 * family's matmul (matmul.ts fast path) against the GPU family's (matmul_gpu.ts GEMV and
 * GEMM) at a Llama-sized projection, keep the faster for the device, and remember the
 * answer per adapter, in memory and in `kernels.json` under the tool's cache folder.
 *
 * How it times: with `timestamp-query` (both Mesa adapters and every desktop GPU have it)
 * a timestamp is written before and after a run of `reps` matmuls recorded in one encoder,
 * so the figure is GPU time, not submit overhead, which on a GPU is larger than one GEMV.
 * Without it, the wall clock of one submit of the same run. Weights rotate over four
 * buffers (4 × 32 MiB at the default shape), more than the last-level cache of a GPU.
 *
 * Order of precedence: `GQA_VIZ_KERNELS=gpu|cpu` (never measured), then the cache, then a
 * measurement. The F16 load variant of the CPU family is a separate, smaller choice made
 * by `chooseMatmulVariant` in matmul.ts; the GPU family always reads F16 packed.
 *
 * @example
 * ```ts ignore
 * const choice = await chooseKernels(gpu, { cacheDir: "/home/me/.cache/gqa-viz" });
 * console.log(choice.family, choice.reason); // gpu.kernels is set to choice.family
 * ```
 * @module
 */
import { type Gpu, type KernelFamily, KERNELS_ENV } from "./gpu.ts";
import { matmul } from "./matmul.ts";

/** What {@linkcode chooseKernels} decided and why. */
export interface KernelChoice {
  family: KernelFamily;
  /** True when timed on this adapter (now or in an earlier run, from the cache). */
  measured: boolean;
  /** One sentence: why this family. */
  reason: string;
  /** Milliseconds per matmul of each family at T = 1 and T = 16, when measured. */
  ms?: Record<KernelFamily, [number, number]>;
}

/** Options of {@linkcode chooseKernels}. */
export interface ChooseOptions {
  /** Folder for `kernels.json` (the range cache's folder); none: memory only. */
  cacheDir?: string;
  /** Measure even on a fallback adapter, and even when cached (adapter_info does). */
  force?: boolean;
  /** Matrix shape (N, K) to time (default 4096 × 4096 BF16, a q_proj). */
  N?: number;
  K?: number;
  /** Matmuls per timed run (default 12; 3 on a fallback adapter, where each is slow). */
  reps?: number;
}

const memory = new Map<string, KernelChoice>();

/** The key an adapter's choice is cached under: its name and limits that shape kernels. */
function adapterKey(gpu: Gpu): string {
  return `${gpu.adapterName}|f16=${gpu.hasF16}|bind=${gpu.maxBindingBytes}`;
}

/**
 * Picks the kernel family for `gpu` (and sets `gpu.kernels`). On a fallback (software)
 * adapter it keeps the CPU family without timing unless `force` is set: there the GPU
 * family's barriers and 256-invocation workgroups are measured slower (docs/BENCHMARKS.md).
 */
export async function chooseKernels(gpu: Gpu, opts: ChooseOptions = {}): Promise<KernelChoice> {
  const apply = (c: KernelChoice) => {
    gpu.kernels = c.family;
    gpu.kernelsReason = c.reason;
    return c;
  };
  let env: string | undefined;
  try {
    env = Deno.env.get(KERNELS_ENV);
  } catch { /* no env permission */ }
  if (env === "gpu" || env === "cpu") {
    return apply({ family: env, measured: false, reason: `forced by ${KERNELS_ENV}=${env}` });
  }
  if (gpu.isFallback && !opts.force) {
    return apply({
      family: "cpu",
      measured: false,
      reason: "fallback (software) adapter: the CPU family, measured faster on lavapipe and " +
        "llvmpipe (run scripts/adapter_info.ts to time it here)",
    });
  }
  const key = adapterKey(gpu);
  const file = opts.cacheDir ? `${opts.cacheDir}/kernels.json` : undefined;
  if (!opts.force) {
    const cached = memory.get(key) ?? (await readCache(file))[key];
    if (cached) return apply({ ...cached, reason: cached.reason + " (cached)" });
  }
  const c = await measure(gpu, opts);
  memory.set(key, c);
  if (file) await writeCache(file, key, c);
  return apply(c);
}

async function readCache(file?: string): Promise<Record<string, KernelChoice>> {
  if (!file) return {};
  try {
    return JSON.parse(await Deno.readTextFile(file));
  } catch {
    return {}; // absent or unreadable: measure again
  }
}

async function writeCache(file: string, key: string, c: KernelChoice): Promise<void> {
  try {
    const all = await readCache(file);
    all[key] = c;
    await Deno.mkdir(file.slice(0, file.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(file, JSON.stringify(all, null, 2) + "\n");
  } catch { /* a read-only cache folder only costs a measurement next time */ }
}

/** Times both families at T = 1 and T = 16 and keeps the one with the smaller total. */
async function measure(gpu: Gpu, opts: ChooseOptions): Promise<KernelChoice> {
  const N = opts.N ?? 4096, K = opts.K ?? 4096, reps = opts.reps ?? (gpu.isFallback ? 3 : 12);
  const ws = [0, 1, 2, 3].map((i) => ({
    buffer: gpu.buffer(N * K * 2, `kernel timing ${i}`), // zeros: valid BF16
    dtype: "BF16" as const,
    N,
    K,
  }));
  const x = gpu.buffer(16 * K * 4, "kernel timing x"),
    y = gpu.buffer(16 * N * 4, "kernel timing y");
  const query = gpu.hasTimestamps
    ? gpu.device.createQuerySet({ type: "timestamp", count: 2 })
    : undefined;
  const time = async (family: KernelFamily, T: number): Promise<number> => {
    const enc = gpu.device.createCommandEncoder();
    if (query) {
      gpu.beginPass(enc, { timestampWrites: { querySet: query, beginningOfPassWriteIndex: 0 } });
    }
    gpu.endPass(enc);
    for (let r = 0; r < reps; r++) matmul(gpu, enc, { x, w: ws[r % 4], y, T, family });
    gpu.endPass(enc);
    if (query) gpu.beginPass(enc, { timestampWrites: { querySet: query, endOfPassWriteIndex: 1 } });
    const t0 = performance.now();
    if (!query) {
      await gpu.submit(enc);
      return (performance.now() - t0) / reps;
    }
    const stamps = gpu.device.createBuffer({
      size: 16,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    gpu.endPass(enc);
    enc.resolveQuerySet(query, 0, 2, stamps, 0);
    await gpu.submit(enc);
    const [a, b] = new BigUint64Array(await gpu.readBytes(stamps));
    stamps.destroy();
    return Number(b - a) / 1e6 / reps;
  };
  const ms = { cpu: [0, 0], gpu: [0, 0] } as Record<KernelFamily, [number, number]>;
  try {
    for (const f of ["cpu", "gpu"] as const) await time(f, 16); // warm-up: compile, fault in
    for (const f of ["cpu", "gpu"] as const) ms[f] = [await time(f, 1), await time(f, 16)];
  } finally {
    for (const w of ws) w.buffer.destroy();
    x.destroy();
    y.destroy();
    query?.destroy();
  }
  const total = (f: KernelFamily) => ms[f][0] + ms[f][1];
  const family: KernelFamily = total("gpu") < total("cpu") ? "gpu" : "cpu";
  const fmt = (f: KernelFamily) => `${ms[f][0].toFixed(3)} / ${ms[f][1].toFixed(3)} ms`;
  return {
    family,
    measured: true,
    ms,
    reason: `measured ${query ? "with timestamp-query" : "by wall clock"} at (${N}, ${K}) ` +
      `BF16, T = 1 / 16: gpu family ${fmt("gpu")}, cpu family ${fmt("cpu")}`,
  };
}
