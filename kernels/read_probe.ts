/**
 * A streaming-read probe: how fast can a kernel on this adapter read a big storage buffer?
 * The matmul bench divides its weight bandwidth by the best probe figure, so the probe has
 * to be the fastest plain read we can write, or every ratio would flatter the kernels.
 *
 * Each pattern reads `n` 32-bit words of a buffer and XORs them together per invocation;
 * it writes one u32 per invocation (a tiny result the compiler cannot drop). XOR of all the
 * outputs equals XOR of all the words read, which {@linkcode readProbeRef} computes on the
 * CPU: a test uses it to show that every pattern reads every word exactly once.
 *
 * Layouts: `a` is the buffer as `array<vec4<u32>>` or `array<u32>` (E = elements of that
 * type, n/4 or n); `o` is `array<u32>` with one word per invocation.
 * Patterns (how invocation i of I maps onto elements):
 * - **block**: i reads the contiguous block [i·B, (i+1)·B), B = ⌈E/I⌉, U elements per
 *   loop iteration (an unrolled run), then a tail loop.
 * - **streams**: i reads S contiguous blocks at once (S independent streams), one element
 *   of each per iteration.
 * - **grid-stride**: i reads i, i + I, i + 2I, … (neighbouring invocations, neighbouring
 *   elements: the classic GPU pattern).
 * - **workgroup-chunk**: workgroup g owns a contiguous chunk; its lanes read it in
 *   interleaved order (lane l reads l, l + WG, …).
 *
 * What to expect on lavapipe (llvmpipe's Vulkan driver, 8 lanes per 256-bit register): a
 * storage load whose address differs per lane is emulated by a scalar loop over the lanes
 * with a bounds check per component, ~40 instructions per lane per `vec4`. The probe is
 * therefore bound by instructions, not by DRAM: `vec4` beats u32 (the per-lane overhead is
 * shared by 4 words) and unrolled runs beat single loads (fewer loop-mask updates). On
 * lavapipe here, with the machine quiet, `block` with vec4 runs of 4–8 read ~13 GB/s
 * (14 CPU-time normalised), u32 loads about half that, grid-stride and workgroup-chunk
 * ~1.2–1.6 GB/s; a typed-array copy in Deno reads ~14 GB/s on one core.
 *
 * **Textures.** The CPU family may keep weights in `rgba32uint` textures (weight_texture.ts),
 * where lavapipe's buffer loads are slow, so the probe has a texture twin,
 * {@linkcode readProbeTexture}: each invocation streams `rows` whole texel rows side by side
 * (the matmul's own access with rows = 16) and XORs every word it reads. On an AMD EPYC
 * (Zen 3) VM the buffer patterns all read ~1 GB/s while the texture probe reads 6–8 GB/s.
 * @module
 */
import { type Gpu, grid2d, type TextureReads } from "./gpu.ts";
import { textureReadsOf, textureWgsl } from "./weight_texture.ts";

/** One way of reading the buffer. */
export interface ReadProbePattern {
  /** Short id, e.g. "block vec4 x4 wg64". */
  name: string;
  layout: "block" | "streams" | "grid-stride" | "workgroup-chunk";
  /** Load type: 16 bytes (`vec4<u32>`) or 4 bytes (`u32`). */
  elem: "vec4" | "u32";
  /** Consecutive elements per loop iteration (block) or streams per invocation (streams). */
  unroll: number;
  /** Invocations per workgroup. */
  workgroupSize: number;
  /** Invocations in the dispatch (a multiple of workgroupSize). */
  invocations: number;
}

