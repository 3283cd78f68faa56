/**
 * config.json → {@linkcode ModelConfig}, and the check that a checkpoint's tensors have the
 * shapes that config implies — both before a single weight byte is read.
 *
 * Field mapping (Hugging Face name → ours, default when absent):
 *
 * | config.json             | ModelConfig   | default                           |
 * |-------------------------|---------------|-----------------------------------|
 * | hidden_size             | D             | required                          |
 * | num_attention_heads     | H             | required                          |
 * | num_key_value_heads     | KV            | H (plain multi-head attention)    |
 * | head_dim                | HD            | floor(D / H), as transformers does |
 * | intermediate_size       | I             | required                          |
 * | num_hidden_layers       | layers        | required                          |
 * | vocab_size              | vocab         | required                          |
 * | rms_norm_eps            | eps           | 1e-6                              |
 * | rope_theta              | rope.theta    | 10000                             |
 * | rope_scaling            | rope.scaling  | none; type "llama3" or "default"  |
 * | attention_bias          | attentionBias | false (Qwen2: always true)        |
 * | tie_word_embeddings     | tieWordEmb…   | false                             |
 * | bos_token_id            | bosTokenId    | none                              |
 *
 * transformers ≥ 5 writes `rope_parameters: {rope_type, rope_theta, factor, …}` instead of
 * `rope_theta` + `rope_scaling`; both spellings are read.
 *
 * Tensor shapes a layer implies (PyTorch `nn.Linear` stores W as (out, in)):
 *   embed_tokens (vocab, D)   q_proj (H·HD, D)   k_proj, v_proj (KV·HD, D)
 *   o_proj (D, H·HD)          gate_proj, up_proj (I, D)   down_proj (D, I)
 *   input_layernorm, post_attention_layernorm (D)   q/k/v biases (H·HD), (KV·HD), (KV·HD)
 * @module
 */
import type { RopeConfig } from "../kernels/rope.ts";
import { GqaError } from "../errors.ts";
import { jsonErrorReason, preview, quote, type TensorInfo } from "./safetensors.ts";

/** What the forward pass needs to know about a model. */
export interface ModelConfig {
  architecture: string;
  D: number;
  H: number;
  KV: number;
  HD: number;
  I: number;
  layers: number;
  vocab: number;
  eps: number;
  rope: RopeConfig;
  /** q_proj, k_proj and v_proj have biases (Qwen2); o_proj never does. */
  attentionBias: boolean;
  tieWordEmbeddings: boolean;
  bosTokenId?: number;
  /**
   * Mistral's (or Qwen2's, when enabled) sliding attention window in tokens. The kernels
   * attend to the whole causal prefix, which is the same thing while T ≤ slidingWindow;
   * `planCapture` refuses longer prompts.
   */
  slidingWindow?: number;
}

/** The architectures the forward pass implements, with the models they cover. */
export const SUPPORTED_ARCHITECTURES: Readonly<Record<string, string>> = {
  LlamaForCausalLM: "Llama 2, 3, 3.1, 3.2",
  MistralForCausalLM: "Mistral",
  Qwen2ForCausalLM: "Qwen2, Qwen2.5",
};

const MODEL_TYPES: Readonly<Record<string, string>> = {
  llama: "LlamaForCausalLM",
  mistral: "MistralForCausalLM",
  qwen2: "Qwen2ForCausalLM",
};

/** The weight dtypes the kernels read. */
export const KERNEL_DTYPES: readonly string[] = ["F32", "F16", "BF16"];

function supportedList(): string {
  return Object.entries(SUPPORTED_ARCHITECTURES).map(([a, m]) => `${a} (${m})`).join(", ");
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function own(o: Record<string, unknown>, k: string): unknown {
  return Object.hasOwn(o, k) ? o[k] : undefined;
}

/**
 * Parses the text of config.json (JSON errors become a "bad-config" GqaError).
 * @example
 * const cfg = parseConfigText(await src.readText("config.json"), { where: "x/config.json" });
 */
export function parseConfigText(text: string, a: { where: string }): ModelConfig {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    const why = jsonErrorReason(e);
    throw new GqaError(
      "bad-config",
      `${a.where} is not valid JSON (${why}). Download the model's config.json again.`,
    );
  }
  return parseConfig(json, a);
}

