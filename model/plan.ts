/**
 * The read plan: exactly which byte ranges of which shards capturing Q/K/V at layer L
 * needs, and nothing else.
 *
 * ```
 * embedding   the rows of the prompt's distinct token ids of embed_tokens (vocab, D);
 *             adjacent ids share one read. Row r is bytes
 *             [begin + r·D·b, begin + (r+1)·D·b) with b bytes per element.
 * layers 0..L-1   every weight (norms, q/k/v/o, gate/up/down, q/k/v biases if any)
 * layer L         input_layernorm and q/k/v (+ biases): K as it leaves k_proj needs no more
 * ```
 *
 * Reads come grouped so the forward pass can stream: `plan.embedding` first, then
 * `plan.layers[l]` for l = 0..L (within a layer sorted by file and offset, so a local
 * read is sequential). `plan.reads` is all of them in that order.
 *
 * For Llama-3-8B (BF16) at layer 5 that is 5 × 436 MB of full layers plus 50 MB of layer
 * 5's norm and q/k/v: "reading 2.23 GB of 16.06 GB".
 * @module
 */
import { checkShapes, layerTensorNames, type ModelConfig } from "./config.ts";
import { GqaError } from "../errors.ts";
import { DTYPE_BITS, type TensorInfo } from "./safetensors.ts";

export { layerTensorNames };

/** One byte range to read: [begin, end) of `file`, absolute offsets. */
export interface TensorRead {
  tensor: string;
  file: string;
  begin: number;
  end: number;
}

/**
 * A read of embedding rows firstRow .. firstRow+rows-1. Its `tensor` is
 * "model.embed_tokens.weight#row=<firstRow>" (one row) or "…#row=<first>..<last>".
 */
export interface EmbeddingRead extends TensorRead {
  firstRow: number;
  rows: number;
  /** Bytes per row: D × bytes per element. */
  rowBytes: number;
}

/** What capturing layer `layer` reads. */
export interface Plan {
  layer: number;
  /** Every read, embedding first, then layer by layer. */
  reads: TensorRead[];
  /** Total bytes of `reads`. */
  bytes: number;
  /** Total tensor bytes of the whole checkpoint (every tensor of every shard). */
  modelBytes: number;
  /** The embedding-row reads (sorted by row). */
  embedding: EmbeddingRead[];
  /** layers[l], l = 0..layer: the reads of layer l. */
  layers: TensorRead[][];
  /** e.g. "layer 5 of meta-llama/Meta-Llama-3-8B: reading 2.23 GB of 16.06 GB". */
  describe(model?: string): string;
}