/** The patterns the bench tries; it reports each and keeps the fastest. */
export const READ_PROBE_PATTERNS: readonly ReadProbePattern[] = [
  {
    name: "block vec4 x1 wg64",
    layout: "block",
    elem: "vec4",
    unroll: 1,
    workgroupSize: 64,
    invocations: 4096,
  },
  {
    name: "block vec4 x4 wg64",
    layout: "block",
    elem: "vec4",
    unroll: 4,
    workgroupSize: 64,
    invocations: 4096,
  },
  {
    name: "block vec4 x4 wg16",
    layout: "block",
    elem: "vec4",
    unroll: 4,
    workgroupSize: 16,
    invocations: 1024,
  },
  {
    name: "block vec4 x8 wg16",
    layout: "block",
    elem: "vec4",
    unroll: 8,
    workgroupSize: 16,
    invocations: 1024,
  },
  {
    name: "streams vec4 x4 wg16",
    layout: "streams",
    elem: "vec4",
    unroll: 4,
    workgroupSize: 16,
    invocations: 1024,
  },
  {
    // the matmul's own access: 16 rows (streams) per invocation, 8-invocation workgroups
    name: "streams vec4 x16 wg8",
    layout: "streams",
    elem: "vec4",
    unroll: 16,
    workgroupSize: 8,
    invocations: 512,
  },
  {
    name: "block u32 x4 wg64",
    layout: "block",
    elem: "u32",
    unroll: 4,
    workgroupSize: 64,
    invocations: 4096,
  },
  {
    name: "grid-stride vec4 wg256",
    layout: "grid-stride",
    elem: "vec4",
    unroll: 1,
    workgroupSize: 256,
    invocations: 65536,
  },
  {
    name: "workgroup-chunk vec4 wg64",
    layout: "workgroup-chunk",
    elem: "vec4",
    unroll: 1,
    workgroupSize: 64,
    invocations: 4096,
  },
];

/** Source of a pattern's kernel. Params: `n` elements (of the pattern's type) to read. */
export function readProbeShader(p: ReadProbePattern): string {
  const T = p.elem === "vec4" ? "vec4<u32>" : "u32";
  const fold = p.elem === "vec4" ? "s.x ^ s.y ^ s.z ^ s.w" : "s";
  const zero = p.elem === "vec4" ? "vec4<u32>(0u)" : "0u";
  const U = p.unroll, WG = p.workgroupSize, I = p.invocations;
  let body: string;
  switch (p.layout) {
    case "block":
      body = `let per = (p.n + ${I - 1}u) / ${I}u;             // block length B
  let start = min(i * per, p.n);
  let end = min(start + per, p.n);
  let runs = start + (end - start) / ${U}u * ${U}u;
  var j = start;
  for (; j < runs; j += ${U}u) {
    s ^= ${[...Array(U).keys()].map((u) => `a[j + ${u}u]`).join(" ^ ")};
  }
  for (; j < end; j++) { s ^= a[j]; }                  // tail`;
      break;
    case "streams":
      body = `let per = (p.n + ${I * U - 1}u) / ${I * U}u;      // block length per stream
  ${
        [...Array(U).keys()].map((u) =>
          `let b${u} = min((i * ${U}u + ${u}u) * per, p.n); let e${u} = min(b${u} + per, p.n);`
        ).join("\n  ")
      }
  let both = ${
        [...Array(U).keys()].map((u) => `e${u} - b${u}`).reduce((x, y) => `min(${x}, ${y})`)
      };
  for (var j = 0u; j < both; j++) {
    s ^= ${[...Array(U).keys()].map((u) => `a[b${u} + j]`).join(" ^ ")};
  }
  ${
        [...Array(U).keys()].map((u) => `for (var j = b${u} + both; j < e${u}; j++) { s ^= a[j]; }`)
          .join("\n  ")
      }`;
      break;
    case "grid-stride":
      body = `for (var j = i; j < p.n; j += ${I}u) { s ^= a[j]; }`;
      break;
    case "workgroup-chunk":
      body = `let per = (p.n + ${I / WG - 1}u) / ${I / WG}u;   // chunk per workgroup
  let start = min(wid * per, p.n);
  let end = min(start + per, p.n);
  for (var j = start + lid; j < end; j += ${WG}u) { s ^= a[j]; }`;
      break;
  }
  return `// read probe: ${p.name}
struct Params { n: u32, _0: u32, _1: u32, _2: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<${T}>;
@group(0) @binding(2) var<storage, read_write> o: array<u32>; // one word per invocation

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
  let i = gid.y * nwg.x * ${WG}u + gid.x;              // invocation index
  let wid = wg.y * nwg.x + wg.x;                        // workgroup index
  var s = ${zero};
  ${body}
  o[i] = ${fold};
}
`;
}

/** Bytes the output buffer of a pattern needs (one u32 per invocation). */
export function readProbeOutputBytes(p: ReadProbePattern): number {
  return p.invocations * 4;
}

/**
 * Records one probe dispatch reading the first `bytes` of `buffer` (a multiple of 16 for
 * vec4 patterns, of 4 for u32) into `out` (at least {@linkcode readProbeOutputBytes}).
 */
