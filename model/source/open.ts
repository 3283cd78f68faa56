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
 * Environment, read only when the matching option is not given, as `huggingface_hub`
 * reads it: the token from `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, the file `HF_TOKEN_PATH`
 * names or `$HF_HOME/token` (token.ts); `HF_ENDPOINT`; `HF_HUB_OFFLINE`, else
 * `TRANSFORMERS_OFFLINE` (1/true/yes/on: no network at all); `HF_HUB_CACHE`, `HF_HOME`,
 * `GQA_VIZ_CACHE` (the range cache's folder), each with `~` expanded.
 *
 * This file is the top of model/source/: the only one that knows every implementation
 * (none of them imports it). It reads the environment, builds the caches and hands them
 * to the Hub source through base.ts's interfaces.
 * @module
 */
import { GqaError } from "../../errors.ts";
import { type ByteSource, env, isRepoId, offlineFromEnv } from "./base.ts";
import { cleanToken, findToken, type FoundToken } from "./token.ts";
import { LocalSource } from "./local.ts";
import { HubSource } from "./hub.ts";
import type { RetryOptions } from "./retry.ts";
import { HfCacheRepo, hfHubCacheDir } from "./hf_cache.ts";
import { defaultRangeCacheDir, RangeCache } from "./range_cache.ts";
import { Progress, type ProgressInfo, progressWanted } from "./progress.ts";

/** Options of {@linkcode openSource}. */
export interface OpenSourceOptions {
  /** A folder, or a Hub repo id such as "meta-llama/Meta-Llama-3-8B". */
  model: string;
  /** Branch, tag or commit sha (default "main"); ignored for a folder. */
  revision?: string;
  /** Hub access token (default: found as `huggingface_hub` finds it, see token.ts; "" means none). Never printed or stored. */
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
  /** Hub requests in flight at once for the whole run (default 16). */
  connections?: number;
  /** Hub reads are split into pieces of this many bytes (default 8 MiB). */
  pieceBytes?: number;
  /** Receives one-line status messages (which token is used, never the token itself). */
  log?: (line: string) => void;
}

/** How a token passed to openSource (`token`, captureLayer's `hfToken`) is named in messages. */
const OPTION_TOKEN = "the token passed as an option";

/** The default Hub. */
export const DEFAULT_ENDPOINT = "https://huggingface.co";

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
  const found: FoundToken = a.token !== undefined
    ? { token: cleanToken(a.token, OPTION_TOKEN), source: OPTION_TOKEN }
    : findToken();
  if (found.token) a.log?.(`using ${found.source}`);
  const offline = a.offline ?? offlineFromEnv();
  const hfDir = a.hfCacheDir === false ? undefined : (a.hfCacheDir ?? hfHubCacheDir());
  const cacheRoot = a.rangeCache === false ? undefined : (a.cacheDir ?? defaultRangeCacheDir());

  // A bar drawn while opening (a rate-limit wait) is erased if opening fails.
  return await HubSource.open({
    repo: model,
    revision: a.revision ?? "main",
    token: found.token,
    tokenSource: found.source,
    endpoint,
    offline,
    hfCache: hfDir ? new HfCacheRepo({ cacheDir: hfDir, repo: model }) : undefined,
    rangeCache: cacheRoot ? new RangeCache({ dir: cacheRoot }) : undefined,
    retry: a.retry,
    fetch: a.fetch,
    progress,
    connections: a.connections,
    pieceBytes: a.pieceBytes,
  }).catch((e) => {
    progress.finish();
    throw e;
  });
}
