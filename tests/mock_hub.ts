/**
 * A mock Hugging Face Hub on 127.0.0.1 for tests: it serves folders (or in-memory files)
 * as model repos the way the real Hub's `resolve` endpoint does, counts what it sends,
 * and injects faults on demand.
 *
 * ```
 * GET|HEAD {endpoint}/{owner}/{name}/resolve/{revision}/{file}
 *   200, or 206 for `Range: bytes=a-b` (Content-Range: bytes a-b/size), 416 out of range
 *   headers as the Hub sends them: ETag, X-Repo-Commit, Accept-Ranges: bytes
 *   errors as JSON + X-Error-Code + X-Error-Message, as the Hub sends them:
 *   a token the mock does not know: 401 "Invalid credentials in Authorization header" (any repo)
 *   a repo that does not exist, or a private one without the token: 401 (no token) / 404,
 *     RepoNotFound; then 404 RevisionNotFound | EntryNotFound
 *   gated repos: 401 GatedRepo without a token; 403 GatedRepo with the right token when
 *     the account's access is "none" (licence not accepted) or "pending"
 *   redirect mode: 302 to a second server on another port (the "CDN"), with X-Repo-Commit,
 *   X-Linked-Size and X-Linked-ETag, as the Hub does for large files
 * ```
 *
 * `bytesPerSecond` caps each answer's body, as a CDN caps each connection (for the download
 * benchmark, scripts/bench_download.ts).
 *
 * Faults ({@linkcode MockFaultRule}) apply to the next `times` matching requests: an HTTP
 * status (401/403/404/429/500/503…), a connection reset after k body bytes, a body that
 * stalls, a body longer or shorter than its Content-Range, or Range ignored (200 + the
 * whole file). Bodies are produced lazily, one chunk per pull, so `stats.bytesServed`
 * counts what was really handed to the network, not what was planned.
 *
 * The file reads top-down in parts: files ({@linkcode fileSource}), counters and the
 * request log (`Counters`), fault injection (`FaultBook`, `statusFault`), body serving
 * (`BodyServer`: Range, lazy bodies, body faults), routing (`MockRoutes`: which answer a
 * Hub or CDN request gets, auth of gated repos in `#authorize`), and the two servers
 * ({@linkcode startMockHub}).
 * @example
 * ```ts
 * await using hub = await startMockHub({ repos: { "test/tiny": { dir: "testdata/generated/tiny" } } });
 * const src = await openSource({ model: "test/tiny", endpoint: hub.endpoint, cacheDir: tmp, token: "" });
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { gzipSync } from "node:zlib";

/** The commit sha every mock repo is at unless told otherwise. */
export const MOCK_COMMIT = "0123456789abcdef0123456789abcdef01234567";
/** A repo id for "the tiny model", by convention. */
export const MOCK_REPO = "test/tiny";
/** A token for gated mock repos (fake; starts with hf_ like real ones). */
export const MOCK_TOKEN = "hf_MockTokenForTestsOnly0123456789abcdef";

/** One repo served by the mock. */
export interface MockRepo {
  /** Serve this folder's files (subfolders too). */
  dir?: string;
  /** Or these files (these win over `dir`). */
  files?: Record<string, Uint8Array | string>;
  /** The commit "main" resolves to (default {@linkcode MOCK_COMMIT}). */
  commit?: string;
  /** Other branch/tag names → commit. */
  revisions?: Record<string, string>;
  /** Require `Authorization: Bearer {token}`. */
  gated?: boolean;
  /** For a gated repo, the token's account: "granted" (default), "pending" or "none". */
  access?: "granted" | "pending" | "none";
  /** Answer as if it did not exist unless the right token is sent. */
  private?: boolean;
}

