/**
 * A model on the Hugging Face Hub (or any server speaking its protocol: `HF_ENDPOINT`),
 * read by HTTP Range requests so that only the bytes a layer needs ever travel.
 *
 * Requests go through `@huggingface/hub`: `fileDownloadInfo` (a `GET …/resolve/{rev}/{file}`
 * with `Range: bytes=0-0`, whose answer carries the size in `Content-Range` and the commit
 * in `X-Repo-Commit`) and `downloadFile(…).slice(begin, end)` (a `GET` with
 * `Range: bytes=begin-(end-1)`). The library is given hub_fetch.ts's `hubFetch`, where the
 * network policy lives (the token only for the Hub's origin, retries, exact bytes).
 *
 * Which files are read from where, per file: the Hugging Face cache's snapshot when it has
 * the file, else this tool's range cache for the ranges it holds, else the network. With
 * `offline` (`HF_HUB_OFFLINE=1`) the network is never touched. The two caches arrive as
 * base.ts's `HfSnapshots` and `RangeStore` (open.ts passes in hf_cache.ts's and
 * range_cache.ts's), so this file imports neither. A read is split into pieces of 8 MiB
 * (pool.ts); each piece comes from the range cache or from one call of the fetch
 * (`#fetchRange`) through the run's one pool of 16 concurrent requests.
 *
 * Reads use the resolve URL with the COMMIT sha (not the branch), so a branch that moves
 * during a run cannot mix two versions of a model.
 * @module
 */
import { downloadFile, fileDownloadInfo } from "@huggingface/hub";
import { GqaError, type GqaErrorCode } from "../../errors.ts";
import {
  type ByteSource,
  checkFileName,
  checkRange,
  COMMIT_RE,
  decodeText,
  type FileMeta,
  type HfSnapshots,
  type MappedBytes,
  type RangeStore,
  type RangeStoreFile,
  readFileRange,
  type SourceStats,
} from "./base.ts";
import { type HttpFailure, HubError, hubFetch, type RetryOptions } from "./hub_fetch.ts";
import type { Progress } from "./progress.ts";
import { DEFAULT_CONNECTIONS, DEFAULT_PIECE_BYTES, DownloadPool, splitRange } from "./pool.ts";
import { cleanToken, redactToken } from "./token.ts";
import { mapFileRange } from "./mmap.ts";

/** The cause of an offline lookup of a file no cache knows: `exists` answers false for it. */
const OFFLINE_UNKNOWN = new Error("offline, and in no cache");

/** Options of {@linkcode HubSource.open}. */
export interface HubSourceOptions {
  /** "owner/name". */
  repo: string;
  /** Branch, tag or commit sha. */
  revision: string;
  token?: string;
  /** Where the token came from (or where we looked), for messages: see token.ts's `findToken`. */
  tokenSource?: string;
  /** Hub base URL without a trailing slash. */
  endpoint: string;
  offline: boolean;
  /** This repo's folder in the Hugging Face cache, if it should be read (hf_cache.ts's `HfCacheRepo`). */
  hfCache?: HfSnapshots;
  /** This tool's range cache, if it should be used (range_cache.ts's `RangeCache`). */
  rangeCache?: RangeStore;
  retry?: RetryOptions;
  fetch?: typeof fetch;
  progress?: Progress;
  /** Requests in flight at once, for every read of this source together (default 16). */
  connections?: number;
  /** Network reads are split into pieces of this many bytes (default 8 MiB). */
  pieceBytes?: number;
}

type FileInfo =
  | { kind: "hf-cache"; size: number; path: string }
  | { kind: "hub"; size: number; etag: string };

/**
 * A Hub repo at one commit. Open with {@linkcode HubSource.open} (or `openSource`).
 * @example
 * ```ts
 * const src = await HubSource.open({ repo: "test/tiny", revision: "main", endpoint, offline: false });
 * const cfg = JSON.parse(await src.readText("config.json"));
 * ```
 */
export class HubSource implements ByteSource {
  readonly name: string;
  readonly stats: SourceStats = {
    bytesFetched: 0,
    requests: 0,
    bytesFromCache: 0,
    bytesDownloaded: 0,
  };
  #revision: string;
  #commit?: string;
  readonly #o: HubSourceOptions;
  readonly #fetch: typeof fetch;
  readonly #host: string;
  readonly #hf?: HfSnapshots;
  readonly #infos = new Map<string, Promise<FileInfo | null>>();
  readonly #blobs = new Map<string, Blob>();
  readonly #pool: DownloadPool;
  readonly #pieceBytes: number;

