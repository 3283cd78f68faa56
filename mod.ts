/**
 * gqa-viz: see how Grouped Query Attention shares keys inside a real Llama-family model.
 *
 * The library streams a checkpoint's safetensors shards (only the bytes a layer needs),
 * runs the forward pass up to that layer with hand-written WebGPU kernels, and returns
 * Q, K (as it leaves `k_proj`, and after RoPE), V and the attention weights of one layer or
 * of many in one pass; `renderGqaGrid` draws the grid (`svgToPng` rasterises it) and
 * `explorerHtml` writes a self-contained page to flip through every captured layer and token.
 *
 * @example
 * ```ts ignore
 * import { captureLayer, renderGqaGrid } from "./mod.ts";
 * const cap = await captureLayer({ model: "meta-llama/Meta-Llama-3-8B", layer: 5 });
 * await Deno.writeTextFile("grid.svg", renderGqaGrid(cap, { token: 0, dims: 20, rope: "pre", show: "k" }));
 * ```
 * @module
 */

// The public API: capture a layer, draw it, save it.
export {
  type Capture,
  captureLayer,
  type CaptureOptions,
  type CaptureReport,
  DEFAULT_MODEL,
  DEFAULT_PROMPT,
  type LayerTensors,
  summaryLine,
} from "./model/capture.ts";
export { type GridOptions, gridSvg, renderGqaGrid } from "./viz/grid_svg.ts";
export { GRID_LAYOUT_FUNCTIONS, type GridLayout, gridProblem, layoutGrid } from "./viz/layout.ts";
export { type ExplorerCapture, explorerHtml } from "./viz/explorer.ts";
export { type PngOptions, svgToPng } from "./viz/png.ts";
export { type GqaSummary, gqaSummary, jsDistance } from "./viz/gqa_summary.ts";
export { captureToSafetensors, checkWritable, writeFileAtomic } from "./model/output.ts";
export { GqaError, type GqaErrorCode } from "./errors.ts";

// The pieces, for the tutorial scripts and for anyone building on them.
export { type ModelConfig, parseConfig } from "./model/config.ts";
export { type ByteSource, openSource } from "./model/source/mod.ts";
export { loadTensorIndex } from "./model/tensors.ts";
export { type Plan, planCapture } from "./model/plan.ts";
export { loadTokenizer, type Tokenizer } from "./model/tokenizer.ts";
export { parseHeader, writeSafetensors } from "./model/safetensors.ts";

// The kernels.
export { type Gpu, requestGpu } from "./kernels/gpu.ts";
export { type GpuMatrix, matmul, matmulRef, uploadMatrix } from "./kernels/matmul.ts";
export { rmsnorm, rmsnormRef } from "./kernels/rmsnorm.ts";
export { rope, ropeInvFreq, ropeRef, ropeTables } from "./kernels/rope.ts";
export { attention, attentionRef } from "./kernels/attention.ts";
export { attentionProbs, attentionProbsRef } from "./kernels/attention_probs.ts";
export { swiglu, swigluRef } from "./kernels/swiglu.ts";
export { add, addRef } from "./kernels/add.ts";
export { decoderLayer, type LayerDims, type LayerWeights } from "./kernels/decoder_layer.ts";
