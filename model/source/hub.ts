/**
 * A model on the Hugging Face Hub (or any server speaking its protocol: `HF_ENDPOINT`),
 * read by HTTP Range requests so that only the bytes a layer needs ever travel.
 *
 * Requests go through `@huggingface/hub`: `fileDownloadInfo` (a `GET …/resolve/{rev}/{file}`
 * with `Range: bytes=0-0`, whose answer carries the size in `Content-Range` and the commit
 * in `X-Repo-Commit`) and `downloadFile(…).slice(begin, end)` (a `GET` with
 * `Range: bytes=begin-(end-1)`). The library is given our {@linkcode hubFetch}, which is
 * where the network policy lives:
 *
 * - **The token goes to the Hub origin only.** Redirects are followed by hand; the
 *   `Authorization` header is added to a request only when its origin is the Hub's, so a
 *   redirect to the CDN (the real Hub sends every large file there) never sees it. The
 *   library itself never holds the token, so it cannot leak it either.
 * - **Retries.** 429 and 5xx answers and failed connections are retried with exponential
 *   backoff (`baseDelayMs · 2^k`, ±50% jitter, at most `maxDelayMs`, `Retry-After` honoured
 *   up to that cap), then reported as one clear "network" error.
 * - **Exact bytes.** A body cut short or a connection reset mid-body is resumed with a new
 *   Range request from the next byte; a body longer than asked is cut to the asked bytes
 *   (the rest is never read); a server that ignores Range and answers 200 with the whole
 *   file is read only up to the end of the asked range and then cancelled (skipping the
 *   bytes before it without keeping them), so memory stays at the size of the answer.
 *
 * Which files are read from where, per file: the Hugging Face cache's snapshot when it has
 * the file, else this tool's range cache for the ranges it holds, else the network. With
 * `offline` (`HF_HUB_OFFLINE=1`) the network is never touched.
 *
 * Reads use the resolve URL with the COMMIT sha (not the branch), so a branch that moves
 * during a run cannot mix two versions of a model.
 * @module
 */
import { downloadFile, fileDownloadInfo } from "@huggingface/hub";
import { GqaError, type GqaErrorCode } from "./errors.ts";
import type { ByteSource, SourceStats } from "./source.ts";
import { COMMIT_RE, HfCacheRepo } from "./hf_cache.ts";
import { type CachedFile, type FileMeta, RangeCache } from "./range_cache.ts";
import { checkFileName, checkRange, decodeText, readFileRange } from "./local_source.ts";
import type { Progress } from "./progress.ts";

/** How hard to try before reporting a network failure. */
export interface RetryOptions {
  /** Tries per request, the first included (default 6). */
  attempts?: number;
  /** First backoff delay in ms (default 500); doubles after each failure. */
  baseDelayMs?: number;
  /** Longest delay in ms, also the cap on `Retry-After` (default 20000). */
  maxDelayMs?: number;
  /** A request whose answer (headers, or the next body chunk) takes longer than this is abandoned and resumed (default 60000). */
  timeoutMs?: number;
}

const DEFAULT_RETRY: Required<RetryOptions> = {
  attempts: 6,
  baseDelayMs: 500,
  maxDelayMs: 20_000,
  timeoutMs: 60_000,
};
const MAX_REDIRECTS = 10;
/** Answers up to this size are read whole inside hubFetch (so an unread body never leaks a connection). */
const BUFFER_BELOW = 1 << 20;

/** An HTTP failure from the Hub, with what it said (for callers that branch on it). */
export class HubError extends GqaError {
  constructor(
    code: GqaErrorCode,
    message: string,
    readonly status: number,
    /** The Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo…). */
    readonly hubCode?: string,
    options?: ErrorOptions,
  ) {
    super(code, message, options);
  }
}

/** Options of {@linkcode hubFetch}. */
export interface HubFetchOptions {
  /** The Hub's base URL; only its origin ever receives the token. */
  endpoint: string;
  /** Bearer token (never logged, never put in a message). */
  token?: string;
  retry?: RetryOptions;
  /** The underlying fetch (default globalThis.fetch). */
  fetch?: typeof fetch;
  /** Called for every HTTP request made (each redirect hop and each retry). */
  onRequest?: () => void;
  /** Called with the size of every body chunk received (including bytes later skipped). */
  onBytes?: (n: number) => void;
  /** Called with the headers of every answer from the Hub origin. */
  onHubHeaders?: (headers: Headers, url: URL) => void;
  /**
   * Turns a final non-retryable HTTP error into a GqaError (default: a generic one). `url`
   * is the URL asked for; `finalUrl` the one that answered (after redirects).
   */
  errorFor?: (a: { status: number; hubCode?: string; url: URL; finalUrl: URL }) => GqaError;
  /** Says what a request was for, in messages (default: the URL's path). */
  describe?: (url: URL) => string;
  /** Sleep (tests pass a fake one). */
  sleep?: (ms: number) => Promise<void>;
}

