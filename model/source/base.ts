/**
 * The ground floor of model/source/: what every byte source is ({@linkcode ByteSource}),
 * the counters it keeps, and the small checks and readers they all share. Nothing here
 * knows any particular source; this file imports none of its siblings, so every source
 * (and the factory above them) can import it without a cycle:
 *
 * ```
 * open.ts (openSource: picks a source, builds the caches, reads the environment;
 *   │      token.ts finds the token as huggingface_hub does)
 *   ├─ local.ts        a folder on this machine
 *   ├─ hub.ts          a Hub repo; it imports token.ts (cleaning, redaction at its
 *   │                  boundary) and hub_fetch.ts (the HTTP policy), which imports
 *   │                  retry.ts (backoff, Retry-After / RateLimit waits)
 *   ├─ hf_cache.ts     the Python client's cache   (given to hub.ts as an HfSnapshots)
 *   ├─ range_cache.ts  this tool's range cache     (given to hub.ts as a RangeStore)
 *   └─ progress.ts     the progress bar
 * base.ts (this file) under all of them; ../../errors.ts under everything
 * ```
 *
 * The Hub source reads the two caches only through the interfaces declared here
 * ({@linkcode HfSnapshots}, {@linkcode RangeStore}); the factory passes the real ones in.
 * @module
 */
import { GqaError } from "../../errors.ts";

/** Counters every source keeps (tests and the CLI's summary read them). */
export interface SourceStats {
  /** Bytes that came over the network or from disk (a folder or the HF cache); bytes served by the range cache do not count. */
  bytesFetched: number;
  /** HTTP requests (every redirect hop counts) or disk reads. */
  requests: number;
  /** Bytes served from this tool's range cache (verified). */
  bytesFromCache?: number;
  /** Of `bytesFetched`, those that came over the network (the rest were read from disk). */
  bytesDownloaded?: number;
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
  /**
   * Optional: how many bytes of reads to keep in flight to keep this source busy (a Hub
   * source: its connections × its piece size). Readers that stream may read this far ahead.
   */
  readonly readAheadBytes?: number;
  /** Optional: the progress bar's label from now on, e.g. "layer 3/5" (which layer is under way). */
  status?(label: string): void;
  /**
   * Optional: bytes [begin, end) of a file that is on this machine, mapped into memory
   * instead of read (mmap.ts), or null when the file is not local or cannot be mapped (then
   * `read` it). Counted like a read. The caller must `release()` them once copied.
   */
  map?(file: string, begin: number, end: number): Promise<MappedBytes | null>;
}

/** Bytes of a file, mapped; call `release()` once they are copied (then never touch them). */
export interface MappedBytes {
  bytes: Uint8Array;
  release(): void;
}

/** An environment variable, or undefined when unset or not permitted. */
export function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/** `HF_HUB_OFFLINE`-style truthiness: 1, true, yes, on (any case). */
export function envFlag(name: string, getenv: (name: string) => string | undefined = env): boolean {
  return isTrue(getenv(name));
}

function isTrue(v: string | undefined): boolean {
  return ["1", "true", "yes", "on"].includes((v ?? "").trim().toLowerCase());
}

/**
 * Offline mode as `huggingface_hub` reads it: `HF_HUB_OFFLINE`, or when that is unset or
 * empty, `TRANSFORMERS_OFFLINE` (so `HF_HUB_OFFLINE=0` wins over `TRANSFORMERS_OFFLINE=1`).
 * @example
 * ```ts
 * offlineFromEnv((n) => ({ TRANSFORMERS_OFFLINE: "1" })[n]); // true
 * ```
 */
export function offlineFromEnv(getenv: (name: string) => string | undefined = env): boolean {
  return isTrue(getenv("HF_HUB_OFFLINE") || getenv("TRANSFORMERS_OFFLINE"));
}

/**
 * A path from the environment with a leading `~` (alone or before "/") replaced by the
 * home folder, as Python's `os.path.expanduser` does for `HF_HOME`, `HF_HUB_CACHE`, ….
 * Unchanged when no home is known or the path has no leading `~`.
 * @example
 * ```ts
 * expandHome("~/models", (n) => ({ HOME: "/home/ada" })[n]); // "/home/ada/models"
 * ```
 */
