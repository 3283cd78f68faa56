/**
 * Keeps freed host memory in the process for reuse, so uploads stop paying page faults.
 *
 * Every `writeBuffer` makes the WebGPU implementation allocate staging memory for the
 * bytes, and frees it once the GPU has copied them. glibc's malloc serves large blocks
 * with fresh `mmap`s and gives them back with `munmap` (and trims the heap's free top), so
 * the next layer's staging is fresh memory again: ~80,000 page faults (~2.5 µs each in
 * our VM) for each 436 MB layer of an 8B model. Measured on lavapipe, uploading 436 MB in
 * two halves took 230-285 ms with glibc's defaults and 105-135 ms with
 *
 *     mallopt(M_MMAP_MAX, 0)                  // big blocks from the heap, not fresh mmaps
 *     mallopt(M_TRIM_THRESHOLD, 2^31 - 1)     // and freed heap memory stays for reuse
 *
 * which is what {@linkcode keepFreedMemory} sets, through Deno's FFI (glibc only; the same
 * as running with `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`). The cost: memory
 * freed is not returned to the system until exit, so the resident size stays at its peak,
 * which a capture reaches anyway. Without FFI permission, or without glibc, it does
 * nothing and uploads are just slower.
 * @module
 */

const M_TRIM_THRESHOLD = -1;
const M_MMAP_MAX = -4;
let done: boolean | undefined;

/**
 * Asks glibc to keep freed memory for reuse (once per process). Returns whether it could.
 * @example
 * ```ts
 * keepFreedMemory(); // before a run of large uploads
 * ```
 */
export function keepFreedMemory(): boolean {
  if (done !== undefined) return done;
  done = false;
  if (Deno.build.os !== "linux") return done;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return done;
    const libc = Deno.dlopen("libc.so.6", {
      mallopt: { parameters: ["i32", "i32"], result: "i32" },
    });
    done = libc.symbols.mallopt(M_MMAP_MAX, 0) === 1 &&
      libc.symbols.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) === 1;
  } catch {
    // Not glibc (musl has no mallopt), or FFI unavailable: keep the defaults.
  }
  return done;
}
