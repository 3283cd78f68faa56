/**
 * The network policy of Hub reads: a `fetch` for `@huggingface/hub` (which is given
 * {@linkcode hubFetch} instead of the global one). One call goes through three steps,
 * each a method of {@linkcode HubFetcher}, like the stages of a forward pass:
 *
 * 1. **Redirects and auth** ({@linkcode HubFetcher.hops}). Redirects are followed by hand;
 *    the `Authorization` header is added to a request only when its origin is the Hub's,
 *    so a redirect to the CDN (the real Hub sends every large file there) never sees the
 *    token. The library itself never holds the token, so it cannot leak it either. Each
 *    file is resolved once per run: later range reads reuse its CDN URL until the CDN
 *    says it has expired (403/410), then the file is resolved again.
 * 2. **Retry policy** ({@linkcode HubFetcher.send}, with retry.ts's `RetryBudget`). 429
 *    and 5xx answers and failed connections are retried with exponential backoff (a
 *    server's `Retry-After` / `RateLimit` wait honoured, see retry.ts), then reported as
 *    one clear "network" error; other HTTP errors become a {@linkcode HubError} at once,
 *    carrying the Hub's `X-Error-Code` and `X-Error-Message`. Errors leave
 *    {@linkcode hubFetch} through token.ts's `redactToken`.
 * 3. **Body and range checks** ({@linkcode RangeRead}). A body cut short or a connection
 *    reset mid-body is resumed with a new Range request from the next byte; a body longer
 *    than asked is cut to the asked bytes (the rest is never read); a server that ignores
 *    Range and answers 200 with the whole file is read only up to the end of the asked
 *    range and then cancelled (skipping the bytes before it without keeping them), so
 *    memory stays at the size of the answer.
 *
 * The download pool (pool.ts: large reads split into pieces fetched side by side) is
 * above this file: each piece is one call of this fetch, with its own retries and resumes.
 * @module
 */
import { GqaError, type GqaErrorCode } from "../../errors.ts";
import { DEFAULT_RETRY, RetryBudget, type RetryOptions } from "./retry.ts";
import { redactToken } from "./token.ts";

export type { RetryOptions };

const MAX_REDIRECTS = 10;
/** Answers up to this size are read whole inside hubFetch (so an unread body never leaks a connection). */
const BUFFER_BELOW = 1 << 20;
/** Headers from the Hub's own answers that are kept even when a redirect's answer lacks them. */
const HUB_HEADERS = [
  "x-repo-commit",
  "x-linked-etag",
  "x-linked-size",
  "x-error-code",
  "x-error-message",
  "etag",
];

/** An HTTP failure from the Hub, with what it said (for callers that branch on it). */
export class HubError extends GqaError {
  constructor(
    code: GqaErrorCode,
    message: string,
    readonly status: number,
    /** The Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo…). */
    readonly hubCode?: string,
    options?: ErrorOptions & { hubMessage?: string },
  ) {
    super(code, message, options);
    this.hubMessage = options?.hubMessage;
  }

  /** The Hub's `X-Error-Message`, when it sent one. */
  readonly hubMessage?: string;
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
  errorFor?: (a: HttpFailure) => GqaError;
  /** Says what a request was for, in messages (default: the URL's path). */
  describe?: (url: URL) => string;
  /** Sleep (tests pass a fake one). */
  sleep?: (ms: number) => Promise<void>;
  /** Called when a remembered download URL had expired and the file is resolved again. */
  onReresolve?: () => void;
  /** Told before every wait between tries (ms, and why: "rate limited by the Hub", "HTTP 503"…). */
  onWait?: (ms: number, reason: string) => void;
}

