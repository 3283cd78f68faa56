/**
 * The retry policy of Hub requests: how many times, how long to wait between tries, and
 * the one clear error when the tries run out. {@linkcode RetryBudget} counts the failures
 * of one logical read, whether an answer was a 429/5xx or a body broke mid-way; any byte
 * of progress resets it. Waits grow exponentially (`baseDelayMs · 2^k`, with jitter, at
 * most `maxDelayMs`).
 *
 * What a server says about its limits is honoured ({@linkcode serverWaitMs}):
 * `Retry-After` (seconds, or an HTTP date) and the `RateLimit` header's `t=` (seconds
 * until the window resets, as the Hub sends it: `"api";r=0;t=55`). The next try never
 * starts before that wait ends; a wait longer than `maxServerWaitMs` (5 minutes) is not
 * sat out but reported at once.
 * @module
 */
import { GqaError } from "../../errors.ts";

/** How hard to try before reporting a network failure. */
export interface RetryOptions {
  /** Tries per request, the first included (default 6). */
  attempts?: number;
  /** First backoff delay in ms (default 500); doubles after each failure. */
  baseDelayMs?: number;
  /** Longest backoff delay in ms (default 20000). */
  maxDelayMs?: number;
  /** Longest wait a server may ask for (Retry-After, RateLimit t=) before we give up instead (default 300000: 5 minutes). */
  maxServerWaitMs?: number;
  /** A request whose answer (headers, or the next body chunk) takes longer than this is abandoned and resumed (default 60000). */
  timeoutMs?: number;
}

/** The defaults of {@linkcode RetryOptions}. */
export const DEFAULT_RETRY: Required<RetryOptions> = {
  attempts: 6,
  baseDelayMs: 500,
  maxDelayMs: 20_000,
  maxServerWaitMs: 300_000,
  timeoutMs: 60_000,
};

/** Options of {@linkcode RetryBudget}. */
export interface RetryBudgetOptions {
  retry: Required<RetryOptions>;
  /** What is being fetched, for the final message ("config.json of owner/name"). */
  what: string;
  /** The Hub's origin, for the final message. */
  origin: string;
  /** Sleep (tests pass a fake one). */
  sleep: (ms: number) => Promise<void>;
  /** Told before every wait (the progress line shows it). */
  onWait?: (ms: number, reason: string) => void;
}

/** What one failure was, beside its reason. */
export interface FailureInfo {
  /** The answer's headers (Retry-After, RateLimit), when it was an HTTP answer. */
  headers?: Headers;
  /** The HTTP status, when it was an HTTP answer (429: rate limited). */
  status?: number;
  /** The error behind it, kept as the GqaError's cause. */
  cause?: unknown;
}

/**
 * The wait in ms a server asked for: the larger of `Retry-After` (whole seconds, or an
 * HTTP date) and the `RateLimit` header's `t=` (seconds until the window resets);
 * undefined when it asked for none.
 * @example
 * ```ts
 * serverWaitMs(new Headers({ "retry-after": "3" })); // 3000
 * serverWaitMs(new Headers({ ratelimit: '"api";r=0;t=55' })); // 55000
 * ```
 */
export function serverWaitMs(h: Headers, now: number = Date.now()): number | undefined {
  const waits: number[] = [];
  const ra = h.get("retry-after")?.trim();
  if (ra) {
    if (/^\d+(\.\d+)?$/.test(ra)) waits.push(Number(ra) * 1000);
    else {
      const at = Date.parse(ra);
      if (Number.isFinite(at)) waits.push(Math.max(0, at - now));
    }
  }
  const t = /(?:^|[;,\s])t=(\d+)/.exec(h.get("ratelimit") ?? "");
  if (t) waits.push(Number(t[1]) * 1000);
  return waits.length ? Math.max(...waits) : undefined;
}

/**
 * Failure accounting for one logical request: status retries and body resumes share it.
 * @example
 * ```ts
 * const b = new RetryBudget({ retry: DEFAULT_RETRY, what: "config.json", origin, sleep });
 * await b.fail("HTTP 503"); // waits, or throws a "network" GqaError after the last try
 * ```
 */
export class RetryBudget {
  #failures = 0;

  constructor(readonly o: RetryBudgetOptions) {}

  /** Progress was made: the next failure is the first again. */
  reset(): void {
    this.#failures = 0;
  }

  /** Counts a failure, then waits before the next try, or throws when the tries are spent. */
  async fail(reason: string, info: FailureInfo = {}): Promise<void> {
    const n = ++this.#failures;
    const asked = info.headers ? serverWaitMs(info.headers) : undefined;
    const limited = info.status === 429;
    if (n >= this.o.retry.attempts) throw this.#givingUp(reason, n, limited, info.cause);
    if (asked !== undefined && asked > this.o.retry.maxServerWaitMs) {
      throw this.#givingUp(reason, n, limited, info.cause, asked);
    }
    const ms = this.delayMs(n, asked);
    this.o.onWait?.(ms, limited ? "rate limited by the Hub" : reason);
    await this.o.sleep(ms);
  }

  #givingUp(reason: string, n: number, limited: boolean, cause: unknown, askedMs?: number) {
    const what = `Could not fetch ${this.o.what} from ${this.o.origin}`;
    if (limited) {
      const wait = askedMs !== undefined
        ? `it asked to wait ${Math.ceil(askedMs / 1000)} s, longer than the ${
          Math.round(this.o.retry.maxServerWaitMs / 1000)
        } s this tool waits`
        : `${n} answer${n > 1 ? "s" : ""} in a row said so`;
      return new GqaError(
        "network",
        `${what}: the Hub rate limited this client (HTTP 429; ${wait}). The Hub counts requests per account (or per IP address without a token) in 5-minute windows; wait a few minutes and run again (ranges already fetched are cached and will not be fetched twice). Logging in (\`hf auth login\`) raises the limit.`,
        { cause },
      );
    }
    const times = askedMs !== undefined
      ? `and the server asked to wait ${Math.ceil(askedMs / 1000)} s, longer than the ${
        Math.round(this.o.retry.maxServerWaitMs / 1000)
      } s this tool waits,`
      : `${n} time${n > 1 ? "s" : ""} in a row,`;
    return new GqaError(
      "network",
      `${what}: ${reason}, ${times} and gave up. The Hub (or your connection to it) is failing; wait a minute and run again (ranges already fetched are cached and will not be fetched twice), or check HF_ENDPOINT and your network.`,
      { cause },
    );
  }

  /**
   * The wait before try `failures + 1`: backoff with jitter (at most `maxDelayMs`), raised
   * to what the server asked for (`serverMs`), which is never cut short.
   */
  delayMs(failures: number, serverMs?: number): number {
    const { baseDelayMs, maxDelayMs } = this.o.retry;
    let ms = Math.min(maxDelayMs, baseDelayMs * 2 ** (failures - 1));
    ms = ms * (0.5 + Math.random() * 0.5);
    if (serverMs !== undefined && Number.isFinite(serverMs)) ms = Math.max(ms, serverMs);
    return ms;
  }
}