/**
 * Validates a parsed config.json of a supported architecture and maps it to
 * {@linkcode ModelConfig}. Every problem is a GqaError ("bad-config" or "unsupported")
 * naming `where` and the field. The steps, in the order their errors are reported:
 *
 *   architecture   architectures[0], else model_type → a supported class
 *   shape          D, H, I, layers, vocab, KV, HD (KV | H, HD even)
 *   eps, rope      rms_norm_eps; rope_theta + rope_scaling (or rope_parameters), llama3 scaling
 *   features       what the architecture switches on: hidden_act, mlp_bias, attention_bias,
 *                  sliding_window
 *
 * @example
 * const cfg = parseConfig(JSON.parse(text), { where: "meta-llama/Meta-Llama-3-8B/config.json" });
 * cfg.H / cfg.KV; // 4 query heads share each KV head
 */
export function parseConfig(json: unknown, a: { where: string }): ModelConfig {
  const r = configReader(json, a.where);
  const architecture = readArchitecture(r);
  const shape = readShape(r);
  const eps = r.positive(own(r.c, "rms_norm_eps"), "rms_norm_eps", 1e-6);
  const rope = readRope(r);
  const features = readFeatures(r, architecture);
  const bos = own(r.c, "bos_token_id");
  const cfg: ModelConfig = {
    architecture,
    ...shape,
    eps,
    rope,
    attentionBias: features.attentionBias,
    tieWordEmbeddings: r.bool("tie_word_embeddings", false),
  };
  if (typeof bos === "number" && Number.isSafeInteger(bos) && bos >= 0 && bos < shape.vocab) {
    cfg.bosTokenId = bos;
  }
  if (features.slidingWindow !== undefined) cfg.slidingWindow = features.slidingWindow;
  return cfg;
}

/** A config.json object with the error makers and typed field readers of one file. */
interface ConfigReader {
  c: Record<string, unknown>;
  /** A "bad-config" error: what is wrong, and how to fix it. */
  fail(what: string, fix?: string): GqaError;
  /** An "unsupported" error: what this tool does not implement. */
  unsupported(what: string): GqaError;
  /** A positive integer field; `dflt` when absent (else required). */
  int(name: string, dflt?: number): number;
  /** A positive finite number `v` (the field `name`); `dflt` when absent. */
  positive(v: unknown, name: string, dflt: number): number;
  /** A boolean field; `dflt` when absent. */
  bool(name: string, dflt: boolean): boolean;
}

/** Checks that `json` is an object and returns its reader (errors name `where`). */
function configReader(json: unknown, where: string): ConfigReader {
  const fail = (what: string, fix = "Check config.json against the model card.") =>
    new GqaError("bad-config", `${where}: ${what}. ${fix}`);
  const unsupported = (what: string) =>
    new GqaError(
      "unsupported",
      `${where}: ${what}. This tool cannot run this model; choose a model it supports, such ` +
        "as meta-llama/Meta-Llama-3-8B.",
    );
  if (!isObject(json)) throw fail(`the config is ${preview(json)}, not a JSON object`);
  const c = json;
  const int = (name: string, dflt?: number): number => {
    const v = own(c, name);
    if (v === undefined || v === null) {
      if (dflt !== undefined) return dflt;
      throw fail(`the required field "${name}" is missing`);
    }
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) {
      throw fail(`"${name}" is ${preview(v)}; it must be a positive integer`);
    }
    return v;
  };
  const positive = (v: unknown, name: string, dflt: number): number => {
    if (v === undefined || v === null) return dflt;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      throw fail(`"${name}" is ${preview(v)}; it must be a positive number`);
    }
    return v;
  };
  const bool = (name: string, dflt: boolean): boolean => {
    const v = own(c, name);
    if (v === undefined || v === null) return dflt;
    if (typeof v !== "boolean") throw fail(`"${name}" is ${preview(v)}; it must be true or false`);
    return v;
  };
  return { c, fail, unsupported, int, positive, bool };
}

