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
import { type Gpu, type KernelFamily, NO_ADAPTER_HELP, requestGpu } from "../kernels/gpu.ts";
import { chooseKernels } from "../kernels/choose.ts";
import { checkShapes, type ModelConfig, parseConfigText } from "./config.ts";
import { GqaError } from "../errors.ts";
import { type LayerTensors, runForward } from "./forward.ts";
import type { WeightStreamOptions } from "./weight_stream.ts";
import { checkPrompt, type Plan, planCapture } from "./plan.ts";
import {
  type ByteSource,
  defaultRangeCacheDir,
  formatBytes,
  openSource,
  type OpenSourceOptions,
} from "./source/mod.ts";
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
  /** Of those, the bytes that came over the network. */
  bytesDownloaded?: number;
  /** Bytes served by this tool's range cache. */
  bytesFromCache?: number;
  /** Seconds from opening the model to the captured tensors read back. */
  totalSeconds: number;
  requests: number;
  layerSeconds: number[];
  adapter: string;
  /** The kernel family the capture ran with (kernels/choose.ts). */
  kernels: KernelFamily;
  /** Device memory this capture allocated: one layer of weights plus activations. */
  deviceBytes: number;
  /** Tokens in the prompt (more than T when only token 0 was computed: `firstTokenOnly`). */
  promptTokens: number;
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
  /** Token ids to use as they are; tokenizer.json is then not read (tokens are labelled `#id`). */
  tokenIds?: number[];
  /** Hub token (default: found as `huggingface_hub` finds it: HF_TOKEN, …, the `hf auth login` file). Never printed or stored. */
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
  /** Receives one-line status messages (the token's source, the plan, the closing summary); default none. */
  log?: (line: string) => void;
  /**
   * Checks the run's own options once the config, the tokens and the layers are known,
   * before the first weight byte is read (throw a "bad-input" GqaError to refuse them):
   * e.g. a token position against the prompt's length.
   */
  validate?: (a: { config: ModelConfig; tokenIds: number[]; layers: number[] }) => void;
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

/**
 * The prompt's token ids and their texts. With `tokenIds` nothing is read (a weights-only
 * checkpoint or cache works, offline too); otherwise tokenizer.json is loaded.
 */
async function tokenize(
  src: ByteSource,
  opts: CaptureOptions,
): Promise<{ ids: number[]; texts: (id: number) => string }> {
  if (opts.tokenIds) {
    if (opts.tokenIds.length === 0) {
      throw new GqaError("bad-input", "--token-ids is empty; give at least one token id.");
    }
    return { ids: opts.tokenIds, texts: (id) => `#${id}` };
  }
  if (!(await src.exists("tokenizer.json"))) {
    throw new GqaError(
      "not-found",
      `${src.name} has no tokenizer.json, so the prompt cannot be tokenized. Pass the ` +
        `token ids yourself with --token-ids (e.g. --token-ids 128000,791,4062).`,
    );
  }
  const tokenizer = await loadTokenizer(await src.readText("tokenizer.json"));
  const ids = tokenizer.encode(opts.prompt ?? DEFAULT_PROMPT);
  if (ids.length === 0) {
    throw new GqaError("bad-input", "The prompt has no tokens; give a non-empty --prompt.");
  }
  return { ids, texts: (id) => tokenizer.tokenText(id) };
}

/**
 * The closing line of a run: bytes (downloaded, or read from disk), total time and time
 * per layer.
 * @example
 * ```ts
 * summaryLine(cap); // "layer 5 of meta-llama/Meta-Llama-3-8B: 10 tokens; downloaded 2.23 GB in 41 requests; 24.1 s in all, 3.81 s per layer (6 layers) on llvmpipe"
 * ```
 */
export function summaryLine(
  c: {
    model: string;
    layer: number;
    T: number;
    sweep?: { layer: number }[];
    report: CaptureReport;
  },
): string {
  const r = c.report;
  const net = r.bytesDownloaded ?? 0, disk = r.bytesFetched - net + (r.bytesFromCache ?? 0);
  const moved = [
    ...(net > 0 ? [`downloaded ${formatBytes(net)}`] : []),
    ...(disk > 0 || net === 0 ? [`read ${formatBytes(disk)} from disk`] : []),
  ].join(", ");
  const n = r.layerSeconds.length;
  const perLayer = n ? r.layerSeconds.reduce((a, b) => a + b, 0) / n : 0;
  const which = describeLayers(c.sweep?.map((l) => l.layer) ?? [c.layer]);
  const n0 = r.promptTokens ?? c.T;
  const tokens = c.T < n0
    ? `token 0 alone of ${n0} tokens` // firstTokenOnly: the rest cannot change token 0
    : `${c.T} token${c.T === 1 ? "" : "s"}`;
  return `${which} of ${c.model}: ${tokens}; ${moved} in ${r.requests} requests; ` +
    `${r.totalSeconds.toFixed(1)} s in all, ${perLayer.toFixed(2)} s per layer (${n} layers) ` +
    `on ${r.adapter} (${r.kernels} kernels)`;
}

