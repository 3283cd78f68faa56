/**
 * `deno task viz --layer 5`: capture K at a layer of a Llama-family model and draw the GQA
 * grid as an SVG. Run with `--help` for the options.
 *
 * The pipeline, step by step (each step is a module you can read):
 *   1. model/source/       open the model: local folder, Hugging Face cache, or the Hub
 *   2. model/config.ts     config.json → shapes (D, H, KV, HD, I) and RoPE settings
 *   3. model/tensors.ts    safetensors headers, read by range → where every tensor lives
 *   4. model/plan.ts       the exact byte ranges layer L needs
 *   5. model/forward.ts    layers 0..L-1 on the GPU, then layer L up to q/k/v + RoPE
 *   6. viz/grid_svg.ts     one row per KV head, one column per query head sharing it
 *      viz/png.ts          the same grid as PNG; viz/explorer.ts every captured layer as HTML
 * @module
 */
import { type Gpu, NO_ADAPTER_HELP, requestGpu } from "../kernels/gpu.ts";
import { chooseKernels } from "../kernels/choose.ts";
import { defaultRangeCacheDir } from "../model/source/mod.ts";
import { basename } from "node:path";
import { captureLayer, DEFAULT_MODEL, DEFAULT_PROMPT } from "../model/capture.ts";
import { GqaError } from "../errors.ts";
import { captureToSafetensors, checkWritable, writeFileAtomic } from "../model/output.ts";
import { renderGqaGrid } from "../viz/grid_svg.ts";
import { explorerHtml } from "../viz/explorer.ts";
import { svgToPng } from "../viz/png.ts";
import {
  bad,
  type CliIo,
  cliMain,
  type LayerSpec,
  parseCli,
  parseDimsArg,
  parseIntArg,
  parseLayerSpec,
  parseTokenIds,
} from "./_args.ts";
import type { ModelConfig } from "../model/config.ts";

const HELP = `Draw how Grouped Query Attention shares keys, from a real model's layer.

Usage: deno task viz --layer N|A-B|all [options]

Options:
  --layer N|A-B|all      layer(s) to capture, 0-based (required): one layer N, the layers A to
                         B, or every layer; one forward pass runs to the deepest and captures
                         each on the way (a range reads no more bytes than its last layer)
  --model ID|DIR         Hub repo id or local folder (default ${DEFAULT_MODEL})
  --revision REV         branch, tag or commit on the Hub (default main)
  --prompt TEXT          text to run (default "${DEFAULT_PROMPT}")
  --token-ids A,B,...    token ids to use instead of a prompt (tokenizer.json is then not
                         read; tokens are labelled by id)
  --token N|all          token position to draw (default 0, the first token), or all
  --dims N|A-B           head dimensions per cell: the first N (default 20), or dims A to B
  --rope pre|post        K as it leaves k_proj (pre, default) or after RoPE (post)
  --show k|qk            draw K only, or K beside each query head's own Q
  --out FILE.svg|.png|.html
                         what to write, by extension (default
                         {model-name}_layer_{L}_gqa_keys.svg):
                           .svg   the grid as SVG (also any other name)
                           .png   the same grid rasterised at 2× (bundled DejaVu Sans font)
                           .html  the explorer: one self-contained page with every captured
                                  layer and token, the attention weights and a per-layer GQA
                                  summary; open it in any browser, no network needed
                         With several layers, .svg and .png draw the deepest one.
  --save-tensors FILE    also write, for every captured layer, Q, K, K-after-RoPE, V and the
                         attention weights as F32 safetensors
  --quiet                no progress bar or status lines
  -h, --help             show this help

Bad arguments (including a --token past the prompt, a layer past the model's last, and an
--out or --save-tensors that cannot be written) are refused before any weight is
downloaded, with exit code 2.

Environment: the token as huggingface_hub finds it (HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
HF_TOKEN_PATH, else the file \`hf auth login\` saved in $HF_HOME/token), HF_ENDPOINT,
HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1), GQA_VIZ_CACHE.

Examples:
  deno task viz --layer 5
  deno task viz --model ./testdata/generated/tiny-llama --layer 2 --show qk --token all
  deno task viz --model ./testdata/generated/tiny-llama --layer all --out explorer.html
`;

