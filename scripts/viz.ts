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
 * @module
 */
import { type Gpu, NO_ADAPTER_HELP, requestGpu } from "../kernels/gpu.ts";
import { basename } from "node:path";
import { captureLayer, DEFAULT_MODEL, DEFAULT_PROMPT } from "../model/capture.ts";
import { GqaError } from "../errors.ts";
import { captureToSafetensors, checkWritable, writeFileAtomic } from "../model/output.ts";
import { renderGqaGrid } from "../viz/grid_svg.ts";
import {
  bad,
  type CliIo,
  cliMain,
  parseCli,
  parseIntArg,
  parseLayerArg,
  parseTokenIds,
} from "./_args.ts";

const HELP = `Draw how Grouped Query Attention shares keys, from a real model's layer.

Usage: deno task viz --layer N [options]

Options:
  --layer N              layer to capture, 0-based (required)
  --model ID|DIR         Hub repo id or local folder (default ${DEFAULT_MODEL})
  --revision REV         branch, tag or commit on the Hub (default main)
  --prompt TEXT          text to run (default "${DEFAULT_PROMPT}")
  --token-ids A,B,...    token ids to use instead of a prompt (tokenizer.json is then not read)
  --token N|all          token position to draw (default 0, the first token), or all
  --dims N               how many head dimensions to draw per cell (default 20)
  --rope pre|post        K as it leaves k_proj (pre, default) or after RoPE (post)
  --show k|qk            draw K only, or K beside each query head's own Q
  --out FILE             SVG path (default {model-name}_layer_{L}_gqa_keys.svg)
  --save-tensors FILE    also write Q, K, K-after-RoPE and V as F32 safetensors
  --quiet                no progress bar or status lines
  -h, --help             show this help

Bad arguments (including a --token past the prompt and an --out that cannot be written) are
refused before any weight is downloaded, with exit code 2.

Environment: the token as huggingface_hub finds it (HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
HF_TOKEN_PATH, else the file \`hf auth login\` saved in $HF_HOME/token), HF_ENDPOINT,
HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1), GQA_VIZ_CACHE.

Examples:
  deno task viz --layer 5
  deno task viz --model ./testdata/generated/tiny-llama --layer 2 --show qk --token all
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

/** The default SVG name: `{model-name}_layer_{L}_gqa_keys.svg`, like the notebook's PNG. */
export function defaultOutName(model: string, layer: number): string {
  const name = basename(model.replace(/[\\/]+$/, "")) || "model";
  return `${name.replace(/[^A-Za-z0-9._-]/g, "_")}_layer_${layer}_gqa_keys.svg`;
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
  layer: number;
  model: string;
  revision?: string;
  prompt?: string;
  tokenIds?: number[];
  token: number | "all";
  dims: number;
  rope: "pre" | "post";
  show: "k" | "qk";
  out: string;
  saveTensors?: string;
  quiet: boolean;
}

/** Step 1 of a run: every argument checked on its own, and the output paths tried. */
async function parseVizArgs(
  o: ReturnType<typeof parseCli<typeof OPTIONS>>["values"],
): Promise<VizArgs> {
  const layer = parseLayerArg(o.layer);
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
  const out = o.out ?? defaultOutName(model, layer);
  await checkWritable(out, "--out");
  const saveTensors = o["save-tensors"];
  if (saveTensors !== undefined) await checkWritable(saveTensors, "--save-tensors");
  if (saveTensors !== undefined && saveTensors === out) {
    bad(`--out and --save-tensors both name ${out}; give them different paths.`);
  }
  return {
    layer,
    model,
    revision: o.revision,
    prompt: o.prompt,
    tokenIds,
    token,
    dims,
    rope,
    show,
    out,
    saveTensors,
    quiet: o.quiet ?? false,
  };
}

/** Step 2: the checks that need the config and the tokens, run before any weight is read. */
function checkAgainstModel(a: VizArgs, tokenIds: number[]): void {
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
  const cap = await captureLayer({
    gpu,
    model: a.model,
    revision: a.revision,
    layer: a.layer,
    prompt: a.prompt,
    tokenIds: a.tokenIds,
    progress: !a.quiet,
    log,
    validate: ({ tokenIds }) => checkAgainstModel(a, tokenIds),
  }).finally(() => {
    // Release the device before exit: Mesa's drivers have crashed when left to teardown.
    if (!io.gpu) gpu.destroy();
  });

  const svg = renderGqaGrid(cap, { token: a.token, dims: a.dims, rope: a.rope, show: a.show });
  await writeFileAtomic(a.out, svg, "SVG");
  if (a.saveTensors) {
    await writeFileAtomic(a.saveTensors, captureToSafetensors(cap), "tensor file");
  }
  io.out(`wrote ${a.out}`);
  if (a.saveTensors) io.out(`wrote ${a.saveTensors}`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
