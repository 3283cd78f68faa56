/**
 * Running the viz CLI (scripts/viz.ts) in-process for the CLI tests: its exit code and what
 * it printed, on the shared test device.
 * @module
 */
import { type Io, main } from "../scripts/viz.ts";
import { testGpu } from "./_helpers.ts";

/** What one run of the CLI gave: the exit code and its stdout and stderr lines, joined. */
export interface CliResult {
  code: number;
  out: string;
  err: string;
}

/**
 * Runs the CLI in-process; returns the exit code and what it printed. `extra` replaces
 * parts of its {@linkcode Io} (a terminal, a fake clock, ...).
 *
 * @example
 * ```ts ignore
 * const r = await cli(["--help"]);
 * assertEquals(r.code, 0);
 * ```
 */
export async function cli(args: string[], extra: Partial<Io> = {}): Promise<CliResult> {
  const out: string[] = [], err: string[] = [];
  const gpu = await testGpu();
  const code = await main(args, {
    out: (l) => out.push(l),
    err: (l) => err.push(l),
    gpu: () => Promise.resolve(gpu),
    ...extra,
  });
  return { code, out: out.join("\n"), err: err.join("\n") };
}