  private constructor(o: HubSourceOptions) {
    this.#o = o;
    this.name = o.repo;
    this.#revision = o.revision;
    this.#host = new URL(o.endpoint).host;
    this.#hf = o.hfCache;
    this.#pool = new DownloadPool(o.connections ?? DEFAULT_CONNECTIONS);
    this.#pieceBytes = o.pieceBytes ?? DEFAULT_PIECE_BYTES;
    this.#fetch = hubFetch({
      endpoint: o.endpoint,
      token: o.token,
      retry: o.retry,
      fetch: o.fetch,
      onRequest: () => this.stats.requests++,
      onBytes: (n) => {
        this.stats.bytesFetched += n;
        this.stats.bytesDownloaded = (this.stats.bytesDownloaded ?? 0) + n;
        o.progress?.add(n, "network");
      },
      onWait: (ms, why) => o.progress?.waiting(ms, why),
      onHubHeaders: (h) => {
        const sha = h.get("x-repo-commit");
        if (!this.#commit && sha && COMMIT_RE.test(sha)) this.#commit = sha;
      },
      errorFor: (a) => this.#httpError(a),
      describe: (u) => this.#describe(u),
    });
  }

  /** Reads in flight that keep every connection of the pool busy: connections × piece size. */
  get readAheadBytes(): number {
    return this.#pool.size * this.#pieceBytes;
  }

  /** Commit sha when known (always, after `open`, unless the server does not send one). */
  get revision(): string {
    return this.#commit ?? this.#revision;
  }

  /**
   * Resolves the revision to a commit as `huggingface_hub` does. A commit sha is used as
   * given. Online, a branch or tag is asked of the Hub (the size probe of config.json tells
   * the commit in X-Repo-Commit), so a branch that moved since the cache was filled is
   * followed; only when the Hub cannot be reached (not when it answers an error) does the
   * cache's record stand in. Offline, the Hugging Face cache's `refs/{revision}`, else the
   * commit an earlier run of this tool recorded.
   */
  static async open(o: HubSourceOptions): Promise<HubSource> {
    const s = new HubSource({ ...o, token: cleanToken(o.token, o.tokenSource) });
    return await s.#guard(() => s.#resolve());
  }

  async #resolve(): Promise<HubSource> {
    const o = this.#o, rev = o.revision;
    if (COMMIT_RE.test(rev)) this.#commit = rev;
    else if (o.offline) this.#commit = await this.#recordedCommit(rev);
    else {
      try {
        await this.#info("config.json", { revision: rev });
      } catch (e) {
        // Unreachable (connection failures, 5xx after the retries): fall back to the caches.
        if (!(e instanceof GqaError) || e instanceof HubError || e.code !== "network") throw e;
        this.#commit = await this.#recordedCommit(rev);
        if (!this.#commit) throw e;
      }
      if (this.#commit) await o.rangeCache?.writeRef(this.#host, o.repo, rev, this.#commit);
    }
    if (!this.#commit && o.offline) {
      throw new GqaError(
        "network",
        `HF_HUB_OFFLINE is set, so nothing may be downloaded, but ${o.repo} at revision "${rev}" is in neither the Hugging Face cache (${
          o.hfCache?.cacheDir ?? "not used"
        }) nor this tool's cache (${
          o.rangeCache?.root ?? "not used"
        }). Run once online (unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE), or download the model first with \`hf download ${o.repo}\`, or pass a local folder with --model.`,
      );
    }
    return this;
  }

  /** The commit `rev` named when a cache last saw it: the HF cache's refs/, else ours. */
  async #recordedCommit(rev: string): Promise<string | undefined> {
    return await this.#hf?.resolve(rev) ??
      await this.#o.rangeCache?.readRef(this.#host, this.#o.repo, rev);
  }

  /**
   * The boundary where errors leave this source: every public method runs through it, so
   * the token is removed from whatever goes wrong below (token.ts's `redactToken`).
   */
  async #guard<T>(f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      throw redactToken(e, this.#o.token);
    }
  }

  #describe(u: URL): string {
    const m = /\/resolve\/[^/]+\/(.+)$/.exec(u.pathname);
    return m ? `${decodeURIComponent(m[1])} of ${this.name}` : `${u.pathname}`;
  }

  /**
   * The message for a final HTTP error, from the Hub's `X-Error-Code` and `X-Error-Message`
   * as `huggingface_hub` reads them; each names the repo, the file and the revision.
   */
  #httpError(a: HttpFailure): GqaError {
    const { status, hubCode, hubMessage } = a;
    const m = /\/resolve\/[^/]+\/(.+)$/.exec(a.url.pathname);
    const file = m ? decodeURIComponent(m[1]) : a.url.pathname;
    const at = `${file} of ${this.name} at revision "${this.#revision}"`;
    const said = `HTTP ${status}${hubCode ? `, ${hubCode}` : ""}${
      hubMessage ? `: "${hubMessage.slice(0, 300)}"` : ""
    }`;
    const err = (code: GqaErrorCode, text: string) =>
      new HubError(code, text, status, hubCode, { hubMessage });
    if (a.finalUrl.origin !== a.url.origin) {
      // The Hub redirected to a download server (CDN), which got no token: not an auth problem.
      // Only its host is named: the full URL carries a signature.
      return err(
        "network",
        `The download server ${a.finalUrl.host}, to which the Hub redirected the request for ${at}, answered HTTP ${status}. Run again (every run asks the Hub for a fresh redirect); if it persists, the Hub's storage is failing for this file: try later.`,
      );
    }
    const page = `${this.#o.endpoint}/${this.name}`;
    const source = this.#o.tokenSource ?? "the token in HF_TOKEN";
    const login =
      `Log in with \`hf auth login\` (or set HF_TOKEN to a read token from https://huggingface.co/settings/tokens)`;
    const rejected = (status === 401 || status === 403) &&
      /invalid (credentials|username or password)/i.test(hubMessage ?? "");
    if (rejected || (status === 401 && this.#o.token && !hubCode)) {
      return err(
        "auth",
        `The Hub rejected ${source} while reading ${at} (${said}): it is mistyped, expired or revoked. Create a new read token at https://huggingface.co/settings/tokens and log in again with \`hf auth login\` (or set HF_TOKEN to it).`,
      );
    }
    if (hubCode === "GatedRepo" && status === 401) {
      return err(
        "auth",
        `${this.name} is a gated model: the Hub serves ${at} only to a logged-in account that accepted its licence, and ${
          this.#o.token ? `${source} was not accepted for it` : `no token was sent (${source})`
        } (${said}). ${login}, and accept the licence at ${page} with the same account.`,
      );
    }
    if (hubCode === "GatedRepo" || (status === 403 && this.#o.token)) {
      return err(
        "auth",
        `The Hub accepted ${source} but its account may not read ${at} (${said}): ${this.name} is gated and the licence at ${page} is not accepted yet, or the request is still pending review. Open ${page} logged in as the same account, accept the licence and wait until the page says access is granted; a fine-grained token also needs "Read access to contents of all public gated repos you can access".`,
      );
    }
    if (hubCode === "RepoNotFound" || status === 401) {
      return err(
        "not-found",
        `The repo ${this.name} was not found on ${this.#o.endpoint} while reading ${at} (${said}). Check the spelling of --model (a repo id looks like "owner/name", e.g. meta-llama/Meta-Llama-3-8B). The Hub answers the same for a private repo your account cannot read${
          this.#o.token ? "" : ` (no token was sent: ${source}; ${login.toLowerCase()})`
        }.`,
      );
    }
    if (hubCode === "RevisionNotFound") {
      return err(
        "not-found",
        `The revision "${this.#revision}" does not exist in ${this.name} (${said}, while reading ${file}). Check --revision: a branch, a tag or a 40-hex commit sha of ${page}.`,
      );
    }
    if (status === 404) {
      return err(
        "not-found",
        `The file ${file} does not exist in ${this.name} at revision "${this.#revision}" (${said}). Check the model's files at ${page}/tree/${
          encodeURIComponent(this.#revision)
        }: is it a transformers checkpoint with safetensors weights?`,
      );
    }
    return err(
      "network",
      `The Hub answered ${said} for ${at}, which this tool does not know how to handle. Check HF_ENDPOINT, or try again later.`,
    );
  }

  #resolveUrl(file: string): string {
    const rev = encodeURIComponent(this.#commit ?? this.#revision);
    return `${this.#o.endpoint}/${this.name}/resolve/${rev}/${
      file.split("/").map(encodeURIComponent).join("/")
    }`;
  }

  #cached(file: string): RangeStoreFile | undefined {
    if (!this.#o.rangeCache || !this.#commit) return undefined;
    return this.#o.rangeCache.file({
      host: this.#host,
      repo: this.name,
      commit: this.#commit,
      file,
    });
  }

  /** Where a file is and how big: HF cache, our cache's record, or the Hub's answer. null: it does not exist. */
  #info(file: string, a: { revision?: string } = {}): Promise<FileInfo | null> {
    checkFileName(file, this.name);
    let p = this.#infos.get(file);
    if (!p) {
      p = this.#lookup(file, a.revision);
      this.#infos.set(file, p);
      p.catch(() => this.#infos.delete(file)); // a failure is not remembered
    }
    return p;
  }

  async #lookup(file: string, revision?: string): Promise<FileInfo | null> {
    const commit = this.#commit;
    if (commit && this.#hf) {
      const size = await this.#hf.size(commit, file);
      if (size !== undefined) return { kind: "hf-cache", size, path: this.#hf.path(commit, file) };
      if (await this.#hf.knownMissing(commit, file)) return null;
    }
    const cached = this.#cached(file);
    const meta = await cached?.meta();
    if (meta) return meta.missing ? null : { kind: "hub", size: meta.size, etag: meta.etag ?? "" };
    if (this.#o.offline) {
      throw new GqaError(
        "network",
        `HF_HUB_OFFLINE is set, so nothing may be downloaded, and ${file} of ${this.name} (commit ${this.revision}) was never fetched by an earlier run nor is in the Hugging Face cache. Run once online (unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE) to fetch it.`,
        { cause: OFFLINE_UNKNOWN },
      );
    }
    let info;
    try {
      info = await fileDownloadInfo({
        repo: { type: "model", name: this.name },
        path: file,
        revision: revision ?? commit ?? this.#revision,
        hubUrl: this.#o.endpoint,
        fetch: this.#fetch,
      });
    } catch (e) {
      if (
        e instanceof HubError && e.status === 404 && e.hubCode !== "RepoNotFound" &&
        e.hubCode !== "RevisionNotFound" && revision === undefined
      ) {
        await this.#cached(file)?.setMeta({ missing: true });
        return null;
      }
      throw this.#wrap(e, file);
    }
    if (!info) return null;
    // The probe told the commit if we did not know it yet; the HF cache may hold it.
    if (!commit && this.#commit && this.#hf) {
      const size = await this.#hf.size(this.#commit, file);
      if (size !== undefined) {
        return { kind: "hf-cache", size, path: this.#hf.path(this.#commit, file) };
      }
    }
    const m: FileMeta = { size: info.size, etag: info.etag };
    await this.#cached(file)?.setMeta(m);
    return { kind: "hub", size: info.size, etag: info.etag };
  }

  #wrap(e: unknown, file: string): GqaError {
    if (e instanceof GqaError) return e;
    return new GqaError(
      "network",
      `Unexpected answer from ${this.#o.endpoint} while reading ${file} of ${this.name}: ${
        String((e as Error)?.message ?? e)
      }. Check HF_ENDPOINT (it must be a Hugging Face Hub), or try again later.`,
      { cause: e },
    );
  }

  async #must(file: string): Promise<FileInfo> {
    const info = await this.#info(file);
    if (!info) {
      throw new HubError(
        "not-found",
        `Not found: the file ${file} does not exist in ${this.name} at revision "${this.#revision}" (commit ${this.revision}). Check the model's file list on ${this.#o.endpoint}/${this.name}.`,
        404,
        "EntryNotFound",
      );
    }
    return info;
  }

  size(file: string): Promise<number> {
    return this.#guard(async () => (await this.#must(file)).size);
  }

  /** Offline, a file in neither cache counts as absent (nothing can tell otherwise). */
  exists(file: string): Promise<boolean> {
    return this.#guard(async () => {
      try {
        return (await this.#info(file)) !== null;
      } catch (e) {
        if (e instanceof GqaError && e.cause === OFFLINE_UNKNOWN) return false;
        throw e;
      }
    });
  }

  read(file: string, begin: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    return this.#guard(() => this.#read(file, begin, end, into));
  }

  /** A file of the HF cache, mapped into memory; null for files that come from the Hub. */
  map(file: string, begin: number, end: number): Promise<MappedBytes | null> {
    return this.#guard(async () => {
      const info = await this.#must(file);
      checkRange({ file, where: this.name, begin, end, size: info.size });
      if (info.kind !== "hf-cache") return null;
      const m = mapFileRange(info.path, begin, end);
      if (m) this.#countedFromDisk(end - begin);
      return m;
    });
  }

  /** Counts `n` bytes delivered from the HF cache (stats and the progress bar). */
  #countedFromDisk(n: number): void {
    this.stats.bytesFetched += n;
    this.stats.requests++;
    this.#o.progress?.add(n, "disk");
  }

  async #read(file: string, begin: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    const info = await this.#must(file);
    checkRange({ file, where: this.name, begin, end, size: info.size });
    if (begin === end) return into ?? new Uint8Array(0);
    if (info.kind === "hf-cache") {
      const bytes = await readFileRange(info.path, begin, end, into);
      this.#countedFromDisk(bytes.length);
      return bytes;
    }
    // Pieces of ≤ 8 MiB, each from the range cache or one request through the pool, side by
    // side, each cached as it lands; assembled in place.
    const pieces = splitRange(begin, end, this.#pieceBytes);
    const out = into ?? new Uint8Array(end - begin);
    await Promise.all(pieces.map(async ([b, e]) => {
      out.set(await this.#piece(file, info, b, e), b - begin);
    }));
    return out;
  }

  /** Bytes [begin, end) of one piece: from the range cache, else one pooled request. */
  async #piece(file: string, info: FileInfo & { kind: "hub" }, begin: number, end: number) {
    const fetchRange = (b: number, e: number) =>
      this.#pool.run(() => this.#fetchRange(file, info, b, e));
    const cached = this.#cached(file);
    if (!cached) return await fetchRange(begin, end);
    const r = await cached.read(begin, end, fetchRange);
    this.stats.bytesFromCache = (this.stats.bytesFromCache ?? 0) + r.fromCache;
    this.#o.progress?.add(r.fromCache, "disk");
    return r.bytes;
  }

  async #fetchRange(
    file: string,
    info: FileInfo & { kind: "hub" },
    begin: number,
    end: number,
  ): Promise<Uint8Array> {
    if (this.#o.offline) {
      throw new GqaError(
        "network",
        `HF_HUB_OFFLINE is set, so nothing may be downloaded, and bytes [${begin}, ${end}) of ${file} of ${this.name} are not in this tool's cache (earlier runs read other parts of the file, e.g. a lower layer). Run once online (unset HF_HUB_OFFLINE) to fetch them.`,
      );
    }
    let blob = this.#blobs.get(file);
    if (!blob) {
      try {
        blob = (await downloadFile({
          repo: { type: "model", name: this.name },
          path: file,
          revision: this.#commit ?? this.#revision,
          hubUrl: this.#o.endpoint,
          fetch: this.#fetch,
          xet: false,
          downloadInfo: { size: info.size, etag: info.etag, url: this.#resolveUrl(file) },
        }))!;
      } catch (e) {
        throw this.#wrap(e, file);
      }
      this.#blobs.set(file, blob);
    }
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(await blob.slice(begin, end).arrayBuffer());
    } catch (e) {
      throw this.#wrap(e, file);
    }
    if (bytes.length !== end - begin) {
      throw new GqaError(
        "network",
        `Asked ${this.#o.endpoint} for bytes [${begin}, ${end}) of ${file} of ${this.name} and received ${bytes.length} bytes; refusing to use them. Try again; if it persists, the server does not implement HTTP Range correctly.`,
      );
    }
    return bytes;
  }

  async readText(file: string): Promise<string> {
    const bytes = await this.read(file, 0, await this.size(file));
    return decodeText(bytes, `${file} of ${this.name}`);
  }

  /** Sets the progress bar's label (which layer is being read or computed). */
  status(label: string): void {
    this.#o.progress?.setLabel(label);
  }

  expectBytes(total: number): void {
    this.#o.progress?.setTotal(total);
  }

  close(): void {
    this.#o.progress?.finish();
  }
}