/** A final HTTP error as {@linkcode HubFetchOptions.errorFor} receives it. */
export interface HttpFailure {
  status: number;
  /** The Hub's `X-Error-Code` (GatedRepo, RepoNotFound, RevisionNotFound, EntryNotFound…). */
  hubCode?: string;
  /** The Hub's `X-Error-Message` ("Invalid credentials in Authorization header"…). */
  hubMessage?: string;
  /** The URL asked for. */
  url: URL;
  /** The URL that answered (after redirects). */
  finalUrl: URL;
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

/** Where an answer's body sits in the file: its first byte's offset, and the size if said. */
function answerPlace(
  res: Response,
): { first: number; total?: number; length?: number } | undefined {
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
}

/** One request as the library made it. */
interface HubRequest {
  url: URL;
  method: string;
  headers: Headers;
  /** The Range the caller asked for, if any. */
  asked?: { start: number; end?: number };
}

/** An OK answer after redirects, with the Hub's own headers and a way to abort its body. */
export interface HubAnswer {
  res: Response;
  /** Headers from the Hub origin's answers along the way (commit, ETag, size, error code). */
  fromHub: Headers;
  /** Aborts the request (used when its body stalls). */
  abort: () => void;
  /** The URL that answered, after redirects. */
  finalUrl: URL;
}

function readRequest(input: RequestInfo | URL, init?: RequestInit): HubRequest {
  const url = new URL(input instanceof Request ? input.url : String(input));
  const method = (init?.method ?? (input instanceof Request ? input.method : "GET"))
    .toUpperCase();
  const headers = new Headers(input instanceof Request ? input.headers : undefined);
  new Headers(init?.headers).forEach((v, k) => headers.set(k, v));
  return { url, method, headers, asked: parseRangeHeader(headers.get("range")) };
}

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
  const fetcher = new HubFetcher(o);
  // The boundary: whatever goes wrong below, the error leaves without the token.
  return (input: RequestInfo | URL, init?: RequestInit) =>
    fetcher.fetch(input, init).catch((e) => {
      throw redactToken(e, o.token);
    });
}

/** The three steps of {@linkcode hubFetch}; one instance per source. */
export class HubFetcher {
  readonly o: HubFetchOptions;
  readonly retry: Required<RetryOptions>;
  readonly hubOrigin: string;
  readonly #base: typeof fetch;
  readonly #sleep: (ms: number) => Promise<void>;
  readonly describe: (url: URL) => string;
  /** Resolve URL → the download URL the Hub redirected it to (signed, never logged). */
  readonly #redirects = new Map<string, URL>();

  constructor(o: HubFetchOptions) {
    this.o = o;
    this.retry = { ...DEFAULT_RETRY, ...o.retry };
    this.hubOrigin = new URL(o.endpoint).origin;
    this.#base = o.fetch ?? globalThis.fetch;
    this.#sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
    this.describe = o.describe ?? ((u: URL) => u.pathname);
  }

