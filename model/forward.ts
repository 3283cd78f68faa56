/**
 * The forward pass, layer by layer, over streamed weights.
 *
 * ```
 *  embedding rows of the prompt's tokens ──► x (T, D) on the GPU
 *  for l in 0..L-1:   read layer l's weights (layer l+1's read already started)
 *                     upload into the ONE set of layer buffers, decoderLayer(full)
 *                     a captured layer also copies its q/k/v (+ RoPE) and attention
 *                     weights into its own capture buffers on the way
 *  layer L:           input_layernorm + q/k/v only, decoderLayer(stop: "qkv") → capture
 *  end:               read every capture back
 * ```
 *
 * Capturing layers A..L costs no extra weight bytes: the pass computes them anyway.
 *
 * Device memory is one layer of weights plus activations, whatever L is: every layer has
 * the same shapes, so the buffers created for layer 0 are rewritten for layer 1, and so on.
 * While the GPU runs layer l, the bytes of layer l+1 are already being read.
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import { decodeWeights, type WeightDtype } from "../kernels/dtype.ts";
import { allocMatrix, writeMatrix } from "../kernels/matmul.ts";
import { ropeTables } from "../kernels/rope.ts";
import {
  allocCapture,
  allocScratch,
  decoderLayer,
  LAYER_STEPS,
  type LayerDims,
  type LayerWeights,
} from "../kernels/decoder_layer.ts";
import { createFiniteCheck, firstNonFinite, resetFiniteCheck } from "../kernels/finite_check.ts";
import type { ModelConfig } from "./config.ts";
import { gatherEmbeddingRows, type Plan, type TensorRead } from "./plan.ts";
import type { ByteSource } from "./source/mod.ts";
import type { TensorInfo } from "./safetensors.ts";
import { GqaError } from "../errors.ts";

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
  /** Seconds spent on each layer (read wait + upload + compute), index = layer. */
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
  /** Check every step for NaN/Inf and stop with the layer and step (default true). */
  checkFinite?: boolean;
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

/**
 * Host buffers for one layer's tensors, two sets used alternately (layer l is uploaded
 * from one set while layer l+1 is read into the other). Every layer has the same shapes,
 * so after layer 1 no memory is allocated: fresh buffers of hundreds of MB cost more to
 * page-fault than to fill from the page cache.
 */
class HostBuffers {
  readonly #sets = [new Map<string, Uint8Array>(), new Map<string, Uint8Array>()];

  /** A buffer of `bytes` for tensor `name` (its layer prefix ignored) in set `set`. */
  get(set: number, name: string, bytes: number): Uint8Array {
    const key = name.replace(/^model\.layers\.\d+\./, "");
    let buf = this.#sets[set].get(key);
    if (buf?.byteLength !== bytes) this.#sets[set].set(key, buf = new Uint8Array(bytes));
    return buf;
  }
}

/** Reads every tensor of `reads` (in parallel) into a name → bytes map. */
async function readAll(
  src: ByteSource,
  reads: TensorRead[],
  into: (r: TensorRead) => Uint8Array,
): Promise<Map<string, Uint8Array>> {
  const bytes = await Promise.all(reads.map((r) => src.read(r.file, r.begin, r.end, into(r))));
  return new Map(reads.map((r, i) => [r.tensor, bytes[i]]));
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
 * Runs layers 0..L-1 and the capture part of layer L on the GPU, streaming each layer's
 * weights from `src` while the previous layer computes.
 */
export async function runForward(a: ForwardArgs): Promise<ForwardResult> {
  const { gpu, src, config: cfg, plan, tokenIds } = a;
  const L = plan.layer;
  const T = tokenIds.length;
  const dims = layerDims(cfg, T);

  // 1. The embedding rows of the prompt's distinct tokens (never the whole table).
  const embDtype = a.tensors.get("model.embed_tokens.weight")!.dtype as WeightDtype;
  const chunks = await mapLimit(
    plan.embedding,
    EMBEDDING_READS_AT_ONCE,
    (r) => src.read(r.file, r.begin, r.end),
  );
  const rows = gatherEmbeddingRows(plan, tokenIds, chunks); // (T, D) stored dtype
  const x = gpu.upload(decodeWeights(rows, embDtype), "residual x"); // (T, D) f32

  // 2. Buffers shared by every layer: scratch activations, RoPE tables, capture targets.
  const s = allocScratch(gpu, dims);
  const { cos, sin } = ropeTables({ T, HD: cfg.HD, cfg: cfg.rope, posOffset: 0 });
  gpu.write(s.cos, cos);
  gpu.write(s.sin, sin);
  const captured = a.captureLayers ?? [L];
  if (captured.at(-1) !== L || captured.some((l, i) => i > 0 && l <= captured[i - 1])) {
    throw new Error(`runForward: captureLayers must ascend to ${L}, got [${captured}]`);
  }
  const captures = new Map(captured.map((l) => [l, allocCapture(gpu, dims, { attn: true })]));
  const check = a.checkFinite === false ? undefined : createFiniteCheck(gpu, LAYER_STEPS.length);
  const slots = new LayerSlots(gpu, a.tensors);

  // 3. Layer by layer; the read of layer l+1 starts before layer l computes.
  const layerSeconds: number[] = [];
  const host = new HostBuffers();
  const read = (l: number) =>
    readAll(src, plan.layers[l], (r) => host.get(l % 2, r.tensor, r.end - r.begin));
  let next = read(0);
  for (let l = 0; l <= L; l++) {
    a.onLayer?.(l);
    const t0 = performance.now();
    const bytes = await next;
    if (l < L) next = read(l + 1);
    await slots.load(l, bytes);
    if (check) resetFiniteCheck(gpu, check);
    const enc = gpu.device.createCommandEncoder();
    decoderLayer(gpu, enc, {
      dims,
      w: slots.w as LayerWeights,
      x,
      s,
      stop: l === L ? "qkv" : "full",
      capture: captures.get(l),
      check,
    });
    await gpu.submit(enc);
    if (check) {
      const bad = await firstNonFinite(gpu, check);
      if (bad >= 0) {
        throw new GqaError(
          "non-finite",
          `A NaN or infinite value first appeared in layer ${l} at step "${LAYER_STEPS[bad]}" ` +
            `of ${src.name}. The weights of that layer may be corrupt or stored in a dtype ` +
            `that overflows; check the checkpoint's files (re-download them) and try a ` +
            `lower --layer to see the last layer that is still finite.`,
        );
      }
    }
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
}