/** A parsed `Range: bytes=a-b` request header (end exclusive; undefined = to the end). */
function parseRangeHeader(h: string | null): { start: number; end?: number } | undefined {
  const m = h ? /^bytes=(\d+)-(\d*)$/.exec(h.trim()) : null;
  if (!m) return undefined;
  return { start: Number(m[1]), end: m[2] === "" ? undefined : Number(m[2]) + 1 };
}

/** A parsed `Content-Range: bytes s-e/total` (end exclusive). */
function parseContentRange(
  h: string | null,
): { start: number; end: number; total?: number } | undefined {
  const m = h ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(h.trim()) : null;
  if (!m) return undefined;
  return {
    start: Number(m[1]),
    end: Number(m[2]) + 1,
    total: m[3] === "*" ? undefined : Number(m[3]),
  };
}

const HUB_HEADERS = ["x-repo-commit", "x-linked-etag", "x-linked-size", "x-error-code", "etag"];

/**
 * A `fetch` for `@huggingface/hub` that adds the token only for the Hub's origin, follows
 * redirects itself, retries, resumes and returns exactly the bytes a Range asked for.
 * Errors are thrown as GqaError (HTTP ones as {@linkcode HubError}).
 * @example
 * ```ts
 * const f = hubFetch({ endpoint: "https://huggingface.co", token: Deno.env.get("HF_TOKEN") });
 * const info = await fileDownloadInfo({ repo: "gpt2", path: "config.json", fetch: f });
 * ```
 */
