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
 * Where the CPU family keeps its weights is chosen the same way, on every adapter that
 * runs it (fallback ones included: that is where it matters), by
 * {@linkcode chooseWeightStorage}: the fast-path matmul reading a storage buffer against
 * the same kernel reading a texture (weight_texture.ts says why that can be 5× faster).
 * `GQA_VIZ_WEIGHTS=buffer|texture` forces it.
 *
 * @example
 * ```ts ignore
 * const choice = await chooseKernels(gpu, { cacheDir: "/home/me/.cache/gqa-viz" });
 * console.log(choice.family, choice.reason); // gpu.kernels is set to choice.family
 * ```
 * @module
 */
import { type Gpu, type KernelFamily, KERNELS_ENV, type WeightStorage } from "./gpu.ts";
import { allocMatrix, destroyMatrix, type GpuMatrix, matmul } from "./matmul.ts";

/** Environment variable that forces the CPU family's weight storage: `buffer` or `texture`. */
export const WEIGHTS_ENV = "GQA_VIZ_WEIGHTS";

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

/** What {@linkcode chooseWeightStorage} decided and why. */
export interface StorageChoice {
  storage: WeightStorage;
  /** True when timed on this adapter (now or in an earlier run, from the cache). */
  measured: boolean;
  /** One sentence: why this storage. */
  reason: string;
  /** Milliseconds per matmul from each storage at T = 1 and T = 8, when measured. */
  ms?: Record<WeightStorage, [number, number]>;
}

const memory = new Map<string, KernelChoice | StorageChoice>();

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
  const c = await chooseFamily(gpu, opts);
  if (c.family === "cpu") await chooseWeightStorage(gpu, opts);
  return c;
}