  /** One call of the library's fetch: send (with retries), then hand over exactly the asked bytes. */
  async fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
    const req = readRequest(input, init);
    const { url, method, asked } = req;
    const budget = this.budget(
      `${this.describe(url)}${asked ? ` (bytes ${asked.start}-${asked.end ?? ""})` : ""}`,
    );
    // A whole-file GET is sent as `Range: bytes=0-` too: the answer then says where its
    // bytes are (resumable), and servers do not compress ranges.
    const sent = new Headers(req.headers);
    if (!asked && method === "GET") sent.set("range", "bytes=0-");
    const first = await this.send(url, method, sent, budget);
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
    return await new RangeRead(this, req, budget, first).respond(head);
  }

  // --- step 1: redirects and auth -------------------------------------------------------

  /**
   * One logical request: redirects followed by hand, the token only for the Hub origin.
   * A range read of a file the Hub already redirected goes straight to the remembered
   * download URL (one resolve per file per run, within the Hub's rate limits); when that
   * URL has expired (403 or 410 from the download server) the file is resolved again.
   */
  async hops(start: URL, method: string, headers: Headers): Promise<HubAnswer> {
    const probe = headers.get("range") === "bytes=0-0"; // size probes need the Hub's headers
    const memo = method === "GET" && !probe ? this.#redirects.get(start.href) : undefined;
    if (memo) {
      const { res, abort } = await this.#request(memo, method, this.#authorize(memo, headers));
      if (res.status !== 403 && res.status !== 410) {
        return { res, fromHub: new Headers(), abort, finalUrl: memo };
      }
      await res.body?.cancel().catch(() => {});
      this.#redirects.delete(start.href); // expired: ask the Hub again
      this.o.onReresolve?.();
    }
    const answer = await this.#follow(start, method, headers);
    const { res, finalUrl } = answer;
    if (res.ok && start.origin === this.hubOrigin && finalUrl.origin !== this.hubOrigin) {
      this.#redirects.set(start.href, finalUrl);
    }
    return answer;
  }

  /** Follows redirects from `start` until an answer that is not one. */
  async #follow(start: URL, method: string, headers: Headers): Promise<HubAnswer> {
    let url = start;
    const fromHub = new Headers();
    for (let i = 0; i <= MAX_REDIRECTS; i++) {
      const { res, abort } = await this.#request(url, method, this.#authorize(url, headers));
      if (url.origin === this.hubOrigin) {
        this.o.onHubHeaders?.(res.headers, url);
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
        this.describe(start)
      } from ${this.hubOrigin}; the server (or a proxy) is misconfigured.`,
    );
  }

  /** The headers for one hop: the caller's, plus the token when (and only when) it goes to the Hub. */
  #authorize(url: URL, headers: Headers): Headers {
    const h = new Headers(headers);
    h.delete("authorization");
    if (this.o.token && url.origin === this.hubOrigin) {
      h.set("authorization", `Bearer ${this.o.token}`);
    }
    return h;
  }

  /** One HTTP request, abandoned if its headers take longer than `timeoutMs`. */
  async #request(url: URL, method: string, headers: Headers) {
    this.o.onRequest?.();
    const ac = new AbortController();
    const abort = () => ac.abort(new Error(`no answer within ${this.retry.timeoutMs} ms`));
    const timer = setTimeout(abort, this.retry.timeoutMs);
    try {
      const res = await this.#base(url, { method, headers, redirect: "manual", signal: ac.signal });
      return { res, abort };
    } finally {
      clearTimeout(timer);
    }
  }

  // --- step 2: retry policy -------------------------------------------------------------

  /** A fresh failure count for one logical request about `what`. */
  budget(what: string): RetryBudget {
    return new RetryBudget({
      retry: this.retry,
      what,
      origin: this.hubOrigin,
      sleep: this.#sleep,
      onWait: this.o.onWait,
    });
  }

  /** Sends until an OK answer (2xx), retrying 429/5xx and connection failures. */
  async send(url: URL, method: string, headers: Headers, b: RetryBudget): Promise<HubAnswer> {
    while (true) {
      let r;
      try {
        r = await this.hops(url, method, headers);
      } catch (e) {
        if (e instanceof GqaError) throw e;
        await b.fail(`the connection failed (${(e as Error).message ?? e})`, { cause: e });
        continue;
      }
      const { res } = r;
      if (res.ok) return r;
      await res.body?.cancel().catch(() => {});
      if (res.status === 429 || res.status >= 500) {
        await b.fail(`HTTP ${res.status}`, { headers: res.headers, status: res.status });
        continue;
      }
      const said = (k: string) => r.fromHub.get(k) ?? res.headers.get(k) ?? undefined;
      throw this.#errorFor({
        status: res.status,
        hubCode: said("x-error-code"),
        hubMessage: said("x-error-message"),
        url,
        finalUrl: r.finalUrl,
      });
    }
  }

  /** A final, non-retryable HTTP error, explained by the caller's `errorFor` or generically. */
  #errorFor(a: HttpFailure): GqaError {
    if (this.o.errorFor) return this.o.errorFor(a);
    return new HubError(
      a.status === 401 || a.status === 403 ? "auth" : a.status === 404 ? "not-found" : "network",
      `${this.hubOrigin} answered HTTP ${a.status}${a.hubCode ? ` (${a.hubCode})` : ""} for ${
        this.describe(a.url)
      }${a.hubMessage ? `: "${a.hubMessage.slice(0, 300)}"` : ""}.`,
      a.status,
      a.hubCode,
    );
  }
}

// --- step 3: body and range checks --------------------------------------------------------

/**
 * The absolute bytes [start, end) one call asked for (end unknown until an answer says),
 * read across as many answers as it takes: the first one, then a new Range request from
 * the next byte after every break.
 */
class RangeRead {
  /** The next absolute byte to hand over. */
  pos: number;
  end?: number;
  /** The file's size, once an answer said. */
  total?: number;
  readonly start: number;

  constructor(
    readonly f: HubFetcher,
    readonly req: HubRequest,
    readonly budget: RetryBudget,
    readonly first: HubAnswer,
  ) {
    this.start = this.pos = req.asked?.start ?? 0;
    this.end = req.asked?.end;
    this.total = answerPlace(first.res)?.total;
    if (this.total !== undefined) {
      this.end = this.end === undefined ? this.total : Math.min(this.end, this.total);
    }
  }

  /** The Response handed to the library: small answers read whole, large ones streamed. */
  async respond(head: Headers): Promise<Response> {
    const { asked } = this.req;
    const outHead = new Headers(head);
    outHead.delete("content-length");
    outHead.delete("content-encoding");
    let status = this.first.res.status;
    if (asked && this.end !== undefined) {
      status = 206;
      outHead.set("content-range", `bytes ${this.start}-${this.end - 1}/${this.total ?? "*"}`);
    } else if (!asked) {
      status = 200; // the caller asked for the whole file: answer as if no Range was sent
      outHead.delete("content-range");
    }
    if (this.end !== undefined && this.end - this.start <= BUFFER_BELOW) {
      const out = new Uint8Array(Math.max(0, this.end - this.start));
      let n = 0;
      for await (const c of this.chunks()) {
        out.set(c, n);
        n += c.length;
      }
      outHead.set("content-length", String(n));
      return new Response(out.subarray(0, n), { status, headers: outHead });
    }
    return new Response(ReadableStream.from(this.chunks()), { status, headers: outHead });
  }

  #more(): boolean {
    return this.end === undefined || this.pos < this.end;
  }

  /** The asked bytes in order, resuming after every break until they are all there. */
  async *chunks(): AsyncGenerator<Uint8Array> {
    let next: HubAnswer | undefined = this.first;
    while (this.#more()) {
      const a: HubAnswer = next ?? await this.#resume();
      next = undefined;
      const w = a.res.body ? answerPlace(a.res) : undefined;
      if (!w || w.first > this.pos) {
        await a.res.body?.cancel().catch(() => {});
        await this.budget.fail(
          w
            ? `the answer started at byte ${w.first}, not ${this.pos}`
            : "an answer without Content-Range",
        );
        continue;
      }
      if (w.total !== undefined) {
        this.total ??= w.total;
        this.end = this.end === undefined ? w.total : Math.min(this.end, w.total);
      }
      const { clean, error } = yield* this.#drain(a, w.first);
      if (this.end === undefined ? clean : this.pos >= this.end) return;
      if (error instanceof GqaError) throw error;
      await this.budget.fail(
        error
          ? `the connection broke after byte ${this.pos} (${(error as Error).message ?? error})`
          : `the answer ended at byte ${this.pos}, before byte ${this.end}`,
        { cause: error },
      );
    }
  }

  /** A new request for the bytes not yet handed over. */
  #resume(): Promise<HubAnswer> {
    const h = new Headers(this.req.headers);
    h.set("range", `bytes=${this.pos}-${this.end === undefined ? "" : this.end - 1}`);
    return this.f.send(this.req.url, this.req.method, h, this.budget);
  }

  /**
   * Reads one answer's body, whose first byte is absolute offset `at`, yielding the asked
   * bytes in it; stops at the end of the asked range (cancelling the rest) or of the body.
   */
  async *#drain(
    a: HubAnswer,
    at: number,
  ): AsyncGenerator<Uint8Array, { clean: boolean; error?: unknown }> {
    let clean = false;
    let error: unknown;
    const reader = a.res.body!.getReader();
    try {
      while (this.#more()) {
        const timer = setTimeout(a.abort, this.f.retry.timeoutMs); // a stalled body is resumed
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
        this.f.o.onBytes?.(value.length);
        const from = Math.max(this.pos, at), to = Math.min(at + value.length, this.end ?? Infinity);
        const chunkStart = at;
        at += value.length;
        if (to > from) {
          this.pos = to;
          this.budget.reset();
          yield value.subarray(from - chunkStart, to - chunkStart);
        }
      }
    } catch (e) {
      error = e;
    } finally {
      if (!clean) await reader.cancel().catch(() => {});
      reader.releaseLock();
    }
    return { clean, error };
  }
}