/** Bytes in decimal units with two decimals: "2.19 GB", "14.68 MB", "512 B". */
export function formatBytes(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(2)} kB`;
  return `${n} B`;
}

/**
 * Plans the reads for capturing `layer` of a model with `config` and `tensors` for the
 * prompt `tokenIds`. Validates the tensors with {@linkcode checkShapes} first.
 * @throws GqaError "bad-input" for a layer out of range or a token id outside the
 *   vocabulary, plus whatever checkShapes throws.
 * @example
 * const plan = planCapture({ config, tensors, layer: 5, tokenIds: [128000, 791, 6460] });
 * console.log(plan.describe("meta-llama/Meta-Llama-3-8B"));
 * for (const r of plan.layers[0]) await src.read(r.file, r.begin, r.end);
 */
export function planCapture(a: {
  config: ModelConfig;
  tensors: Map<string, TensorInfo & { file: string }>;
  layer: number;
  tokenIds: number[];
  /** Model name for describe() when it is called without one. */
  model?: string;
}): Plan {
  const { config: cfg, tensors, layer, tokenIds } = a;
  checkShapes(cfg, tensors, layer);
  checkPrompt(cfg, tokenIds);

  // Embedding: distinct ids, sorted, runs of adjacent ids coalesced into one read.
  const emb = tensors.get("model.embed_tokens.weight")!;
  const rowBytes = (cfg.D * DTYPE_BITS.get(emb.dtype)!) / 8;
  const ids = [...new Set(tokenIds)].sort((x, y) => x - y);
  const embedding: EmbeddingRead[] = [];
  for (let i = 0; i < ids.length;) {
    let j = i;
    while (j + 1 < ids.length && ids[j + 1] === ids[j] + 1) j++;
    const firstRow = ids[i], rows = j - i + 1;
    const begin = emb.begin + firstRow * rowBytes;
    embedding.push({
      tensor: `model.embed_tokens.weight#row=${firstRow}${rows > 1 ? `..${ids[j]}` : ""}`,
      file: emb.file,
      begin,
      end: begin + rows * rowBytes,
      firstRow,
      rows,
      rowBytes,
    });
    i = j + 1;
  }

  const layers: TensorRead[][] = [];
  for (let l = 0; l <= layer; l++) {
    const reads = layerTensorNames(cfg, l, l < layer ? "full" : "capture").map((name) => {
      const t = tensors.get(name)!;
      return { tensor: name, file: t.file, begin: t.begin, end: t.end };
    });
    reads.sort((x, y) => (x.file < y.file ? -1 : x.file > y.file ? 1 : x.begin - y.begin));
    layers.push(reads);
  }

  const reads = [...embedding, ...layers.flat()];
  const bytes = reads.reduce((s, r) => s + (r.end - r.begin), 0);
  let modelBytes = 0;
  for (const t of tensors.values()) modelBytes += t.end - t.begin;
  return {
    layer,
    reads,
    bytes,
    modelBytes,
    embedding,
    layers,
    describe(model?: string) {
      return `layer ${layer} of ${model ?? a.model ?? "the model"}: reading ` +
        `${formatBytes(bytes)} of ${formatBytes(modelBytes)}`;
    },
  };
}

/**
 * Refuses a prompt this model cannot run: no tokens, an id outside the vocabulary, or more
 * tokens than a sliding attention window (not implemented). {@linkcode planCapture} calls
 * it; a caller that plans for fewer tokens than the prompt has checks the whole prompt here.
 * @throws GqaError "bad-input" or "unsupported".
 * @example
 * ```ts ignore
 * checkPrompt(config, [128000, 791, 4062]); // returns; [999999] would throw
 * ```
 */
export function checkPrompt(cfg: ModelConfig, tokenIds: number[]): void {
  if (tokenIds.length === 0) {
    throw new GqaError("bad-input", "The prompt has no tokens; give a prompt or --token-ids.");
  }
  for (const id of tokenIds) {
    if (!Number.isSafeInteger(id) || id < 0 || id >= cfg.vocab) {
      throw new GqaError(
        "bad-input",
        `Token id ${id} is outside the model's vocabulary: ids run from 0 to ${cfg.vocab - 1}. ` +
          "Check --token-ids, or that the tokenizer belongs to this model.",
      );
    }
  }
  if (cfg.slidingWindow !== undefined && tokenIds.length > cfg.slidingWindow) {
    throw new GqaError(
      "unsupported",
      `The prompt has ${tokenIds.length} tokens, more than the model's sliding attention ` +
        `window of ${cfg.slidingWindow}, which this tool does not implement; use a shorter ` +
        "prompt.",
    );
  }
}

/**
 * Lays out the embedding rows of the prompt, (T, D) in the stored dtype, from the bytes
 * of `plan.embedding` (chunks[i] holds plan.embedding[i]).
 */
export function gatherEmbeddingRows(
  plan: Plan,
  tokenIds: number[],
  chunks: Uint8Array[],
): Uint8Array {
  if (plan.embedding.length === 0) return new Uint8Array(0);
  const rowBytes = plan.embedding[0].rowBytes;
  const out = new Uint8Array(tokenIds.length * rowBytes); // (T, D)
  tokenIds.forEach((id, t) => {
    const i = plan.embedding.findIndex((r) => id >= r.firstRow && id < r.firstRow + r.rows);
    if (i < 0 || chunks[i].byteLength !== plan.embedding[i].end - plan.embedding[i].begin) {
      throw new Error(`gatherEmbeddingRows: token ${id} has no complete read in the plan`);
    }
    const at = (id - plan.embedding[i].firstRow) * rowBytes;
    out.set(chunks[i].subarray(at, at + rowBytes), t * rowBytes);
  });
  return out;
}