/** The model class: architectures[0], else the class of a known model_type; must be supported. */
function readArchitecture(r: ConfigReader): string {
  let architecture: string;
  const archs = own(r.c, "architectures");
  const modelType = own(r.c, "model_type");
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || archs.length === 0 || typeof archs[0] !== "string") {
      throw r.fail(`"architectures" is ${preview(archs)}; it must be a list of class names`);
    }
    architecture = archs[0];
  } else if (typeof modelType === "string" && Object.hasOwn(MODEL_TYPES, modelType)) {
    architecture = MODEL_TYPES[modelType];
  } else {
    throw r.fail(
      `neither "architectures" nor a known "model_type" says which model this is ` +
        `(model_type is ${preview(modelType)})`,
    );
  }
  if (!Object.hasOwn(SUPPORTED_ARCHITECTURES, architecture)) {
    throw r.unsupported(
      `the architecture ${quote(architecture)} is not supported; this tool runs ` +
        `${supportedList()}`,
    );
  }
  return architecture;
}

/** The sizes: D, H, KV (H a multiple of KV), HD (even; default ⌊D / H⌋), I, layers, vocab. */
function readShape(r: ConfigReader) {
  const D = r.int("hidden_size");
  const H = r.int("num_attention_heads");
  const I = r.int("intermediate_size");
  const layers = r.int("num_hidden_layers");
  const vocab = r.int("vocab_size");
  const KV = r.int("num_key_value_heads", H);
  if (H % KV !== 0) {
    throw r.fail(
      `num_attention_heads (${H}) is not a multiple of num_key_value_heads (${KV}); grouped ` +
        "query attention needs every KV head to serve the same number of query heads",
    );
  }
  const defaultHD = Math.floor(D / H);
  if (defaultHD < 1 && (own(r.c, "head_dim") ?? null) === null) {
    throw r.fail(
      `hidden_size (${D}) is smaller than num_attention_heads (${H}) and no head_dim is given`,
    );
  }
  const HD = r.int("head_dim", defaultHD);
  if (HD % 2 !== 0) {
    throw r.fail(
      `the head dimension is ${HD}, an odd number; RoPE rotates pairs, so it must be even`,
    );
  }
  return { D, H, KV, HD, I, layers, vocab };
}

/**
 * RoPE: transformers 5's rope_parameters, else rope_theta + rope_scaling. Scaling types:
 * "default" (none) and "llama3"; anything else is unsupported.
 */
function readRope(r: ConfigReader): RopeConfig {
  const params = own(r.c, "rope_parameters");
  let ropeField = "rope_scaling";
  let scalingRaw: unknown = own(r.c, "rope_scaling");
  let theta = r.positive(own(r.c, "rope_theta"), "rope_theta", 10000);
  if (params !== undefined && params !== null) {
    if (!isObject(params)) throw r.fail(`"rope_parameters" is ${preview(params)}, not an object`);
    ropeField = "rope_parameters";
    scalingRaw = params;
    theta = r.positive(own(params, "rope_theta"), "rope_parameters.rope_theta", theta);
  }
  const rope: RopeConfig = { theta };
  if (scalingRaw === undefined || scalingRaw === null) return rope;
  if (!isObject(scalingRaw)) {
    throw r.fail(`"${ropeField}" is ${preview(scalingRaw)}, not an object`);
  }
  const s = scalingRaw;
  const type = own(s, "rope_type") ?? own(s, "type") ??
    (ropeField === "rope_parameters" ? "default" : undefined);
  if (typeof type !== "string") {
    throw r.fail(`"${ropeField}" has rope_type ${preview(type)}; it must name a RoPE type`);
  }
  if (type === "llama3") rope.scaling = readLlama3Scaling(r, s, ropeField);
  else if (type !== "default") {
    throw r.unsupported(
      `RoPE scaling type ${quote(type)} is not supported; only "llama3" (Llama 3.1 and ` +
        `later) and "default" (no scaling) are implemented`,
    );
  }
  return rope;
}