/** "layer 5" or "layers 2-5" (a contiguous run) or "layers 0, 3, 5". */
function describeLayers(ls: number[]): string {
  if (ls.length === 1) return `layer ${ls[0]}`;
  const run = ls.every((l, i) => i === 0 || l === ls[i - 1] + 1);
  return run ? `layers ${ls[0]}-${ls[ls.length - 1]}` : `layers ${ls.join(", ")}`;
}

/**
 * Captures Q, K (pre- and post-RoPE) and V of `opts.layer` (or of every layer in
 * `opts.layers`) for a prompt, reading only the bytes the deepest needs. Everything that
 * can be refused (the layers' range, the token ids, the caller's `validate`) is refused
 * before the first weight byte is read.
 */
export async function captureLayer(
  opts: CaptureOptions,
): Promise<Capture & { report: CaptureReport }> {
  const t0 = performance.now();
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
    log: opts.log,
    ...opts.source,
  });
  // Every status line starts on a line of its own: the bar is erased first.
  const log = opts.log && ((line: string) => {
    src.close?.();
    opts.log!(line);
  });
  try {
    const prepared = await prepare(src, opts, wanted, log);
    const out = await compute(src, opts, prepared);
    const totalSeconds = (performance.now() - t0) / 1000;
    const cap = { model, ...out, report: { ...out.report, totalSeconds } };
    log?.(summaryLine(cap));
    return cap;
  } finally {
    src.close?.();
  }
}

/** What {@linkcode prepare} hands to {@linkcode compute}: nothing of it is a weight byte. */
interface Prepared {
  config: ModelConfig;
  tensors: Awaited<ReturnType<typeof loadTensorIndex>>;
  ids: number[];
  /** Tokens in the prompt (ids may hold token 0 alone). */
  promptTokens: number;
  texts: (id: number) => string;
  /** The layers to capture, ascending; the last is the deepest, where the pass stops. */
  layers: number[];
  plan: Plan;
}

/** Steps 1 and 2: config, tensor table, tokens, the caller's checks, the plan. No weight is read. */
async function prepare(
  src: ByteSource,
  opts: CaptureOptions,
  wanted: number[] | "all",
  log?: (line: string) => void,
): Promise<Prepared> {
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

  // 2. Tokens, the caller's checks, then the plan: exactly the byte ranges this layer needs.
  const tokenized = await tokenize(src, opts);
  opts.validate?.({ config, tokenIds: tokenized.ids, layers });
  // Token 0 alone when nothing else will be looked at (exact: attention is causal); every
  // id of the prompt is still checked against the vocabulary (planning reads nothing).
  const ids = opts.firstTokenOnly ? tokenized.ids.slice(0, 1) : tokenized.ids;
  const texts = tokenized.texts;
  if (ids !== tokenized.ids) checkPrompt(config, tokenized.ids);
  // A range A..B reads exactly what B alone reads: layers below B are computed anyway.
  const plan = planCapture({ config, tensors, layer, tokenIds: ids });
  log?.(plan.describe(src.name));
  src.expectBytes?.(plan.bytes);
  return { config, tensors, ids, promptTokens: tokenized.ids.length, texts, layers, plan };
}

/** Step 3: the forward pass on the GPU, streaming the plan's weights. */
async function compute(
  src: ByteSource,
  opts: CaptureOptions,
  p: Prepared,
): Promise<Omit<Capture, "model"> & { report: Omit<CaptureReport, "totalSeconds"> }> {
  const { config, ids, plan, layers } = p;
  const layer = layers[layers.length - 1];
  const gpu = opts.gpu ?? await requestGpu();
  if (!gpu) throw new GqaError("no-adapter", NO_ADAPTER_HELP);
  // A device made here gets its kernel family by measurement (cached per adapter).
  if (!opts.gpu) await chooseKernels(gpu, { cacheDir: opts.cacheDir ?? defaultRangeCacheDir() });
  const deviceBefore = gpu.bytesAllocated;
  const out = await runForward({
    gpu,
    src,
    config,
    tensors: p.tensors,
    plan,
    tokenIds: ids,
    captureLayers: layers,
    checkFinite: opts.checkFinite,
    stream: opts.stream,
    onLayer: (l) => src.status?.(`layer ${l}/${layer}`),
  }).finally(() => {
    src.close?.();
    if (!opts.gpu) gpu.destroy(); // a device we made is ours to release
  });

  return {
    revision: src.revision,
    layer,
    tokenIds: ids,
    tokenTexts: ids.map(p.texts),
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
      bytesDownloaded: src.stats.bytesDownloaded ?? 0,
      bytesFromCache: src.stats.bytesFromCache ?? 0,
      requests: src.stats.requests,
      layerSeconds: out.layerSeconds,
      adapter: gpu.adapterName,
      kernels: gpu.kernels,
      deviceBytes: gpu.bytesAllocated - deviceBefore,
      promptTokens: p.promptTokens,
    },
  };
}
