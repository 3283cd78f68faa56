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
import { parseArgs } from "node:util";
import { type Gpu, NO_ADAPTER_HELP, requestGpu } from "../kernels/gpu.ts";
import { basename } from "node:path";
import { captureLayer, DEFAULT_MODEL, DEFAULT_PROMPT } from "../model/capture.ts";
import { GqaError } from "../errors.ts";
import { captureToSafetensors, writeFileAtomic } from "../model/output.ts";
import { renderGqaGrid } from "../viz/grid_svg.ts";
import { explorerHtml } from "../viz/explorer.ts";
import { svgToPng } from "../viz/png.ts";

const HELP = `Draw how Grouped Query Attention shares keys, from a real model's layer.

Usage: deno task viz --layer N|A-B|all [options]

Options:
  --layer N|A-B|all      layer(s) to capture, 0-based (required): one layer N, the layers A to
                         B, or every layer; one forward pass runs to the deepest and captures
                         each on the way (a range reads no more bytes than its last layer)
  --model ID|DIR         Hub repo id or local folder (default ${DEFAULT_MODEL})
  --revision REV         branch, tag or commit on the Hub (default main)
  --prompt TEXT          text to run (default "${DEFAULT_PROMPT}")
  --token-ids A,B,...    token ids to use instead of tokenizing a prompt
  --token N|all          token position to draw (default 0, the first token), or all
  --dims N               how many head dimensions to draw per cell (default 20)
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

Environment: HF_TOKEN (gated models), HF_ENDPOINT, HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE=1.

Examples:
  deno task viz --layer 5
  deno task viz --model ./testdata/generated/tiny-llama --layer 2 --show qk --token all
  deno task viz --model ./testdata/generated/tiny-llama --layer all --out explorer.html
`;

/** Where the CLI writes: replaceable in tests. */
export interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
  /** Where the GPU comes from (default: the first adapter found). */
  gpu?: () => Promise<Gpu | null>;
}

const defaultIo: Io = {
  out: (l) => console.log(l),
  err: (l) => console.error(l),
};

function bad(message: string): never {
  throw new GqaError("bad-input", message + " Run with --help to see the options.");
}

function parseIntArg(name: string, v: string, min: number): number {
  const n = Number(v);
  if (!/^\s*\d+\s*$/.test(v) || !Number.isSafeInteger(n) || n < min) {
    bad(`--${name} must be a whole number ≥ ${min}, got "${v}".`);
  }
  return n;
}

function parseTokenIds(v: string): number[] {
  const parts = v.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (parts.length === 0) bad(`--token-ids needs a comma-separated list of ids, got "${v}".`);
  return parts.map((p) => {
    if (!/^\d+$/.test(p)) bad(`--token-ids: "${p}" is not a token id (a whole number ≥ 0).`);
    return Number(p);
  });
}

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

/** What `--layer` asks for: the layers, ascending, or "all". */
export type LayerSpec = number[] | "all";

/**
 * Parses `--layer`: "N", "A-B" (A ≤ B) or "all".
 *
 * @example
 * ```ts
 * parseLayerSpec("5"); // [5]
 * parseLayerSpec("2-4"); // [2, 3, 4]
 * parseLayerSpec("all"); // "all"
 * ```
 */
export function parseLayerSpec(v: string): LayerSpec {
  if (v.trim() === "all") return "all";
  const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(v);
  const a = m ? Number(m[1]) : NaN, b = m?.[2] !== undefined ? Number(m[2]) : a;
  if (!m || !Number.isSafeInteger(a) || !Number.isSafeInteger(b)) {
    bad(`--layer must be a whole number ≥ 0, a range A-B or "all", got "${v}".`);
  }
  if (b < a) bad(`--layer ${v}: the range must run upwards (A ≤ B), e.g. --layer ${b}-${a}.`);
  return Array.from({ length: b - a + 1 }, (_, i) => a + i);
}

/** The output kind from the file's extension: .png, .html/.htm, else SVG (as before). */
function outKind(out: string): "svg" | "png" | "html" {
  const ext = /\.([^./\\]+)$/.exec(out)?.[1]?.toLowerCase();
  if (ext === "png") return "png";
  return ext === "html" || ext === "htm" ? "html" : "svg";
}

