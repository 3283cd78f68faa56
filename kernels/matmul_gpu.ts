/**
 * The GPU family of matmul: Y (T, N) = X (T, K) · Wᵀ (+ bias), shaped for discrete and
 * integrated GPUs, where the CPU family's 8-invocation workgroups would leave warps a
 * quarter full and its loads uncoalesced. Same contract as {@linkcode matmul} in matmul.ts
 * (which calls this when the device's family is "gpu"): W (N, K) as stored (F32, or
 * F16/BF16 two per u32 word, element 2i in the low half), bias f32 (N) optional, f32
 * accumulation, weights larger than one storage binding bound as row chunks. It needs
 * K % 8 == 0 (every Llama shape); matmul.ts sends other K to its general path.
 *
 * ## GEMV, T ≤ 8 (decode-sized prompts; the capture of short prompts)
 * A workgroup is 256 invocations: 4 row groups × 64 lanes. Lanes split K: lane l of a row
 * group reads k-steps l, l + 64, l + 128, … of each of its R rows (R = 1 or 2), where a
 * k-step is 8 weights = one 16-byte word (two for F32). So the 64 lanes of a row read
 * 64 neighbouring words, 1 KiB contiguous per step: fully coalesced. X is staged per tile
 * of 512 k in workgroup memory (TT rows, ≤ 16 KiB), shared by the 4·R rows of the
 * workgroup; each weight word is used TT times from registers. At the end the 64 lanes'
 * partial sums are added by a tree reduction in the same workgroup memory (no subgroups:
 * Deno's WebGPU does not expose them).
 *
 * ```
 *   workgroup b ──► rows 4R·b … 4R·b + 4R − 1
 *   row group g, lane l:  W[n, 8s … 8s+7] for s = l, l+64, …   (neighbouring lanes, neighbouring words)
 *   xs (workgroup):       X[t, 512·tile … 512·tile + 511] for t < TT
 *   partial[g][r][t][l] ──tree over l──► Y[t, n]
 * ```
 *
 * ## GEMM, T > 8 (prefill)
 * A classic shared-memory tiled GEMM: a workgroup of 16 × 16 invocations computes a tile of
 * 64 tokens × 64 rows, each invocation a 4 × 4 micro-tile in registers. Per step of 32 k it
 * stages X (64 × 32 f32, 8 KiB) and W (64 × 32, unpacked to f32, 8 KiB) in workgroup
 * memory. Every weight is read from memory once per 64 tokens (once in total for T ≤ 64),
 * every X value once per 64 rows.
 *
 * Prompts of any length: X and Y are bound as token windows, each at most one storage
 * binding (windows of a multiple of 64 tokens, so offsets stay aligned), so Y need not
 * fit in one binding.
 *
 * Tile sizes follow `gpu.workgroupBudget`: the figures above are for 16 KiB (hardware
 * adapters). On fallback adapters, where this family runs only when forced (tests), the GEMV
 * has 16 lanes per row and the GEMM 8 k per step, 4 KiB of workgroup memory: wgpu's GL
 * backend zero-fills workgroup arrays with code that llvmpipe compiles in seconds per KiB.
 *
 * ## Versions
 * - v1 (this file): GEMV 4 × 64 lanes, R rows per row group, X tile in workgroup memory,
 *   tree reduction; GEMM 64 × 64 × 32 tiles, 4 × 4 per invocation. F16 weights are always
 *   read packed (`unpack2x16float`): the op is bandwidth-bound, so native f16 loads buy
 *   nothing here. Not yet measured on a GPU (see docs/BENCHMARKS.md for the model and the
 *   prepared device script); on lavapipe it is slower than the CPU family, as expected.
 * @module
 */
import { type Binding, type Gpu, GpuError, grid2d } from "./gpu.ts";
import { DTYPE_BYTES, type WeightDtype } from "./dtype.ts";

/** What the GPU family needs of a {@linkcode matmul} call (a subset of `MatmulArgs`). */
export interface GpuMatmulArgs {
  /** X f32 (T, K). */
  x: GPUBuffer;
  /** W (N, K) in its stored dtype. */
  w: { buffer: GPUBuffer; dtype: WeightDtype; N: number; K: number };
  /** Y f32 (T, N). */
  y: GPUBuffer;
  T: number;
  /** Optional bias f32 (N). */
  bias?: GPUBuffer;
  /** Bytes one binding may cover (default and maximum `gpu.maxBindingBytes`). */
  maxBindingBytes?: number;
  /** Workgroups per grid dimension (default 65535). */
  gridLimit?: number;
  /**
   * Record the same pipelines as one workgroup storing into `gpu.sink`: Y is left untouched
   * (see `warmUpOnly` in matmul.ts).
   */
  warmUpOnly?: boolean;
}