export function readProbe(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  a: { buffer: GPUBuffer; bytes: number; out: GPUBuffer; pattern: ReadProbePattern },
): void {
  const p = a.pattern;
  const elemBytes = p.elem === "vec4" ? 16 : 4;
  if (a.bytes % elemBytes !== 0 || a.bytes > a.buffer.size || a.bytes > gpu.maxBindingBytes) {
    throw new RangeError(
      `readProbe: ${a.bytes} bytes is not a multiple of ${elemBytes} or exceeds the buffer or one binding`,
    );
  }
  const params = gpu.uniform(new Uint32Array([a.bytes / elemBytes, 0, 0, 0]));
  gpu.dispatch(
    encoder,
    gpu.pipeline(readProbeShader(p)),
    [params, { buffer: a.buffer, size: a.bytes }, { buffer: a.out, size: p.invocations * 4 }],
    grid2d(p.invocations / p.workgroupSize),
  );
}

/** The CPU reference: XOR of all 32-bit words, i.e. XOR of every pattern's outputs. */
export function readProbeRef(words: Uint32Array): number {
  let s = 0;
  for (let i = 0; i < words.length; i++) s ^= words[i];
  return s >>> 0;
}

/** One way of reading a texture: `rows` texel rows per invocation, side by side. */
export interface TextureProbePattern {
  name: string;
  rows: number;
  workgroupSize: number;
}

/** The texture patterns the bench tries: the matmul's access, and one row per invocation. */
export const TEXTURE_PROBE_PATTERNS: readonly TextureProbePattern[] = [
  { name: "texture rows x16 wg8", rows: 16, workgroupSize: 8 },
  { name: "texture rows x1 wg64", rows: 1, workgroupSize: 64 },
];

/**
 * Source of a texture pattern's kernel, reading the texture as matmul.ts does: as a
 * read-only storage texture (default) or a sampled one. Params: its width and height in texels.
 */
export function readProbeTextureShader(
  p: TextureProbePattern,
  reads: TextureReads = "storage",
): string {
  const R = p.rows, WG = p.workgroupSize;
  const rows = [...Array(R).keys()];
  const t = textureWgsl(reads);
  return `// texture read probe: ${p.name}, ${reads} reads
struct Params { width: u32, height: u32, _0: u32, _1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var t: ${t.type};
@group(0) @binding(2) var<storage, read_write> o: array<u32>; // one word per invocation

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * ${WG}u + gid.x;              // invocation index
  let r0 = i * ${R}u;                                   // its first row
  var s = vec4<u32>(0u);
  if (r0 < p.height) {
    let last = p.height - 1u;                          // rows past the end re-read the last
    ${rows.map((r) => `let y${r} = min(r0 + ${r}u, last);`).join("\n    ")}
    for (var x = 0u; x < p.width; x++) {
      ${rows.map((r) => `let v${r} = ${t.load("t", `vec2<u32>(x, y${r})`)};`).join("\n      ")}
      s ^= ${
    rows.map((r) => (r === 0 ? "v0" : `select(vec4<u32>(0u), v${r}, r0 + ${r}u < p.height)`))
      .join(" ^ ")
  };
    }
  }
  o[i] = s.x ^ s.y ^ s.z ^ s.w;
}
`;
}

/** Invocations (and output words) a texture pattern needs for `height` rows. */
export function readProbeTextureInvocations(p: TextureProbePattern, height: number): number {
  return Math.ceil(Math.ceil(height / p.rows) / p.workgroupSize) * p.workgroupSize;
}

/**
 * Records one texture probe dispatch reading every texel of an `rgba32uint` texture into
 * `out` (at least 4 · {@linkcode readProbeTextureInvocations} bytes; XOR of its words is
 * the XOR of the texture's words). Reads it as a storage texture when its usage allows,
 * as the weight textures are read (unless `reads` says otherwise).
 */
export function readProbeTexture(
  gpu: Gpu,
  encoder: GPUCommandEncoder,
  a: { texture: GPUTexture; out: GPUBuffer; pattern: TextureProbePattern; reads?: TextureReads },
): void {
  const { width, height } = a.texture;
  const n = readProbeTextureInvocations(a.pattern, height);
  const params = gpu.uniform(new Uint32Array([width, height, 0, 0]));
  const reads = a.reads ?? textureReadsOf(a.texture);
  gpu.dispatch(
    encoder,
    gpu.pipeline(readProbeTextureShader(a.pattern, reads)),
    [params, a.texture.createView(), { buffer: a.out, size: n * 4 }],
    grid2d(n / a.pattern.workgroupSize),
  );
}
