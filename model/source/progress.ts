/**
 * A one-line progress bar for weight reads, drawn on stderr:
 *
 * ```
 * layer 3/5  downloading  ███████████░░░░░░░░░░░░░   45%  1.02 GB / 2.19 GB  85.3 MB/s  ETA 14s
 * ```
 *
 * The label says which layer is under way (`setLabel`); the verb is "reading" while every
 * byte came from disk (a folder, the Hugging Face cache, this tool's range cache) and
 * "downloading" once any came over the network. A wait between tries (a rate limit) is
 * shown on the same line until the next byte arrives.
 *
 * rate = bytes / seconds since the first byte; ETA = (total − bytes) / rate. The bar is
 * redrawn in place (`\r` + the line + "erase to end of line") at most every
 * `minIntervalMs`, and erased by {@linkcode Progress.finish}. It is shown only when the
 * caller asks for it AND stderr is a terminal ({@linkcode progressWanted}), so logs and
 * pipes never receive control characters. Callers that want the numbers instead of a bar
 * (a GUI, a test) pass `onProgress`, which is called on every update whether or not the
 * bar is shown.
 * @module
 */

/** A snapshot of a read in progress. */
export interface ProgressInfo {
  /** Bytes delivered so far. */
  bytes: number;
  /** Bytes expected in all, when the caller said (the plan's size). */
  total?: number;
  /** Milliseconds since the first byte. */
  elapsedMs: number;
  /** Bytes per second since the first byte (0 before any time has passed). */
  rate: number;
  /** Estimated milliseconds left, when `total` and a rate are known. */
  etaMs?: number;
  /** Of `bytes`, those that came over the network. */
  downloaded?: number;
  /** A wait in progress ("rate limited by the Hub, waiting 30s"), until the next byte. */
  note?: string;
}

/** Options of {@linkcode Progress}. */
export interface ProgressOptions {
  /** Draw the bar (default false). Use {@linkcode progressWanted} to decide. */
  show?: boolean;
  /** What is under way, before the verb (e.g. "layer 3/5"); can be changed with `setLabel`. */
  label?: string;
  /** Bytes expected in all; can be set later with `setTotal`. */
  total?: number;
  /** Called with a snapshot on every update. */
  onProgress?: (p: ProgressInfo) => void;
  /** Where the bar's text goes (default: stderr, synchronously). */
  write?: (text: string) => void;
  /** Clock in milliseconds (default `performance.now`); tests pass a fake one. */
  now?: () => number;
  /** Least time between two redraws (default 100 ms). */
  minIntervalMs?: number;
  /** Width of the bar in cells (default 24). */
  width?: number;
}

/** True when a bar should be drawn: not `--quiet` and stderr is a terminal. */
export function progressWanted(a: { quiet?: boolean } = {}): boolean {
  if (a.quiet) return false;
  try {
    return Deno.stderr.isTerminal();
  } catch {
    return false;
  }
}

/** "1.02 GB", "85.3 MB", "512 B" (decimal units, like the Hub's file sizes). */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 1000) return `${Math.max(0, Math.round(n || 0))} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = n / 1000;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[i]}`;
}

/** "14s", "3m05s", "1h02m". */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** The bar's text for a snapshot (no control characters). */
export function progressLine(p: ProgressInfo, a: { label?: string; width?: number } = {}): string {
  const width = a.width ?? 24;
  const parts = [...(a.label ? [a.label] : []), p.downloaded ? "downloading" : "reading"];
  if (p.total !== undefined && p.total > 0) {
    const frac = Math.min(1, p.bytes / p.total);
    const full = Math.round(frac * width);
    parts.push("█".repeat(full) + "░".repeat(width - full));
    parts.push(`${String(Math.floor(frac * 100)).padStart(3)}%`);
    parts.push(`${formatBytes(Math.min(p.bytes, p.total))} / ${formatBytes(p.total)}`);
  } else {
    parts.push(formatBytes(p.bytes));
  }
  if (p.rate > 0) parts.push(`${formatBytes(p.rate)}/s`);
  if (p.etaMs !== undefined && !p.note) parts.push(`ETA ${formatDuration(p.etaMs)}`);
  if (p.note) parts.push(p.note);
  return parts.join("  ");
}

const encoder = new TextEncoder();

/**
 * Counts bytes and redraws the bar.
 * @example
 * ```ts
 * const bar = new Progress({ show: progressWanted({ quiet }), total: plan.bytes });
 * bar.add(chunk.length); // many times
 * bar.finish();
 * ```
 */
export class Progress {
  #bytes = 0;
  #downloaded = 0;
  #label?: string;
  #note?: string;
  #total?: number;
  #start?: number;
  #lastDraw = -Infinity;
  #drawn = false;
  #o: ProgressOptions;
  #now: () => number;
  #write: (text: string) => void;

  constructor(o: ProgressOptions = {}) {
    this.#o = o;
    this.#label = o.label;
    this.#total = o.total;
    this.#now = o.now ?? (() => performance.now());
    this.#write = o.write ?? ((t) => {
      try {
        Deno.stderr.writeSync(encoder.encode(t));
      } catch {
        // stderr closed: a progress bar is never worth failing a run for
      }
    });
  }

  /** Sets (or changes) the number of bytes expected in all. */
  setTotal(total: number): void {
    this.#total = total;
  }

  /** Records `n` more bytes delivered, from the network or from disk (the default). */
  add(n: number, from: "network" | "disk" = "disk"): void {
    if (n <= 0) return;
    const t = this.#now();
    this.#start ??= t;
    this.#bytes += n;
    if (from === "network") this.#downloaded += n;
    this.#note = undefined;
    const info = this.info();
    this.#o.onProgress?.(info);
    if (t - this.#lastDraw >= (this.#o.minIntervalMs ?? 100)) this.#draw(info, t);
  }

  /** Says what is under way from now on (e.g. "layer 3/5"), redrawing the bar if it is shown. */
  setLabel(label: string): void {
    this.#label = label;
    if (this.#start !== undefined) this.#draw(this.info(), this.#now());
  }

  /** Shows a wait between tries (`ms`, and why) on the bar until the next byte arrives. */
  waiting(ms: number, why: string): void {
    this.#note = `${why}, waiting ${formatDuration(ms)}`;
    this.#draw(this.info(), this.#now());
  }

  #draw(info: ProgressInfo, t: number): void {
    if (!this.#o.show) return;
    this.#lastDraw = t;
    this.#drawn = true;
    const line = progressLine(info, { label: this.#label, width: this.#o.width });
    this.#write(`\r${line}\x1b[K`);
  }

  /** The current snapshot. */
  info(): ProgressInfo {
    const elapsedMs = this.#start === undefined ? 0 : this.#now() - this.#start;
    const rate = elapsedMs > 0 ? this.#bytes / (elapsedMs / 1000) : 0;
    const total = this.#total;
    const etaMs = total !== undefined && rate > 0
      ? (Math.max(0, total - this.#bytes) / rate) * 1000
      : undefined;
    return {
      bytes: this.#bytes,
      total,
      elapsedMs,
      rate,
      etaMs,
      downloaded: this.#downloaded,
      note: this.#note,
    };
  }

  /** Erases the bar (if one was drawn) so the next line of output starts clean. */
  finish(): void {
    if (this.#drawn) this.#write("\r\x1b[K");
    this.#drawn = false;
    this.#lastDraw = -Infinity;
  }
}