/** Llama 3.1's rope_scaling: factor, low/high frequency factors (high > low), original length. */
function readLlama3Scaling(
  r: ConfigReader,
  s: Record<string, unknown>,
  ropeField: string,
): NonNullable<RopeConfig["scaling"]> {
  const num = (k: string) => {
    const v = own(s, k);
    if (v === undefined || v === null) {
      throw r.fail(`"${ropeField}" of type "llama3" is missing "${k}"`);
    }
    return r.positive(v, `${ropeField}.${k}`, 0);
  };
  const factor = num("factor");
  const lowFreqFactor = num("low_freq_factor");
  const highFreqFactor = num("high_freq_factor");
  const original = num("original_max_position_embeddings");
  if (!Number.isSafeInteger(original)) {
    throw r.fail(
      `"${ropeField}.original_max_position_embeddings" is ${original}; it must be an integer`,
    );
  }
  if (!(highFreqFactor > lowFreqFactor)) {
    throw r.fail(
      `"${ropeField}" has high_freq_factor ${highFreqFactor} ≤ low_freq_factor ` +
        `${lowFreqFactor}; llama3 scaling interpolates between them, so high must be larger`,
    );
  }
  return {
    type: "llama3",
    factor,
    lowFreqFactor,
    highFreqFactor,
    originalMaxPositionEmbeddings: original,
  };
}

/**
 * What each architecture switches on, and what we refuse: a non-SiLU MLP and MLP biases
 * (any); q/k/v biases (Qwen2 always; Llama's attention_bias also biases o_proj: refused);
 * the sliding window (Mistral, and Qwen2 with use_sliding_window).
 */
function readFeatures(r: ConfigReader, architecture: string) {
  const act = own(r.c, "hidden_act") ?? "silu";
  if (act !== "silu") {
    throw r.unsupported(`"hidden_act" is ${preview(act)}; only "silu" (SwiGLU MLP) is implemented`);
  }
  if (r.bool("mlp_bias", false)) {
    throw r.unsupported(`"mlp_bias" is true; MLP projections with biases are not implemented`);
  }
  let attentionBias = false;
  if (architecture === "Qwen2ForCausalLM") attentionBias = true;
  else if (architecture === "LlamaForCausalLM" && r.bool("attention_bias", false)) {
    throw r.unsupported(
      `"attention_bias" is true for LlamaForCausalLM, which then has a bias on o_proj as well ` +
        "as q/k/v; only q/k/v biases (Qwen2ForCausalLM) are implemented",
    );
  }
  let slidingWindow: number | undefined;
  const sw = own(r.c, "sliding_window");
  const swOn = architecture === "MistralForCausalLM" ||
    (architecture === "Qwen2ForCausalLM" && r.bool("use_sliding_window", false));
  if (swOn && sw !== undefined && sw !== null) {
    if (typeof sw !== "number" || !Number.isSafeInteger(sw) || sw < 1) {
      throw r.fail(`"sliding_window" is ${preview(sw)}; it must be a positive integer or null`);
    }
    slidingWindow = sw;
  }
  return { attentionBias, slidingWindow };
}

/**
 * The HF names of layer l's tensors: "full" is every weight of the layer; "capture" is
 * what the capture at layer l needs (input_layernorm and q/k/v, with biases when the
 * model has them). Order: input_layernorm, q, k, v, (biases), then o_proj,
 * post_attention_layernorm, gate, up, down.
 * @example
 * layerTensorNames(cfg, 5, "capture");
 * // ["model.layers.5.input_layernorm.weight", "model.layers.5.self_attn.q_proj.weight", …]
 */