/** What goes wrong. */
export type MockFault =
  | {
    kind: "status";
    status: number;
    /** Retry-After: seconds, or an HTTP date string. */
    retryAfter?: number | string;
    /** The RateLimit header, e.g. '"api";r=0;t=3'. */
    rateLimit?: string;
    errorCode?: string;
    errorMessage?: string;
  }
  | { kind: "reset"; after: number } // send `after` body bytes, then drop the connection
  | { kind: "stall"; after: number; ms?: number } // send `after` bytes, then go silent for `ms` (default 30 s)
  | { kind: "long"; extra: number } // send `extra` bytes beyond the asked range (headers unchanged)
  | { kind: "short"; missing: number } // end the body `missing` bytes early, cleanly
  | { kind: "ignore-range" } // answer 200 with the whole file
  | { kind: "gzip" }; // if the client accepts gzip: 200 + the whole file gzipped (Content-Length: gzipped size)

/** When a fault applies. */
export interface MockFaultRule {
  fault: MockFault;
  /** Only for this file (exact name or pattern). */
  file?: string | RegExp;
  /** Only for this repo. */
  repo?: string;
  /** For how many matching requests (default 1; Infinity for all). */
  times?: number;
  /** Also for `Range: bytes=0-0` size probes (default: only status faults hit probes). */
  probe?: boolean;
  /** Only at this server (default: the first that meets a matching request). */
  server?: "hub" | "cdn";
}

/** Options of {@linkcode startMockHub}. */
export interface MockHubOptions {
  repos: Record<string, MockRepo>;
  /** The token gated repos accept (default {@linkcode MOCK_TOKEN}). */
  token?: string;
  faults?: MockFaultRule[];
  /** Redirect resolve requests to the CDN server: all files (true) or those matching. */
  redirect?: boolean | RegExp;
  /** Body chunk size (default 64 KiB). */
  chunkSize?: number;
  /**
   * Cap every answer's body at this many bytes per second (default: no cap), as a CDN caps
   * each connection: N requests side by side get N times the rate. For benchmarks.
   */
  bytesPerSecond?: number;
}

/** One request, as the mock saw it (never the token itself). */
export interface MockRequestLog {
  server: "hub" | "cdn";
  method: string;
  path: string;
  range: string | null;
  status: number;
  /** An Authorization header was present. */
  auth: boolean;
  fault?: string;
}

/** Counters for tests. */
export interface MockHubStats {
  /** Requests to the hub server. */
  requests: number;
  /** Requests to the CDN server. */
  cdnRequests: number;
  /** Body bytes handed to the network by both servers. */
  bytesServed: number;
  /** Hub requests that carried an Authorization header. */
  hubAuthorizationSeen: number;
  /** CDN requests that carried an Authorization header (should stay 0). */
  cdnAuthorizationSeen: number;
  /** The most answer bodies that were being sent at once (both servers). */
  maxBodiesInFlight: number;
  log: MockRequestLog[];
}

