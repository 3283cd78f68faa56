/**
 * Matrix multiplication against a weight matrix kept exactly as safetensors stores it:
 *
 *     Y[t, n] = Σ_k X[t, k] · W[n, k]  (+ bias[n])          Y = X · Wᵀ (+ b)
 *
 * Layouts (row-major, the shape vocabulary of the whole project):
 * - `X` f32 (T, K): one row per token, K = the reduction width (D for q/k/v/gate/up, I for down).
 * - `W` (N, K) in its stored dtype: F32, or F16/BF16 with two values per u32 word,
 *   element 2i in the low half (little-endian). `W[n]` is the weight row that makes output n.
 * - `bias` f32 (N), optional. `Y` f32 (T, N). Accumulation is f32 in every path.
 *
 * ## Two paths, chosen per call
 * **Fast path** (K % 8 == 0 and K ≤ 16384, every Llama shape). A "k-step" is 8 consecutive
 * weights of one row: one `vec4<u32>` for F16/BF16, two `vec4<f32>` for F32. Each invocation
 * owns RR consecutive rows (16 unless N is small) and TT ≤ 8 tokens, and keeps the RR·TT
 * accumulators in registers. Per k-step it loads one k-step of each of its RR rows (RR
 * contiguous streams) and the 8 matching values of each token's X row, then does RR·TT·8
 * multiply-adds. So every weight loaded is used TT times and every X value RR times.
 * X is read from a read-only storage texture (`rgba32float`, row t = token t; v8) where WGSL
 * has them and K % 64 == 0, else through uniform bindings, one per token (`x0 … x7`, windows
 * of a staging copy): see "Why uniform X" below. T > 8 runs in passes of 8 tokens: the
 * weights are read ⌈T/8⌉ times, not T times.
 *
 * ```
 *   invocation i ──► rows n = 16i … 16i+15, tokens t0 … t0+7
 *   W (N, K)      row n:  [k-step 0][k-step 1] … [k-step K/8-1]   ← one vec4 per row per step
 *   X (T, K)      x_t:    [  8 f32 ][  8 f32 ] …                  ← texture row t (or uniforms)
 *   loop k-step:  acc[r][t] += dot(W[n0+r, 8s … 8s+7], X[t0+t, 8s … 8s+7])
 *   end:          Y[t0+t, n0+r] = acc[r][t] (+ bias[n0+r])         (stores guarded by n < N)
 * ```
 *
 * **General path** (any other K: odd K such as 4101, or K > 16384). Weights are addressed
 * element by element (`e = n·K + k`, word `e >> 1`, half `e & 1` for 16-bit), so a row may
 * start in the middle of a u32; one row and up to 4 tokens per invocation; X from storage.
 * Correct for every shape, several times slower; no Llama checkpoint needs it.
 *
 * **Split weights.** A matrix larger than one storage binding (`maxStorageBufferBindingSize`,
 * 128 MiB on lavapipe: an F32 (14336, 4096) matrix is 235 MB) is bound as row chunks, each at
 * an offset rounded down to `minStorageBufferOffsetAlignment`; the kernel adds the
 * remainder (`wBase`, in its own load units) to its addresses. Dispatch grids are 2-D via
 * {@linkcode grid2d}, so no dimension exceeds 65535 workgroups.
 *
 * ## Variants (F16 weights only)
 * `"packed"` reads two halves per u32 and converts with `unpack2x16float`: runs on every
 * adapter. `"f16"` (`enable f16;`) reads `array<vec4<f16>>` and converts with `vec4<f32>(h)`.
 * {@linkcode chooseMatmulVariant} times both once per device and keeps f16 only if it is
 * measurably faster; BF16 and F32 weights use one kernel either way. Products and sums stay
 * f32 in both (f16 products would cost ~1e-3 relative error).
 *
 * ## Versions (lavapipe, 2 cores, BF16 W, GB/s of weights read, CPU-time normalised because
 * other processes shared the cores; the best read-probe pattern gave 14 GB/s the same way)
 * - v1 one output element per invocation, scalar loads, X and W from storage (the first
 *   stub): every weight re-read for every token. T = 1: 1.4 GB/s (10 %), T = 8: 0.17 (1 %).
 * - v2 one row per invocation, `vec4<u32>` weight loads, X `vec4` from storage: T = 1:
 *   2.2 GB/s. Each X load costs as much as a weight load, and there are two per weight load.
 * - v3 RR rows per invocation (RR contiguous streams) so each X load serves RR rows:
 *   T = 1, RR = 8: 9.0 GB/s; T = 8: 2.5 GB/s (16 X loads per 8 weight loads).
 * - v4 X through per-token uniform bindings, RR = 16, 8-lane workgroups:
 *   T = 1: ~10 GB/s (68–72 % of the probe), T = 4: ~7.2 (51–55 %), T = 8: ~5.0 (34–36 %).
 *   At T = 8 an experiment with X made free (constants) reached 55–57 %, one with the
 *   arithmetic removed 67–71 %: both costs matter, and the arithmetic alone caps T = 8
 *   below 60 % on this adapter.
 * - v5 the same kernel can read W from textures instead (`textureLoad`; see "Texture
 *   weights"). On an AMD EPYC (Zen 3) VM where lavapipe's buffer reads crawl (read probe
 *   1.0 GB/s), BF16 (14336, 4096): T = 1 0.99 → 4.75 GB/s, T = 8 0.85 → 2.35 GB/s.
 * - v6 K is a parameter instead of a constant of the source, and every X binding
 *   is the adapter's whole uniform window (64 KiB: any K ≤ 16384), so ONE pipeline serves
 *   q/o/gate/up (K = D) and down (K = I): a Llama layer needs two matmul pipelines (RR = 16,
 *   and RR = 8 for the narrow k/v) instead of three. Each costs lavapipe 40–65 ms to create
 *   with Mesa's shader cache warm; the 8B-shaped capture's span before layer 0 went from a
 *   median 625 to 597 ms (6 runs each). A first run with a cold cache is not faster: llvmpipe
 *   compiles a variant of a pipeline (~0.8 s of LLVM) per class of texture it reads (width a
 *   power of two or not, height likewise), so a Llama layer still compiles four (see
 *   docs/BENCHMARKS.md, session 4, for the padding that would make it one, and why it is out).
 *   Speed unchanged: same-process A/B at T = 8, (14336, 4096) 46.0–46.7 ms against
 *   46.6–47.8, (4096, 14336) 43.4–45.5 against 44.0–44.6.
 * - v7 texture weights are read as read-only storage textures
 *   (`texture_storage_2d<rgba32uint, read>`, an image load) instead of sampled ones (a texel
 *   fetch at level 0), where WGSL has them (every adapter we test). A profile of v6 put most of
 *   its time in llvmpipe's texel-fetch function, which handles a mip level per lane (row
 *   strides and level offsets gathered lane by lane, widths shifted per lane) and checks bounds
 *   before its 8 loads; an image load has no level. Same kernel otherwise, same process,
 *   alternating, medians: (14336, 4096) T = 8 47.3 → 38.8 ms, (4096, 14336) T = 8 50.3 →
 *   40.0, (14336, 4096) T = 1 23.3 → 14.5 ms (5.0 → 8.1 GB/s); results bit-identical.
 * - v8 (this file) X is read the same way: copied once per call into one `rgba32float`
 *   storage texture (texel (j, t) = X[t, 4j … 4j + 3]) instead of per-token uniform windows,
 *   where K % 64 == 0 (a copy's rows must be multiples of 256 bytes) and WGSL has read-only
 *   storage textures. A profile of v7 at T = 8 put ~37 % of its samples on extracting lane
 *   addresses and the lane-by-lane loads that use them, weights and X alike (for X, 8 lanes load
 *   one address one by one); with X made free (values computed from the loop counter) the
 *   kernel ran 1.9× faster. Same process, alternating, medians, texture weights:
 *   T = 8 (14336, 4096) 42.1 → 35.8 ms, (4096, 14336) 42.5 → 34.3, (1024, 4096) 5.2 → 4.4;
 *   T = 1 (14336, 4096) 14.3 → 13.5 ms; results bit-identical.
 *
 *   With v8 the warm-up (`warmUpOnly`) dispatches one workgroup with the real parameters into
 *   `gpu.sink` instead of zero rows: llvmpipe specialises a pipeline on the values of the
 *   uniforms its loops and branches test (`rows`, `K`) and on the size class of each texture it
 *   reads, so the zero-row warm-up had compiled variants no real call used. The X texture's
 *   sides are powers of two for the same reason. With Mesa's shader cache cold, the 8B-shaped
 *   capture went from 5.7–5.9 s to 5.0–5.5 s and layer 0 from 3.2–3.4 s to 0.34–0.41 s; warm,
 *   medians 2.41 → 2.37 s (8 alternating pairs, within the noise).
 *
 * ## Why it looks like this (what limits it on lavapipe)
 * lavapipe runs 8 invocations in one 256-bit SIMD register, but a storage-buffer load whose
 * address differs per invocation becomes a scalar loop over the 8 lanes with a bounds check
 * per component: ~40 x86 instructions per lane per `vec4` load. The read probe
 * (kernels/read_probe.ts) is bound by exactly that, not by DRAM. A uniform-buffer load is a
 * plain gather without bounds-check branches (~10 instructions per lane per `vec4`; Mesa 22
 * cannot prove an address made from the loop counter uniform, or it would be one load),
 * hence uniform X; an image load (v8) costs less again. The multiply-adds cost 2 SIMD
 * instructions each (lavapipe lowers `fma` to a multiply and an add), i.e. T/4 instructions per weight per lane against ~5 for loading it:
 * at T = 8 the arithmetic alone is ~40 % of the load cost, which is why the ratio to the
 * probe falls with T. On a real GPU both paths are ordinary memory-bound GEMV/GEMM code.
 *
 * ## Texture weights
 * That scalar loop inserts each word into the SIMD register through the stack (store the
 * register, overwrite one lane, reload it). Where the CPU cannot forward such a store to the
 * wider reload (Zen 3 here) every load stalls, and the probe drops from ~12 GB/s to ~1 GB/s.
 * Texture reads take another road in llvmpipe (no per-lane loop), so a matrix may live in
 * `rgba32uint` textures instead: row n is texel row n, k-step s is texel s
 * (weight_texture.ts has the layout and the writes). The kernel reads them as read-only
 * storage textures (image loads, v7) where WGSL has them (`gpu.textureReads`), else as
 * sampled textures (texel fetches). {@linkcode allocMatrix} uses `gpu.weightStorage`, which
 * `chooseKernels` (choose.ts) sets by timing both once per adapter and read path; the kernel
 * differs only in its loads. The GPU family always reads buffers.
 * @module
 */
