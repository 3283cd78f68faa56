/**
 * Where a checkpoint's bytes come from. Everything above this layer (headers, plan,
 * forward pass) asks a {@linkcode ByteSource} for `read(file, begin, end)` and never
 * learns whether the bytes came from a folder, the Hugging Face cache, this tool's own
 * range cache, or the Hub over HTTP.
 *
 * {@linkcode openSource} chooses, from `--model`:
 *
 * 1. an existing folder → {@linkcode LocalSource} (config.json + safetensors files);
 * 2. otherwise a Hub repo id ("owner/name") → {@linkcode HubSource}, which reads each
 *    file from, in order:
 *    a. the Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
 *       `~/.cache/huggingface/hub`), when the Python client already downloaded it;
 *    b. this tool's range cache (byte ranges fetched by earlier runs, verified by SHA-256);
 *    c. the Hub (or `HF_ENDPOINT`) with HTTP Range requests, through `@huggingface/hub`.
 *
 * Environment, read only when the matching option is not given: `HF_TOKEN`,
 * `HF_ENDPOINT`, `HF_HUB_OFFLINE` (1/true/yes/on: no network at all), `HF_HUB_CACHE`,
 * `HF_HOME`, `GQA_VIZ_CACHE` (the range cache's folder).
 * @module
 */
import { GqaError } from "./errors.ts";
import { checkFileName, checkRange, env, envFlag, LocalSource } from "./local_source.ts";
import { HubSource, type RetryOptions } from "./hub_source.ts";
import { hfHubCacheDir } from "./hf_cache.ts";
import { defaultRangeCacheDir, RangeCache } from "./range_cache.ts";
import { Progress, type ProgressInfo, progressWanted } from "./progress.ts";

export { checkFileName, checkRange, env, envFlag };
export type { ProgressInfo, RetryOptions };

/** Counters every source keeps (tests and the CLI's summary read them). */
export interface SourceStats {
  /** Bytes that came over the network or from disk (a folder or the HF cache); bytes served by the range cache do not count. */
  bytesFetched: number;
  /** HTTP requests (every redirect hop counts) or disk reads. */
  requests: number;
  /** Bytes served from this tool's range cache (verified). */
  bytesFromCache?: number;
}

/** Random access to the files of one checkpoint. */
export interface ByteSource {
  /** "meta-llama/Meta-Llama-3-8B" or a folder path, for messages. */
  readonly name: string;
  /** Commit sha when known, else the requested revision, or "local" for a folder. */
  readonly revision: string;
  /** A whole small file (config.json, the index, tokenizer.json) as UTF-8 text. */
  readText(file: string): Promise<string>;
  /** A file's size in bytes. */
  size(file: string): Promise<number>;
  /** Whether the file exists (false for a missing file; other failures throw). */
  exists(file: string): Promise<boolean>;
  /**
   * Bytes [begin, end) of a file, exactly `end - begin` of them. With `into` (of exactly
   * that length) they are written there and `into` is returned: reusing one buffer per
   * tensor saves allocating and page-faulting hundreds of MB per layer.
   */
  read(file: string, begin: number, end: number, into?: Uint8Array): Promise<Uint8Array>;
  /** Bytes that came over the network or from disk (not from our cache). */
  readonly stats: SourceStats;
  /** Optional: bytes the caller is about to read in all, for the progress bar's % and ETA. */
  expectBytes?(total: number): void;
  /** Optional: ends the run's progress bar (erases it). Reading again afterwards is allowed. */
  close?(): void;
}

/** Options of {@linkcode openSource}. */
export interface OpenSourceOptions {
  /** A folder, or a Hub repo id such as "meta-llama/Meta-Llama-3-8B". */
  model: string;
  /** Branch, tag or commit sha (default "main"); ignored for a folder. */
  revision?: string;
  /** Hub access token (default `HF_TOKEN`; "" means none). Never printed or stored. */
  token?: string;
  /** Hub base URL (default `HF_ENDPOINT`, else https://huggingface.co). */
  endpoint?: string;
  /** No network at all (default `HF_HUB_OFFLINE`). */
  offline?: boolean;
  /** Folder of this tool's caches (default `GQA_VIZ_CACHE`, else ~/.cache/gqa-viz); ranges go under `ranges/`. */
  cacheDir?: string;
  /** Draw a progress bar on stderr (only when stderr is a terminal). */
  progress?: boolean;
  // --- additions beyond the contract (all optional) ---
  /** The Hugging Face cache's hub folder (default from the environment); false: do not look there. */
  hfCacheDir?: string | false;
  /** false: do not read or write the range cache. */
  rangeCache?: boolean;
  /** Retry policy for 429/5xx and broken connections. */
  retry?: RetryOptions;
  /** Underlying fetch (default globalThis.fetch), e.g. for a proxy. */
  fetch?: typeof fetch;
  /** Called on every progress update (bytes delivered, total, rate, ETA). */
  onProgress?: (p: ProgressInfo) => void;
}

