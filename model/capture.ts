/**
 * The public capture API: give it a model, a layer and a prompt (or token ids); it reads
 * only the bytes that layer needs, runs the forward pass on the GPU and returns Q, K
 * (as it leaves `k_proj`, and after RoPE) and V of that layer.
 *
 * @example
 * ```ts ignore
 * import { captureLayer } from "./capture.ts";
 * const cap = await captureLayer({ model: "meta-llama/Meta-Llama-3-8B", layer: 5, prompt: "Hello" });
 * console.log(cap.KV, "KV heads shared by", cap.H / cap.KV, "query heads each");
 * ```
 * @module
 */
import { type Gpu, NO_ADAPTER_HELP, requestGpu } from "../kernels/gpu.ts";
import { checkShapes, type ModelConfig, parseConfigText } from "./config.ts";
import { GqaError } from "../errors.ts";
import { type LayerTensors, runForward } from "./forward.ts";
import type { WeightStreamOptions } from "./weight_stream.ts";
import { type Plan, planCapture } from "./plan.ts";
import { type ByteSource, openSource, type OpenSourceOptions } from "./source/mod.ts";
import { loadTensorIndex } from "./tensors.ts";
import { loadTokenizer } from "./tokenizer.ts";

/** The default model: the one the original notebook draws. */
export const DEFAULT_MODEL = "meta-llama/Meta-Llama-3-8B";

/** Layer L's attention inputs for one prompt. GQA: query head h uses KV head ⌊h / (H/KV)⌋. */
export interface Capture {
  model: string;
  revision: string;
  layer: number;
  tokenIds: number[];
  /** tokenTexts[t] is the decoded text of token t. */
  tokenTexts: string[];
  T: number;
  H: number;
  KV: number;
  HD: number;
  q: Float32Array; //     (T, H*HD)   as it leaves q_proj (pre-RoPE)
  k: Float32Array; //     (T, KV*HD)  as it leaves k_proj (pre-RoPE): the capture point
  kRope: Float32Array; // (T, KV*HD)  after RoPE
  qRope: Float32Array; // (T, H*HD)   after RoPE
  v: Float32Array; //     (T, KV*HD)
  /** (H, T, T) causal softmax attention weights, as HF eager attention returns them. */
  attn: Float32Array;
  /**
   * Every captured layer's tensors, ascending; the last is `layer` (the fields above). One
   * entry for a single-layer capture.
   */
  sweep: LayerTensors[];
}

export type { LayerTensors };

/** Everything a run measured, beside the capture. */
export interface CaptureReport {
  plan: Plan;
  config: ModelConfig;
  /** Bytes read from the network or disk (not from our range cache). */
  bytesFetched: number;
  requests: number;
  layerSeconds: number[];
  adapter: string;
  /** Device memory this capture allocated: one layer of weights plus activations. */
  deviceBytes: number;
}

/** Options of {@linkcode captureLayer}. */
export interface CaptureOptions {
  /** A Hub repo id or a local folder (default {@linkcode DEFAULT_MODEL}). */
  model?: string;
  /** Branch, tag or commit on the Hub (default "main"). */
  revision?: string;
  /** The layer to capture, 0-based (give this or `layers`). */
  layer?: number;
  /**
   * Several layers captured in one pass (ascending after sorting; duplicates dropped), or
   * "all". The pass runs to the deepest, which becomes `Capture.layer`.
   */
  layers?: number[] | "all";
  /** Text to tokenize (with BOS); ignored when `tokenIds` is given. */
  prompt?: string;
  /** Token ids to use as they are. */
  tokenIds?: number[];
  /** Hub token (default `HF_TOKEN` from the environment). Never printed or stored. */
  hfToken?: string;
  /** Hub base URL (default `HF_ENDPOINT`, else https://huggingface.co). */
  endpoint?: string;
  /** No network at all (default: `HF_HUB_OFFLINE=1`). */
  offline?: boolean;
  /** Where fetched byte ranges are cached. */
  cacheDir?: string;
  /** Show a progress bar on a terminal (default true). */
  progress?: boolean;
  /** A device to use (default: the first adapter found). */
  gpu?: Gpu;
  /** Receives one-line status messages (the plan); default none. */
  log?: (line: string) => void;
  /** Check every layer for NaN/Inf and name the step where one appears (default true). */
  checkFinite?: boolean;
  /**
   * Compute token 0 only (T = 1) when nothing but token 0 will be looked at. This is exact:
   * attention is causal, so token 0 never sees the tokens after it, and its Q, K and V are
   * the same as in the full prompt's run. The capture then has T = 1.
   */
  firstTokenOnly?: boolean;
  /** Staging piece and ring sizes of the weight stream (tests make them tiny). */
  stream?: WeightStreamOptions;
  /** More source options (Hugging Face cache folder, retry policy, fetch), for tests. */
  source?: Partial<OpenSourceOptions>;
}

/** The prompt used when neither a prompt nor token ids are given. */
export const DEFAULT_PROMPT = "The quick brown fox jumps over the lazy dog";

