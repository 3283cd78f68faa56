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
 *       weights; wait once
 *    b. MLP half: submit steps 7-9 and one finite check of x; meanwhile stream layer l+1's
 *       gate_proj and up_proj; wait once (the wait is the read of the check's flag)
 *    c. on a NaN/Inf, re-run layer l step by step from the saved residual to name the step
 *  end: read every capture back
 * ```
 *
 * Capturing layers A..L costs no extra weight bytes: the pass computes them anyway.
 *
 * Every layer has the same shapes, so ONE set of weight buffers serves them all: a write is
 * queued behind the submits before it, so the next layer's weights can stream into a buffer
 * while a submitted half still reads the current ones. Device memory is one layer of weights
 * plus activations, whatever L is; host memory is weight_stream.ts's ring of pieces plus the
 * driver's staging for one part of a layer. A wait for the GPU costs ~11 ms in Deno and blocks
 * until the GPU is idle, so each half waits exactly once, after its writes are queued.
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import { decodeWeights, DTYPE_BYTES, type WeightDtype } from "../kernels/dtype.ts";
import { allocMatrix, type GpuMatrix, matmul, writeMatrix } from "../kernels/matmul.ts";
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
  resetFiniteCheck,
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
  /** Staging piece and ring sizes (tests make them tiny to exercise the ring). */
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
    const info = this.tensors.get(name)!;
    const [N, K] = info.shape;
    const dtype = info.dtype as WeightDtype;
    const cur = this.w[key];
    const m = cur && cur.N === N && cur.K === K && cur.dtype === dtype
      ? cur
      : (this.w[key] = allocMatrix(this.gpu, { dtype, N, K, label: key }));
    await writeMatrix(this.gpu, m, bytes);
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
        jobs.push({ file: r.file, begin: r.begin, end: r.end, dst: m.buffer, dstOffset: 0 });
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
    return cur && cur.N === N && cur.K === K && cur.dtype === dtype
      ? cur
      : (this.w[key] = allocMatrix(this.gpu, { dtype, N, K, label: key }));
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
 * Records every pipeline one layer uses over a throwaway residual `x0`: matmuls over zero
 * rows (compiled, not run), the small steps for real (they take well under a millisecond).
 * lavapipe compiles a pipeline at its first dispatch; done first, this overlaps with reading
 * layer 0 instead of delaying its compute.
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
 * Submits what `record` records, then lets `writes` (the next layer's weights streaming in)
 * run while the GPU computes, flushes them and waits for the queue to go idle. In Deno on
 * lavapipe any wait for the GPU blocks the thread until the GPU is idle, and costs ~11 ms
 * however short the work: so each half of a layer waits exactly once, after its writes.
 * With `check`, the half ends with a finite check of `outs` whose flag is copied into
 * `check.readback` and returned (the wait is the mapping of that buffer).
 */
async function sync(
  gpu: Gpu,
  writes: Promise<void>,
  record: (enc: GPUCommandEncoder) => void,
  check?: { c: FiniteCheck; readback: GPUBuffer; outs: GPUBuffer[] },
): Promise<number> {
  const enc = gpu.device.createCommandEncoder();
  record(enc);
  if (check) {
    for (const o of check.outs) {
      finiteCheck(gpu, enc, { check: check.c, step: 0, x: o, n: o.size / 4 });
    }
    gpu.copy(enc, check.c.flags, 0, check.readback, 0, 4);
  }
  gpu.submitAsync(enc);
  await writes; // queued behind this submit; the next submit carries them to the GPU
  gpu.device.queue.submit([]);
  let flag = 0;
  if (check) {
    await check.readback.mapAsync(GPUMapMode.READ, 0, 4);
    flag = new Uint32Array(check.readback.getMappedRange(0, 4))[0];
    check.readback.unmap();
    if (flag !== 0) resetFiniteCheck(gpu, check.c);
  } else await gpu.device.queue.onSubmittedWorkDone();
  gpu.throwIfError();
  return flag;
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
  //    capture targets, the residual before the current layer (to re-run it on a NaN).
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
  const check = a.checkFinite === false ? undefined : createFiniteCheck(gpu, 1);
  const readback = check && gpu.device.createBuffer({
    size: 16,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    label: "finite flag readback",
  });
  const xBefore = gpu.buffer(T * cfg.D * 4, "x before the layer"); // (T, D)

  try {
    // 2. The embedding rows of the prompt's distinct tokens (never the whole table); layer 0's
    //    weights stream in meanwhile, and the pipelines compile as soon as its shapes are known.
    const embDtype = a.tensors.get("model.embed_tokens.weight")!.dtype as WeightDtype;
    // Layer 0 in two parts, the MLP's first (it overlaps compiling), so the driver never
    // stages more than about half a layer: a part's staging memory is free once it lands.
    const parts = plan.layers.map(splitParts);
    const first = slots.stream(0, parts[0].mlp, src, ws);
    const chunks = await mapLimit(
      plan.embedding,
      EMBEDDING_READS_AT_ONCE,
      (r) => src.read(r.file, r.begin, r.end),
    );
    const rows = gatherEmbeddingRows(plan, tokenIds, chunks); // (T, D) stored dtype
    const x = gpu.upload(decodeWeights(rows, embDtype), "residual x"); // (T, D) f32
    // Submitted, not awaited: a wait would block this thread while lavapipe compiles.
    const enc = gpu.device.createCommandEncoder();
    warmUp(gpu, enc, { dims, w: slots.w, s, x0: xBefore, check });
    gpu.submitAsync(enc);
    await sync(gpu, first, () => {});
    await slots.stream(0, parts[0].attn, src, ws);

    // 3. Layer by layer, in two halves. While each half computes, the weights that no
    //    longer need their old values stream in: during the attention half, layer l's
    //    down_proj and layer l+1's attention weights; during the MLP half, layer l+1's
    //    gate_proj and up_proj. Each half then waits once.
    const layerSeconds: number[] = [];
    const w = slots.w as LayerWeights;
    const chk = (outs: GPUBuffer[]) => check && readback && { c: check, readback, outs };
    const none: TensorRead[] = [];
    for (let l = 0; l <= L; l++) {
      a.onLayer?.(l);
      const t0 = performance.now();
      const isL = l === L;
      const capture = captures.get(l);
      // a. Attention half (layer L: q/k/v and RoPE only, into the capture buffers).
      const duringAttn = Promise.all([
        slots.stream(l, isL ? none : parts[l].down, src, ws),
        slots.stream(l + 1, isL ? none : parts[l + 1].attn, src, ws),
      ]).then(() => {});
      let bad = await sync(gpu, duringAttn, (enc) => {
        gpu.copy(enc, x, 0, xBefore, 0, xBefore.size);
        decoderLayer(gpu, enc, { dims, w, x, s, stop: isL ? "qkv" : "attention", capture });
      }, isL ? chk([last.q, last.k, last.v, last.kRope]) : undefined);
      // b. MLP half, ending with the layer's one finite check (of x).
      if (!isL) {
        const duringMlp = slots.stream(l + 1, parts[l + 1].mlp, src, ws);
        bad = await sync(gpu, duringMlp, (enc) => {
          decoderLayer(gpu, enc, { dims, w, x, s, start: "mlp" });
        }, chk([x]));
      }
      // c. On a NaN/Inf, re-run the layer step by step to name the step.
      if (bad) await failAtStep({ ...a, slots, ws, dims, x, xBefore, s, l, capture });
      layerSeconds.push((performance.now() - t0) / 1000);
    }

    // 4. Read every captured layer's tensors back.
    const layers: LayerTensors[] = [];
    for (const [layer, c] of captures) {
      const [q, k, kRope, qRope, v, attn] = await Promise.all(
        [c.q, c.k, c.kRope, c.qRope, c.v, c.attn!].map((b) => gpu.read(b)),
      );
      layers.push({ layer, q, k, kRope, qRope, v, attn });
    }
    return { ...layers[layers.length - 1], layers, layerSeconds };
  } finally {
    ws.destroy();
    readback?.destroy();
  }
}

/**
 * Layer `l` produced a NaN or Inf: re-runs it from the residual saved before it, with its
 * weights streamed again and a check after every step, and throws naming the first bad step.
 */
async function failAtStep(
  a: ForwardArgs & {
    slots: LayerSlots;
    ws: WeightStream;
    dims: LayerDims;
    x: GPUBuffer;
    xBefore: GPUBuffer;
    s: LayerScratch;
    l: number;
    capture?: ReturnType<typeof allocCapture>;
  },
): Promise<never> {
  const { gpu, slots, l, x } = a;
  await slots.stream(l, a.plan.layers[l], a.src, a.ws);
  const steps = createFiniteCheck(gpu, LAYER_STEPS.length);
  await gpu.run((enc) => {
    gpu.copy(enc, a.xBefore, 0, x, 0, x.size);
    const stop = l === a.plan.layer ? "qkv" : "full";
    const w = slots.w as LayerWeights;
    decoderLayer(gpu, enc, { dims: a.dims, w, x, s: a.s, stop, capture: a.capture, check: steps });
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
