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
 * range_cache.ts's), so this file imports neither; network reads of a range go through
 * `#fetchRange`, one call of the fetch per range.
 *
 * Reads use the resolve URL with the COMMIT sha (not the branch), so a branch that moves
 * during a run cannot mix two versions of a model.
 * @module
 */
import { downloadFile, fileDownloadInfo } from "@huggingface/hub";
import { GqaError } from "../../errors.ts";
import {
  type ByteSource,
  checkFileName,
  checkRange,
  COMMIT_RE,
  decodeText,
  type FileMeta,
  type HfSnapshots,
  type RangeStore,
  type RangeStoreFile,
  readFileRange,
  type SourceStats,
} from "./base.ts";
import { HubError, hubFetch, type RetryOptions } from "./hub_fetch.ts";
import type { Progress } from "./progress.ts";
import { cleanToken } from "./token.ts";

/** Options of {@linkcode HubSource.open}. */
export interface HubSourceOptions {
  /** "owner/name". */
  repo: string;
  /** Branch, tag or commit sha. */
  revision: string;
  token?: string;
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
  readonly stats: SourceStats = { bytesFetched: 0, requests: 0, bytesFromCache: 0 };
  #revision: string;
  #commit?: string;
  readonly #o: HubSourceOptions;
  readonly #fetch: typeof fetch;
  readonly #host: string;
  readonly #hf?: HfSnapshots;
  readonly #infos = new Map<string, Promise<FileInfo | null>>();
  readonly #blobs = new Map<string, Blob>();

