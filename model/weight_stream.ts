/**
 * Streams byte ranges of a checkpoint into the GPU's weight buffers or textures, piece by
 * piece: no host copy of a whole tensor, let alone of a layer.
 *
 * ```
 *  local file ──map piece (≤ 16 MiB)─────────────────► write ──► weights (queued, flushed)
 *  other source ──read piece──► host piece of slot i ──► write ──► weights
 *                4 slots: at most 4 pieces in flight; a slot is free once its piece is written
 * ```
 *
 * A source that can map its files (a model folder, the HF cache: source/mmap.ts) hands the
 * piece's page-cache pages straight to the write, one copy fewer than reading them into a
 * host piece first; downloads go through the host pieces.
 *
 * Why this shape (measured on lavapipe, where "device" memory is host memory):
 * - Nothing here waits for the GPU. In Deno every wait costs ~11 ms however little work it
 *   waits for, and blocks the thread until the GPU is idle; writing a layer in 32 MiB
 *   pieces with a wait after each spent more time waiting than copying. forward.ts does
 *   not wait for its own work either: on lavapipe `queue.submit` returns only once the
 *   work is done, so the reads run (on Deno's I/O threads) while this thread is in it.
 * - Writes are queued in call order with submits, so a write into a buffer that an earlier
 *   submit still reads lands after that submit: one set of weight buffers suffices, and the
 *   next layer's bytes are read while the current layer computes.
 * - Mapped staging buffers (read from the source straight into a MAP_WRITE buffer) were
 *   measured and rejected: Deno's `getMappedRange` allocates and copies (11 ms per 16 MiB),
 *   `unmap` copies back, and `mapAsync` blocks while the GPU works.
 * - `writeBuffer`/`writeTexture` copy into staging memory the driver allocates per call and
 *   frees after the copy; host_memory.ts keeps that memory for reuse instead of faulting in
 *   fresh pages.
 * - Every piece is flushed (an empty `queue.submit`) as soon as it is written, so the driver
 *   holds one piece of staging at a time instead of half a layer (~220 MB): on lavapipe the
 *   submit copies the piece into the weights at once, on the JS thread, while it is still in
 *   the CPU's cache, and the next piece reuses the same staging pages. Measured on the
 *   8B-shaped capture: peak RSS 1.0–1.1 → 0.72–0.73 GB, CPU time 4.5–5.1 → 3.9–4.2 s. On an
 *   asynchronous GPU the flush only hands the copy to the queue, after the work already
 *   submitted (which still reads the old weights).
 * - Mapping instead of reading (one copy fewer: page cache → staging, not page cache → host
 *   piece → staging): the 8B-shaped token-0 capture took 1.6–1.8 s instead of 1.8–2.9 s.
 *   Only pieces already in the page cache are mapped (mmap.ts says why).
 *
 * Host memory is the slots' pieces (`ringBytes`, default 64 MiB, only when reading) plus the
 * driver's staging for one piece per slot, plus the mapped pages of the pieces in flight.
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import { type GpuMatrix, writeMatrixBytes } from "../kernels/matmul.ts";
import type { ByteSource } from "./source/mod.ts";
import { splitRange } from "./source/pool.ts";

/** One range of a file to land in matrix `dst` at its byte `dstOffset` (as stored). */
export interface StreamJob {
  file: string;
  begin: number;
  end: number;
  dst: GpuMatrix;
  dstOffset: number;
}

/** Options of {@linkcode WeightStream}. */
export interface WeightStreamOptions {
  /** Bytes per piece (default 16 MiB; rounded up to a multiple of 16). */
  pieceBytes?: number;
  /** Bytes of host pieces in all (default 64 MiB): how many pieces may be in flight. */
  ringBytes?: number;
  /**
   * Map local files' pieces instead of reading them, where the source can (default true;
   * see source/mmap.ts): one copy fewer per byte. Tests set false to exercise the reads.
   */
  map?: boolean;
}