/** How {@linkcode matmulGpu} runs a call (see {@linkcode planMatmulGpu}). */
export interface GpuMatmulPlan {
  kind: "gemv" | "gemm";
  /** Row chunks of W, each bound separately; `wBase` in 16-byte words. */
  chunks: { row0: number; rows: number; offset: number; size: number; wBase: number }[];
  /** Token windows: X and Y are bound [t0, t0 + tokens) at a time (GEMV: ≤ 8 tokens). */
  windows: { t0: number; tokens: number }[];
  /** GEMV: rows per row group (1 or 2). */
  rowsPerGroup: number;
  /** GEMV: lanes along K per row (64; 16 within a 4 KiB workgroup budget). */
  lanes: number;
  /** GEMM: k per step (32; 8 within a 4 KiB workgroup budget). */
  bk: number;
}

/** Largest T served by the GEMV kernel; longer prompts use the tiled GEMM. */
export const GEMV_MAX_T = 8;
const GROUPS = 4; // GEMV row groups per workgroup
const TILE = 64; // GEMM tile: tokens and rows per workgroup

/** Whether the GPU family handles this matrix (K % 8 == 0); matmul.ts routes others itself. */
export function gpuMatmulSupports(w: { K: number }): boolean {
  return w.K % 8 === 0;
}

/** The row chunks, token windows and kernel {@linkcode matmulGpu} would use. */
export function planMatmulGpu(
  gpu: Gpu,
  a: Pick<GpuMatmulArgs, "w" | "T" | "maxBindingBytes">,
): GpuMatmulPlan {
  const { dtype, N, K } = a.w;
  const limit = Math.min(a.maxBindingBytes ?? gpu.maxBindingBytes, gpu.maxBindingBytes);
  const align = gpu.bindAlign;
  const rowBytes = K * DTYPE_BYTES[dtype];
  const rowsPerChunk = Math.floor((limit - align) / rowBytes);
  if (rowsPerChunk < 1) {
    throw new GpuError(
      `matmul: one weight row of ${rowBytes} bytes (K = ${K}, ${dtype}) does not fit in a ` +
        `storage binding of ${limit} bytes on this adapter.`,
    );
  }
  const chunks: GpuMatmulPlan["chunks"] = [];
  for (let row0 = 0; row0 < N; row0 += rowsPerChunk) {
    const rows = Math.min(rowsPerChunk, N - row0);
    const start = row0 * rowBytes;
    const offset = Math.floor(start / align) * align;
    const size = start - offset + rows * rowBytes;
    chunks.push({ row0, rows, offset, size, wBase: (start - offset) / 16 });
  }
  const kind = a.T <= GEMV_MAX_T ? "gemv" : "gemm";
  // Token windows: a multiple of 64 tokens keeps t0·N·4 and t0·K·4 aligned to 256 bytes.
  // A test's small maxBindingBytes that cannot hold 64 tokens only splits the weights.
  const widest = Math.max(N, K) * 4;
  const tokensIn = (bytes: number) =>
    a.T * widest <= bytes ? a.T : Math.floor(bytes / widest / 64) * 64;
  const per = tokensIn(limit) || tokensIn(gpu.maxBindingBytes);
  if (per < 1) {
    throw new GpuError(
      `matmul: 64 rows of X or Y (${Math.max(N, K)} f32 each) do not fit in a storage ` +
        `binding of ${limit} bytes on this adapter.`,
    );
  }
  const windows: GpuMatmulPlan["windows"] = [];
  for (let t0 = 0; t0 < a.T; t0 += per) windows.push({ t0, tokens: Math.min(per, a.T - t0) });
  const firstRows = chunks[0].rows;
  const rowsPerGroup = Math.ceil(firstRows / (GROUPS * 2)) >= 512 ? 2 : 1;
  const roomy = gpu.workgroupBudget >= 16384;
  return { kind, chunks, windows, rowsPerGroup, lanes: roomy ? 64 : 16, bk: roomy ? 32 : 8 };
}

/**
 * Records Y (T, N) = X (T, K) · Wᵀ (+ bias) with the GPU family (GEMV for T ≤ 8, tiled
 * GEMM above). Call it through `matmul()`, which checks the arguments and picks the family.
 *
 * @example
 * ```ts ignore
 * matmulGpu(gpu, encoder, { x: xn, w: wq, y: q, T: 1 });
 * ```
 */