import {
  type Binding,
  type Gpu,
  grid2d,
  type KernelFamily,
  type TextureReads,
  type WeightStorage,
} from "./gpu.ts";
import { gpuMatmulSupports, matmulGpu } from "./matmul_gpu.ts";
import { DTYPE_BYTES, type WeightDtype } from "./dtype.ts";
import { GqaError } from "../errors.ts";
import {
  allocWeightTextures,
  type TextureLayout,
  textureLayout,
  textureReadsOf,
  textureWgsl,
  writeWeightTextures,
} from "./weight_texture.ts";

/** How 16-bit F16 weights are read: packed pairs in u32 words, or native `f16` loads. */
export type MatmulVariant = "packed" | "f16";

/** The shape and stored dtype of a weight matrix W (N, K). */
export interface MatrixShape {
  dtype: WeightDtype;
  N: number;
  K: number;
}

/**
 * A weight matrix W (N, K) on the GPU, bytes exactly as stored in safetensors: row-major in
 * a storage buffer, or row by row in a texture (the CPU family's measured choice on CPUs
 * where lavapipe reads buffers slowly; see weight_texture.ts and "Texture weights" above).
 */
export type GpuMatrix =
  | MatrixShape & { buffer: GPUBuffer; textures?: undefined }
  | MatrixShape & { textures: GPUTexture[]; layout: TextureLayout; buffer?: undefined };

