/**
 * Streams byte ranges of a checkpoint into GPU buffers through a small ring of mapped
 * staging buffers: no host copy of a whole tensor, let alone of a layer.
 *
 * ```
 *  source ──read piece──► staging i (mapped, MAP_WRITE) ──copyBufferToBuffer──► weight buffer
 *            (≤ 16 MiB)      unmap, submit the copy, mapAsync: back in the ring once copied
 * ```
 *
 * Why this shape (measured on lavapipe, where "device" memory is host memory):
 * - Every wait for the GPU in Deno costs ~11 ms however little work it waits for (Deno
 *   notices finished work on a timer). Writing a layer with `writeBuffer` in 32 MiB pieces
 *   and a wait after each paid ~14 such waits per layer, more than the copying itself. Here
 *   nothing waits except a piece that finds the whole ring busy; all other waits overlap.
 * - `writeBuffer` copies into staging memory the driver allocates per call (fresh pages:
 *   ~2.5 µs per 4 KiB page to fault in). A ring allocated once is faulted in once; bytes are
 *   read from the source straight into it, one copy fewer.
 * - Copies are queued in submit order, so a copy into a buffer that the previous layer is
 *   still reading lands after that layer's compute: one set of weight buffers suffices, and
 *   the ring's pieces are read while the previous layer computes.
 *
 * Peak host memory is the ring (`ringBytes`, default 256 MiB) plus whatever one piece read
 * holds; the staging buffers are not counted in {@linkcode Gpu.bytesAllocated}, which
 * counts device storage.
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import type { ByteSource } from "./source/mod.ts";

/** One range of a file to land in `dst` at `dstOffset` bytes. */
export interface StreamJob {
  file: string;
  begin: number;
  end: number;
  dst: GPUBuffer;
  dstOffset: number;
}

/** Options of {@linkcode WeightStream}. */
export interface WeightStreamOptions {
  /** Bytes per piece (default 16 MiB; rounded up to a multiple of 4). */
  pieceBytes?: number;
  /** Bytes of host pieces in all (default 256 MiB): how many reads may be in flight. */
  ringBytes?: number;
  /** Wait for the queue after this many bytes written (default: never). */
  flushBytes?: number;
}

/** Default piece: large enough that per-piece costs vanish, small enough to spread over a ring. */
export const DEFAULT_PIECE_BYTES = 16 << 20;
/** Default ring: 4 pieces read at once (a piece is free again as soon as it is written). */
export const DEFAULT_RING_BYTES = 64 << 20;

/** At most this many staging buffers (and reads in flight), whatever the piece size. */
const MAX_STAGING_BUFFERS = 32;

/**
 * A ring of mapped staging buffers shared by every upload of a run.
 * @example
 * ```ts ignore
 * const ws = new WeightStream(gpu, src);
 * await ws.upload([{ file, begin, end, dst: matrix.buffer, dstOffset: 0 }]); // copies queued
 * await gpu.run(() => {}); // ... later submits see the bytes
 * ws.destroy();
 * ```
 */
export class WeightStream {
  readonly #gpu: Gpu;
  readonly #src: ByteSource;
  readonly #piece: number;
  readonly #max: number;
  readonly #all: Uint8Array[] = [];
  readonly #free: Uint8Array[] = [];
  readonly #waiters: ((b: Uint8Array) => void)[] = [];
  readonly #flushBytes: number;
  #written = 0;

  constructor(gpu: Gpu, src: ByteSource, opts: WeightStreamOptions = {}) {
    this.#gpu = gpu;
    this.#src = src;
    this.#piece = Math.ceil((opts.pieceBytes ?? DEFAULT_PIECE_BYTES) / 4) * 4;
    const ring = Math.floor((opts.ringBytes ?? DEFAULT_RING_BYTES) / this.#piece);
    this.#max = Math.max(1, Math.min(MAX_STAGING_BUFFERS, ring));
    this.#flushBytes = opts.flushBytes ?? Infinity;
  }

  /** A host piece: a free one, a new one while the ring has room, else the next freed. */
  #acquire(): Promise<Uint8Array> {
    const b = this.#free.pop();
    if (b) return Promise.resolve(b);
    if (this.#all.length < this.#max) {
      const nb = new Uint8Array(this.#piece);
      this.#all.push(nb);
      return Promise.resolve(nb);
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  #release(b: Uint8Array): void {
    const w = this.#waiters.shift();
    if (w) w(b);
    else this.#free.push(b);
  }

  /**
   * Reads every job's bytes piece by piece into the ring and queues each piece's write into
   * its destination. Resolves when every write is queued (not necessarily done): the next
   * submit on the queue sees all of them, and every submit before still sees the old bytes.
   */
  async upload(jobs: StreamJob[]): Promise<void> {
    const pieces: StreamJob[] = [];
    for (const j of jobs) {
      for (let at = j.begin; at < j.end; at += this.#piece) {
        const end = Math.min(j.end, at + this.#piece);
        pieces.push({ ...j, begin: at, end, dstOffset: j.dstOffset + at - j.begin });
      }
    }
    await Promise.all(pieces.map((p) => this.#one(p)));
    this.#gpu.throwIfError();
  }

  async #one(p: StreamJob): Promise<void> {
    const n = p.end - p.begin;
    const host = await this.#acquire();
    try {
      const bytes = host.subarray(0, n);
      await this.#src.read(p.file, p.begin, p.end, bytes);
      if (this.#written >= this.#flushBytes) await this.#flush();
      // Writes move whole 4-byte words: a tensor of odd 16-bit length lands with 2 bytes
      // of padding, which every buffer has (sizes are rounded up to 4).
      this.#gpu.write(p.dst, host.subarray(0, Math.ceil(n / 4) * 4), p.dstOffset);
      this.#written += n;
    } finally {
      this.#release(host);
    }
  }

  /** Waits for the queue to take what was written so far, so the driver can reuse its staging. */
  async #flush(): Promise<void> {
    this.#written = 0;
    this.#gpu.device.queue.submit([]);
    await this.#gpu.device.queue.onSubmittedWorkDone();
  }

  /** Lets go of the host pieces. */
  destroy(): void {
    this.#all.length = 0;
    this.#free.length = 0;
  }
}