/** Runs the CLI with `args`; returns the exit code. Errors are printed as one paragraph. */
export async function main(args: string[], io: Io = defaultIo): Promise<number> {
  try {
    return await run(args, io);
  } catch (e) {
    if (e instanceof GqaError) {
      io.err(`error: ${e.message}`);
      return e.code === "bad-input" ? 2 : 1;
    }
    io.err(
      `internal error: ${(e as Error)?.message ?? e}. This is a bug in gqa-viz; please ` +
        `report it with the command you ran (set GQA_DEBUG=1 to see the stack trace).`,
    );
    if (Deno.env.get("GQA_DEBUG")) io.err(String((e as Error)?.stack));
    return 1;
  }
}

async function run(args: string[], io: Io): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
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
      },
    });
  } catch (e) {
    bad(`${(e as Error).message}.`);
  }
  const o = parsed.values;
  if (o.help) {
    io.out(HELP);
    return 0;
  }
  if (o.layer === undefined) bad("--layer is required (e.g. --layer 5).");
  const layers = parseLayerSpec(o.layer);
  const dims = o.dims === undefined ? 20 : parseIntArg("dims", o.dims, 1);
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
  const kind = outKind(out);
  const quiet = o.quiet ?? false;
  const log = quiet ? undefined : (l: string) => io.err(l);

  // The adapter first, so a machine without one fails before anything is downloaded.
  const gpu = await (io.gpu ?? requestGpu)();
  if (!gpu) throw new GqaError("no-adapter", NO_ADAPTER_HELP);
  const cap = await captureLayer({
    gpu,
    model,
    revision: o.revision,
    layers,
    prompt: o.prompt,
    tokenIds,
    progress: !quiet,
    log,
    // Only token 0 is drawn (a grid, not the explorer) and nothing else is saved: run T = 1
    // (exact: attention is causal, so token 0 never sees the tokens after it).
    firstTokenOnly: token === 0 && kind !== "html" && !o["save-tensors"],
  }).finally(() => {
    // Release the device before exit: Mesa's drivers have crashed when left to teardown.
    if (!io.gpu) gpu.destroy();
  });
  if (token !== "all" && token >= cap.T) {
    bad(`--token ${token} is out of range: the prompt has ${cap.T} tokens (0 to ${cap.T - 1}).`);
  }

  // 5. The picture: the deepest layer's grid (SVG, PNG) or every layer (the explorer).
  const grid = { token, dims, rope, show } as const;
  if (kind === "html") await writeFileAtomic(out, explorerHtml(cap, grid), "explorer page");
  else {
    const svg = renderGqaGrid(cap, grid);
    await writeFileAtomic(out, kind === "svg" ? svg : await svgToPng(svg), kind.toUpperCase());
  }
  if (o["save-tensors"]) {
    await writeFileAtomic(o["save-tensors"], captureToSafetensors(cap), "tensor file");
  }
  const r = cap.report;
  log?.(
    `${describeLayers(cap.sweep.map((l) => l.layer))}: ${cap.T} token${cap.T === 1 ? "" : "s"}, ${
      (r.bytesFetched / 1e9).toFixed(3)
    } GB fetched in ` +
      `${r.requests} requests, ${r.layerSeconds.reduce((a, b) => a + b, 0).toFixed(2)} s on ` +
      `${r.adapter}`,
  );
  io.out(`wrote ${out}`);
  if (o["save-tensors"]) io.out(`wrote ${o["save-tensors"]}`);
  return 0;
}

/** "layer 5" or "layers 2-5" (a contiguous run) or "layers 0, 3, 5". */
function describeLayers(ls: number[]): string {
  if (ls.length === 1) return `layer ${ls[0]}`;
  const run = ls.every((l, i) => i === 0 || l === ls[i - 1] + 1);
  return run ? `layers ${ls[0]}-${ls[ls.length - 1]}` : `layers ${ls.join(", ")}`;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