/** The default Hub. */
export const DEFAULT_ENDPOINT = "https://huggingface.co";

/**
 * Checks a repo id the way the Python client does: "name" or "owner/name", each part
 * made of letters, digits, "_", "-", "." (at most 96), starting and ending with a letter,
 * digit or "_", without "--" or "..".
 */
export function isRepoId(s: string): boolean {
  const parts = s.split("/");
  if (parts.length < 1 || parts.length > 2) return false;
  return parts.every((p) =>
    /^\w(?:[\w.-]{0,94}\w)?$/.test(p) && !p.includes("--") && !p.includes("..")
  );
}

/**
 * Opens a model's files: a local folder, or a Hub repo (through the HF cache, the range
 * cache, and the network, in that order).
 * @example
 * ```ts
 * const src = await openSource({ model: "meta-llama/Meta-Llama-3-8B", progress: true });
 * const config = JSON.parse(await src.readText("config.json"));
 * const first8 = await src.read("model-00001-of-00004.safetensors", 0, 8);
 * ```
 */
export async function openSource(a: OpenSourceOptions): Promise<ByteSource> {
  const model = a.model;
  if (typeof model !== "string" || model.trim() === "") {
    throw new GqaError(
      "bad-input",
      `No model given. Pass --model with a folder (holding config.json and the safetensors files) or a Hugging Face repo id such as "meta-llama/Meta-Llama-3-8B".`,
    );
  }
  const progress = new Progress({
    show: !!a.progress && progressWanted(),
    onProgress: a.onProgress,
  });

  let stat: Deno.FileInfo | undefined;
  try {
    stat = await Deno.stat(model);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      if (e instanceof Deno.errors.PermissionDenied || e instanceof Deno.errors.NotCapable) {
        throw new GqaError(
          "bad-input",
          `Could not look at ${model}: permission denied. Check the folder's permissions (or run deno with --allow-read).`,
          { cause: e },
        );
      }
    }
  }
  if (stat?.isDirectory) return new LocalSource({ dir: model, progress });
  if (stat) {
    throw new GqaError(
      "bad-input",
      `--model ${model} is a file, not a folder. Pass the folder that holds config.json and the safetensors files (or a Hugging Face repo id such as "meta-llama/Meta-Llama-3-8B").`,
    );
  }
  if (!isRepoId(model)) {
    throw new GqaError(
      "bad-input",
      `--model ${
        JSON.stringify(model.slice(0, 200))
      } is neither a folder on this machine nor a Hugging Face repo id. A repo id looks like "owner/name" (letters, digits, "-", "_" and "."), e.g. "meta-llama/Meta-Llama-3-8B"; a folder must exist and hold config.json and the safetensors files.`,
    );
  }

  const endpoint = (a.endpoint ?? env("HF_ENDPOINT") ?? DEFAULT_ENDPOINT).replace(/\/+$/, "");
  let url: URL | undefined;
  try {
    url = new URL(endpoint);
  } catch { /* reported below */ }
  if (!url || (url.protocol !== "https:" && url.protocol !== "http:") || url.username) {
    throw new GqaError(
      "bad-input",
      `The Hub address ${
        JSON.stringify(endpoint.slice(0, 200))
      } (from --endpoint or HF_ENDPOINT) is not an http(s) URL. Use e.g. https://huggingface.co, or unset HF_ENDPOINT.`,
    );
  }
  const token = a.token ?? env("HF_TOKEN") ?? "";
  const offline = a.offline ?? envFlag("HF_HUB_OFFLINE");
  const hfDir = a.hfCacheDir === false ? undefined : (a.hfCacheDir ?? hfHubCacheDir());
  const cacheRoot = a.rangeCache === false ? undefined : (a.cacheDir ?? defaultRangeCacheDir());

  return await HubSource.open({
    repo: model,
    revision: a.revision ?? "main",
    token: token || undefined,
    endpoint,
    offline,
    hfCacheDir: hfDir,
    rangeCache: cacheRoot ? new RangeCache({ dir: cacheRoot }) : undefined,
    retry: a.retry,
    fetch: a.fetch,
    progress,
  });
}