export function expandHome(
  path: string,
  getenv: (name: string) => string | undefined = env,
): string {
  if (path !== "~" && !path.startsWith("~/")) return path;
  const home = getenv("HOME") ?? getenv("USERPROFILE");
  return home ? home.replace(/\/+$/, "") + path.slice(1) : path;
}

/**
 * `HF_HOME` as `huggingface_hub` computes it: `$HF_HOME`, else
 * `${XDG_CACHE_HOME:-~/.cache}/huggingface`, with `~` expanded (undefined when no home is known).
 * @example
 * ```ts
 * hfHomeDir((n) => ({ HOME: "/home/ada" })[n]); // "/home/ada/.cache/huggingface"
 * ```
 */
export function hfHomeDir(
  getenv: (name: string) => string | undefined = env,
): string | undefined {
  const home = getenv("HF_HOME");
  if (home) return expandHome(home, getenv);
  const xdg = getenv("XDG_CACHE_HOME");
  if (xdg) return expandHome(xdg, getenv).replace(/\/+$/, "") + "/huggingface";
  const user = getenv("HOME") ?? getenv("USERPROFILE");
  return user ? user.replace(/\/+$/, "") + "/.cache/huggingface" : undefined;
}

/** `path` with the home folder shown as `~` (for messages). */
export function tildePath(
  path: string,
  getenv: (name: string) => string | undefined = env,
): string {
  const home = (getenv("HOME") ?? "").replace(/\/+$/, "");
  return home && (path === home || path.startsWith(home + "/"))
    ? "~" + path.slice(home.length)
    : path;
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

/** A 40-hex git commit sha. */
export const COMMIT_RE = /^[0-9a-f]{40}$/;

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

/** "meta-llama/Meta-Llama-3-8B" → "models--meta-llama--Meta-Llama-3-8B" (the cache's folder name). */
export function repoFolderName(repo: string): string {
  return `models--${repo.split("/").join("--")}`;
}

/** What we know of a file at a commit: its size and ETag, or that it does not exist. */
export type FileMeta = { size: number; etag?: string; missing?: false } | { missing: true };

/** Identifies one file of one repo at one commit on one Hub. */
export interface CacheFileKey {
  /** The Hub's host, e.g. "huggingface.co" or "127.0.0.1:4545". */
  host: string;
  repo: string;
  commit: string;
  file: string;
}

/** Result of {@linkcode CachedFile.read}. */
export interface CachedRead {
  bytes: Uint8Array;
  /** Bytes served by verified cache entries. */
  fromCache: number;
  /** Bytes that `fetchGap` returned. */
  fetched: number;
}

/**
 * What the Hub source needs of the Hugging Face cache (one repo's folder in it):
 * implemented by `HfCacheRepo` in hf_cache.ts.
 */
export interface HfSnapshots {
  /** The hub cache folder it reads (for messages). */
  readonly cacheDir: string;
  /** The commit a revision names, when the cache knows it. */
  resolve(revision: string): Promise<string | undefined>;
  /** The snapshot path of a file at a commit. */
  path(commit: string, file: string): string;
  /** The file's size when the snapshot has it whole, else undefined. */
  size(commit: string, file: string): Promise<number | undefined>;
  /** True when the cache recorded that the file does not exist at that commit. */
  knownMissing(commit: string, file: string): Promise<boolean>;
}

/** What the Hub source needs of a range cache: implemented by `RangeCache` in range_cache.ts. */
export interface RangeStore {
  /** Its folder (for messages). */
  readonly root: string;
  /** The commit `revision` resolved to in an earlier run, if recorded. */
  readRef(host: string, repo: string, revision: string): Promise<string | undefined>;
  /** Remembers that `revision` resolved to `commit`. */
  writeRef(host: string, repo: string, revision: string, commit: string): Promise<void>;
  /** The cache of one file at one commit. */
  file(key: CacheFileKey): RangeStoreFile;
}

/** One file's part of a {@linkcode RangeStore}. */
export interface RangeStoreFile {
  /** The file's recorded size/ETag or absence, if an earlier run recorded it. */
  meta(): Promise<FileMeta | undefined>;
  /** Records the file's size/ETag or absence. */
  setMeta(m: FileMeta): Promise<void>;
  /** Bytes [begin, end): cached where held, `fetchGap(b, e)` for the rest (then cached). */
  read(
    begin: number,
    end: number,
    fetchGap: (begin: number, end: number) => Promise<Uint8Array>,
  ): Promise<CachedRead>;
}