export function matmulGpu(gpu: Gpu, encoder: GPUCommandEncoder, a: GpuMatmulArgs): void {
  const { w } = a;
  const { N, K } = w;
  const plan = planMatmulGpu(gpu, a);
  const gridLimit = a.gridLimit ?? 65535;
  const biasBind: Binding[] = a.bias ? [{ buffer: a.bias, size: N * 4 }] : [];
  // A warm-up runs one workgroup with the real parameters into the sink (see MatmulArgs).
  const warm = a.warmUpOnly === true;
  for (const win of plan.windows) {
    const xBind: Binding = { buffer: a.x, offset: win.t0 * K * 4, size: win.tokens * K * 4 };
    const yBind: Binding = warm
      ? gpu.sink
      : { buffer: a.y, offset: win.t0 * N * 4, size: win.tokens * N * 4 };
    for (const c of plan.chunks) {
      const wBind: Binding = { buffer: w.buffer, offset: c.offset, size: c.size };
      const params = gpu.uniform(
        new Uint32Array([c.rows, c.row0, c.wBase, N, win.tokens, K, 0, 0]),
      );
      const bindings = [params, wBind, yBind, xBind, ...biasBind];
      if (plan.kind === "gemv") {
        const R = plan.rowsPerGroup;
        const code = gemvShader({
          dtype: w.dtype,
          TT: win.tokens,
          R,
          lanes: plan.lanes,
          bias: !!a.bias,
        });
        const groups = warm ? 1 : Math.ceil(c.rows / (GROUPS * R));
        gpu.dispatch(encoder, gpu.pipeline(code), bindings, grid2d(groups, gridLimit));
      } else {
        const code = gemmShader({ dtype: w.dtype, bk: plan.bk, bias: !!a.bias });
        const [gx, gy] = grid2d(warm ? 1 : Math.ceil(c.rows / TILE), gridLimit);
        gpu.dispatch(encoder, gpu.pipeline(code), bindings, [gx, gy, Math.ceil(win.tokens / TILE)]);
      }
    }
  }
}

const PARAMS = `struct Params {
  rows: u32,  // rows of W in this chunk
  row0: u32,  // global row of the chunk's first row (Y column, bias index)
  wBase: u32, // where the chunk's first row starts in the W binding, in 16-byte words
  N: u32,     // f32 per Y row
  T: u32,     // tokens in this window (rows of the X and Y bindings)
  K: u32,     // reduction width
  _pad0: u32,
  _pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>; // W chunk, 16-byte words
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // Y window (T, N)
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>; // X window (T, K)`;

function biasDecl(bias: boolean): string {
  return bias ? "@group(0) @binding(4) var<storage, read> bias: array<f32>; // (N)\n" : "";
}

/** WGSL that unpacks one 16-byte word of 16-bit weights: `lo` = even k, `hi` = odd k. */
function unpackFns(dtype: WeightDtype): string {
  if (dtype === "BF16") {
    return `// BF16 is the high half of an f32: shift the low half up, mask the high half.
fn lo(u: vec4<u32>) -> vec4<f32> { return bitcast<vec4<f32>>(u << vec4<u32>(16u)); }
fn hi(u: vec4<u32>) -> vec4<f32> { return bitcast<vec4<f32>>(u & vec4<u32>(0xffff0000u)); }`;
  }
  if (dtype === "F16") {
    return `fn lo(u: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(u.x).x, unpack2x16float(u.y).x, unpack2x16float(u.z).x, unpack2x16float(u.w).x);
}
fn hi(u: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(u.x).y, unpack2x16float(u.y).y, unpack2x16float(u.z).y, unpack2x16float(u.w).y);
}`;
  }
  return "";
}