/** Arguments of {@linkcode matmul}. */
export interface MatmulArgs {
  /** X f32 (T, K). Must allow COPY_SRC (every {@linkcode Gpu} buffer does). */
  x: GPUBuffer;
  /** W (N, K) as uploaded by {@linkcode uploadMatrix}. */
  w: GpuMatrix;
  /** Y f32 (T, N), fully overwritten. Must not alias `x`. */
  y: GPUBuffer;
  /** Tokens, 1 … 512 (any positive count works; the weights are read ⌈T/8⌉ times). */
  T: number;
  /** Optional bias f32 (N), added to every token's output. */
  bias?: GPUBuffer;
  /** Force a variant; default: the measured choice ({@linkcode chooseMatmulVariant}). */
  variant?: MatmulVariant;
  /** Bytes one weight binding may cover (default and maximum: `gpu.maxBindingBytes`); tests set it low to force a split. */
  maxBindingBytes?: number;
  /** Workgroups per grid dimension (default 65535); tests set it low to exercise 2-D grids. */
  gridLimit?: number;
  /** Force a kernel family; default `gpu.kernels` (see matmul_gpu.ts for "gpu"). */
  family?: KernelFamily;
  /**
   * Record the same pipelines, with the same parameters, as one workgroup that stores into
   * `gpu.sink`: Y is left untouched, but the shaders are compiled, so a run can warm them
   * up before its first weights arrive. The parameters must be the real ones: llvmpipe
   * compiles a pipeline at its first dispatch, specialised on the values of the uniforms
   * its loops and branches test (here `rows` and `K`), so a warm-up over zero rows compiled
   * a variant no real call uses (measured: a 0.95 s compile at the first real call after it).
   */
  warmUpOnly?: boolean;
}

/** How one {@linkcode matmul} call is carried out (see {@linkcode planMatmul}). */
export interface MatmulPlan {
  path: "fast" | "general";
  variant: MatmulVariant;
  /**
   * Row chunks [row0, row0 + rows), each bound separately: a buffer's bytes [offset,
   * offset + size) with the chunk's first row `wBase` load units in, or weight texture
   * number `texture`.
   */
  chunks: {
    row0: number;
    rows: number;
    offset: number;
    size: number;
    wBase: number;
    texture?: number;
  }[];
  /** Token passes [t0, t0 + tokens). */
  passes: { t0: number; tokens: number }[];
  /** Rows per invocation and invocations per workgroup. */
  rowsPerInvocation: number;
  workgroupSize: number;
  /** Where the fast path reads X: uniform bindings, or a storage texture (v8). */
  xFrom: "uniform" | "texture";
}

/** What {@linkcode matmulVariantInfo} reports. */
export interface MatmulVariantInfo {
  variant: MatmulVariant;
  /** One sentence: why this variant. */
  reason: string;
  /** Whether {@linkcode chooseMatmulVariant} has run on this device (without shader-f16 there is nothing to time). */
  measured: boolean;
  /** Weight GB/s of each variant at the timing shape, when measured. */
  gbps?: Partial<Record<MatmulVariant, number>>;
}

const FAST_WG = 8; // invocations per workgroup on the fast path (one SIMD group on lavapipe)
const GENERAL_WG = 64;
const MAX_RR = 16; // rows per invocation on the fast path
const GENERAL_TT = 4; // tokens per pass on the general path
const MAX_UNIFORM_BYTES = 65536; // WebGPU's guaranteed maxUniformBufferBindingSize

/** Options of {@linkcode allocMatrix} and {@linkcode uploadMatrix}. */
export interface MatrixOptions extends MatrixShape {
  label?: string;
  /**
   * Keep the bytes in a storage buffer or a texture. Default: `gpu.weightStorage` (chosen
   * by measurement, see choose.ts) where the CPU family's fast path can read the matrix
   * from a texture, else a buffer. Asking for "texture" where it cannot is an error.
   */
  storage?: WeightStorage;
  /** Rows per weight texture (default and maximum: the device's 2-D texture limit); tests set it low to force several textures. */
  textureRows?: number;
  /** How a texture matrix is read (default `gpu.textureReads`); tests compare both. */
  textureReads?: TextureReads;
}

/**
 * Uploads a weight matrix as stored (F32, F16 or BF16 bytes, row-major (N, K)).
 * @example
 * ```ts
 * const w = uploadMatrix(gpu, { bytes, dtype: "BF16", N: 1024, K: 4096, label: "k_proj" });
 * ```
 */
export function uploadMatrix(gpu: Gpu, m: MatrixOptions & { bytes: Uint8Array }): GpuMatrix {
  checkBytes(m.bytes, m, m.label ?? "matrix");
  const out = allocMatrix(gpu, m);
  writeMatrixBytes(gpu, out, m.bytes, 0);
  return out;
}

/**
 * Overwrites a matrix with another matrix of the same shape and dtype (the next layer), in
 * pieces (see {@linkcode Gpu.writeLarge}). The bytes are checked first.
 */
