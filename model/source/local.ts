/**
 * A checkpoint in a folder on this machine: `config.json` plus `model.safetensors`, or
 * shards `model-0000X-of-0000N.safetensors` with `model.safetensors.index.json`.
 *
 * Every read opens the file, seeks to `begin` and reads exactly `end - begin` bytes, so
 * reading one layer of a 16 GB checkpoint touches only that layer's bytes. Nothing is
 * kept open between reads (no handle to leak, and a file replaced between runs is seen).
 * @module
 */
import { join } from "node:path";
import { GqaError } from "./errors.ts";
import type { ByteSource, SourceStats } from "./source.ts";
import type { Progress } from "./progress.ts";

/** An environment variable, or undefined when unset or not permitted. */
export function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/** `HF_HUB_OFFLINE`-style truthiness: 1, true, yes, on (any case). */
export function envFlag(name: string): boolean {
  return ["1", "true", "yes", "on"].includes((env(name) ?? "").trim().toLowerCase());
}

/**
 * Rejects file names that could escape the model's folder or URL: empty, absolute,
 * backslashes, NUL, "." or ".." segments. File names come from index files we do not
 * control, so every source checks them.
 */
export function checkFileName(file: string, where: string): void {
  const bad = typeof file !== "string" || file.length === 0 || file.length > 1000 ||
    file.startsWith("/") || file.includes("\\") || file.includes("\0") ||
    /^[A-Za-z]:/.test(file) ||
    file.split("/").some((seg) => seg === "" || seg === "." || seg === "..");
  if (bad) {
    throw new GqaError(
      "bad-file",
      `The file name ${
        JSON.stringify(String(file).slice(0, 200))
      } asked of ${where} is not a plain relative path inside the model (it is empty, absolute, or has "." or ".." parts). Model files are named like "model-00001-of-00004.safetensors"; check the index file that named it.`,
    );
  }
}

/** Checks that [begin, end) is a valid range of a file of `size` bytes. */
export function checkRange(
  a: { file: string; where: string; begin: number; end: number; size: number },
): void {
  const { begin, end, size } = a;
  if (!Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || begin < 0 || end < begin) {
    throw new GqaError(
      "bad-input",
      `Asked for bytes [${begin}, ${end}) of ${a.file} in ${a.where}: a range must be two whole numbers 0 ≤ begin ≤ end. This is a bug in the caller (the plan), not in the model.`,
    );
  }
  if (end > size) {
    throw new GqaError(
      "bad-file",
      `Asked for bytes [${begin}, ${end}) of ${a.file} in ${a.where}, but the file is only ${size} bytes. The safetensors header or index points past the end of the file: the file is truncated or its header is wrong; download it again.`,
    );
  }
}

/**
 * Reads bytes [begin, end) of the file at `path` into `into` (or a new array).
 * Throws a "bad-file" GqaError if the file ends before `end`.
 */
export async function readFileRange(
  path: string,
  begin: number,
  end: number,
  into?: Uint8Array,
): Promise<Uint8Array> {
  const n = end - begin;
  const out = into ?? new Uint8Array(n);
  if (out.length !== n) throw new RangeError(`readFileRange: buffer of ${out.length} for ${n}`);
  if (n === 0) return out;
  using f = await Deno.open(path, { read: true });
  await f.seek(begin, Deno.SeekMode.Start);
  let off = 0;
  while (off < n) {
    const got = await f.read(out.subarray(off));
    if (got === null) {
      throw new GqaError(
        "bad-file",
        `${path} ended after ${
          begin + off
        } bytes while reading bytes [${begin}, ${end}): the file is shorter than its header says (truncated download?). Download it again.`,
      );
    }
    off += got;
  }
  return out;
}

/** Options of {@linkcode LocalSource}. */
export interface LocalSourceOptions {
  /** The model folder. */
  dir: string;
  /** Counts delivered bytes (and draws the bar when enabled). */
  progress?: Progress;
}

/**
 * The files of a model folder.
 * @example
 * ```ts
 * const src = new LocalSource({ dir: "testdata/generated/tiny" });
 * const header8 = await src.read("model-00001-of-00002.safetensors", 0, 8);
 * ```
 */
export class LocalSource implements ByteSource {
  readonly name: string;
  readonly revision = "local";
  readonly stats: SourceStats = { bytesFetched: 0, requests: 0, bytesFromCache: 0 };
  readonly #dir: string;
  readonly #progress?: Progress;

  constructor(o: LocalSourceOptions) {
    this.#dir = o.dir;
    this.name = o.dir;
    this.#progress = o.progress;
  }

  #path(file: string): string {
    checkFileName(file, `the folder ${this.#dir}`);
    return join(this.#dir, file);
  }

  #notFound(file: string, cause: unknown): GqaError {
    return new GqaError(
      "not-found",
      `${file} is not in the model folder ${this.#dir}. A model folder holds config.json and either model.safetensors or model-0000X-of-0000N.safetensors shards with model.safetensors.index.json; check --model and that the download finished.`,
      { cause },
    );
  }

  async size(file: string): Promise<number> {
    const path = this.#path(file);
    try {
      const st = await Deno.stat(path);
      if (!st.isFile) throw new Deno.errors.NotFound(path);
      return st.size;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw this.#notFound(file, e);
      throw new GqaError("bad-file", `Could not read ${path}: ${(e as Error).message}.`, {
        cause: e,
      });
    }
  }

  async exists(file: string): Promise<boolean> {
    const path = this.#path(file);
    try {
      return (await Deno.stat(path)).isFile;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return false;
      throw new GqaError("bad-file", `Could not look at ${path}: ${(e as Error).message}.`, {
        cause: e,
      });
    }
  }

  async read(file: string, begin: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    const size = await this.size(file);
    checkRange({ file, where: `the folder ${this.#dir}`, begin, end, size });
    const bytes = await readFileRange(this.#path(file), begin, end, into);
    this.stats.bytesFetched += bytes.length;
    this.stats.requests++;
    this.#progress?.add(bytes.length);
    return bytes;
  }

  async readText(file: string): Promise<string> {
    const bytes = await this.read(file, 0, await this.size(file));
    return decodeText(bytes, `${join(this.#dir, file)}`);
  }

  expectBytes(total: number): void {
    this.#progress?.setTotal(total);
  }

  close(): void {
    this.#progress?.finish();
  }
}

/** Strict UTF-8 decoding with a clear error. */
export function decodeText(bytes: Uint8Array, where: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch (e) {
    throw new GqaError(
      "bad-file",
      `${where} is not valid UTF-8 text, so it cannot be the JSON file it should be. Download it again.`,
      { cause: e },
    );
  }
}