/** A running mock. */
export interface MockHub {
  /** Base URL, e.g. http://127.0.0.1:41234 (use as HF_ENDPOINT). */
  endpoint: string;
  /** Base URL of the CDN server (another origin: another port). */
  cdnOrigin: string;
  stats: MockHubStats;
  addFault(rule: MockFaultRule): void;
  clearFaults(): void;
  resetStats(): void;
  /** Bytes served for requests whose path ends with `file`. */
  bytesFor(file: string): number;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

// --- files ------------------------------------------------------------------------------

/** A file the mock can serve: its size, and a way to read pieces of it. */
interface Source {
  size: number;
  open(): Promise<{ read(off: number, n: number): Promise<Uint8Array>; close(): void }>;
}

/** The file `file` of repo `r` (in-memory files first, then the folder), if it exists. */
async function fileSource(r: MockRepo, file: string): Promise<Source | undefined> {
  if (file.split("/").some((s) => s === "" || s === "." || s === "..")) return undefined;
  const mem = r.files?.[file];
  if (mem !== undefined) {
    const bytes = typeof mem === "string" ? new TextEncoder().encode(mem) : mem;
    return {
      size: bytes.length,
      open: () =>
        Promise.resolve({
          read: (off: number, n: number) => Promise.resolve(bytes.slice(off, off + n)),
          close() {},
        }),
    };
  }
  if (!r.dir) return undefined;
  const path = join(r.dir, file);
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch {
    return undefined;
  }
  if (!st.isFile) return undefined;
  return { size: st.size, open: () => openFile(path) };
}

/** A file handle that reads `n` bytes at `off` (fewer at the end of the file). */
async function openFile(path: string) {
  const f = await Deno.open(path, { read: true });
  let closed = false;
  return {
    async read(off: number, n: number) {
      const out = new Uint8Array(n);
      await f.seek(off, Deno.SeekMode.Start);
      let got = 0;
      while (got < n) {
        const k = await f.read(out.subarray(got));
        if (k === null) break;
        got += k;
      }
      return out.subarray(0, got);
    },
    close() {
      if (!closed) f.close();
      closed = true;
    },
  };
}

function etagOf(repo: string, file: string, size: number): string {
  return `"${createHash("sha1").update(`${repo}/${file}:${size}`).digest("hex")}"`;
}

// --- counters and the request log -------------------------------------------------------

function emptyStats(): MockHubStats {
  return {
    requests: 0,
    cdnRequests: 0,
    bytesServed: 0,
    hubAuthorizationSeen: 0,
    cdnAuthorizationSeen: 0,
    maxBodiesInFlight: 0,
    log: [],
  };
}

/** What both servers counted, and the log of every request (never the token itself). */
class Counters {
  stats = emptyStats();
  readonly perFile = new Map<string, number>();
  #inFlight = 0;

  /** A body starts (+1) or ends (-1). */
  bodyInFlight(delta: 1 | -1): void {
    this.#inFlight += delta;
    this.stats.maxBodiesInFlight = Math.max(this.stats.maxBodiesInFlight, this.#inFlight);
  }

  /** Counts a request at `server` and starts its log entry. */
  logRequest(server: "hub" | "cdn", req: Request) {
    const url = new URL(req.url);
    const auth = req.headers.get("authorization");
    if (server === "hub") {
      this.stats.requests++;
      if (auth) this.stats.hubAuthorizationSeen++;
    } else {
      this.stats.cdnRequests++;
      if (auth) this.stats.cdnAuthorizationSeen++;
    }
    const log: MockRequestLog = {
      server,
      method: req.method,
      path: url.pathname,
      range: req.headers.get("range"),
      status: 0,
      auth: !!auth,
    };
    this.stats.log.push(log);
    return { url, auth, log };
  }

  countBytes(path: string, n: number): void {
    this.stats.bytesServed += n;
    this.perFile.set(path, (this.perFile.get(path) ?? 0) + n);
  }

  bytesFor(file: string): number {
    let n = 0;
    for (const [p, k] of this.perFile) if (p.endsWith(`/${file}`)) n += k;
    return n;
  }

  reset(): void {
    this.stats = emptyStats();
    this.perFile.clear();
  }
}

// --- fault injection --------------------------------------------------------------------

/** Where a request is, for matching fault rules. */
interface FaultQuery {
  server: "hub" | "cdn";
  repo: string;
  file: string;
  /** A `Range: bytes=0-0` size probe. */
  probe: boolean;
  /** This server would send the file's body (not a redirect). */
  body: boolean;
}

/** The fault rules still armed; each match uses up one of a rule's `times`. */
class FaultBook {
  #rules: (MockFaultRule & { left: number })[] = [];

  constructor(rules: MockFaultRule[] = []) {
    for (const r of rules) this.add(r);
  }

  add(rule: MockFaultRule): void {
    this.#rules.push({ ...rule, left: rule.times ?? 1 });
  }

  clear(): void {
    this.#rules = [];
  }