export function writeMatrix(gpu: Gpu, m: GpuMatrix, bytes: Uint8Array): Promise<void> {
  try {
    checkBytes(bytes, m, matrixLabel(m));
    gpu.writeLarge(bytes, (piece, at) => writeMatrixBytes(gpu, m, piece, at));
    return Promise.resolve();
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * Queues a write of `bytes` (the matrix's bytes from `byteOffset` on, as stored) into `m`,
 * like `queue.writeBuffer`: copied now, seen by the next submit. On a texture both ends
 * must fall on 16-byte texels (any piece of a split at multiples of 16 does).
 */
export function writeMatrixBytes(
  gpu: Gpu,
  m: GpuMatrix,
  bytes: Uint8Array,
  byteOffset: number,
): void {
  if (m.textures) writeWeightTextures(gpu, m.textures, m.layout, bytes, byteOffset);
  // Writes move whole 4-byte words: a matrix of odd 16-bit length lands with 2 bytes of
  // padding, which every buffer has (sizes are rounded up to 4).
  else gpu.write(m.buffer, bytes, byteOffset);
}

/** An empty matrix of shape (N, K) and `dtype`, to fill with {@linkcode writeMatrix}. */
export function allocMatrix(gpu: Gpu, m: MatrixOptions): GpuMatrix {
  const shape = { dtype: m.dtype, N: m.N, K: m.K };
  const layout = fastPathFits(gpu, m.K) ? textureLayout(gpu, shape, m.textureRows) : null;
  if (m.storage === "texture" && !layout) {
    throw new GqaError(
      "unsupported",
      `${m.label ?? "matrix"}: a ${m.dtype} (${m.N}, ${m.K}) matrix cannot be kept in a ` +
        `texture on ${gpu.adapterName} (the CPU family's fast path needs K % 8 == 0 and K ≤ ` +
        `16384, and the rows must fit the device's texture limits); use storage "buffer".`,
    );
  }
  const storage = m.storage ?? (gpu.kernels === "cpu" ? gpu.weightStorage : "buffer");
  if (storage === "texture" && layout) {
    const reads = m.textureReads ?? gpu.textureReads;
    return {
      ...shape,
      textures: allocWeightTextures(gpu, layout, { label: m.label, reads }),
      layout,
    };
  }
  return { ...shape, buffer: gpu.buffer(m.N * m.K * DTYPE_BYTES[m.dtype], m.label) };
}

/** Frees a matrix's buffer or textures. */
export function destroyMatrix(m: GpuMatrix): void {
  if (m.textures) { for (const t of m.textures) t.destroy(); }
  else m.buffer.destroy();
}

function matrixLabel(m: GpuMatrix): string {
  return (m.textures ? m.textures[0].label : m.buffer.label) || "matrix";
}

function checkBytes(
  bytes: Uint8Array,
  m: { dtype: WeightDtype; N: number; K: number },
  what: string,
): void {
  const want = m.N * m.K * (DTYPE_BYTES[m.dtype] ?? NaN);
  if (!(m.N >= 1 && m.K >= 1 && Number.isInteger(m.N) && Number.isInteger(m.K))) {
    throw new GqaError("bad-input", `${what}: shape (${m.N}, ${m.K}) is not a matrix shape.`);
  }
  if (bytes.byteLength !== want) {
    throw new GqaError(
      "bad-file",
      `${what}: ${bytes.byteLength} bytes given for a ${m.dtype} matrix of shape (${m.N}, ${m.K}), ` +
        `which needs ${want}. The tensor's dtype or shape in the safetensors header does not ` +
        `match its data; re-download the shard or check the checkpoint.`,
    );
  }
}

/**
 * Records Y (T, N) = X (T, K) · Wᵀ (+ bias) into `encoder`.
 * @example
 * ```ts
 * await chooseMatmulVariant(gpu); // once per device; optional
 * await gpu.run((enc) => matmul(gpu, enc, { x, w, y, T: 5 }));
 * ```
 */
export function matmul(gpu: Gpu, encoder: GPUCommandEncoder, a: MatmulArgs): void {
  const { w, T } = a;
  const { N, K } = w;
  if (!(Number.isInteger(T) && T >= 1)) {
    throw new GqaError("bad-input", `matmul: T must be a positive integer, got ${T}.`);
  }
  checkSize(a.x, T * K * 4, "X", `(${T}, ${K}) f32`);
  checkSize(a.y, T * N * 4, "Y", `(${T}, ${N}) f32`);
  if (a.bias) checkSize(a.bias, N * 4, "bias", `(${N}) f32`);
  if (a.variant === "f16" && !gpu.hasF16) {
    throw new GqaError(
      "unsupported",
      `matmul: variant "f16" was requested but this adapter (${gpu.adapterName}) has no ` +
        `shader-f16; use variant "packed" or leave it unset.`,
    );
  }
  // Family hook: the GPU family (matmul_gpu.ts) on hardware adapters or when forced. It
  // reads buffers only; a matrix kept in a texture runs the CPU family's kernel.
  if ((a.family ?? gpu.kernels) === "gpu" && w.buffer && gpuMatmulSupports(w)) {
    return matmulGpu(gpu, encoder, { ...a, w });
  }
  const plan = planMatmul(gpu, a);
  if (T * N * 4 > gpu.maxBindingBytes) {
    throw new GqaError(
      "unsupported",
      `matmul: Y (${T}, ${N}) is larger than one storage binding (${gpu.maxBindingBytes} bytes); ` +
        `run fewer tokens per call.`,
    );
  }
  const warm = a.warmUpOnly === true; // one workgroup, storing into the sink
  const yBind: Binding = warm ? gpu.sink : { buffer: a.y, size: T * N * 4 };
  const biasBind: Binding[] = a.bias ? [{ buffer: a.bias, size: N * 4 }] : [];
  const gridLimit = a.gridLimit ?? 65535;
  const RR = plan.rowsPerInvocation, WG = plan.workgroupSize;

  if (plan.path === "fast") {
    const xVec4s = xBindingBytes(gpu) / 16;
    const xFrom = plan.xFrom;
    const xTex = xFrom === "texture" ? stageXTexture(gpu, encoder, a.x, T, K) : undefined;
    const xRows = xTex ? undefined : stageX(gpu, encoder, a.x, T, K);
    for (const c of plan.chunks) {
      const wBind: Binding = w.textures
        ? w.textures[c.texture!].createView()
        : { buffer: w.buffer, offset: c.offset, size: c.size };
      const groups = warm ? 1 : Math.ceil(Math.ceil(c.rows / RR) / WG);
      for (const p of plan.passes) {
        const code = fastShader({
          dtype: w.dtype,
          variant: plan.variant,
          weights: w.textures ? "texture" : "buffer",
          textureReads: w.textures ? textureReadsOf(w.textures[0]) : undefined,
          xVec4s,
          xFrom,
          TT: p.tokens,
          RR,
          WG,
          bias: !!a.bias,
        });
        const params = gpu.uniform(new Uint32Array([c.rows, c.row0, c.wBase, N, p.t0, K, 0, 0]));
        const xs = xTex ? [xTex] : Array.from({ length: p.tokens }, (_, t) => xRows!(p.t0 + t));
        gpu.dispatch(
          encoder,
          gpu.pipeline(code),
          [params, wBind, yBind, ...biasBind, ...xs],
          grid2d(groups, gridLimit),
        );
      }
    }
  } else {
    if (T * K * 4 > gpu.maxBindingBytes) {
      throw new GqaError(
        "unsupported",
        `matmul: X (${T}, ${K}) is larger than one storage binding; run fewer tokens per call.`,
      );
    }
    const xBind: Binding = { buffer: a.x, size: T * K * 4 };
    for (const c of plan.chunks) {
      const wBind: Binding = { buffer: w.buffer!, offset: c.offset, size: c.size };
      const groups = warm ? 1 : Math.ceil(c.rows / WG);
      for (const p of plan.passes) {
        const code = generalShader({ dtype: w.dtype, TT: p.tokens, bias: !!a.bias });
        const params = gpu.uniform(
          new Uint32Array([c.rows, c.row0, c.wBase, N, p.t0, K, 0, 0]),
        );
        gpu.dispatch(
          encoder,
          gpu.pipeline(code),
          [params, wBind, yBind, ...biasBind, xBind],
          grid2d(groups, gridLimit),
        );
      }
    }
  }
}

function checkSize(buf: GPUBuffer, bytes: number, what: string, shape: string): void {
  if (buf.size < bytes) {
    throw new GqaError(
      "bad-input",
      `matmul: ${what} buffer holds ${buf.size} bytes but ${shape} needs ${bytes}.`,
    );
  }
}

/**
 * Whether the fast path can run reduction width K on `gpu`: whole k-steps of 8 weights and
 * one X row in a uniform binding (K ≤ 16384 at WebGPU's guaranteed 64 KiB).
 */
function fastPathFits(gpu: Gpu, K: number): boolean {
  return K % 8 === 0 && K * 4 <= xBindingBytes(gpu);
}

/** Bytes of each X binding of the fast path: the uniform binding limit, at most 64 KiB. */
function xBindingBytes(gpu: Gpu): number {
  const limit = Math.min(gpu.device.limits.maxUniformBufferBindingSize, MAX_UNIFORM_BYTES);
  return Math.floor(limit / 16) * 16;
}

/**
 * How {@linkcode matmul} would run these arguments: path, variant, row chunks, token passes.
 * Tests use it to check that a forced split really splits; the bench prints it.
 */
export function planMatmul(
  gpu: Gpu,
  a: Pick<MatmulArgs, "w" | "T" | "variant" | "maxBindingBytes">,
): MatmulPlan {
  const { dtype, N, K } = a.w;
  const B = DTYPE_BYTES[dtype];
  const fast = fastPathFits(gpu, K);
  const variant: MatmulVariant = dtype === "F16" && !a.w.textures
    ? (a.variant ?? matmulVariantInfo(gpu).variant)
    : "packed";
  const path = fast ? "fast" : "general";
  // Tokens per pass: one uniform binding per token plus the params block.
  const maxTT = fast
    ? Math.max(1, Math.min(8, gpu.device.limits.maxUniformBuffersPerShaderStage - 1))
    : GENERAL_TT;
  const passes: MatmulPlan["passes"] = [];
  for (let t0 = 0; t0 < a.T; t0 += maxTT) passes.push({ t0, tokens: Math.min(maxTT, a.T - t0) });

  // Row chunks. Textures: one chunk each. A buffer: each binding starts at an aligned
  // offset at or before the chunk's first byte and covers the chunk's rows; the kernel
  // skips the remainder (wBase).
  const chunks: MatmulPlan["chunks"] = [];
  if (a.w.textures) {
    if (!fast) throw new GqaError("unsupported", `matmul: K = ${K} cannot be read from a texture.`);
    const R = a.w.layout.rowsPerTexture;
    for (let row0 = 0; row0 < N; row0 += R) {
      const rows = Math.min(R, N - row0);
      chunks.push({ row0, rows, offset: 0, size: 0, wBase: 0, texture: row0 / R });
    }
  }
  const limit = Math.min(a.maxBindingBytes ?? gpu.maxBindingBytes, gpu.maxBindingBytes);
  const align = gpu.bindAlign;
  const rowBytes = K * B;
  const rowsPerChunk = Math.floor((limit - align) / rowBytes);
  if (rowsPerChunk < 1) {
    throw new GqaError(
      "unsupported",
      `matmul: one weight row of ${rowBytes} bytes (K = ${K}, ${dtype}) does not fit in a ` +
        `storage binding of ${limit} bytes on this adapter.`,
    );
  }
  const unit = path === "general" ? B : (dtype === "F16" && variant === "f16" ? 8 : 16);
  const total = Math.ceil((N * rowBytes) / 4) * 4; // buffer bytes (uploads pad to 4)
  for (let row0 = 0; row0 < N && !a.w.textures; row0 += rowsPerChunk) {
    const rows = Math.min(rowsPerChunk, N - row0);
    const start = row0 * rowBytes;
    const offset = Math.floor(start / align) * align;
    const size = Math.min(total - offset, Math.ceil((start - offset + rows * rowBytes) / 4) * 4);
    chunks.push({ row0, rows, offset, size, wBase: (start - offset) / unit });
  }
  let RR = 1;
  if (fast) {
    // Enough workgroups to balance the load over every CPU thread (or GPU core): 8 per thread.
    const threads = (globalThis.navigator?.hardwareConcurrency ?? 4) || 4;
    const rows = chunks[0].rows;
    RR = MAX_RR;
    while (RR > 1 && Math.ceil(rows / (RR * FAST_WG)) < 8 * threads) RR /= 2;
  }
  return {
    path,
    variant,
    chunks,
    passes,
    rowsPerInvocation: RR,
    workgroupSize: fast ? FAST_WG : GENERAL_WG,
    xFrom: fast && xFromTexture(gpu, a.T, K) ? "texture" : "uniform",
  };
}

// ---------------------------------------------------------------------------------------
// X staging: the fast path reads X through uniform bindings, one per token, each at an
// offset aligned to minUniformBufferOffsetAlignment. One staging buffer per device is
// reused by every call: commands in an encoder run in order, so each matmul's copy lands
// before its own dispatches and after the previous matmul's.

const staging = new WeakMap<Gpu, GPUBuffer>();

function stageX(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  x: GPUBuffer,
  T: number,
  K: number,
): (t: number) => Binding {
  const align = gpu.device.limits.minUniformBufferOffsetAlignment;
  const rowBytes = K * 4;
  const stride = Math.ceil(rowBytes / align) * align;
  // Every binding is the shader's full X array (xBindingBytes), whatever K: the last row's
  // window runs past the rows; the kernel reads only its first K values.
  const window = xBindingBytes(gpu);
  const bytes = (T - 1) * stride + window;
  gpu.endPass(encoder); // the copies below are encoder commands
  let buf = staging.get(gpu);
  if (!buf || buf.size < bytes) {
    buf = gpu.device.createBuffer({
      size: Math.max(bytes, 64 * 1024),
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      label: "matmul X staging",
    });
    staging.set(gpu, buf);
  }
  if (stride === rowBytes) encoder.copyBufferToBuffer(x, 0, buf, 0, T * rowBytes);
  else {
    for (let t = 0; t < T; t++) {
      encoder.copyBufferToBuffer(x, t * rowBytes, buf, t * stride, rowBytes);
    }
  }
  const b = buf;
  return (t) => ({ buffer: b, offset: t * stride, size: window });
}

/**
 * Whether the fast path reads X (T, K) from a storage texture (v8): where WGSL has read-only
 * storage textures, K % 64 == 0 (a texture row is K·4 bytes, and a buffer-to-texture copy
 * needs rows of a multiple of 256 bytes) and the texture fits the device's limits.
 */
function xFromTexture(gpu: Gpu, T: number, K: number): boolean {
  const maxDim = gpu.device.limits.maxTextureDimension2D;
  return gpu.textureReads === "storage" && K % 64 === 0 && K / 4 <= maxDim && T <= maxDim;
}

const xTextures = new WeakMap<Gpu, GPUTexture>();

/**
 * A side of the X texture for n texels: the power of two ≥ n (within the device's limit), so
 * that every call binds a texture of one size class: llvmpipe compiles a variant of a
 * pipeline per class (each side a power of two or not) of the textures it reads, and a
 * warm-up with a 1024-wide X texture (K = 4096) did not compile what a later call with a
 * 3584-wide one (K = 14336) needed.
 */
function side(gpu: Gpu, n: number): number {
  return Math.min(2 ** Math.ceil(Math.log2(n)), gpu.device.limits.maxTextureDimension2D);
}

/**
 * Copies X (T, K) into the `rgba32float` texture every fast-path call reuses (texel (j, t) =
 * X[t, 4j … 4j + 3]; grown when a call needs more) and returns its view. Like stageX's
 * buffer, one texture serves every call: an encoder's commands run in order.
 */
function stageXTexture(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  x: GPUBuffer,
  T: number,
  K: number,
): GPUTextureView {
  gpu.endPass(encoder); // the copy below is an encoder command
  let tex = xTextures.get(gpu);
  if (!tex || tex.width < K / 4 || tex.height < T) {
    tex = gpu.device.createTexture({
      size: [
        side(gpu, Math.max(K / 4, tex?.width ?? 0)),
        side(gpu, Math.max(T, 8, tex?.height ?? 0)),
      ],
      format: "rgba32float",
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
      label: "matmul X texture",
    });
    xTextures.set(gpu, tex);
  }
  const rows = { buffer: x, bytesPerRow: K * 4, rowsPerImage: T }; // X row t = texture row t
  encoder.copyBufferToTexture(rows, { texture: tex }, [K / 4, T]);
  return tex.createView();
}

// ---------------------------------------------------------------------------------------
// WGSL generation. Kernels are specialised by dtype, variant, tokens per pass (TT), rows
// per invocation (RR) and bias; the pipeline cache in Gpu keys on the source text.

const PARAMS = `struct Params {
  rows: u32,    // rows of W in this chunk
  row0: u32,    // global row of the chunk's first row (Y column and bias index)
  wBase: u32,   // where the chunk's first row starts in the W binding, in load units
  yStride: u32, // N: f32 per Y row
  t0: u32,      // first token of this pass (Y row)
  K: u32,       // reduction width
  _pad0: u32,
  _pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;`;

/** Source of the fast-path kernel (exported for the bench and for reading). */
export function fastShader(
  s: {
    dtype: WeightDtype;
    variant: MatmulVariant;
    /** Where W is read from (default "buffer"); a texture is always read packed. */
    weights?: "buffer" | "texture";
    /** How a texture is read (default "storage": an image load; "sampled": a texel fetch). */
    textureReads?: TextureReads;
    /** vec4s in each X binding: the uniform binding limit / 16 (runs any K ≤ 4·xVec4s). */
    xVec4s: number;
    /**
     * Where X is read from (default "uniform": one uniform binding per token; "texture": one
     * read-only `rgba32float` storage texture, texel (j, t) = X[t, 4j … 4j + 3]; see v8).
     */
    xFrom?: "uniform" | "texture";
    TT: number;
    RR: number;
    WG: number;
    bias: boolean;
  },
): string {
  const { dtype, xVec4s, TT, RR, WG, bias } = s;
  const tex = s.weights === "texture" ? (s.textureReads ?? "storage") : undefined;
  const native = dtype === "F16" && s.variant === "f16" && !tex;
  const { wDecl, perRow, helpers, loadRow, rowStart } = weightReads(dtype, { tex, native });
  const packed = !(dtype === "F32" || native);
  const rows = [...Array(RR).keys()], toks = [...Array(TT).keys()];
  const xTex = s.xFrom === "texture";
  const xBinding = bias ? 4 : 3;
  const xDecls = xTex
    ? [
      `@group(0) @binding(${xBinding}) var xt: texture_storage_2d<rgba32float, read>; ` +
      `// X (T, K): texel (j, t) = X[t, 4j … 4j + 3]`,
    ]
    : toks.map((t) =>
      `@group(0) @binding(${
        xBinding + t
      }) var<uniform> x${t}: array<vec4<f32>, ${xVec4s}>; // X[t0 + ${t}, :]`
    );
  // X[t0 + t, 8s … 8s + 7] as two vec4s.
  const xPair = (t: number) =>
    xTex
      ? `let xa${t} = textureLoad(xt, vec2<u32>(2u * s, p.t0 + ${t}u)); ` +
        `let xb${t} = textureLoad(xt, vec2<u32>(2u * s + 1u, p.t0 + ${t}u));`
      : `let xa${t} = x${t}[2u * s]; let xb${t} = x${t}[2u * s + 1u];`;
  // One k-step: X values of each token (even/odd k split for packed weights), then each row.
  const xLoads = toks.map((t) =>
    packed
      ? `${xPair(t)}
    let xe${t} = vec4<f32>(xa${t}.x, xa${t}.z, xb${t}.x, xb${t}.z); // X at even k
    let xo${t} = vec4<f32>(xa${t}.y, xa${t}.w, xb${t}.y, xb${t}.w); // X at odd k`
      : xPair(t)
  );
  const rowMath = rows.map((r) =>
    `${loadRow(r)}\n    ` +
    toks.map((t) =>
      packed
        ? `a${r}_${t} += dot(lo${r}, xe${t}) + dot(hi${r}, xo${t});`
        : `a${r}_${t} += dot(wa${r}, xa${t}) + dot(wb${r}, xb${t});`
    ).join(" ")
  );
  return `// matmul fast path (v8): W ${dtype}${native ? " read as f16" : ""}${
    tex ? ` from a ${tex} texture` : ""
  }, X from ${xTex ? "a storage texture, K % 64 == 0" : `uniforms, any K ≤ ${4 * xVec4s}`}, ` +
    `${TT} token(s) x ${RR} row(s) per invocation${bias ? ", bias" : ""}
${native ? "enable f16;\n" : ""}${PARAMS}
@group(0) @binding(1) ${wDecl}
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // Y (T, N)
${bias ? "@group(0) @binding(3) var<storage, read> bias: array<f32>; // (N)\n" : ""}${
      xDecls.join("\n")
    }
${helpers}

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let inv = gid.y * nwg.x * ${WG}u + gid.x; // grid2d: linear invocation index
  let n0 = inv * ${RR}u;                    // first row of this invocation (chunk-local)
  if (n0 >= p.rows) { return; }
  let last = p.rows - 1u;                   // rows past the end re-read the last row; not stored
  let steps = p.K / 8u;                     // k-steps of 8 weights per row${
      tex ? "" : `
  let perRow = ${perRow};            // W elements per row`
    }
  ${rows.map(rowStart).join("\n  ")}
  ${rows.map((r) => toks.map((t) => `var a${r}_${t} = 0.0;`).join(" ")).join("\n  ")}
  for (var s = 0u; s < steps; s++) {
    ${xLoads.join("\n    ")}
    ${rowMath.join("\n    ")}
  }
  ${
      rows.map((r) =>
        `if (n0 + ${r}u < p.rows) {${bias ? ` let b${r} = bias[p.row0 + n0 + ${r}u];` : ""}
    ${
          toks.map((t) =>
            `y[(p.t0 + ${t}u) * p.yStride + p.row0 + n0 + ${r}u] = a${r}_${t}${
              bias ? ` + b${r}` : ""
            };`
          ).join("\n    ")
        }
  }`
      ).join("\n  ")
    }
}
`;
}

/**
 * How the fast path reads W: its binding, W elements per row, decode helpers, the WGSL that
 * loads k-step `s` of row r as two vec4s (`lo`/`hi` for 16-bit packed: even/odd k;
 * `wa`/`wb`: k 0-3, 4-7 otherwise), and where row r starts.
 */
function weightReads(dtype: WeightDtype, o: { tex?: TextureReads; native: boolean }) {
  const { tex, native } = o;
  let wDecl: string, perRow = "", helpers = "", loadRow: (r: number) => string;
  if (tex) {
    // Row r's k-step s is texel (s, row) (F32: texels 2s and 2s + 1); see weight_texture.ts.
    // A storage texture is read with an image load, a sampled one with a texel fetch: same
    // texels, far fewer instructions on llvmpipe for the first.
    const t = textureWgsl(tex);
    wDecl = `var w: ${t.type}; // W chunk: texel row n = row n, 16 bytes per texel`;
    const at = (x: string, r: number) => t.load("w", `vec2<u32>(${x}, row${r})`);
    loadRow = dtype === "F32"
      ? (r) =>
        `let wa${r} = bitcast<vec4<f32>>(${at("2u * s", r)}); ` +
        `let wb${r} = bitcast<vec4<f32>>(${at("2u * s + 1u", r)});`
      : (r) => `let u${r} = ${at("s", r)}; let lo${r} = lo(u${r}); let hi${r} = hi(u${r});`;
  } else if (dtype === "F32" || native) {
    const elem = native ? "vec4<f16>" : "vec4<f32>";
    wDecl = `var<storage, read> w: array<${elem}>; // W chunk: 4 weights per element`;
    perRow = "p.K / 4u";
    const cvt = (e: string) => (native ? `vec4<f32>(${e})` : e);
    loadRow = (r) =>
      `let wa${r} = ${cvt(`w[w${r} + 2u * s]`)}; let wb${r} = ${cvt(`w[w${r} + 2u * s + 1u]`)};`;
  } else {
    wDecl = `var<storage, read> w: array<vec4<u32>>; // W chunk: 8 weights per element`;
    perRow = "p.K / 8u";
    loadRow = (r) => `let u${r} = w[w${r} + s]; let lo${r} = lo(u${r}); let hi${r} = hi(u${r});`;
  }
  if (dtype !== "F32" && !native) {
    helpers = dtype === "BF16"
      ? `// BF16 is the high half of an f32: shift the low half up, mask the high half.
fn lo(u: vec4<u32>) -> vec4<f32> { return bitcast<vec4<f32>>(u << vec4<u32>(16u)); }
fn hi(u: vec4<u32>) -> vec4<f32> { return bitcast<vec4<f32>>(u & vec4<u32>(0xffff0000u)); }`
      : `fn lo(u: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(u.x).x, unpack2x16float(u.y).x, unpack2x16float(u.z).x, unpack2x16float(u.w).x);
}
fn hi(u: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(u.x).y, unpack2x16float(u.y).y, unpack2x16float(u.z).y, unpack2x16float(u.w).y);
}`;
  }
  const rowStart = (r: number) =>
    tex
      ? `let row${r} = min(n0 + ${r}u, last);`
      : `let w${r} = p.wBase + min(n0 + ${r}u, last) * perRow;`;
  return { wDecl, perRow, helpers, loadRow, rowStart };
}