export function hubFetch(o: HubFetchOptions): typeof fetch {
  const retry = { ...DEFAULT_RETRY, ...o.retry };
  const hubOrigin = new URL(o.endpoint).origin;
  const base = o.fetch ?? globalThis.fetch;
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const describe = o.describe ?? ((u: URL) => u.pathname);
  const errorFor = o.errorFor ??
    ((a) =>
      new HubError(
        a.status === 401 || a.status === 403 ? "auth" : a.status === 404 ? "not-found" : "network",
        `${hubOrigin} answered HTTP ${a.status}${a.hubCode ? ` (${a.hubCode})` : ""} for ${
          describe(a.url)
        }.`,
        a.status,
        a.hubCode,
      ));

  /** One logical request: redirects followed by hand, the token only for the Hub origin. */
  async function hops(start: URL, method: string, headers: Headers) {
    let url = start;
    const fromHub = new Headers();
    for (let i = 0; i <= MAX_REDIRECTS; i++) {
      const h = new Headers(headers);
      h.delete("authorization");
      if (o.token && url.origin === hubOrigin) h.set("authorization", `Bearer ${o.token}`);
      o.onRequest?.();
      const ac = new AbortController();
      const abort = () => ac.abort(new Error(`no answer within ${retry.timeoutMs} ms`));
      const timer = setTimeout(abort, retry.timeoutMs);
      let res: Response;
      try {
        res = await base(url, { method, headers: h, redirect: "manual", signal: ac.signal });
      } finally {
        clearTimeout(timer);
      }
      if (url.origin === hubOrigin) {
        o.onHubHeaders?.(res.headers, url);
        for (const k of HUB_HEADERS) {
          const v = res.headers.get(k);
          if (v !== null && !fromHub.has(k)) fromHub.set(k, v);
        }
      }
      const loc = res.headers.get("location");
      if ([301, 302, 303, 307, 308].includes(res.status) && loc) {
        await res.body?.cancel().catch(() => {});
        url = new URL(loc, url);
        if (res.status === 303) method = "GET";
        continue;
      }
      return { res, fromHub, abort, finalUrl: url };
    }
    throw new GqaError(
      "network",
      `More than ${MAX_REDIRECTS} redirects while fetching ${
        describe(start)
      } from ${hubOrigin}; the server (or a proxy) is misconfigured.`,
    );
  }

  /** Failure accounting shared by status retries and body resumes of one call. */
  function budget(what: string) {
    let failures = 0;
    return {
      reset() {
        failures = 0;
      },
      async fail(reason: string, retryAfterS?: number, cause?: unknown): Promise<void> {
        failures++;
        if (failures >= retry.attempts) {
          throw new GqaError(
            "network",
            `Could not fetch ${what} from ${hubOrigin}: ${reason}, ${failures} time${
              failures > 1 ? "s" : ""
            } in a row, and gave up. The Hub (or your connection to it) is failing or rate-limiting; wait a minute and run again (ranges already fetched are cached and will not be fetched twice), or check HF_ENDPOINT and your network.`,
            { cause },
          );
        }
        let ms = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (failures - 1));
        ms = ms * (0.5 + Math.random() * 0.5);
        if (retryAfterS !== undefined && Number.isFinite(retryAfterS)) {
          ms = Math.min(retry.maxDelayMs, Math.max(ms, retryAfterS * 1000));
        }
        await sleep(ms);
      },
    };
  }

  /** Sends until an OK answer (2xx), retrying 429/5xx and connection failures. */
  async function send(url: URL, method: string, headers: Headers, b: ReturnType<typeof budget>) {
    while (true) {
      let r;
      try {
        r = await hops(url, method, headers);
      } catch (e) {
        if (e instanceof GqaError) throw e;
        await b.fail(`the connection failed (${(e as Error).message ?? e})`, undefined, e);
        continue;
      }
      const { res } = r;
      if (res.ok) return r;
      await res.body?.cancel().catch(() => {});
      if (res.status === 429 || res.status >= 500) {
        const ra = res.headers.get("retry-after");
        await b.fail(`HTTP ${res.status}`, ra !== null ? Number(ra) : undefined);
        continue;
      }
      throw errorFor({
        status: res.status,
        hubCode: r.fromHub.get("x-error-code") ?? res.headers.get("x-error-code") ?? undefined,
        url,
        finalUrl: r.finalUrl,
      });
    }
  }

  return async function fetchForHub(input: RequestInfo | URL, init?: RequestInit) {
    const url = new URL(input instanceof Request ? input.url : String(input));
    const method = (init?.method ?? (input instanceof Request ? input.method : "GET"))
      .toUpperCase();
    const headers = new Headers(input instanceof Request ? input.headers : undefined);
    new Headers(init?.headers).forEach((v, k) => headers.set(k, v));
    const asked = parseRangeHeader(headers.get("range"));
    const b = budget(
      `${describe(url)}${asked ? ` (bytes ${asked.start}-${asked.end ?? ""})` : ""}`,
    );

    // A whole-file GET is sent as `Range: bytes=0-` too: the answer then says where its
    // bytes are (resumable), and servers do not compress ranges.
    const sent = new Headers(headers);
    if (!asked && method === "GET") sent.set("range", "bytes=0-");
    const first = await send(url, method, sent, b);
    const head = new Headers(first.res.headers);
    first.fromHub.forEach((v, k) => {
      if (!head.has(k)) head.set(k, v);
    });
    const ctype = head.get("content-type") ?? "";
    if (method === "HEAD" || !first.res.body || first.res.status === 204 || ctype.includes("xet")) {
      // No body, or a small JSON description (the xet file info): hand it over as it is, read.
      const body = method === "HEAD" ? null : new Uint8Array(await first.res.arrayBuffer());
      return new Response(body, { status: first.res.status, headers: head });
    }

    // Which absolute bytes [start, end) the caller wants, end unknown until an answer says.
    const start = asked?.start ?? 0;
    let end = asked?.end;
    let total: number | undefined;
    const where = (res: Response) => {
      // The absolute offset of the answer's first byte, and the file size if it says.
      if (res.status === 206) {
        const cr = parseContentRange(res.headers.get("content-range"));
        if (!cr) return undefined;
        return { first: cr.start, total: cr.total, length: cr.end - cr.start };
      }
      // With Content-Encoding, fetch hands over decoded bytes and Content-Length counts
      // encoded ones: the length is unknown then, and the body is read to its end.
      const ce = (res.headers.get("content-encoding") ?? "identity").toLowerCase();
      const cl = ce === "identity" ? res.headers.get("content-length") : null;
      const n = cl !== null && /^\d+$/.test(cl) ? Number(cl) : undefined;
      return { first: 0, total: n, length: n };
    };
    const w0 = where(first.res);
    total = w0?.total;
    if (total !== undefined) end = end === undefined ? total : Math.min(end, total);

    async function* chunks(): AsyncGenerator<Uint8Array> {
      let pos = start;
      let res: Response | undefined = first.res;
      let abort = first.abort;
      while (end === undefined || pos < end) {
        if (!res) {
          const h = new Headers(headers);
          h.set("range", `bytes=${pos}-${end === undefined ? "" : end - 1}`);
          ({ res, abort } = await send(url, method, h, b));
        }
        const w = res.body ? where(res) : undefined;
        if (!w || w.first > pos) {
          await res.body?.cancel().catch(() => {});
          res = undefined;
          await b.fail(
            w
              ? `the answer started at byte ${w.first}, not ${pos}`
              : "an answer without Content-Range",
          );
          continue;
        }
        if (w.total !== undefined) {
          total ??= w.total;
          end = end === undefined ? w.total : Math.min(end, w.total);
        }
        let at = w.first; // absolute offset of the next byte this body will give
        let clean = false;
        let error: unknown;
        const reader = res.body!.getReader();
        try {
          while (end === undefined || pos < end) {
            const timer = setTimeout(abort, retry.timeoutMs); // a stalled body is resumed
            let r;
            try {
              r = await reader.read();
            } finally {
              clearTimeout(timer);
            }
            const { done, value } = r;
            if (done) {
              clean = true;
              break;
            }
            o.onBytes?.(value.length);
            const from = Math.max(pos, at), to = Math.min(at + value.length, end ?? Infinity);
            at += value.length;
            if (to > from) {
              pos = to;
              b.reset();
              yield value.subarray(from - (at - value.length), to - (at - value.length));
            }
          }
        } catch (e) {
          error = e;
        } finally {
          if (!clean) await reader.cancel().catch(() => {});
          reader.releaseLock();
        }
        res = undefined;
        if (end === undefined ? clean : pos >= end) return;
        if (error instanceof GqaError) throw error;
        await b.fail(
          error
            ? `the connection broke after byte ${pos} (${(error as Error).message ?? error})`
            : `the answer ended at byte ${pos}, before byte ${end}`,
          undefined,
          error,
        );
      }
    }

    const outHead = new Headers(head);
    outHead.delete("content-length");
    outHead.delete("content-encoding");
    let status = first.res.status;
    if (asked && end !== undefined) {
      status = 206;
      outHead.set("content-range", `bytes ${start}-${end - 1}/${total ?? "*"}`);
    } else if (!asked) {
      status = 200; // the caller asked for the whole file: answer as if no Range was sent
      outHead.delete("content-range");
    }
    if (end !== undefined && end - start <= BUFFER_BELOW) {
      const out = new Uint8Array(Math.max(0, end - start));
      let n = 0;
      for await (const c of chunks()) {
        out.set(c, n);
        n += c.length;
      }
      outHead.set("content-length", String(n));
      return new Response(out.subarray(0, n), { status, headers: outHead });
    }
    return new Response(ReadableStream.from(chunks()), { status, headers: outHead });
  };
}

