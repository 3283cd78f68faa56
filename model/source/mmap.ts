/**
 * Maps a byte range of a local file into memory (Linux, through Deno's FFI and glibc), so a
 * weight piece goes from the page cache straight into the driver's staging memory with one
 * copy, instead of a `read` into our ring first and a second copy from there.
 *
 * ```
 *  read:   page cache ──read()──► ring piece ──writeTexture──► staging ──submit──► weights
 *  mapped: page cache ─────────── mapping ────writeTexture──► staging ──submit──► weights
 * ```
 *
 * Each range is mapped `MAP_PRIVATE`, read-only, and unmapped by `release()` as soon as its
 * bytes are copied, so at most the pieces in flight are mapped and the process's resident
 * size does not grow by the file. The copy faults the page-cache pages in as it goes, which
 * is cheap (no zeroing, the kernel maps neighbours around each fault); `MAP_POPULATE` on one
 * of Deno's blocking threads was measured slower (2.0–2.1 s against 1.8–1.9 s). Measured on
 * the 8B-shaped token-0 capture: 1.8–2.9 s reading, 1.6–1.8 s mapping (docs/BENCHMARKS.md).
 *
 * Only ranges whose pages are all in the page cache are mapped (`mincore`): a page that
 * is not would be read from disk inside the copy, on the JS thread, one fault at a time. With
 * the checkpoint's pages dropped from the cache the capture took 9.6–10.2 s mapping every
 * piece (11.5–12.7 s with `posix_fadvise(WILLNEED)` ahead of each part) against 5.0–5.5 s
 * reading them on Deno's I/O threads, 4 at a time.
 *
 * Where FFI is not granted, not on Linux or without glibc, when `mmap` fails or the range is
 * not all in the page cache, {@linkcode mapFileRange} returns null and the caller reads. A mapped file that
 * another process truncates while a piece is mapped would crash the run (SIGBUS): the
 * window is one piece's copy, and checkpoints are not rewritten in place.
 * @module
 */

import type { MappedBytes } from "./base.ts";

const PROT_READ = 1;
const MAP_PRIVATE = 2;
const O_RDONLY = 0;
const PAGE = 4096;

let libc: ReturnType<typeof openLibc> | null | undefined;

function openLibc() {
  return Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
    mmap: {
      parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
      result: "pointer",
    },
    munmap: { parameters: ["pointer", "usize"], result: "i32" },
    mincore: { parameters: ["pointer", "usize", "buffer"], result: "i32" },
  }).symbols;
}

/** glibc's symbols, or null where FFI is not allowed or there is no glibc (once per process). */
function symbols() {
  if (libc !== undefined) return libc;
  libc = null;
  try {
    if (
      Deno.build.os === "linux" && Deno.permissions.querySync({ name: "ffi" }).state === "granted"
    ) libc = openLibc();
  } catch { /* no glibc: read instead */ }
  return libc;
}

/** Whether ranges can be mapped in this process (Linux, glibc, FFI granted). */
export function canMapFiles(): boolean {
  return symbols() !== null;
}

/**
 * Bytes [begin, end) of the file at `path`, mapped read-only, or null when mapping is not
 * possible here or the bytes are not all in the page cache (the caller then reads). The
 * range must lie inside the file (callers check it against the file's size first).
 * @example
 * ```ts ignore
 * const m = mapFileRange(path, begin, end);
 * if (m) try { gpu.write(buf, m.bytes); } finally { m.release(); }
 * ```
 */
export function mapFileRange(path: string, begin: number, end: number): MappedBytes | null {
  const c = symbols();
  if (!c || end <= begin) return null;
  const fd = c.open(new TextEncoder().encode(path + "\0"), O_RDONLY);
  if (fd < 0) return null;
  const start = begin - (begin % PAGE); // mmap offsets are page-aligned
  const length = end - start;
  let ptr: Deno.PointerValue;
  try {
    ptr = c.mmap(null, BigInt(length), PROT_READ, MAP_PRIVATE, fd, BigInt(start));
  } finally {
    c.close(fd); // the mapping keeps the file
  }
  const address = ptr ? Deno.UnsafePointer.value(ptr) : 0;
  if (!ptr || address === -1n || address === 0xffffffffffffffffn) return null; // MAP_FAILED
  // Only pages already in the page cache: one that is not would be read from disk inside
  // the copy, stopping the JS thread, where `read` waits on Deno's I/O threads instead.
  const resident = new Uint8Array(Math.ceil(length / PAGE));
  if (c.mincore(ptr, BigInt(length), resident) !== 0 || !resident.every((b) => (b & 1) === 1)) {
    c.munmap(ptr, BigInt(length));
    return null;
  }
  const all = Deno.UnsafePointerView.getArrayBuffer(ptr, length);
  let released = false;
  return {
    bytes: new Uint8Array(all, begin - start, end - begin),
    release() {
      if (released) return;
      released = true;
      c.munmap(ptr, BigInt(length));
    },
  };
}