  /** The first armed fault that matches `a`, used up by one. */
  take(a: FaultQuery): MockFault | undefined {
    for (const r of this.#rules) {
      if (r.left <= 0) continue;
      if (r.server !== undefined && r.server !== a.server) continue;
      if (r.repo !== undefined && r.repo !== a.repo) continue;
      if (r.file !== undefined) {
        const ok = typeof r.file === "string" ? r.file === a.file : r.file.test(a.file);
        if (!ok) continue;
      }
      const isStatus = r.fault.kind === "status";
      if (a.probe && !isStatus && !r.probe) continue;
      if (!isStatus && !a.body) continue; // body faults wait for the server that sends the body
      r.left--;
      return r.fault;
    }
    return undefined;
  }
}

/** The answer of an injected status fault (Retry-After, RateLimit, X-Error-* when asked). */
function statusFault(f: MockFault & { kind: "status" }): Response {
  const res = jsonError(f.status, f.errorMessage ?? `injected HTTP ${f.status}`, f.errorCode);
  if (f.retryAfter !== undefined) res.headers.set("retry-after", String(f.retryAfter));
  if (f.rateLimit !== undefined) {
    res.headers.set("ratelimit", f.rateLimit);
    res.headers.set("ratelimit-policy", '"fixed window";"api";q=500;w=300');
  }
  return res;
}

/** A Hub-style JSON error answer: `{"error": …}`, X-Error-Message, and X-Error-Code when given. */
function jsonError(status: number, error: string, code?: string): Response {
  return new Response(JSON.stringify({ error }), {
    status,
    headers: {
      "content-type": "application/json",
      "x-error-message": error,
      ...(code ? { "x-error-code": code } : {}),
    },
  });
}

// --- body serving -----------------------------------------------------------------------

/** A request's Range against a file of `size` bytes: what to send, or 416. */
function rangeOf(
  rh: string | null,
  size: number,
): { from: number; to: number; partial: boolean } | "unsatisfiable" {
  const m = rh ? /^bytes=(\d*)-(\d*)$/.exec(rh.trim()) : null;
  if (!m || (m[1] === "" && m[2] === "")) return { from: 0, to: size, partial: false };
  let from: number, to = size;
  if (m[1] === "") {
    from = Math.max(0, size - Number(m[2]));
  } else {
    from = Number(m[1]);
    to = m[2] === "" ? size : Math.min(size, Number(m[2]) + 1);
  }
  if (from >= size || from >= to) return "unsatisfiable";
  return { from, to, partial: true };
}

/** What {@linkcode BodyServer.body} sends. */
interface BodyPlan {
  /** The request path (for per-file byte counts). */
  path: string;
  /** First byte of the file sent. */
  from: number;
  /** Bytes in the body (zeros past the end of the file). */
  count: number;
  /** Stop after this many bytes (a broken connection, or the start of a stall). */
  stopAfter?: number;
  /** After `stopAfter`, go silent this long before ending. */
  stallMs?: number;
}

/** Answers with bodies: Range handling, lazily produced bodies, and body faults. */
class BodyServer {
  /** Releases every stalled body (on close). */
  readonly stalls = new Set<() => void>();

  constructor(
    readonly counters: Counters,
    readonly chunk: number,
    readonly bytesPerSecond = Infinity,
  ) {}

