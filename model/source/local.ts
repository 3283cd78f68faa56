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
import { GqaError } from "../../errors.ts";
import {
  type ByteSource,
  checkFileName,
  checkRange,
  decodeText,
  type MappedBytes,
  readFileRange,
  type SourceStats,
} from "./base.ts";
import { mapFileRange } from "./mmap.ts";
import type { Progress } from "./progress.ts";

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
    this.#counted(bytes.length);
    return bytes;
  }

  /** Bytes [begin, end) of a file, mapped into memory (null where mapping is not possible). */
  async map(file: string, begin: number, end: number): Promise<MappedBytes | null> {
    const size = await this.size(file);
    checkRange({ file, where: `the folder ${this.#dir}`, begin, end, size });
    const m = mapFileRange(this.#path(file), begin, end);
    if (m) this.#counted(end - begin);
    return m;
  }

  /** Counts `n` bytes delivered from disk (stats and the progress bar). */
  #counted(n: number): void {
    this.stats.bytesFetched += n;
    this.stats.requests++;
    this.#progress?.add(n, "disk");
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

  /** Sets the progress bar's label (which layer is being read or computed). */
  status(label: string): void {
    this.#progress?.setLabel(label);
  }
}