async function chooseFamily(gpu: Gpu, opts: ChooseOptions): Promise<KernelChoice> {
  const apply = (c: KernelChoice) => {
    gpu.kernels = c.family;
    gpu.kernelsReason = c.reason;
    return c;
  };
  const env = forcedBy(KERNELS_ENV, ["gpu", "cpu"] as const);
  if (env) {
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
  return apply(await cachedOrMeasured(key, opts, () => measure(gpu, opts)));
}

/**
 * Picks where the CPU family keeps weight matrices on `gpu` (sets `gpu.weightStorage`):
 * `GQA_VIZ_WEIGHTS` when set, else the cached answer for this adapter, else a measurement
 * (the fast-path matmul at (2048, 4096) BF16, T = 1 and 8, from a buffer and from a
 * texture; the texture only if it is at least 5 % faster in total). Matrices allocated
 * afterwards use it.
 */
export async function chooseWeightStorage(
  gpu: Gpu,
  opts: ChooseOptions = {},
): Promise<StorageChoice> {
  const apply = (c: StorageChoice) => {
    gpu.weightStorage = c.storage;
    gpu.weightStorageReason = c.reason;
    return c;
  };
  const env = forcedBy(WEIGHTS_ENV, ["buffer", "texture"] as const);
  if (env) {
    return apply({ storage: env, measured: false, reason: `forced by ${WEIGHTS_ENV}=${env}` });
  }
  // The texture's read path is in the key: a choice timed with sampled reads (before matmul
  // v7) is timed again now that textures are read as storage textures.
  const key = `${adapterKey(gpu)}|weights|${gpu.textureReads}`;
  return apply(await cachedOrMeasured(key, opts, () => measureStorage(gpu, opts)));
}

/** The value of environment variable `name` when it is one of `values` (else undefined). */
function forcedBy<V extends string>(name: string, values: readonly V[]): V | undefined {
  try {
    const v = Deno.env.get(name);
    return values.find((x) => x === v);
  } catch {
    return undefined; // no env permission: nothing forced
  }
}

/** The choice cached under `key` (memory, then `kernels.json`), else `measure()`'s, cached. */
async function cachedOrMeasured<C extends KernelChoice | StorageChoice>(
  key: string,
  opts: ChooseOptions,
  measure: () => Promise<C>,
): Promise<C> {
  const file = opts.cacheDir ? `${opts.cacheDir}/kernels.json` : undefined;
  if (!opts.force) {
    const cached = (memory.get(key) ?? (await readCache(file))[key]) as C | undefined;
    if (cached) return { ...cached, reason: cached.reason + " (cached)" };
  }
  const c = await measure();
  memory.set(key, c);
  if (file) await writeCache(file, key, c);
  return c;
}

async function readCache(file?: string): Promise<Record<string, KernelChoice | StorageChoice>> {
  if (!file) return {};
  try {
    return JSON.parse(await Deno.readTextFile(file));
  } catch {
    return {}; // absent or unreadable: measure again
  }
}

async function writeCache(
  file: string,
  key: string,
  c: KernelChoice | StorageChoice,
): Promise<void> {
  try {
    const all = await readCache(file);
    all[key] = c;
    await Deno.mkdir(file.slice(0, file.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(file, JSON.stringify(all, null, 2) + "\n");
  } catch { /* a read-only cache folder only costs a measurement next time */ }
}

/**
 * Milliseconds per run of `record` (called `reps` times into one encoder, with the rep's
 * index): GPU time between two timestamps where the adapter has `timestamp-query`, else
 * the wall clock of the submit.
 */
async function timeRuns(
  gpu: Gpu,
  reps: number,
  record: (enc: GPUCommandEncoder, rep: number) => void,
): Promise<number> {
  const query = gpu.hasTimestamps
    ? gpu.device.createQuerySet({ type: "timestamp", count: 2 })
    : undefined;
  const enc = gpu.device.createCommandEncoder();
  if (query) {
    gpu.beginPass(enc, { timestampWrites: { querySet: query, beginningOfPassWriteIndex: 0 } });
  }
  gpu.endPass(enc);
  for (let r = 0; r < reps; r++) record(enc, r);
  gpu.endPass(enc);
  const t0 = performance.now();
  if (!query) {
    await gpu.submit(enc);
    return (performance.now() - t0) / reps;
  }
  gpu.beginPass(enc, { timestampWrites: { querySet: query, endOfPassWriteIndex: 1 } });
  gpu.endPass(enc);
  const stamps = gpu.device.createBuffer({
    size: 16,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  enc.resolveQuerySet(query, 0, 2, stamps, 0);
  try {
    await gpu.submit(enc);
    const [a, b] = new BigUint64Array(await gpu.readBytes(stamps));
    return Number(b - a) / 1e6 / reps;
  } finally {
    stamps.destroy();
    query.destroy();
  }
}

/** Times both families at T = 1 and T = 16 and keeps the one with the smaller total. */
async function measure(gpu: Gpu, opts: ChooseOptions): Promise<KernelChoice> {
  const N = opts.N ?? 4096, K = opts.K ?? 4096, reps = opts.reps ?? (gpu.isFallback ? 3 : 12);
  const ws = [0, 1, 2, 3].map((i) =>
    allocMatrix(gpu, { dtype: "BF16", N, K, label: `kernel timing ${i}`, storage: "buffer" })
  ); // zeros: valid BF16
  const x = gpu.buffer(16 * K * 4, "kernel timing x"),
    y = gpu.buffer(16 * N * 4, "kernel timing y");
  const time = (family: KernelFamily, T: number) =>
    timeRuns(gpu, reps, (enc, r) => matmul(gpu, enc, { x, w: ws[r % 4], y, T, family }));
  const ms = { cpu: [0, 0], gpu: [0, 0] } as Record<KernelFamily, [number, number]>;
  try {
    // Warm-up: lavapipe compiles a pipeline at its first dispatch, so run each timed shape once.
    for (const f of ["cpu", "gpu"] as const) for (const T of [1, 16]) await time(f, T);
    for (const f of ["cpu", "gpu"] as const) ms[f] = [await time(f, 1), await time(f, 16)];
  } finally {
    for (const w of ws) destroyMatrix(w);
    x.destroy();
    y.destroy();
  }
  const total = (f: KernelFamily) => ms[f][0] + ms[f][1];
  const family: KernelFamily = total("gpu") < total("cpu") ? "gpu" : "cpu";
  const fmt = (f: KernelFamily) => `${ms[f][0].toFixed(3)} / ${ms[f][1].toFixed(3)} ms`;
  return {
    family,
    measured: true,
    ms,
    reason: `measured ${gpu.hasTimestamps ? "with timestamp-query" : "by wall clock"} at ` +
      `(${N}, ${K}) BF16, T = 1 / 16: gpu family ${fmt("gpu")}, cpu family ${fmt("cpu")}`,
  };
}

/** Times the CPU family's matmul from a buffer and from a texture at T = 1 and T = 8. */
async function measureStorage(gpu: Gpu, opts: ChooseOptions): Promise<StorageChoice> {
  const N = opts.N ?? 2048, K = opts.K ?? 4096, reps = opts.reps ?? 3;
  const kinds = ["buffer", "texture"] as const;
  const ws: Record<WeightStorage, GpuMatrix[]> = { buffer: [], texture: [] };
  const x = gpu.buffer(8 * K * 4, "storage timing x"),
    y = gpu.buffer(8 * N * 4, "storage timing y");
  const ms = { buffer: [0, 0], texture: [0, 0] } as Record<WeightStorage, [number, number]>;
  try {
    for (const storage of kinds) {
      for (let i = 0; i < 2; i++) {
        const label = `storage timing ${storage} ${i}`;
        ws[storage].push(allocMatrix(gpu, { dtype: "BF16", N, K, label, storage }));
      }
    }
    const time = (storage: WeightStorage, T: number) =>
      timeRuns(
        gpu,
        reps,
        (enc, r) => matmul(gpu, enc, { x, w: ws[storage][r % 2], y, T, family: "cpu" }),
      );
    for (const k of kinds) for (const T of [1, 8]) await time(k, T); // warm-up, as above
    for (const k of kinds) ms[k] = [await time(k, 1), await time(k, 8)];
  } catch (e) {
    // A device that cannot make or sample the texture keeps buffers, which always work.
    return { storage: "buffer", measured: false, reason: `textures failed here (${e})` };
  } finally {
    for (const w of [...ws.buffer, ...ws.texture]) destroyMatrix(w);
    x.destroy();
    y.destroy();
  }
  const total = (k: WeightStorage) => ms[k][0] + ms[k][1];
  const storage: WeightStorage = total("texture") < 0.95 * total("buffer") ? "texture" : "buffer";
  const fmt = (k: WeightStorage) => `${ms[k][0].toFixed(2)} / ${ms[k][1].toFixed(2)} ms`;
  return {
    storage,
    measured: true,
    ms,
    reason: `measured ${gpu.hasTimestamps ? "with timestamp-query" : "by wall clock"} at ` +
      `(${N}, ${K}) BF16, T = 1 / 8: buffer ${fmt("buffer")}, texture ${fmt("texture")} ` +
      `(${gpu.textureReads} reads)`,
  };
}
