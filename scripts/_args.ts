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
    bad(`${(e as Error).message}.`);
  }
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