/** Default piece: large enough that per-piece costs vanish, small enough to spread over a ring. */
export const DEFAULT_PIECE_BYTES = 16 << 20;
/** Default ring: 4 pieces read at once (a piece is free again as soon as it is written). */
export const DEFAULT_RING_BYTES = 64 << 20;

/** At most this many host pieces (and reads in flight), whatever the piece size. */
const MAX_PIECES = 32;

/**
 * A ring of host pieces shared by every upload of a run.
 * @example
 * ```ts ignore
 * const ws = new WeightStream(gpu, src);
 * await ws.upload([{ file, begin, end, dst: matrix, dstOffset: 0 }]); // writes queued
 * await gpu.run((enc) => decoderLayer(gpu, enc, args)); // this submit sees the bytes
 * ws.destroy();
 * ```
 */
export class WeightStream {
  readonly #gpu: Gpu;
  readonly #src: ByteSource;
  readonly #piece: number;
  readonly #map: boolean;
  /** One host piece per slot, made on the slot's first read (mapped pieces need none). */
  readonly #hosts: (Uint8Array | undefined)[] = [];
  readonly #free: number[] = [];
  readonly #waiters: ((slot: number) => void)[] = [];

  constructor(gpu: Gpu, src: ByteSource, opts: WeightStreamOptions = {}) {
    this.#gpu = gpu;
    this.#src = src;
    // Pieces are whole 16-byte texels, so a piece may land in a weight texture too.
    this.#piece = Math.ceil((opts.pieceBytes ?? DEFAULT_PIECE_BYTES) / 16) * 16;
    const ring = Math.floor((opts.ringBytes ?? DEFAULT_RING_BYTES) / this.#piece);
    const slots = Math.max(1, Math.min(MAX_PIECES, ring));
    for (let i = slots - 1; i >= 0; i--) this.#free.push(i);
    this.#map = (opts.map ?? true) && src.map !== undefined;
  }

  /** A free slot (a piece in flight), or the next one freed. */
  #acquire(): Promise<number> {
    const slot = this.#free.pop();
    if (slot !== undefined) return Promise.resolve(slot);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #release(slot: number): void {
    const w = this.#waiters.shift();
    if (w) w(slot);
    else this.#free.push(slot);
  }

  /**
   * Reads (or maps) every job's bytes piece by piece, at most one piece per slot at a time,
   * and queues each piece's write into its destination. Resolves when every write is queued
   * (not necessarily done): the next submit on the queue sees all of them, and every submit
   * before still sees the old bytes.
   */
  async upload(jobs: StreamJob[]): Promise<void> {
    const pieces = jobs.flatMap((j) =>
      splitRange(j.begin, j.end, this.#piece).map(([begin, end]): StreamJob => ({
        ...j,
        begin,
        end,
        dstOffset: j.dstOffset + begin - j.begin,
      }))
    );
    await Promise.all(pieces.map((p) => this.#one(p)));
    this.#gpu.throwIfError();
  }

  /** One piece: wait for a slot, map (or read into the slot's host piece), write, flush. */
  async #one(p: StreamJob): Promise<void> {
    const slot = await this.#acquire();
    try {
      const mapped = this.#map ? await this.#src.map!(p.file, p.begin, p.end) : null;
      if (mapped) {
        try {
          this.#write(p, mapped.bytes);
        } finally {
          mapped.release(); // the bytes are in the driver's staging now
        }
        return;
      }
      const host = this.#hosts[slot] ??= new Uint8Array(this.#piece);
      const bytes = host.subarray(0, p.end - p.begin);
      await this.#src.read(p.file, p.begin, p.end, bytes);
      this.#write(p, bytes);
    } finally {
      this.#release(slot);
    }
  }

  /**
   * Queues a piece's write and flushes it: the driver copies the piece from its staging
   * memory into the weights now, and the next piece reuses that staging (see above).
   */
  #write(p: StreamJob, bytes: Uint8Array): void {
    writeMatrixBytes(this.#gpu, p.dst, bytes, p.dstOffset);
    this.#gpu.device.queue.submit([]);
  }

  /** Lets go of the host pieces. */
  destroy(): void {
    this.#hosts.length = 0;
  }
}