/**
 * The token as it will be sent: surrounding whitespace (a trailing newline from a file or a
 * paste) removed; anything else but visible ASCII is refused, without echoing it (an
 * invalid header value would otherwise end up, whole, in fetch's error message).
 */
export function cleanToken(token: string | undefined): string | undefined {
  const t = token?.trim();
  if (!t) return undefined;
  if (!/^[\x21-\x7e]+$/.test(t)) {
    throw new GqaError(
      "auth",
      `HF_TOKEN (or --token) contains spaces, control or non-ASCII characters, so it cannot be a Hugging Face token (those look like hf_ followed by letters and digits). Copy it again from https://huggingface.co/settings/tokens and run \`export HF_TOKEN=hf_...\`.`,
    );
  }
  return t;
}

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
  /** The Hugging Face cache's hub folder, if it should be read. */
  hfCacheDir?: string;
  /** This tool's range cache, if it should be used. */
  rangeCache?: RangeCache;
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
  readonly #hf?: HfCacheRepo;
  readonly #infos = new Map<string, Promise<FileInfo | null>>();
  readonly #blobs = new Map<string, Blob>();

  private constructor(o: HubSourceOptions) {
    this.#o = o;
    this.name = o.repo;
    this.#revision = o.revision;
    this.#host = new URL(o.endpoint).host;
    this.#hf = o.hfCacheDir ? new HfCacheRepo({ cacheDir: o.hfCacheDir, repo: o.repo }) : undefined;
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
            o.hfCacheDir ?? "not used"
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

  #cached(file: string): CachedFile | undefined {
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