export function layerTensorNames(cfg: ModelConfig, l: number, part: "full" | "capture"): string[] {
  const p = `model.layers.${l}.`;
  const names = [
    p + "input_layernorm.weight",
    p + "self_attn.q_proj.weight",
    p + "self_attn.k_proj.weight",
    p + "self_attn.v_proj.weight",
  ];
  if (cfg.attentionBias) {
    names.push(
      p + "self_attn.q_proj.bias",
      p + "self_attn.k_proj.bias",
      p + "self_attn.v_proj.bias",
    );
  }
  if (part === "full") {
    names.push(
      p + "self_attn.o_proj.weight",
      p + "post_attention_layernorm.weight",
      p + "mlp.gate_proj.weight",
      p + "mlp.up_proj.weight",
      p + "mlp.down_proj.weight",
    );
  }
  return names;
}

/** Throws GqaError("bad-input") unless 0 ≤ layer < cfg.layers. */
export function checkLayer(cfg: ModelConfig, layer: number): void {
  if (!Number.isSafeInteger(layer) || layer < 0 || layer >= cfg.layers) {
    throw new GqaError(
      "bad-input",
      `Layer ${layer} is out of range: the model has ${cfg.layers} layers, so the valid ` +
        `range is 0 to ${cfg.layers - 1}.`,
    );
  }
}

/** The shape config.json implies for one of a layer's (or the embedding's) tensors. */
export function expectedShape(cfg: ModelConfig, name: string): number[] | undefined {
  const { D, H, KV, HD, I, vocab } = cfg;
  if (name === "model.embed_tokens.weight") return [vocab, D];
  const m = /^model\.layers\.\d+\.(.+)$/.exec(name);
  if (!m) return undefined;
  const shapes: Record<string, number[]> = {
    "input_layernorm.weight": [D],
    "post_attention_layernorm.weight": [D],
    "self_attn.q_proj.weight": [H * HD, D],
    "self_attn.k_proj.weight": [KV * HD, D],
    "self_attn.v_proj.weight": [KV * HD, D],
    "self_attn.o_proj.weight": [D, H * HD],
    "self_attn.q_proj.bias": [H * HD],
    "self_attn.k_proj.bias": [KV * HD],
    "self_attn.v_proj.bias": [KV * HD],
    "mlp.gate_proj.weight": [I, D],
    "mlp.up_proj.weight": [I, D],
    "mlp.down_proj.weight": [D, I],
  };
  return Object.hasOwn(shapes, m[1]) ? shapes[m[1]] : undefined;
}

/** Which config fields a tensor's expected shape comes from, for error messages. */
function formula(name: string): string {
  const part = name.replace(/^model\.layers\.\d+\./, "");
  const f: Record<string, string> = {
    "model.embed_tokens.weight": "(vocab_size, hidden_size)",
    "input_layernorm.weight": "(hidden_size)",
    "post_attention_layernorm.weight": "(hidden_size)",
    "self_attn.q_proj.weight": "(num_attention_heads × head_dim, hidden_size)",
    "self_attn.k_proj.weight": "(num_key_value_heads × head_dim, hidden_size)",
    "self_attn.v_proj.weight": "(num_key_value_heads × head_dim, hidden_size)",
    "self_attn.o_proj.weight": "(hidden_size, num_attention_heads × head_dim)",
    "self_attn.q_proj.bias": "(num_attention_heads × head_dim)",
    "self_attn.k_proj.bias": "(num_key_value_heads × head_dim)",
    "self_attn.v_proj.bias": "(num_key_value_heads × head_dim)",
    "mlp.gate_proj.weight": "(intermediate_size, hidden_size)",
    "mlp.up_proj.weight": "(intermediate_size, hidden_size)",
    "mlp.down_proj.weight": "(hidden_size, intermediate_size)",
  };
  return Object.hasOwn(f, part) ? f[part] : "";
}

