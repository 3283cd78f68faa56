/**
 * What the numbered tutorial scripts share: their options (parsed with viz's parser from
 * _args.ts, so a bad argument gets the same `error: …` paragraph and exit code 2, never a
 * stack trace), the model they run on (`--model`, default the generated tiny model), a GPU,
 * and where they write (the gitignored `out/` folder of the repository, so a run leaves
 * `git status` clean).
 *
 * ```ts
 * await tutorial({ usage: "...", layer: 2, tokenIds: true }, async ({ model, layer, tokenIds }) => {
 *   // the step's code; a GqaError it throws is printed as "error: …" (exit 1)
 * });
 * ```
 * @module
 */
import { relative } from "node:path";
import { fileURLToPath } from "node:url";
import { makeTinyModel } from "./make_tiny_model.ts";
import { type Gpu, NO_ADAPTER_HELP, requestGpu } from "../kernels/gpu.ts";
import { GqaError } from "../errors.ts";
import { bad, cliMain, parseCli, parseLayerArg, parseTokenIds } from "./_args.ts";

/** What a step accepts beyond `--model` (and `--help`). */
export interface TutorialSpec {
  /** The usage line its header documents, printed by --help. */
  usage: string;
  /** Accept `--layer N`, with this default. */
  layer?: number;
  /** Accept `--token-ids A,B,...` (for a model without tokenizer.json). */
  tokenIds?: boolean;
}

/** The options of one run of a step. */
export interface TutorialArgs {
  /** `--model`, else the tiny model (generated on first use), as a path relative to the cwd. */
  model: string;
  /** `--layer` (or the step's default). */
  layer: number;
  /** `--token-ids`, when given. */
  tokenIds?: number[];
}

/** The repository's gitignored output folder, where the steps write their files. */
export const OUT_DIR = fileURLToPath(new URL("../out/", import.meta.url));

/** `name` inside {@linkcode OUT_DIR} (created), and how to show it (relative to the cwd). */
export async function outPath(name: string): Promise<{ path: string; shown: string }> {
  await Deno.mkdir(OUT_DIR, { recursive: true });
  const path = OUT_DIR + name;
  return { path, shown: relative(Deno.cwd(), path) };
}

/** Parses the step's options from `args`: `--model`, and `--layer` / `--token-ids` when it takes them. */
export function parseTutorialArgs(
  spec: TutorialSpec,
  args: string[],
): { help: boolean; model?: string; layer: number; tokenIds?: number[] } {
  const { values } = parseCli(
    args,
    {
      model: { type: "string" },
      help: { type: "boolean", short: "h" },
      ...(spec.layer !== undefined ? { layer: { type: "string" } } : {}),
      ...(spec.tokenIds ? { "token-ids": { type: "string" } } : {}),
    } as const,
  );
  const v = values as Record<string, string | boolean | undefined>;
  const layer = typeof v.layer === "string" ? parseLayerArg(v.layer) : spec.layer ?? 0;
  const ids = v["token-ids"];
  if (v.model === "") bad("--model needs a folder or a Hub repo id.");
  return {
    help: v.help === true,
    model: v.model as string | undefined,
    layer,
    tokenIds: typeof ids === "string" ? parseTokenIds(ids) : undefined,
  };
}

/**
 * Runs a step: parses its options, then `body`; prints any GqaError as one paragraph and
 * exits 2 for a bad argument, 1 for anything else that went wrong.
 */
export async function tutorial(
  spec: TutorialSpec,
  body: (a: TutorialArgs) => Promise<void>,
): Promise<void> {
  const io = { out: (l: string) => console.log(l), err: (l: string) => console.error(l) };
  const code = await cliMain(async () => {
    const a = parseTutorialArgs(spec, Deno.args);
    if (a.help) {
      io.out(`Usage: ${spec.usage}`);
      return 0;
    }
    const model = a.model ?? await tinyModel();
    await body({ model, layer: a.layer, tokenIds: a.tokenIds });
    return 0;
  }, io);
  if (code !== 0) Deno.exit(code);
}

/** The generated tiny model's folder, relative to the cwd. */
async function tinyModel(): Promise<string> {
  const { dir } = await makeTinyModel();
  return relative(Deno.cwd(), dir) || ".";
}

/** The first WebGPU adapter (a "no-adapter" GqaError with how to get one if there is none). */
export async function tutorialGpu(): Promise<Gpu> {
  const gpu = await requestGpu();
  if (!gpu) throw new GqaError("no-adapter", NO_ADAPTER_HELP);
  // Release the device when the script ends: Mesa's drivers have crashed when left to teardown.
  globalThis.addEventListener("unload", () => gpu.destroy());
  console.log(`WebGPU adapter: ${gpu.adapterName} (shader-f16: ${gpu.hasF16})\n`);
  return gpu;
}