  /** The answer with a body for `req`, with `fault` applied; `note` says which, for the log. */
  async serve(
    req: Request,
    src: Source,
    path: string,
    headers: Headers,
    fault: MockFault | undefined,
  ): Promise<{ res: Response; note?: string }> {
    const acceptsGzip = /\bgzip\b/.test(req.headers.get("accept-encoding") ?? "");
    if (fault?.kind === "gzip" && !acceptsGzip) {
      fault = undefined; // like a real server: no compression unless the client accepts it
    }
    if (fault?.kind === "gzip" && req.method !== "HEAD") {
      return { res: await this.#gzipped(src, path, headers), note: "gzip" };
    }
    const size = src.size;
    const range = fault?.kind === "ignore-range"
      ? { from: 0, to: size, partial: false }
      : rangeOf(req.headers.get("range"), size);
    if (range === "unsatisfiable") {
      headers.set("content-range", `bytes */${size}`);
      return { res: new Response(null, { status: 416, headers }) };
    }
    const { from, to } = range;
    const status = range.partial ? 206 : 200;
    if (range.partial) headers.set("content-range", `bytes ${from}-${to - 1}/${size}`);
    const count = to - from;
    if (req.method === "HEAD") {
      headers.set("content-length", String(count));
      return { res: new Response(null, { status, headers }) };
    }
    const send = (plan: BodyPlan, st = status) =>
      new Response(this.body(src, plan), { status: st, headers });
    switch (fault?.kind) {
      case "reset": // declare the full length, stop early: the client sees a broken connection
        headers.set("content-length", String(count));
        return {
          res: send({ path, from, count, stopAfter: fault.after }),
          note: `reset after ${fault.after}`,
        };
      case "stall":
        headers.set("content-length", String(count));
        return {
          res: send({ path, from, count, stopAfter: fault.after, stallMs: fault.ms ?? 30_000 }),
          note: `stall after ${fault.after}`,
        };
      case "short": // chunked, ends cleanly but early
        return {
          res: send({ path, from, count: Math.max(0, count - fault.missing) }),
          note: `short by ${fault.missing}`,
        };
      case "long": // chunked, more bytes than Content-Range says
        return {
          res: send({ path, from, count: count + fault.extra }),
          note: `long by ${fault.extra}`,
        };
      case "ignore-range":
        headers.set("content-length", String(size));
        return { res: send({ path, from: 0, count: size }, 200), note: "ignored Range" };
      default:
        headers.set("content-length", String(count));
        return { res: send({ path, from, count }) };
    }
  }

  /** 200 + the whole file gzipped (Content-Length: the gzipped size). */
  async #gzipped(src: Source, path: string, headers: Headers): Promise<Response> {
    const h = await src.open();
    const whole = await h.read(0, src.size);
    h.close();
    const gz = new Uint8Array(gzipSync(whole));
    this.counters.countBytes(path, gz.length);
    headers.set("content-encoding", "gzip");
    headers.set("content-length", String(gz.length));
    return new Response(gz, { status: 200, headers });
  }

  /** A lazily produced body: bytes [from, from + count) of `src` (zeros past the end), one chunk per pull. */
  body(src: Source, a: BodyPlan): ReadableStream<Uint8Array> {
    let handle: Awaited<ReturnType<Source["open"]>> | undefined;
    let sent = 0;
    let release: (() => void) | undefined;
    const limit = a.stopAfter !== undefined ? Math.min(a.stopAfter, a.count) : a.count;
    let ended = false;
    this.counters.bodyInFlight(1);
    const done = () => {
      handle?.close();
      handle = undefined;
      if (release) this.stalls.delete(release);
      if (!ended) this.counters.bodyInFlight(-1);
      ended = true;
    };
    const stall = (ms: number) =>
      new Promise<void>((res) => {
        const t = setTimeout(res, ms);
        release = () => {
          clearTimeout(t);
          res();
        };
        this.stalls.add(release);
      });
    let started: number | undefined;
    const pace = async (n: number) => { // the bandwidth cap: a chunk leaves once "sent"
      started ??= performance.now();
      const due = started + ((sent + n) / this.bytesPerSecond) * 1000 - performance.now();
      if (due > 1) await new Promise((r) => setTimeout(r, due));
    };
    return new ReadableStream<Uint8Array>({
      pull: async (c) => {
        if (sent >= limit) {
          if (a.stallMs !== undefined) await stall(a.stallMs);
          done();
          c.close();
          return;
        }
        handle ??= await src.open();
        const n = Math.min(this.chunk, limit - sent);
        if (Number.isFinite(this.bytesPerSecond)) await pace(n);
        const bytes = await readPadded(handle, src.size, a.from + sent, n);
        sent += n;
        this.counters.countBytes(a.path, n);
        c.enqueue(bytes);
      },
      cancel() {
        release?.();
        done();
      },
    }, { highWaterMark: 0 });
  }
}

/** `n` bytes of a file at `off`, padded with zeros past its end (for a "long" body). */
async function readPadded(
  handle: Awaited<ReturnType<Source["open"]>>,
  size: number,
  off: number,
  n: number,
): Promise<Uint8Array> {
  const bytes = off < size ? await handle.read(off, Math.min(n, size - off)) : new Uint8Array(0);
  if (bytes.length >= n) return bytes;
  const padded = new Uint8Array(n);
  padded.set(bytes);
  return padded;
}

// --- routing ----------------------------------------------------------------------------

/** `/{owner}/{name}/resolve/{revision}/{file}`, decoded; undefined for any other path. */
function parseResolvePath(path: string): { repoId: string; rev: string; file: string } | undefined {
  const i = path.indexOf("/resolve/");
  if (i < 0) return undefined;
  const repoId = decodeURIComponent(path.slice(1, i));
  const rest = path.slice(i + "/resolve/".length);
  const j = rest.indexOf("/");
  const rev = decodeURIComponent(j < 0 ? rest : rest.slice(0, j));
  const file = j < 0 ? "" : rest.slice(j + 1).split("/").map(decodeURIComponent).join("/");
  return { repoId, rev, file };
}

/** The two servers' handlers: which answer a request gets. */
class MockRoutes {
  cdnOrigin = "";

