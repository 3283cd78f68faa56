/**
 * The command-line conventions every script shares (viz and the numbered tutorial steps):
 * options parsed strictly with `node:util`'s parseArgs, each bad argument refused with its
 * own one-paragraph message, printed as `error: …` without a stack trace, exit code 2.
 *
 * ```
 * runCli(async () => { const o = parseCli(Deno.args, OPTIONS); ...; return 0; })
 *   parseCli      strict parse; "--layer -1" reaches parseLayerArg instead of failing as "ambiguous"
 *   parseLayerArg / parseIntArg / parseTokenIds   one value each, with the option's own message
 *   cliMain       a GqaError → "error: message", exit 2 for bad input, 1 otherwise
 * ```
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { GqaError } from "../errors.ts";

/** Throws the "bad-input" GqaError of a bad argument (the CLI exits 2). */
export function bad(message: string): never {
  throw new GqaError("bad-input", message + " Run with --help to see the options.");
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/**
 * Parses `args` strictly against `options` (no positionals). A value that starts with "-"
 * after an option that takes one (`--layer -1`) is passed to that option, so its own check
 * explains it, instead of parseArgs's "ambiguous" error. Unknown options and missing values
 * are bad arguments.
 * @example
 * ```ts
 * const { values } = parseCli(["--layer", "-1"], { layer: { type: "string" } }); // values.layer === "-1"
 * ```
 */
export function parseCli<O extends Options>(args: string[], options: O) {
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = /^--([^=]+)$/.exec(args[i])?.[1];
    const next = args[i + 1];
    if (name && options[name]?.type === "string" && next !== undefined && /^-\d/.test(next)) {
      joined.push(`--${name}=${next}`);
      i++;
    } else joined.push(args[i]);
  }
  try {
    return parseArgs({ args: joined, options, strict: true, allowPositionals: false });
  } catch (e) {
    const unknown = /^Unknown option '--?([^']+)'/.exec((e as Error).message)?.[1];
    const near = unknown === undefined ? undefined : closestOption(unknown, Object.keys(options));
    bad(`${(e as Error).message}.${near ? ` Did you mean --${near}?` : ""}`);
  }
}

/**
 * The option name closest to a mistyped one (`layr` → `layer`), when it is close enough to
 * be a typo: at most 2 edits, or a prefix of a longer name (`save` → `save-tensors`).
 * @example
 * ```ts
 * closestOption("layr", ["layer", "model"]); // "layer"
 * ```
 */
export function closestOption(typed: string, names: string[]): string | undefined {
  let best: string | undefined, bestD = 3;
  for (const n of names) {
    const d = n.startsWith(typed) && typed.length >= 3 ? 1 : editDistance(typed, n);
    if (d < bestD) [best, bestD] = [n, d];
  }
  return best;
}

/** Levenshtein distance (insertions, deletions, substitutions) between two short strings. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

/** A whole number ≥ `min` for `--name`, or a bad argument: `--dims must be a whole number ≥ 1, got 0`. */
export function parseIntArg(name: string, v: string, min: number): number {
  const n = Number(v);
  if (!/^\s*\d+\s*$/.test(v) || !Number.isSafeInteger(n) || n < min) {
    bad(
      `--${name} must be a whole number ≥ ${min}, got ${
        /^\s*-?\d+\s*$/.test(v) ? v.trim() : JSON.stringify(v)
      }.`,
    );
  }
  return n;
}

/**
 * `--dims N` (the first N head dimensions) or `--dims A-B` (dims A to B, both included):
 * the window of each head drawn. Whether A is inside the head is checked against the
 * config (HD) before any weight byte; a B past the head is cut there by the layout.
 * @example
 * ```ts
 * parseDimsArg("20"); // { dimStart: 0, dims: 20 }
 * parseDimsArg("64-83"); // { dimStart: 64, dims: 20 }
 * ```
 */
export function parseDimsArg(v: string): { dimStart: number; dims: number } {
  const range = parseRangeArg("dims", v);
  if (!range) return { dimStart: 0, dims: parseIntArg("dims", v, 1) };
  return { dimStart: range[0], dims: range[1] - range[0] + 1 };
}

/**
 * "A-B" (two whole numbers) as [A, B], or undefined when `v` is not of that form. A range
 * that runs downwards is a bad argument for `--name`, answered with the upward one.
 * @example
 * ```ts
 * parseRangeArg("layer", "2-4"); // [2, 4]
 * parseRangeArg("layer", "7"); // undefined
 * ```
 */
export function parseRangeArg(name: string, v: string): [number, number] | undefined {
  const m = /^\s*(\d+)\s*-\s*(\d+)\s*$/.exec(v);
  const [a, b] = m ? [Number(m[1]), Number(m[2])] : [NaN, NaN];
  if (!Number.isSafeInteger(a) || !Number.isSafeInteger(b)) return undefined;
  if (b < a) {
    bad(`--${name} ${a}-${b}: the range must run upwards (A ≤ B), e.g. --${name} ${b}-${a}.`);
  }
  return [a, b];
}

/** What `--layer` asks for: the layers, ascending, or "all". */
export type LayerSpec = number[] | "all";

/**
 * Parses viz's `--layer`: "N", "A-B" (A ≤ B) or "all". Their range against the model's
 * layer count is checked once the config is read, before any weight byte.
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
  const range = parseRangeArg("layer", v);
  if (range) return Array.from({ length: range[1] - range[0] + 1 }, (_, i) => range[0] + i);
  if (/^\s*-\d+\s*$/.test(v)) bad(`--layer must be a whole number ≥ 0, got ${v.trim()}.`);
  const n = /^\s*\d+\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n)) {
    bad(`--layer must be a whole number ≥ 0, a range A-B or "all", got "${v}".`);
  }
  return [n];
}

/**
 * `--layer N`: the layer to capture, 0-based. Its range against the model's layer count is
 * checked once the config is read (captureLayer), before any weight byte.
 */
export function parseLayerArg(v: string | undefined): number {
  if (v === undefined) bad("--layer is required (e.g. --layer 5).");
  return parseIntArg("layer", v, 0);
}

/** `--token-ids A,B,...`: whole numbers ≥ 0 (their range is checked against the vocabulary). */
export function parseTokenIds(v: string): number[] {
  const parts = v.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (parts.length === 0) bad(`--token-ids needs a comma-separated list of ids, got "${v}".`);
  return parts.map((p) => {
    if (!/^\d+$/.test(p)) bad(`--token-ids: "${p}" is not a token id (a whole number ≥ 0).`);
    return Number(p);
  });
}

/** Where a script writes: replaceable in tests. */
export interface CliIo {
  out: (line: string) => void;
  err: (line: string) => void;
}

/**
 * Runs a script's body and turns what it throws into an exit code: a GqaError is printed
 * as `error: message` (exit 2 for bad input, else 1); anything else is a bug, reported as
 * such (the stack only with GQA_DEBUG=1).
 */
export async function cliMain(body: () => Promise<number>, io: CliIo): Promise<number> {
  try {
    return await body();
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
