/**
 * The download pool: every network read of a run goes through one pool of about 16
 * concurrent requests, and a large read is split into pieces of 8 MiB that fill it.
 *
 * ```
 *  read [begin, end) ──split──► piece 0 | piece 1 | … | piece n-1      (8 MiB each, the last shorter)
 *                              each piece: range cache, or one request through the pool
 *  pool (16 slots) ◄── pieces of every read in flight, in the order they were asked
 * ```
 *
 * Why: a CDN caps each connection (10 MB/s is typical), so one request per tensor leaves a
 * 117 MB MLP matrix on one connection for 12 s. With 16 pieces in flight the link is
 * used sixteen times over, and the pieces of the next layer fill slots as soon as the
 * current layer's last pieces leave them. Each piece is its own request with its own
 * retries and resumes (hub_fetch.ts), and its own range-cache entry, written as it lands.
 * @module
 */

/** Default number of requests in flight per run. */
export const DEFAULT_CONNECTIONS = 16;
/** Default piece size: 8 MiB. */
export const DEFAULT_PIECE_BYTES = 8 << 20;

/**
 * A counting semaphore for async work: at most `size` calls of {@linkcode run} at once,
 * the others wait in the order they came.
 * @example
 * ```ts
 * const pool = new DownloadPool(16);
 * const bodies = await Promise.all(urls.map((u) => pool.run(() => fetch(u).then((r) => r.bytes()))));
 * ```
 */
export class DownloadPool {
  #busy = 0;
  #peak = 0;
  readonly #queue: (() => void)[] = [];

  constructor(readonly size = DEFAULT_CONNECTIONS) {
    if (!(Number.isInteger(size) && size >= 1)) {
      throw new RangeError(`DownloadPool: size must be a whole number ≥ 1, got ${size}`);
    }
  }

  /** The most calls that were ever running at once (tests check it never passes `size`). */
  get peak(): number {
    return this.#peak;
  }

  /** Runs `work` when a slot is free; the slot is released when it settles. */
  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#busy >= this.size) await new Promise<void>((r) => this.#queue.push(r));
    else this.#busy++;
    this.#peak = Math.max(this.#peak, this.#busy);
    try {
      return await work();
    } finally {
      const next = this.#queue.shift();
      if (next) next(); // the slot passes straight on
      else this.#busy--;
    }
  }
}

/**
 * [begin, end) as consecutive pieces of `piece` bytes (the last may be shorter), counted
 * from `begin`: the same read always splits the same way, so a later run finds its pieces
 * in the range cache.
 * @example
 * ```ts
 * splitRange(100, 250, 64); // [[100, 164], [164, 228], [228, 250]]
 * ```
 */
export function splitRange(begin: number, end: number, piece: number): [number, number][] {
  const out: [number, number][] = [];
  for (let b = begin; b < end; b += piece) out.push([b, Math.min(end, b + piece)]);
  return out;
}