  constructor(
    readonly o: MockHubOptions,
    readonly counters: Counters,
    readonly faults: FaultBook,
    readonly bodies: BodyServer,
  ) {}

  /** The Hub server: resolve requests (redirected to the CDN, or answered with the body). */
  hub = async (req: Request): Promise<Response> => {
    const { url, auth, log } = this.counters.logRequest("hub", req);
    const res = await this.#answerHub(req, url, auth, log);
    log.status = res.status;
    return res;
  };

  /** The CDN server: `/cdn/{repo}/{commit}/{file}`, as the Hub's redirects name them. */
  cdn = async (req: Request): Promise<Response> => {
    const { url, log } = this.counters.logRequest("cdn", req);
    const res = await this.#answerCdn(req, url, log);
    log.status = res.status;
    return res;
  };

  async #answerHub(
    req: Request,
    url: URL,
    auth: string | null,
    log: MockRequestLog,
  ): Promise<Response> {
    const at = parseResolvePath(url.pathname);
    if (!at) return jsonError(404, "Not Found");
    const { repoId, rev, file } = at;
    const probe = req.headers.get("range") === "bytes=0-0";
    const redirectIt = this.o.redirect === true ||
      (this.o.redirect instanceof RegExp && this.o.redirect.test(file));
    const f = this.faults.take({ server: "hub", repo: repoId, file, probe, body: !redirectIt });
    if (f?.kind === "status") {
      log.fault = `status ${f.status}`;
      return statusFault(f);
    }
    const denied = this.#authorize(this.o.repos[repoId], repoId, auth);
    if (denied) return denied;
    const repo = this.o.repos[repoId];
    const resolved = resolveRevision(repo, rev);
    if (!resolved) return jsonError(404, "Revision not found", "RevisionNotFound");
    const src = await fileSource(repo, file);
    if (!src) return jsonError(404, "Entry not found", "EntryNotFound");
    const etag = etagOf(repoId, file, src.size);
    const headers = new Headers({
      "etag": etag,
      "x-repo-commit": resolved,
      "accept-ranges": "bytes",
      "content-type": "application/octet-stream",
    });
    if (redirectIt) return this.#redirect({ repoId, resolved, file, size: src.size, headers });
    const { res, note } = await this.bodies.serve(req, src, url.pathname, headers, f);
    if (note) log.fault = note;
    return res;
  }