/** Source of the general-path kernel: any K, element addressing, X from storage. */
export function generalShader(s: { dtype: WeightDtype; TT: number; bias: boolean }): string {
  const { dtype, TT, bias } = s;
  const toks = [...Array(TT).keys()];
  const weight = dtype === "F32"
    ? "return bitcast<f32>(w[e]);"
    : dtype === "F16"
    ? "let v = unpack2x16float(w[e >> 1u]); return select(v.x, v.y, (e & 1u) == 1u);"
    : "let u = w[e >> 1u]; return bitcast<f32>(select(u << 16u, u & 0xffff0000u, (e & 1u) == 1u));";
  return `// matmul general path: W ${dtype} addressed per element (any K), ${TT} token(s) x 1 row per invocation${
    bias ? ", bias" : ""
  }
${PARAMS}
@group(0) @binding(1) var<storage, read> w: array<u32>; // W chunk, ${
    dtype === "F32" ? "one f32" : "two 16-bit values"
  } per word
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // Y (T, N)
${bias ? "@group(0) @binding(3) var<storage, read> bias: array<f32>; // (N)\n" : ""}` +
    `@group(0) @binding(${bias ? 4 : 3}) var<storage, read> x: array<f32>; // X (T, K)

// Weight element e of the binding (e counts ${dtype} values from the binding's start).
fn weight(e: u32) -> f32 { ${weight} }

@compute @workgroup_size(${GENERAL_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = gid.y * nwg.x * ${GENERAL_WG}u + gid.x; // chunk-local row
  if (n >= p.rows) { return; }
  let e0 = p.wBase + n * p.K;
  ${toks.map((t) => `var a${t} = 0.0; let x${t} = (p.t0 + ${t}u) * p.K;`).join("\n  ")}
  for (var k = 0u; k < p.K; k++) {
    let wk = weight(e0 + k);
    ${toks.map((t) => `a${t} += wk * x[x${t} + k];`).join(" ")}
  }
  ${bias ? "let b = bias[p.row0 + n];" : ""}
  ${
      toks.map((t) => `y[(p.t0 + ${t}u) * p.yStride + p.row0 + n] = a${t}${bias ? " + b" : ""};`)
        .join("\n  ")
    }
}
`;
}