/** Where the CLI writes: replaceable in tests. */
export interface Io extends CliIo {
  /** Where the GPU comes from (default: the first adapter found). */
  gpu?: () => Promise<Gpu | null>;
}

const defaultIo: Io = {
  out: (l) => console.log(l),
  err: (l) => console.error(l),
};

/**
 * The default SVG name: `{model-name}_layer_{L}_gqa_keys.svg`, like the notebook's PNG;
 * `…_layers_{A}-{B}_…` for a range and `…_layers_all_…` for every layer.
 */
export function defaultOutName(model: string, layer: LayerSpec | number): string {
  const name = basename(model.replace(/[\\/]+$/, "")) || "model";
  const which = typeof layer === "number"
    ? `layer_${layer}`
    : layer === "all"
    ? "layers_all"
    : layer.length === 1
    ? `layer_${layer[0]}`
    : `layers_${layer[0]}-${layer[layer.length - 1]}`;
  return `${name.replace(/[^A-Za-z0-9._-]/g, "_")}_${which}_gqa_keys.svg`;
}

/** The output kind from the file's extension: .png, .html/.htm, else SVG (as before). */
function outKind(out: string): "svg" | "png" | "html" {
  const ext = /\.([^./\\]+)$/.exec(out)?.[1]?.toLowerCase();
  if (ext === "png") return "png";
  return ext === "html" || ext === "htm" ? "html" : "svg";
}

/** Runs the CLI with `args`; returns the exit code. Errors are printed as one paragraph. */
export function main(args: string[], io: Io = defaultIo): Promise<number> {
  return cliMain(() => run(args, io), io);
}

