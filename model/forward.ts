/**
 * The forward pass, layer by layer, over streamed weights.
 *
 * ```
 *  embedding rows of the prompt's tokens ──► x (T, D) on the GPU
 *  warm-up: every pipeline a layer uses compiles while layer 0's weights are read
 *  for l in 0..L:
 *    a. attention half: submit steps 1-6 of decoderLayer (layer L: q/k/v and RoPE only);
 *       a captured layer also copies its q/k/v (+ RoPE) and attention weights into its own
 *       capture buffers; meanwhile stream layer l's down_proj and layer l+1's attention
 *       weights
 *    b. MLP half: submit steps 7-9 and one finite check of x (into flag l); meanwhile
 *       stream layer l+1's gate_proj and up_proj
 *  end: read every capture and the finite flags back; on a NaN/Inf in layer l, run layers
 *       0..l again and layer l step by step to name the step
 * ```
 *
 * Capturing layers A..L costs no extra weight bytes: the pass computes them anyway.
 *
 * Every layer has the same shapes, so ONE set of weight buffers (or textures) serves them
 * all: a write is queued behind the submits before it, so the next layer's weights can
 * stream in while a submitted half still reads the current ones. Device memory is one layer
 * of weights plus activations, whatever L is; host memory is weight_stream.ts's pieces in
 * flight (mapped, or read into host pieces) plus the driver's staging for them. No half
 * waits for its own work: on lavapipe the submit itself runs it, and in Deno a wait costs
 * ~11-40 ms of polling (see half()).
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import { decodeWeights, DTYPE_BYTES, type WeightDtype } from "../kernels/dtype.ts";
import {
  allocMatrix,
  destroyMatrix,
  type GpuMatrix,
  matmul,
  writeMatrix,
} from "../kernels/matmul.ts";
import { rope, ropeTables } from "../kernels/rope.ts";
import { rmsnorm } from "../kernels/rmsnorm.ts";
import { attention } from "../kernels/attention.ts";
import { swiglu } from "../kernels/swiglu.ts";
import { add } from "../kernels/add.ts";
import {
  allocCapture,
  allocScratch,
  decoderLayer,
  LAYER_STEPS,
  type LayerDims,
  type LayerScratch,
  type LayerWeights,
} from "../kernels/decoder_layer.ts";
import {
  createFiniteCheck,
  type FiniteCheck,
  finiteCheck,
  firstNonFinite,
} from "../kernels/finite_check.ts";
import type { ModelConfig } from "./config.ts";
import { gatherEmbeddingRows, type Plan, type TensorRead } from "./plan.ts";
import type { ByteSource } from "./source/mod.ts";
import type { TensorInfo } from "./safetensors.ts";
import { GqaError } from "../errors.ts";
import { keepFreedMemory } from "./host_memory.ts";
import {
  DEFAULT_RING_BYTES,
  type StreamJob,
  WeightStream,
  type WeightStreamOptions,
} from "./weight_stream.ts";

/** One captured layer's tensors as f32. */
export interface LayerTensors {
  layer: number;
  q: Float32Array; //     (T, H*HD)   as it leaves q_proj
  k: Float32Array; //     (T, KV*HD)  as it leaves k_proj
  kRope: Float32Array; // (T, KV*HD)  after RoPE
  qRope: Float32Array; // (T, H*HD)   after RoPE
  v: Float32Array; //     (T, KV*HD)
  attn: Float32Array; //  (H, T, T)   causal softmax attention weights
}

/** What the forward pass returns: the tensors of layer L (the deepest) and of every layer captured. */
export interface ForwardResult extends LayerTensors {
  /** Every captured layer, ascending; the last is layer L (the fields above). */
  layers: LayerTensors[];
  /** Seconds from the start of each layer to the start of the next, index = layer. */
  layerSeconds: number[];
}

/** Arguments of {@linkcode runForward}. */
export interface ForwardArgs {
  gpu: Gpu;
  src: ByteSource;
  config: ModelConfig;
  tensors: Map<string, TensorInfo & { file: string }>;
  plan: Plan;
  tokenIds: number[];
  /** Layers to capture on the way, ascending, the last = plan.layer (default [plan.layer]). */
  captureLayers?: number[];
  /**
   * Check each layer's output for NaN/Inf and stop with the layer and step (default true).
   * One check per layer; the step is found by re-running that layer step by step.
   */
  checkFinite?: boolean;
  /** Piece and slot sizes of the weight stream, and whether it maps local files (tests make pieces tiny). */
  stream?: WeightStreamOptions;
  /** Told when layer l starts (its read awaited, then its compute): the progress bar's label. */
  onLayer?: (l: number) => void;
}