/** Source of the GEMV kernel for TT ≤ 8 tokens and R rows per row group. */
export function gemvShader(
  s: { dtype: WeightDtype; TT: number; R: number; lanes: number; bias: boolean },
): string {
  const { dtype, TT, R, bias } = s;
  const LANES = s.lanes;
  const f32 = dtype === "F32";
  const rows = [...Array(R).keys()], toks = [...Array(TT).keys()];
  const TV = Math.ceil(TT / 4); // vec4s of partial sums per row (4 tokens each)
  const xsLen = Math.max(TT * LANES * 2, GROUPS * R * TV * LANES);
  const load = (r: number) =>
    f32
      ? `let wa${r} = bitcast<vec4<f32>>(w[b${r} + 2u * s]); let wb${r} = bitcast<vec4<f32>>(w[b${r} + 2u * s + 1u]);`
      : `let u${r} = w[b${r} + s]; let lo${r} = lo(u${r}); let hi${r} = hi(u${r});`;
  const math = (r: number, t: number) =>
    f32
      ? `a${r}_${t} += dot(wa${r}, xa${t}) + dot(wb${r}, xb${t});`
      : `a${r}_${t} += dot(lo${r}, xe${t}) + dot(hi${r}, xo${t});`;
  const xLoad = (t: number) =>
    `let xa${t} = xs[${t}u * XROW + 2u * lane]; let xb${t} = xs[${t}u * XROW + 2u * lane + 1u];` +
    (f32 ? "" : `
      let xe${t} = vec4<f32>(xa${t}.x, xa${t}.z, xb${t}.x, xb${t}.z); // X at even k
      let xo${t} = vec4<f32>(xa${t}.y, xa${t}.w, xb${t}.y, xb${t}.w); // X at odd k`);
  // Partial sums of 4 tokens per vec4: red(r, v) = xs index for this lane.
  const red = (r: number, v: number) => `((grp * ${R}u + ${r}u) * ${TV}u + ${v}u) * LANES`;
  const vec = (r: number, v: number) =>
    `vec4<f32>(${
      [0, 1, 2, 3].map((i) => (4 * v + i < TT ? `a${r}_${4 * v + i}` : "0.0")).join(", ")
    })`;
  return `// matmul GPU family, GEMV: W ${dtype}, ${TT} token(s), ${GROUPS} row groups x ${LANES} lanes, ${R} row(s) per group${
    bias ? ", bias" : ""
  }
${PARAMS}
${biasDecl(bias)}${unpackFns(dtype)}

const LANES = ${LANES}u;
const XROW = ${LANES * 2}u; // vec4s of X per token in one tile (${LANES * 8} k)
var<workgroup> xs: array<vec4<f32>, ${xsLen}>; // X tile (TT, ${LANES * 8}), then the partial sums

@compute @workgroup_size(${GROUPS * LANES})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let lane = lid % LANES;
  let grp = lid / LANES;
  let n0 = ((wg.x + wg.y * nwg.x) * ${GROUPS}u + grp) * ${R}u; // first row of this row group
  let steps = p.K / 8u; // k-steps of 8 weights per row
  let kv = p.K / 4u;    // vec4s per X row
  let last = max(p.rows, 1u) - 1u; // rows past the end re-read the last row and are not stored
  ${
    rows.map((r) => `let b${r} = p.wBase + min(n0 + ${r}u, last) * steps${f32 ? " * 2u" : ""};`)
      .join("\n  ")
  }
  ${rows.map((r) => toks.map((t) => `var a${r}_${t} = 0.0;`).join(" ")).join("\n  ")}
  for (var s0 = 0u; s0 < steps; s0 += LANES) { // one tile: ${LANES} k-steps = ${LANES * 8} k
    for (var i = lid; i < ${TT}u * XROW; i += ${GROUPS * LANES}u) { // stage X[t, tile]
      let v = 2u * s0 + i % XROW;
      var xv = vec4<f32>();
      if (v < kv) { xv = x[(i / XROW) * kv + v]; }
      xs[i] = xv;
    }
    workgroupBarrier();
    let s = s0 + lane;
    if (s < steps) {
      ${toks.map(xLoad).join("\n      ")}
      ${
    rows.map((r) => `${load(r)}\n      ${toks.map((t) => math(r, t)).join(" ")}`).join("\n      ")
  }
    }
    workgroupBarrier();
  }
  // Tree reduction over the ${LANES} lanes, 4 tokens per vec4.
  ${
    rows.map((r) =>
      [...Array(TV).keys()].map((v) => `xs[${red(r, v)} + lane] = ${vec(r, v)};`).join("\n  ")
    ).join("\n  ")
  }
  workgroupBarrier();
  for (var stride = LANES / 2u; stride > 0u; stride /= 2u) {
    if (lane < stride) {
      ${
    rows.map((r) =>
      [...Array(TV).keys()].map((v) =>
        `xs[${red(r, v)} + lane] += xs[${red(r, v)} + lane + stride];`
      ).join("\n      ")
    ).join("\n      ")
  }
    }
    workgroupBarrier();
  }
  if (lane == 0u) {
    ${
    rows.map((r) =>
      `if (n0 + ${r}u < p.rows) {
      let n = p.row0 + n0 + ${r}u;${bias ? " let bn = bias[n];" : ""}
      ${
        toks.map((t) =>
          `y[${t}u * p.N + n] = xs[${red(r, Math.floor(t / 4))}][${t % 4}]${bias ? " + bn" : ""};`
        ).join("\n      ")
      }
    }`
    ).join("\n    ")
  }
  }
}
`;
}