const OPTIONS = {
  layer: { type: "string" },
  model: { type: "string" },
  revision: { type: "string" },
  prompt: { type: "string" },
  "token-ids": { type: "string" },
  token: { type: "string" },
  dims: { type: "string" },
  rope: { type: "string" },
  show: { type: "string" },
  out: { type: "string" },
  "save-tensors": { type: "string" },
  quiet: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/** The run's options, every one checked: nothing here needs the model. */
interface VizArgs {
  layers: LayerSpec;
  model: string;
  revision?: string;
  prompt?: string;
  tokenIds?: number[];
  token: number | "all";
  /** The first head dimension drawn (`--dims A-B` → A). */
  dimStart: number;
  dims: number;
  rope: "pre" | "post";
  show: "k" | "qk";
  out: string;
  kind: "svg" | "png" | "html";
  saveTensors?: string;
  quiet: boolean;
}

/** Step 1 of a run: every argument checked on its own, and the output paths tried. */
async function parseVizArgs(
  o: ReturnType<typeof parseCli<typeof OPTIONS>>["values"],
): Promise<VizArgs> {
  if (o.layer === undefined) bad("--layer is required (e.g. --layer 5).");
  const layers = parseLayerSpec(o.layer);
  const { dimStart, dims } = o.dims === undefined
    ? { dimStart: 0, dims: 20 }
    : parseDimsArg(o.dims);
  const token = o.token === undefined || o.token === "all"
    ? (o.token ?? 0) as number | "all"
    : parseIntArg("token", o.token, 0);
  const rope = o.rope ?? "pre";
  if (rope !== "pre" && rope !== "post") bad(`--rope must be "pre" or "post", got "${rope}".`);
  const show = o.show ?? "k";
  if (show !== "k" && show !== "qk") bad(`--show must be "k" or "qk", got "${show}".`);
  const tokenIds = o["token-ids"] === undefined ? undefined : parseTokenIds(o["token-ids"]);
  if (tokenIds && o.prompt !== undefined) bad("Give either --prompt or --token-ids, not both.");
  const model = o.model ?? DEFAULT_MODEL;
  const out = o.out ?? defaultOutName(model, layers);
  await checkWritable(out, "--out");
  const saveTensors = o["save-tensors"];
  if (saveTensors !== undefined) await checkWritable(saveTensors, "--save-tensors");
  if (saveTensors !== undefined && saveTensors === out) {
    bad(`--out and --save-tensors both name ${out}; give them different paths.`);
  }
  return {
    layers,
    model,
    revision: o.revision,
    prompt: o.prompt,
    tokenIds,
    token,
    dimStart,
    dims,
    rope,
    show,
    out,
    kind: outKind(out),
    saveTensors,
    quiet: o.quiet ?? false,
  };
}

/** Step 2: the checks that need the config and the tokens, run before any weight is read. */
function checkAgainstModel(a: VizArgs, tokenIds: number[], config: ModelConfig): void {
  if (a.dimStart >= config.HD) {
    bad(
      `--dims ${a.dimStart}-${a.dimStart + a.dims - 1} starts past the head: HD = ${config.HD}, ` +
        `so the dims are 0 to ${config.HD - 1}.`,
    );
  }
  const T = tokenIds.length;
  if (a.token !== "all" && a.token >= T) {
    bad(`--token ${a.token} is out of range: the prompt has ${T} tokens (0 to ${T - 1}).`);
  }
}

async function run(args: string[], io: Io): Promise<number> {
  const { values } = parseCli(args, OPTIONS);
  if (values.help) {
    io.out(HELP);
    return 0;
  }
  const a = await parseVizArgs(values);
  const log = a.quiet ? undefined : (l: string) => io.err(l);

  // The adapter first, so a machine without one fails before anything is downloaded.
  const gpu = await (io.gpu ?? requestGpu)();
  if (!gpu) throw new GqaError("no-adapter", NO_ADAPTER_HELP);
  // A device made here gets its kernel family by measurement (cached per adapter; instant on
  // Mesa's fallback adapters, which keep the cpu family).
  if (!io.gpu) await chooseKernels(gpu, { cacheDir: defaultRangeCacheDir() });
  const cap = await captureLayer({
    gpu,
    model: a.model,
    revision: a.revision,
    layers: a.layers,
    prompt: a.prompt,
    tokenIds: a.tokenIds,
    progress: !a.quiet,
    log,
    validate: ({ tokenIds, config }) => checkAgainstModel(a, tokenIds, config),
    // Only token 0 is drawn (a grid, not the explorer) and nothing else is saved: run T = 1
    // (exact: attention is causal, so token 0 never sees the tokens after it).
    firstTokenOnly: a.token === 0 && a.kind !== "html" && !a.saveTensors,
  }).finally(() => {
    // Release the device before exit: Mesa's drivers have crashed when left to teardown.
    if (!io.gpu) gpu.destroy();
  });

  // 5. The picture: the deepest layer's grid (SVG, PNG) or every layer (the explorer).
  const grid = {
    token: a.token,
    dimStart: a.dimStart,
    dims: a.dims,
    rope: a.rope,
    show: a.show,
  } as const;
  if (a.kind === "html") {
    await writeFileAtomic(a.out, explorerHtml(cap, grid), "explorer page");
  } else {
    const svg = renderGqaGrid(cap, { ...grid, hover: a.kind === "svg" });
    const bytes = a.kind === "svg" ? svg : await svgToPng(svg);
    await writeFileAtomic(a.out, bytes, a.kind.toUpperCase());
  }
  if (a.saveTensors) {
    await writeFileAtomic(a.saveTensors, captureToSafetensors(cap), "tensor file");
  }
  io.out(`wrote ${a.out}`);
  if (a.saveTensors) io.out(`wrote ${a.saveTensors}`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