/** How many embedding-row reads run at once (a long prompt has one per distinct token). */
const EMBEDDING_READS_AT_ONCE = 8;

/**
 * `f` over `items`, at most `limit` calls in flight at once; results in `items`' order.
 * @example
 * ```ts
 * const chunks = await mapLimit(plan.embedding, 8, (r) => src.read(r.file, r.begin, r.end));
 * ```
 */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  f: (item: T, i: number) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await f(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** Layer l's tensor names, HF style. */
function names(l: number) {
  const p = `model.layers.${l}.`;
  return {
    inputNorm: p + "input_layernorm.weight",
    q: p + "self_attn.q_proj.weight",
    k: p + "self_attn.k_proj.weight",
    v: p + "self_attn.v_proj.weight",
    qBias: p + "self_attn.q_proj.bias",
    kBias: p + "self_attn.k_proj.bias",
    vBias: p + "self_attn.v_proj.bias",
    o: p + "self_attn.o_proj.weight",
    postNorm: p + "post_attention_layernorm.weight",
    gate: p + "mlp.gate_proj.weight",
    up: p + "mlp.up_proj.weight",
    down: p + "mlp.down_proj.weight",
  };
}

type MatrixKey = "q" | "k" | "v" | "o" | "gate" | "up" | "down";
const MATRIX_KEYS: readonly string[] = ["q", "k", "v", "o", "gate", "up", "down"];
type VectorKey = "inputNorm" | "postNorm" | "qBias" | "kBias" | "vBias";

/**
 * Holds the one set of layer buffers and rewrites it for each layer. Matrices keep their
 * stored dtype; norm weights and biases are decoded to f32 on the CPU (they are tiny).
 */
export class LayerSlots {
  readonly w: Partial<LayerWeights> = {};
  constructor(
    readonly gpu: Gpu,
    readonly tensors: Map<string, TensorInfo & { file: string }>,
  ) {}

  async setMatrix(key: MatrixKey, name: string, bytes: Uint8Array) {
    await writeMatrix(this.gpu, this.#matrix(key, name, bytes.length), bytes);
  }

  setVector(key: VectorKey, name: string, bytes: Uint8Array) {
    const f32 = decodeWeights(bytes, this.tensors.get(name)!.dtype as WeightDtype);
    const cur = this.w[key];
    if (cur && cur.size >= f32.byteLength) this.gpu.write(cur, f32);
    else this.w[key] = this.gpu.upload(f32, key);
  }

  /**
   * Streams layer l's tensors (`reads`, from the plan) from `src` into the layer buffers:
   * matrices through `ws` piece by piece, norms and biases read whole (they are small) and
   * written as f32. Resolves when every write is queued: the next submit sees them, and
   * everything submitted before still sees the previous layer's weights.
   */
  async stream(l: number, reads: TensorRead[], src: ByteSource, ws: WeightStream) {
    const byName = new Map(Object.entries(names(l)).map(([k, v]) => [v, k]));
    const jobs: StreamJob[] = [];
    const vectors: Promise<void>[] = [];
    for (const r of reads) {
      const key = byName.get(r.tensor);
      if (key === undefined) continue;
      if (MATRIX_KEYS.includes(key as MatrixKey)) {
        const m = this.#matrix(key as MatrixKey, r.tensor, r.end - r.begin);
        jobs.push({ file: r.file, begin: r.begin, end: r.end, dst: m, dstOffset: 0 });
      } else {
        vectors.push(
          src.read(r.file, r.begin, r.end).then((b) =>
            this.setVector(key as VectorKey, r.tensor, b)
          ),
        );
      }
    }
    await Promise.all([ws.upload(jobs), ...vectors]);
  }

  /**
   * Allocates the buffers of layer l's matrices among `reads` without writing them, so
   * that a warm-up can record (and compile) every matmul before their bytes arrive.
   */
  allocate(l: number, reads: TensorRead[]): void {
    const byName = new Map(Object.entries(names(l)).map(([k, v]) => [v, k]));
    for (const r of reads) {
      const key = byName.get(r.tensor);
      if (key !== undefined && MATRIX_KEYS.includes(key)) {
        this.#matrix(key as MatrixKey, r.tensor, r.end - r.begin);
      }
    }
  }

  /** The buffer of matrix `key`, (re)allocated for `name`'s shape and dtype; checks `bytes`. */
  #matrix(key: MatrixKey, name: string, bytes: number): GpuMatrix {
    const info = this.tensors.get(name)!;
    const [N, K] = info.shape;
    const dtype = info.dtype as WeightDtype;
    if (bytes !== N * K * DTYPE_BYTES[dtype]) {
      throw new GqaError(
        "bad-file",
        `${name}: ${bytes} bytes for a ${dtype} matrix of shape (${N}, ${K}), which needs ` +
          `${N * K * DTYPE_BYTES[dtype]}. The safetensors header does not match its data; ` +
          `re-download the shard or check the checkpoint.`,
      );
    }
    const cur = this.w[key];
    if (cur && cur.N === N && cur.K === K && cur.dtype === dtype) return cur;
    if (cur) destroyMatrix(cur);
    return this.w[key] = allocMatrix(this.gpu, { dtype, N, K, label: key });
  }

  /** Writes layer l's weights from `bytes` (only those present: layer L has q/k/v only). */
  async load(l: number, bytes: Map<string, Uint8Array>) {
    const n = names(l);
    for (const key of ["q", "k", "v", "o", "gate", "up", "down"] as const) {
      const b = bytes.get(n[key]);
      if (b) await this.setMatrix(key, n[key], b);
    }
    for (const key of ["inputNorm", "postNorm", "qBias", "kBias", "vBias"] as const) {
      const b = bytes.get(n[key]);
      if (b) this.setVector(key, n[key], b);
    }
  }
}

/** The shapes of every layer of `cfg` for a prompt of T tokens. */
export function layerDims(cfg: ModelConfig, T: number): LayerDims {
  return { T, D: cfg.D, H: cfg.H, KV: cfg.KV, HD: cfg.HD, I: cfg.I, eps: cfg.eps };
}

/**
 * Records every pipeline one layer uses over a throwaway residual `x0`: each matmul as one
 * workgroup with its real shapes, storing into `gpu.sink` (matmul.ts, `warmUpOnly`), the
 * small steps for real (they take well under a millisecond). lavapipe compiles a pipeline at
 * its first dispatch, specialised on its uniforms' values and its textures' size classes, so
 * the warm-up dispatches what layer 0 will; done first, it runs before layer 0's attention
 * weights are written instead of inside layer 0's compute.
 */
function warmUp(
  gpu: Gpu,
  enc: GPUCommandEncoder,
  a: {
    dims: LayerDims;
    w: Partial<LayerWeights>;
    s: LayerScratch;
    x0: GPUBuffer;
    check?: FiniteCheck;
  },
): void {
  const { dims: { T, D, H, KV, HD, I, eps }, w, s, x0 } = a;
  const mm = (m: GpuMatrix | undefined, x: GPUBuffer, y: GPUBuffer, bias?: GPUBuffer) =>
    m && matmul(gpu, enc, { x, w: m, y, T, bias, warmUpOnly: true });
  mm(w.q, s.xn, s.q, w.qBias);
  mm(w.k, s.xn, s.k, w.kBias);
  mm(w.v, s.xn, s.v, w.vBias);
  mm(w.o, s.attn, s.out);
  mm(w.gate, s.xn, s.gate);
  mm(w.up, s.xn, s.up);
  mm(w.down, s.act, s.out);
  rmsnorm(gpu, enc, { x: x0, w: x0, y: s.xn, T, D, eps }); // any D weights will do
  rope(gpu, enc, { x: s.q, cos: s.cos, sin: s.sin, T, heads: H, HD });
  attention(gpu, enc, { q: s.q, k: s.k, v: s.v, out: s.attn, T, H, KV, HD });
  add(gpu, enc, { x: x0, y: s.out, n: T * D });
  swiglu(gpu, enc, { gate: s.gate, up: s.up, out: s.act, n: T * I });
  if (a.check) finiteCheck(gpu, enc, { check: a.check, step: 0, x: x0, n: T * D });
}

/**
 * Submits what `record` records, then lets `writes` (the next weights streaming in) finish
 * and flushes them; resolves with `done`, the promise of this half's completion. It does not wait
 * for this half: on lavapipe (Mesa 22) `queue.submit` runs the work on the calling thread
 * before it returns, so the GPU is idle by then, and a wait would only add Deno's ~11-40 ms
 * of polling. It waits only for the half before (`prev`, long finished on lavapipe), which
 * on an asynchronous GPU keeps the loop at most one half ahead of the queue, so the
 * driver's staging memory stays bounded.
 */
async function half(
  gpu: Gpu,
  writes: Promise<void>,
  record: (enc: GPUCommandEncoder) => void,
  prev: Promise<void>,
): Promise<{ done: Promise<void> }> {
  const enc = gpu.device.createCommandEncoder();
  record(enc);
  const done = gpu.submitAsync(enc); // the last half's is never awaited (submitAsync handles that)
  await writes; // queued behind this submit; the next submit carries them to the GPU
  gpu.device.queue.submit([]);
  await prev;
  gpu.throwIfError();
  return { done }; // wrapped: an async function returning a promise would wait for it
}

/**
 * A layer's reads in the three parts the loop streams separately: the attention half's
 * tensors (input norm, q/k/v/o and biases), the MLP's post-attention norm, gate_proj and
 * up_proj, and down_proj.
 */
function splitParts(reads: TensorRead[]) {
  const is = (re: RegExp) => (r: TensorRead) => re.test(r.tensor);
  const mlp = is(/(post_attention_layernorm|mlp\.gate_proj|mlp\.up_proj)\./);
  const down = is(/mlp\.down_proj\./);
  return {
    attn: reads.filter((r) => !mlp(r) && !down(r)),
    mlp: reads.filter(mlp),
    down: reads.filter(down),
  };
}

/**
 * Runs layers 0..L-1 and the capture part of layer L on the GPU, streaming each layer's
 * weights from `src` while the previous layer computes.
 */
export async function runForward(a: ForwardArgs): Promise<ForwardResult> {
  const { gpu, src, config: cfg, plan, tokenIds } = a;
  const L = plan.layer;
  const T = tokenIds.length;
  const dims = layerDims(cfg, T);

  keepFreedMemory(); // uploads reuse freed staging memory instead of faulting in fresh pages

  // 1. Buffers shared by every layer: the layer's weights, scratch activations, RoPE tables,
  //    capture targets, and a zero residual for the warm-up (a NaN re-run starts from x0).
  const slots = new LayerSlots(gpu, a.tensors);
  // A network source reads ahead enough to keep all its connections busy.
  const ws = new WeightStream(gpu, src, {
    ringBytes: Math.max(DEFAULT_RING_BYTES, src.readAheadBytes ?? 0),
    ...a.stream,
  });
  const s = allocScratch(gpu, dims);
  const { cos, sin } = ropeTables({ T, HD: cfg.HD, cfg: cfg.rope, posOffset: 0 });
  gpu.write(s.cos, cos);
  gpu.write(s.sin, sin);
  const captured = a.captureLayers ?? [L];
  if (captured.at(-1) !== L || captured.some((l, i) => i > 0 && l <= captured[i - 1])) {
    throw new Error(`runForward: captureLayers must ascend to ${L}, got [${captured}]`);
  }
  const captures = new Map(captured.map((l) => [l, allocCapture(gpu, dims, { attn: true })]));
  const last = captures.get(L)!;
  // One finite check per layer (flag l), all read back with the captures at the end: a
  // read is a wait, and no half waits (see half()).
  const check = a.checkFinite === false ? undefined : createFiniteCheck(gpu, L + 1);
  const finite = (enc: GPUCommandEncoder, l: number, outs: GPUBuffer[]) => {
    for (const o of outs) {
      if (check) finiteCheck(gpu, enc, { check, step: l, x: o, n: o.size / 4 });
    }
  };
  const xBefore = gpu.buffer(T * cfg.D * 4, "warm-up residual"); // (T, D) zeros

  try {
    // 2. The embedding rows of the prompt's distinct tokens (never the whole table); layer 0's
    //    weights stream in meanwhile, and the pipelines compile as soon as its shapes are known.
    const embDtype = a.tensors.get("model.embed_tokens.weight")!.dtype as WeightDtype;
    // Layer 0 in two parts, the MLP's first (its reads overlap compiling when they are real
    // reads; mapped pieces are copied at once).
    const parts = plan.layers.map(splitParts);
    slots.allocate(0, plan.layers[0]); // every matmul of a layer, for the warm-up
    const first = slots.stream(0, parts[0].mlp, src, ws);
    const chunks = await mapLimit(
      plan.embedding,
      EMBEDDING_READS_AT_ONCE,
      (r) => src.read(r.file, r.begin, r.end),
    );
    const rows = gatherEmbeddingRows(plan, tokenIds, chunks); // (T, D) stored dtype
    const x0 = decodeWeights(rows, embDtype); // (T, D) f32
    const x = gpu.upload(x0, "residual x"); // (T, D) f32
    let prev = (await half(gpu, first, (enc) => {
      warmUp(gpu, enc, { dims, w: slots.w, s, x0: xBefore, check });
    }, Promise.resolve())).done;
    await slots.stream(0, parts[0].attn, src, ws);

    // 3. Layer by layer, in two halves. While each half computes, the weights that no
    //    longer need their old values stream in: during the attention half, layer l's
    //    down_proj and layer l+1's attention weights; during the MLP half, layer l+1's
    //    gate_proj and up_proj. No half waits for itself (see half()).
    const layerSeconds: number[] = [];
    const w = slots.w as LayerWeights;
    const none: TensorRead[] = [];
    for (let l = 0; l <= L; l++) {
      a.onLayer?.(l);
      const t0 = performance.now();
      const isL = l === L;
      const capture = captures.get(l);
      // a. Attention half (layer L: q/k/v and RoPE only, into the capture buffers, checked).
      const duringAttn = Promise.all([
        slots.stream(l, isL ? none : parts[l].down, src, ws),
        slots.stream(l + 1, isL ? none : parts[l + 1].attn, src, ws),
      ]).then(() => {});
      prev = (await half(gpu, duringAttn, (enc) => {
        decoderLayer(gpu, enc, { dims, w, x, s, stop: isL ? "qkv" : "attention", capture });
        if (isL) finite(enc, l, [last.q, last.k, last.v, last.kRope]);
      }, prev)).done;
      // b. MLP half, ending with the layer's one finite check (of x).
      if (!isL) {
        const duringMlp = slots.stream(l + 1, parts[l + 1].mlp, src, ws);
        prev = (await half(gpu, duringMlp, (enc) => {
          decoderLayer(gpu, enc, { dims, w, x, s, start: "mlp" });
          finite(enc, l, [x]);
        }, prev)).done;
      }
      layerSeconds.push((performance.now() - t0) / 1000);
    }

    // 4. Read every captured layer's tensors and the finite flags back (all at once: each
    //    read is a wait). On a NaN/Inf, re-run up to the first bad layer to name the step.
    const flags = check && firstNonFinite(gpu, check);
    const layers: LayerTensors[] = await Promise.all(
      [...captures].map(async ([layer, c]) => {
        const [q, k, kRope, qRope, v, attn] = await Promise.all(
          [c.q, c.k, c.kRope, c.qRope, c.v, c.attn!].map((b) => gpu.read(b)),
        );
        return { layer, q, k, kRope, qRope, v, attn };
      }),
    );
    const bad = (await flags) ?? -1;
    if (bad >= 0) await failAtStep({ ...a, slots, ws, dims, x, x0, s, l: bad, captures });
    return { ...layers[layers.length - 1], layers, layerSeconds };
  } finally {
    ws.destroy();
    check?.flags.destroy();
    xBefore.destroy();
  }
}

/**
 * Layer `l` produced a NaN or Inf (its flag was read after the run): runs layers 0..l-1
 * again from the embedding rows `x0`, then layer l step by step with a check after every
 * step, and throws naming the first bad step. Slow, but only on the way to an error.
 */
async function failAtStep(
  a: ForwardArgs & {
    slots: LayerSlots;
    ws: WeightStream;
    dims: LayerDims;
    x: GPUBuffer;
    x0: Float32Array;
    s: LayerScratch;
    l: number;
    captures: Map<number, ReturnType<typeof allocCapture>>;
  },
): Promise<never> {
  const { gpu, slots, l, x, dims, s } = a;
  const w = slots.w as LayerWeights;
  gpu.write(x, a.x0);
  for (let j = 0; j < l; j++) {
    await slots.stream(j, a.plan.layers[j], a.src, a.ws);
    await gpu.run((enc) => decoderLayer(gpu, enc, { dims, w, x, s, stop: "full" }));
  }
  await slots.stream(l, a.plan.layers[l], a.src, a.ws);
  const steps = createFiniteCheck(gpu, LAYER_STEPS.length);
  await gpu.run((enc) => {
    const stop = l === a.plan.layer ? "qkv" : "full";
    const capture = a.captures.get(l);
    decoderLayer(gpu, enc, { dims, w, x, s, stop, capture, check: steps });
  });
  const bad = await firstNonFinite(gpu, steps);
  steps.flags.destroy();
  const where = bad >= 0 ? `at step "${LAYER_STEPS[bad]}" ` : "";
  throw new GqaError(
    "non-finite",
    `A NaN or infinite value first appeared in layer ${l} ${where}of ${a.src.name}. The ` +
      `weights of that layer may be corrupt or stored in a dtype that overflows; check the ` +
      `checkpoint's files (re-download them) and try a lower --layer to see the last layer ` +
      `that is still finite.`,
  );
}