  /**
   * The Hub's answer to who is asking (undefined: let it through), in its order: a token
   * it does not know is refused for any repo; a missing or private repo is "not found"
   * (401 without a token, 404 with one); a gated one needs the token, and then access.
   */
  #authorize(repo: MockRepo | undefined, repoId: string, auth: string | null) {
    const valid = auth === `Bearer ${this.o.token ?? MOCK_TOKEN}`;
    if (auth && !valid) return jsonError(401, "Invalid credentials in Authorization header");
    if (!repo || (repo.private && !valid)) {
      return jsonError(auth ? 404 : 401, "Repository not found", "RepoNotFound");
    }
    if (!repo.gated) return undefined;
    if (!auth) {
      return jsonError(
        401,
        `Access to model ${repoId} is restricted. You must have access to it and be authenticated to access it. Please log in.`,
        "GatedRepo",
      );
    }
    if (repo.access === "pending") {
      return jsonError(
        403,
        `Your request to access model ${repoId} is awaiting a review from the repo authors.`,
        "GatedRepo",
      );
    }
    if (repo.access === "none") {
      return jsonError(
        403,
        `Access to model ${repoId} is restricted and you are not in the authorized list. Visit https://huggingface.co/${repoId} to ask for access.`,
        "GatedRepo",
      );
    }
    return undefined;
  }

  /** 302 to the CDN with the linked size and ETag, as the Hub does for large files. */
  #redirect(
    a: { repoId: string; resolved: string; file: string; size: number; headers: Headers },
  ): Response {
    const { headers } = a;
    headers.set("x-linked-size", String(a.size));
    headers.set("x-linked-etag", headers.get("etag")!);
    headers.set(
      "location",
      `${this.cdnOrigin}/cdn/${encodeURIComponent(a.repoId)}/${a.resolved}/${
        a.file.split("/").map(encodeURIComponent).join("/")
      }?X-Amz-Signature=mock`,
    );
    return new Response(null, { status: 302, headers });
  }

  async #answerCdn(req: Request, url: URL, log: MockRequestLog): Promise<Response> {
    const m = /^\/cdn\/([^/]+)\/([0-9a-f]{40})\/(.+)$/.exec(url.pathname);
    const repoId = m ? decodeURIComponent(m[1]) : "";
    const file = m ? m[3].split("/").map(decodeURIComponent).join("/") : "";
    const repo = this.o.repos[repoId];
    const src = repo ? await fileSource(repo, file) : undefined;
    if (!m || !repo || !src) return new Response("NoSuchKey", { status: 404 });
    const probe = req.headers.get("range") === "bytes=0-0";
    const f = this.faults.take({ server: "cdn", repo: repoId, file, probe, body: true });
    if (f?.kind === "status") {
      log.fault = `status ${f.status}`;
      return statusFault(f);
    }
    const headers = new Headers({
      "etag": etagOf(repoId, file, src.size),
      "accept-ranges": "bytes",
      "content-type": "application/octet-stream",
    });
    const r = await this.bodies.serve(req, src, url.pathname, headers, f);
    if (r.note) log.fault = r.note;
    return r.res;
  }
}

/** The commit `rev` names in `repo` ("main", the commit itself, or a listed name), if any. */
function resolveRevision(repo: MockRepo, rev: string): string | undefined {
  const commit = repo.commit ?? MOCK_COMMIT;
  if (rev === commit || rev === "main") return commit;
  return repo.revisions?.[rev];
}

// --- the two servers --------------------------------------------------------------------

/**
 * Starts the mock Hub and its CDN on two free ports of 127.0.0.1.
 * @example
 * ```ts
 * const hub = await startMockHub({ repos: { [MOCK_REPO]: { dir } }, faults: [{ fault: { kind: "status", status: 503 } }] });
 * try { ... } finally { await hub.close(); }
 * ```
 */