/** For a q/k/v/o projection whose shape disagrees, what head_dim the tensor implies. */
function headDimHint(cfg: ModelConfig, name: string, shape: number[]): string {
  const part = name.replace(/^model\.layers\.\d+\./, "");
  const heads = part.startsWith("self_attn.q_proj") || part === "self_attn.o_proj.weight"
    ? cfg.H
    : part.startsWith("self_attn.k_proj") || part.startsWith("self_attn.v_proj")
    ? cfg.KV
    : 0;
  if (!heads) return "";
  const rows = part === "self_attn.o_proj.weight" ? shape[1] : shape[0];
  if (rows === undefined || rows % heads !== 0 || rows / heads === cfg.HD) return "";
  return ` The tensor implies a head dimension of ${rows / heads} (${rows} / ${heads} heads) ` +
    `where the config gives ${cfg.HD}; if head_dim is wrong or missing in config.json, set it.`;
}

/**
 * Verifies, before any tensor bytes are read, that every tensor {@linkcode planCapture}
 * needs for `layer` exists with the shape `cfg` implies and a dtype the kernels read
 * (F32, F16, BF16), and that each layer's tensor has the same dtype as layer 0's (the
 * forward pass reuses one set of device buffers for every layer).
 * @throws GqaError "bad-input" (layer out of range), "bad-file" (missing tensor),
 *   "bad-config" (shape disagrees with config.json), "unsupported" (dtype).
 */
export function checkShapes(
  cfg: ModelConfig,
  tensors: Map<string, TensorInfo & { file: string }>,
  layer: number,
): void {
  checkLayer(cfg, layer);
  const names = ["model.embed_tokens.weight"];
  for (let l = 0; l <= layer; l++) {
    names.push(...layerTensorNames(cfg, l, l < layer ? "full" : "capture"));
  }
  const files = [...new Set([...tensors.values()].map((t) => t.file))];
  const firstDtype = new Map<string, { dtype: string; name: string }>();
  for (const name of names) {
    const t = tensors.get(name);
    if (!t) {
      throw new GqaError(
        "bad-file",
        `The checkpoint has no tensor "${name}", which layer ${layer} needs (searched ` +
          `${files.length ? files.join(", ") : "no files"}). The files may belong to a ` +
          "different architecture or a quantized export, or the download is incomplete; use " +
          "an unquantized safetensors checkpoint of a supported model.",
      );
    }
    if (!KERNEL_DTYPES.includes(t.dtype)) {
      throw new GqaError(
        "unsupported",
        `Tensor "${name}" in ${t.file} is ${t.dtype}; the kernels read only F32, F16 and ` +
          "BF16 weights. Use a checkpoint stored in one of those dtypes (not a quantized one).",
      );
    }
    const role = name.replace(/^model\.layers\.\d+\./, "");
    const first = firstDtype.get(role);
    if (first && first.dtype !== t.dtype) {
      throw new GqaError(
        "unsupported",
        `Tensor "${name}" in ${t.file} is ${t.dtype} but "${first.name}" is ${first.dtype}; ` +
          "every layer must store the same tensor in the same dtype, because the forward " +
          "pass reuses one set of device buffers for all layers.",
      );
    }
    if (!first) firstDtype.set(role, { dtype: t.dtype, name });
    const want = expectedShape(cfg, name)!;
    const got = t.shape;
    if (got.length !== want.length || got.some((d, i) => d !== want[i])) {
      throw new GqaError(
        "bad-config",
        `Tensor "${name}" in ${t.file} has shape [${got.slice(0, 8).join(", ")}${
          got.length > 8 ? ", …" : ""
        }], but the config implies [${want.join(", ")}] ${formula(name)} with ` +
          `hidden_size=${cfg.D}, num_attention_heads=${cfg.H}, num_key_value_heads=${cfg.KV}, ` +
          `head_dim=${cfg.HD}, intermediate_size=${cfg.I}, vocab_size=${cfg.vocab}. ` +
          "config.json and the weights disagree: make sure both come from the same model and " +
          `revision.${headDimHint(cfg, name, got)}`,
      );
    }
  }
}