/** The layers `opts` asks for, ascending and distinct, or "all"; checks they are whole numbers ≥ 0. */
function requestedLayers(opts: CaptureOptions): number[] | "all" {
  if ((opts.layer === undefined) === (opts.layers === undefined)) {
    throw new GqaError(
      "bad-input",
      'captureLayer needs exactly one of `layer` (one layer) and `layers` (a list or "all").',
    );
  }
  if (opts.layers === "all") return "all";
  const list = opts.layers ?? [opts.layer!];
  for (const l of list) {
    if (!Number.isInteger(l) || l < 0) {
      throw new GqaError("bad-input", `--layer must be a whole number ≥ 0, got ${l}.`);
    }
  }
  if (list.length === 0) {
    throw new GqaError("bad-input", "`layers` is empty; give at least one layer to capture.");
  }
  return [...new Set(list)].sort((a, b) => a - b);
}

async function tokenize(
  src: ByteSource,
  opts: CaptureOptions,
): Promise<{ ids: number[]; texts: (id: number) => string }> {
  let tokenizer: Awaited<ReturnType<typeof loadTokenizer>> | undefined;
  if (await src.exists("tokenizer.json")) {
    tokenizer = await loadTokenizer(await src.readText("tokenizer.json"));
  } else if (!opts.tokenIds) {
    throw new GqaError(
      "not-found",
      `${src.name} has no tokenizer.json, so the prompt cannot be tokenized. Pass the ` +
        `token ids yourself with --token-ids (e.g. --token-ids 128000,791,4062).`,
    );
  }
  const ids = opts.tokenIds ?? tokenizer!.encode(opts.prompt ?? DEFAULT_PROMPT);
  if (ids.length === 0) {
    throw new GqaError("bad-input", "The prompt has no tokens; give a non-empty --prompt.");
  }
  const texts = (id: number) => tokenizer ? tokenizer.tokenText(id) : `#${id}`;
  return { ids, texts };
}

/**
 * Captures Q, K (pre- and post-RoPE) and V of `opts.layer` for a prompt, reading only the
 * bytes that layer needs.
 */
export async function captureLayer(
  opts: CaptureOptions,
): Promise<Capture & { report: CaptureReport }> {
  const model = opts.model ?? DEFAULT_MODEL;
  const wanted = requestedLayers(opts);
  const src = await openSource({
    model,
    revision: opts.revision,
    token: opts.hfToken,
    endpoint: opts.endpoint,
    offline: opts.offline,
    cacheDir: opts.cacheDir,
    progress: opts.progress ?? true,
    ...opts.source,
  });

  // 1. Config, then the tensor table from the safetensors headers (read by range).
  const config = parseConfigText(await src.readText("config.json"), {
    where: `${src.name}/config.json`,
  });
  const layers = wanted === "all" ? [...Array(config.layers).keys()] : wanted;
  const layer = layers[layers.length - 1]; // the deepest: the pass stops there
  if (layer >= config.layers) {
    throw new GqaError(
      "bad-input",
      `--layer ${layer} is out of range: ${src.name} has ${config.layers} layers, ` +
        `so the valid range is 0 to ${config.layers - 1}.`,
    );
  }
  const tensors = await loadTensorIndex(src);
  checkShapes(config, tensors, layer);

  // 2. Tokens, then the plan: exactly the byte ranges this layer needs.
  const tokenized = await tokenize(src, opts);
  const ids = opts.firstTokenOnly ? tokenized.ids.slice(0, 1) : tokenized.ids;
  const texts = tokenized.texts;
  // A range A..B reads exactly what B alone reads: layers below B are computed anyway.
  const plan = planCapture({ config, tensors, layer, tokenIds: ids });
  opts.log?.(plan.describe(src.name));
  src.expectBytes?.(plan.bytes);

  // 3. The forward pass on the GPU.
  const gpu = opts.gpu ?? await requestGpu();
  if (!gpu) throw new GqaError("no-adapter", NO_ADAPTER_HELP);
  const deviceBefore = gpu.bytesAllocated;
  const out = await runForward({
    gpu,
    src,
    config,
    tensors,
    plan,
    tokenIds: ids,
    captureLayers: layers,
    checkFinite: opts.checkFinite,
    stream: opts.stream,
  }).finally(() => {
    src.close?.();
    if (!opts.gpu) gpu.destroy(); // a device we made is ours to release
  });

  return {
    model,
    revision: src.revision,
    layer,
    tokenIds: ids,
    tokenTexts: ids.map(texts),
    T: ids.length,
    H: config.H,
    KV: config.KV,
    HD: config.HD,
    q: out.q,
    k: out.k,
    kRope: out.kRope,
    qRope: out.qRope,
    v: out.v,
    attn: out.attn,
    sweep: out.layers,
    report: {
      plan,
      config,
      bytesFetched: src.stats.bytesFetched,
      requests: src.stats.requests,
      layerSeconds: out.layerSeconds,
      adapter: gpu.adapterName,
      deviceBytes: gpu.bytesAllocated - deviceBefore,
    },
  };
}