export function startMockHub(o: MockHubOptions): Promise<MockHub> {
  const counters = new Counters();
  const faults = new FaultBook(o.faults);
  const bodies = new BodyServer(counters, o.chunkSize ?? 65536, o.bytesPerSecond);
  const routes = new MockRoutes(o, counters, faults, bodies);
  const quiet = { hostname: "127.0.0.1", port: 0, onListen() {} };
  const hub = Deno.serve(quiet, routes.hub);
  const cdn = Deno.serve(quiet, routes.cdn);
  routes.cdnOrigin = `http://127.0.0.1:${cdn.addr.port}`;
  let closed = false;

  const api: MockHub = {
    endpoint: `http://127.0.0.1:${hub.addr.port}`,
    cdnOrigin: routes.cdnOrigin,
    get stats() {
      return counters.stats;
    },
    addFault: (rule) => faults.add(rule),
    clearFaults: () => faults.clear(),
    resetStats: () => counters.reset(),
    bytesFor: (file: string) => counters.bytesFor(file),
    async close() {
      if (closed) return;
      closed = true;
      for (const r of [...bodies.stalls]) r();
      await Promise.all([hub.shutdown(), cdn.shutdown()]);
    },
    [Symbol.asyncDispose]() {
      return api.close();
    },
  };
  return Promise.resolve(api);
}

/** Deterministic pseudo-random bytes (xorshift32), for test files whose every byte matters. */
export function patternBytes(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  const words = new Uint32Array(out.buffer, 0, n >>> 2);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  for (let i = words.length * 4; i < n; i++) out[i] = (i * 131 + seed) & 255;
  return out;
}

/** Writes `files` into a new temp folder (subfolders created) and returns its path. */
export async function makeRepoDir(files: Record<string, Uint8Array | string>): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "gqa-mock-repo-" });
  for (const [name, data] of Object.entries(files)) {
    const path = join(dir, name);
    await Deno.mkdir(join(path, ".."), { recursive: true });
    if (typeof data === "string") await Deno.writeTextFile(path, data);
    else await Deno.writeFile(path, data);
  }
  return dir;
}

/**
 * A Hugging Face cache as the Python client leaves it (refs/{revision}, snapshot symlinks
 * into blobs/, .no_exist markers), holding `files` of `repo` at `commit`. Returns the hub
 * cache folder (a new temp folder, or `o.dir` to add another snapshot to it).
 */
export async function makeHfCacheDir(
  files: Record<string, Uint8Array | string>,
  o: { repo?: string; commit?: string; ref?: string; missing?: string[]; dir?: string } = {},
): Promise<string> {
  const commit = o.commit ?? MOCK_COMMIT;
  const hf = o.dir ?? await Deno.makeTempDir({ prefix: "gqa-hf-cache-" });
  const repo = join(hf, `models--${(o.repo ?? MOCK_REPO).split("/").join("--")}`);
  await Deno.mkdir(join(repo, "refs"), { recursive: true });
  await Deno.writeTextFile(join(repo, "refs", o.ref ?? "main"), commit + "\n");
  const snap = join(repo, "snapshots", commit);
  await Deno.mkdir(snap, { recursive: true });
  await Deno.mkdir(join(repo, "blobs"), { recursive: true });
  for (const [name, data] of Object.entries(files)) {
    const blobName = createHash("sha1").update(`${commit}/${name}`).digest("hex");
    const blob = join(repo, "blobs", blobName);
    if (typeof data === "string") await Deno.writeTextFile(blob, data);
    else await Deno.writeFile(blob, data);
    await Deno.mkdir(join(snap, name, ".."), { recursive: true });
    const depth = name.split("/").length + 1;
    await Deno.symlink(join(...Array(depth).fill(".."), "blobs", blobName), join(snap, name));
  }
  for (const m of o.missing ?? []) {
    await Deno.mkdir(join(repo, ".no_exist", commit), { recursive: true });
    await Deno.writeFile(join(repo, ".no_exist", commit, m), new Uint8Array(0));
  }
  return hf;
}