/**
 * The CPU reference: Y (T, N) = X (T, K) · Wᵀ (+ bias) with float64 accumulation.
 * `w` holds the weights as f32 values (decode 16-bit weights with `decodeWeights`).
 */
export function matmulRef(
  a: { x: Float32Array; w: Float32Array; T: number; N: number; K: number; bias?: Float32Array },
): Float32Array {
  const { x, w, T, N, K, bias } = a;
  const y = new Float32Array(T * N);
  for (let t = 0; t < T; t++) {
    const xo = t * K;
    for (let n = 0; n < N; n++) {
      const wo = n * K;
      let s = 0;
      for (let k = 0; k < K; k++) s += x[xo + k] * w[wo + k];
      y[t * N + n] = s + (bias ? bias[n] : 0);
    }
  }
  return y;
}

// ---------------------------------------------------------------------------------------
// Variant choice: measured once per device.

const choices = new WeakMap<Gpu, Promise<MatmulVariantInfo>>();
const settled = new WeakMap<Gpu, MatmulVariantInfo>();

/**
 * Which variant {@linkcode matmul} uses on this device, and why. Before
 * {@linkcode chooseMatmulVariant} has finished this is "packed", marked unmeasured.
 */
export function matmulVariantInfo(gpu: Gpu): MatmulVariantInfo {
  return settled.get(gpu) ?? (gpu.hasF16
    ? {
      variant: "packed",
      measured: false,
      reason: "not measured yet (await chooseMatmulVariant(gpu) to time packed against f16)",
    }
    : {
      variant: "packed",
      measured: false,
      reason: "the adapter has no shader-f16, so F16 weights are read as packed u32 pairs",
    });
}