/**
 * Source of the tiled GEMM kernel: 64 tokens × 64 rows per workgroup, 4 × 4 per invocation,
 * `bk` (a multiple of 8) k per step.
 */
export function gemmShader(s: { dtype: WeightDtype; bk: number; bias: boolean }): string {
  const { dtype, bias } = s;
  const BK = s.bk, V = BK / 4, WPR = BK / 8; // vec4 of X per row, 16-byte W words per row
  const f32 = dtype === "F32";
  const I4 = [0, 1, 2, 3];
  // Stage W[n0 + row, k0 … k0 + BK - 1] as f32 into ws[row * V …] (V vec4 per row).
  const stageW = f32
    ? `for (var i = lid; i < ${TILE * V}u; i += 256u) {
      let row = i / ${V}u; let c = i % ${V}u;
      var wv = vec4<f32>();
      if (k0 / 4u + c < kv) { wv = bitcast<vec4<f32>>(w[p.wBase + min(n0 + row, last) * kv + k0 / 4u + c]); }
      ws[i] = wv;
    }`
    : `for (var i = lid; i < ${TILE * WPR}u; i += 256u) {
      let row = i / ${WPR}u; let c = i % ${WPR}u; // ${WPR} word(s) of 8 weights per row
      var l = vec4<f32>(); var h = vec4<f32>();
      if (k0 / 8u + c < steps) {
        let u = w[p.wBase + min(n0 + row, last) * steps + k0 / 8u + c];
        l = lo(u); h = hi(u);
      }
      ws[row * ${V}u + 2u * c] = vec4<f32>(l.x, h.x, l.y, h.y);
      ws[row * ${V}u + 2u * c + 1u] = vec4<f32>(l.z, h.z, l.w, h.w);
    }`;
  return `// matmul GPU family, tiled GEMM: W ${dtype}, ${TILE} tokens x ${TILE} rows x ${BK} k per step${
    bias ? ", bias" : ""
  }
${PARAMS}
${biasDecl(bias)}${unpackFns(dtype)}

var<workgroup> xs: array<vec4<f32>, ${TILE * V}>; // X tile (64 tokens, ${BK} k)
var<workgroup> ws: array<vec4<f32>, ${TILE * V}>; // W tile (64 rows, ${BK} k) as f32

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) li: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let n0 = (wg.x + wg.y * nwg.x) * ${TILE}u; // first row of this tile (chunk-local)
  let t0 = wg.z * ${TILE}u;                  // first token of this tile (window-local)
  if (n0 >= p.rows) { return; }              // uniform per workgroup
  let steps = p.K / 8u;
  let kv = p.K / 4u;
  let last = p.rows - 1u;
  ${I4.map((i) => I4.map((j) => `var c${i}${j} = 0.0;`).join(" ")).join("\n  ")}
  for (var k0 = 0u; k0 < p.K; k0 += ${BK}u) {
    for (var i = lid; i < ${TILE * V}u; i += 256u) { // stage X[t0 + t, k0 … k0 + BK - 1]
      let t = i / ${V}u; let c = i % ${V}u;
      var xv = vec4<f32>();
      if (t0 + t < p.T && k0 / 4u + c < kv) { xv = x[(t0 + t) * kv + k0 / 4u + c]; }
      xs[i] = xv;
    }
    ${stageW}
    workgroupBarrier();
    for (var c = 0u; c < ${V}u; c++) {
      ${I4.map((i) => `let x${i} = xs[(li.y * 4u + ${i}u) * ${V}u + c];`).join(" ")}
      ${I4.map((j) => `let w${j} = ws[(li.x * 4u + ${j}u) * ${V}u + c];`).join(" ")}
      ${I4.map((i) => I4.map((j) => `c${i}${j} += dot(x${i}, w${j});`).join(" ")).join("\n      ")}
    }
    workgroupBarrier();
  }
  ${
    I4.map((j) =>
      `{
    let n = n0 + li.x * 4u + ${j}u;
    if (n < p.rows) {${bias ? " let bn = bias[p.row0 + n];" : ""}
      ${
        I4.map((i) =>
          `if (t0 + li.y * 4u + ${i}u < p.T) { y[(t0 + li.y * 4u + ${i}u) * p.N + p.row0 + n] = c${i}${j}${
            bias ? " + bn" : ""
          }; }`
        ).join("\n      ")
      }
    }
  }`
    ).join("\n  ")
  }
}
`;
}