  private constructor(o: HubSourceOptions) {
    this.#o = o;
    this.name = o.repo;
    this.#revision = o.revision;
    this.#host = new URL(o.endpoint).host;
    this.#hf = o.hfCache;
    this.#fetch = hubFetch({
      endpoint: o.endpoint,
      token: o.token,
      retry: o.retry,
      fetch: o.fetch,
      onRequest: () => this.stats.requests++,
      onBytes: (n) => {
        this.stats.bytesFetched += n;
        o.progress?.add(n);
      },
      onHubHeaders: (h) => {
        const sha = h.get("x-repo-commit");
        if (!this.#commit && sha && COMMIT_RE.test(sha)) this.#commit = sha;
      },
      errorFor: (a) => this.#httpError(a),
      describe: (u) => this.#describe(u),
    });
  }

  /** Commit sha when known (always, after `open`, unless the server does not send one). */
  get revision(): string {
    return this.#commit ?? this.#revision;
  }

  /**
   * Resolves the revision to a commit: a sha as given, else the HF cache's ref, else (offline)
   * our cache's ref, else one request to the Hub (the size probe of config.json).
   */
  static async open(o: HubSourceOptions): Promise<HubSource> {
    const s = new HubSource({ ...o, token: cleanToken(o.token) });
    const rev = o.revision;
    if (COMMIT_RE.test(rev)) s.#commit = rev;
    s.#commit ??= await s.#hf?.resolve(rev);
    if (!s.#commit && o.offline) {
      s.#commit = await o.rangeCache?.readRef(s.#host, o.repo, rev);
      if (!s.#commit) {
        throw new GqaError(
          "network",
          `HF_HUB_OFFLINE is set, so nothing may be downloaded, but ${o.repo} at revision "${rev}" is in neither the Hugging Face cache (${
            o.hfCache?.cacheDir ?? "not used"
          }) nor this tool's cache (${
            o.rangeCache?.root ?? "not used"
          }). Run once online (unset HF_HUB_OFFLINE), or download the model first with \`huggingface-cli download ${o.repo}\`, or pass a local folder with --model.`,
        );
      }
    }
    if (!s.#commit) {
      // One small request: the size probe of config.json tells the commit (X-Repo-Commit).
      await s.#info("config.json", { revision: rev });
      if (s.#commit) await o.rangeCache?.writeRef(s.#host, o.repo, rev, s.#commit);
    }
    return s;
  }

  #describe(u: URL): string {
    const m = /\/resolve\/[^/]+\/(.+)$/.exec(u.pathname);
    return m ? `${decodeURIComponent(m[1])} of ${this.name}` : `${u.pathname}`;
  }

  #httpError(a: { status: number; hubCode?: string; url: URL; finalUrl: URL }): GqaError {
    const { status, hubCode } = a;
    const repo = this.name, rev = this.#revision;
    const m = /\/resolve\/[^/]+\/(.+)$/.exec(a.url.pathname);
    const file = m ? decodeURIComponent(m[1]) : a.url.pathname;
    if (a.finalUrl.origin !== a.url.origin) {
      // The Hub redirected to a download server (CDN), which got no token: not an auth problem.
      // Only its host is named: the full URL carries a signature.
      return new HubError(
        "network",
        `The download server ${a.finalUrl.host}, to which the Hub redirected the request for ${file} of ${repo}, answered HTTP ${status}. Run again (a fresh redirect is asked for every read); if it persists, the Hub's storage is failing for this file: try later.`,
        status,
        hubCode,
      );
    }
    const page = `${this.#o.endpoint}/${repo}`;
    const how =
      `Create a read token at https://huggingface.co/settings/tokens and run \`export HF_TOKEN=hf_...\` (or pass --token) before running again.`;
    if (status === 401) {
      return new HubError(
        "auth",
        `The Hub refused to serve ${file} of ${repo} without valid credentials (HTTP 401${
          hubCode ? `, ${hubCode}` : ""
        }). ${
          this.#o.token
            ? "A token was sent (from HF_TOKEN or --token) but the Hub did not accept it: it may be mistyped, expired or revoked."
            : "No token was sent: HF_TOKEN is not set."
        } If the model is gated (meta-llama models are), open ${page} while logged in and accept its licence, then use a token of that account. ${how} (The Hub also answers 401 for a repo that does not exist or is private: check the spelling of --model.)`,
        status,
        hubCode,
      );
    }
    if (status === 403) {
      return new HubError(
        "auth",
        `The Hub denied access to ${file} of ${repo} (HTTP 403${
          hubCode ? `, ${hubCode}` : ""
        }): the token in HF_TOKEN was accepted but may not read this repo. If the model is gated (meta-llama models are), open ${page} with that account, accept the licence and wait for the request to be approved; a fine-grained token also needs "read access to public gated repos". ${how}`,
        status,
        hubCode,
      );
    }
    if (status === 404) {
      const what = hubCode === "RepoNotFound"
        ? `the repo ${repo} does not exist on ${this.#o.endpoint} (check the spelling of --model, or HF_ENDPOINT)`
        : hubCode === "RevisionNotFound"
        ? `the revision "${rev}" does not exist in ${repo} (check --revision: a branch, a tag or a commit sha)`
        : `the file ${file} does not exist in ${repo} at revision "${rev}" (is it a transformers checkpoint with safetensors weights?)`;
      return new HubError("not-found", `Not found (HTTP 404): ${what}.`, status, hubCode);
    }
    return new HubError(
      "network",
      `The Hub answered HTTP ${status}${
        hubCode ? ` (${hubCode})` : ""
      } for ${file} of ${repo}, which this tool does not know how to handle. Check HF_ENDPOINT, or try again later.`,
      status,
      hubCode,
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
        `HF_HUB_OFFLINE is set, so nothing may be downloaded, and ${file} of ${this.name} (commit ${this.revision}) was never fetched by an earlier run nor is in the Hugging Face cache. Run once online (unset HF_HUB_OFFLINE) to fetch it.`,
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
    const msg = String((e as Error)?.message ?? e);
    const token = this.#o.token;
    return new GqaError(
      "network",
      `Unexpected answer from ${this.#o.endpoint} while reading ${file} of ${this.name}: ${
        token ? msg.split(token).join("hf_***") : msg
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

  async size(file: string): Promise<number> {
    return (await this.#must(file)).size;
  }

  async exists(file: string): Promise<boolean> {
    return (await this.#info(file)) !== null;
  }

  async read(file: string, begin: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    const bytes = await this.#read(file, begin, end, into);
    if (!into || bytes === into) return bytes;
    into.set(bytes);
    return into;
  }

  async #read(file: string, begin: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    const info = await this.#must(file);
    checkRange({ file, where: this.name, begin, end, size: info.size });
    if (begin === end) return new Uint8Array(0);
    if (info.kind === "hf-cache") {
      const bytes = await readFileRange(info.path, begin, end, into);
      this.stats.bytesFetched += bytes.length;
      this.stats.requests++;
      this.#o.progress?.add(bytes.length);
      return bytes;
    }
    const cached = this.#cached(file);
    if (!cached) return await this.#fetchRange(file, info, begin, end);
    const r = await cached.read(begin, end, (b, e) => this.#fetchRange(file, info, b, e));
    this.stats.bytesFromCache = (this.stats.bytesFromCache ?? 0) + r.fromCache;
    this.#o.progress?.add(r.fromCache);
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

  expectBytes(total: number): void {
    this.#o.progress?.setTotal(total);
  }

  close(): void {
    this.#o.progress?.finish();
  }
}