/**
 * Times the packed and native-f16 variants once per device (F16 weights (4096, 4096),
 * T = 1, a warm-up then 3 timed submits each) and makes {@linkcode matmul} use the faster
 * one: f16 only if it is at least 3 % faster. Without `shader-f16` it resolves to "packed"
 * at once. The result is cached per device.
 */
export function chooseMatmulVariant(gpu: Gpu): Promise<MatmulVariant> {
  let p = choices.get(gpu);
  if (!p) {
    p = measureVariants(gpu).then((info) => {
      settled.set(gpu, info);
      return info;
    });
    choices.set(gpu, p);
  }
  return p.then((i) => i.variant);
}

async function measureVariants(gpu: Gpu): Promise<MatmulVariantInfo> {
  if (!gpu.hasF16) return { ...matmulVariantInfo(gpu), measured: true };
  const N = 4096, K = 4096, bytes = N * K * 2;
  const ws = [0, 1].map((i) => ({
    buffer: gpu.buffer(bytes, `matmul variant timing ${i}`), // zeros: valid F16
    dtype: "F16" as const,
    N,
    K,
  }));
  const x = gpu.upload(new Float32Array(K).fill(0.5)), y = gpu.buffer(N * 4);
  const reps = 6;
  const once = async (variant: MatmulVariant): Promise<number> => {
    const enc = gpu.device.createCommandEncoder();
    for (let r = 0; r < reps; r++) matmul(gpu, enc, { x, w: ws[r % 2], y, T: 1, variant });
    const t0 = performance.now();
    await gpu.submit(enc);
    return (performance.now() - t0) / reps;
  };
  const times: Record<MatmulVariant, number[]> = { packed: [], f16: [] };
  try {
    await once("packed"); // warm-up: compiles the pipelines, faults the pages in
    await once("f16");
    for (let i = 0; i < 3; i++) {
      times.packed.push(await once("packed"));
      times.f16.push(await once("f16"));
    }
  } finally {
    for (const w of ws) w.buffer.destroy();
    x.destroy();
    y.destroy();
  }
  const med = (a: number[]) => a.sort((p, q) => p - q)[a.length >> 1];
  const gbps = {
    packed: bytes / med(times.packed) / 1e6,
    f16: bytes / med(times.f16) / 1e6,
  };
  const f16Wins = gbps.f16 > gbps.packed * 1.03;
  const fmt = (v: number) => v.toFixed(2);
  return {
    variant: f16Wins ? "f16" : "packed",
    measured: true,
    gbps,
    reason: f16Wins
      ? `native f16 loads measured faster (${fmt(gbps.f16)} vs ${fmt(gbps.packed)} GB/s)`
      : `packed u32 pairs measured at least as fast (${fmt(gbps.packed)} vs ${
        fmt(gbps.f16)
      } GB/s for native f16)`,
  };
}
