/**
 * The retry policy of Hub requests: how many times, how long to wait between tries, and
 * the one clear error when the tries run out. {@linkcode RetryBudget} counts the failures
 * of one logical read, whether an answer was a 429/5xx or a body broke mid-way; any byte
 * of progress resets it. Waits grow exponentially (`baseDelayMs · 2^k`, with jitter, at
 * most `maxDelayMs`), and a server's `Retry-After` is honoured up to that cap.
 *
 * This is the place for what a server says about its limits (rate-limit headers): they
 * only change {@linkcode RetryBudget.delayMs}.
 * @module
 */
import { GqaError } from "../../errors.ts";

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

/** The defaults of {@linkcode RetryOptions}. */
export const DEFAULT_RETRY: Required<RetryOptions> = {
  attempts: 6,
  baseDelayMs: 500,
  maxDelayMs: 20_000,
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
  async fail(reason: string, retryAfterS?: number, cause?: unknown): Promise<void> {
    const n = ++this.#failures;
    if (n >= this.o.retry.attempts) {
      throw new GqaError(
        "network",
        `Could not fetch ${this.o.what} from ${this.o.origin}: ${reason}, ${n} time${
          n > 1 ? "s" : ""
        } in a row, and gave up. The Hub (or your connection to it) is failing or rate-limiting; wait a minute and run again (ranges already fetched are cached and will not be fetched twice), or check HF_ENDPOINT and your network.`,
        { cause },
      );
    }
    await this.o.sleep(this.delayMs(n, retryAfterS));
  }

  /** The wait before try `failures + 1`: backoff with jitter, raised to `Retry-After`, capped. */
  delayMs(failures: number, retryAfterS?: number): number {
    const { baseDelayMs, maxDelayMs } = this.o.retry;
    let ms = Math.min(maxDelayMs, baseDelayMs * 2 ** (failures - 1));
    ms = ms * (0.5 + Math.random() * 0.5);
    if (retryAfterS !== undefined && Number.isFinite(retryAfterS)) {
      ms = Math.min(maxDelayMs, Math.max(ms, retryAfterS * 1000));
    }
    return ms;
  }
}
