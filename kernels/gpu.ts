/**
 * The WebGPU plumbing every kernel shares: one adapter and device, a pipeline cache,
 * and terse helpers to upload, read back, bind and dispatch.
 *
 * Nothing here knows about models or files. Kernels are plain functions that take a
 * {@linkcode Gpu} and a `GPUCommandEncoder` and record one or more dispatches, so a
 * whole decoder layer can be recorded into one encoder and submitted once.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./gpu.ts";
 * const gpu = await requestGpu();
 * if (gpu) console.log(gpu.adapterName, gpu.hasF16 ? "shader-f16" : "packed 16-bit only");
 * ```
 * @module
 */

/** A buffer, a byte range of one, or a texture view, to bind to a `@binding(i)`. */
export type Binding =
  | GPUBuffer
  | GPUTextureView
  | { buffer: GPUBuffer; offset?: number; size?: number };

/**
 * Which kernel family runs on a device: `"cpu"`, the kernels tuned for Mesa's CPU adapters
 * (few invocations, many rows each), or `"gpu"`, the ones shaped for discrete and
 * integrated GPUs (wide workgroups, coalesced loads, workgroup-memory tiles).
 */
export type KernelFamily = "cpu" | "gpu";

/**
 * Where the CPU family keeps weight matrices: storage buffers, or textures (read with
 * `textureLoad`; see weight_texture.ts for why). The GPU family always uses buffers.
 */
export type WeightStorage = "buffer" | "texture";

/**
 * How kernels read a weight texture: as a read-only storage texture (an image load), or as
 * a sampled texture (a texel fetch). llvmpipe runs image loads in far fewer instructions
 * (matmul.ts, v7); sampled reads are the fallback where WGSL lacks read-only storage textures.
 */
export type TextureReads = "storage" | "sampled";

/**
 * Whether this runtime's WGSL has read-only storage textures (the language feature
 * `readonly_and_readwrite_storage_textures`): "storage" when it does, else "sampled".
 */
export function detectTextureReads(): TextureReads {
  const features = (navigator.gpu as { wgslLanguageFeatures?: ReadonlySet<string> })
    .wgslLanguageFeatures;
  return features?.has("readonly_and_readwrite_storage_textures") ? "storage" : "sampled";
}

/** Environment variable that forces a kernel family on any adapter: `gpu` or `cpu`. */
export const KERNELS_ENV = "GQA_VIZ_KERNELS";

/** Options for {@linkcode requestGpu}. */
export interface RequestGpuOptions {
  /** Ask for `shader-f16` when the adapter has it (default true). */
  f16?: boolean;
  /** Prefer a low-power or high-performance adapter (default "high-performance"). */
  powerPreference?: GPUPowerPreference;
}

/**
 * The family a device starts with: `GQA_VIZ_KERNELS` when set, else "gpu" on a hardware
 * adapter and "cpu" on a fallback (software) adapter such as lavapipe or llvmpipe.
 */
export function defaultKernelFamily(isFallback: boolean): { family: KernelFamily; reason: string } {
  let env: string | undefined;
  try {
    env = Deno.env.get(KERNELS_ENV);
  } catch { /* no --allow-env: no override */ }
  if (env === "gpu" || env === "cpu") {
    return { family: env, reason: `forced by ${KERNELS_ENV}=${env}` };
  }
  return isFallback
    ? { family: "cpu", reason: "fallback (software) adapter: kernels tuned for CPU threads" }
    : { family: "gpu", reason: "hardware adapter: kernels shaped for GPU warps" };
}

/** One parameter buffer, shared by the dispatches of (about) one layer. */
interface ParamArena {
  buffer: GPUBuffer;
  /** Bytes handed out so far. */
  used: number;
  /** Encoders recorded with a block of it and not yet finished. */
  users: number;
  /** No more blocks will come from it: destroy it when `users` drops to 0. */
  full: boolean;
}

const PARAM_ARENA_BYTES = 64 * 1024;

const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/** One WebGPU device with the helpers the kernels use. Create it with {@linkcode requestGpu}. */
export class Gpu {
  /** The device every buffer and pipeline belongs to. */
  readonly device: GPUDevice;
  /** A one-line description of the adapter, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)". */
  readonly adapterName: string;
  /** True when `shader-f16` is enabled, so WGSL may use `enable f16;`. */
  readonly hasF16: boolean;
  /** Largest byte range one storage binding may cover. */
  readonly maxBindingBytes: number;
  /** Largest single buffer. */
  readonly maxBufferBytes: number;
  /** Required alignment of a storage binding's byte offset. */
  readonly bindAlign: number;
  /** Bytes of storage buffers created through {@linkcode buffer} so far (device memory used). */
  bytesAllocated = 0;
  /** True on a software adapter (`adapter.info.isFallbackAdapter`: lavapipe, llvmpipe). */
  readonly isFallback: boolean;
  /** True when `timestamp-query` is enabled (kernel timing in GPU time, not wall clock). */
  readonly hasTimestamps: boolean;
  /**
   * Workgroup memory the GPU-family kernels plan their tiles for: 16 KiB on hardware
   * adapters, 4 KiB on fallback ones, where that family runs only when forced (tests) and
   * where wgpu's GL backend zero-fills workgroup arrays with code whose compile time grows
   * faster than linearly (a 16 KiB array: ~8 s per shader on llvmpipe).
   */
  readonly workgroupBudget: number;
  /** The kernel family matmul and attention use unless a call forces one. */
  kernels: KernelFamily;
  /** One sentence: why {@linkcode kernels} is what it is. */
  kernelsReason: string;
  /** Where the CPU family keeps new weight matrices; set by `chooseKernels` (choose.ts). */
  weightStorage: WeightStorage = "buffer";
  /** One sentence: why {@linkcode weightStorage} is what it is. */
  weightStorageReason = "not measured yet (chooseKernels in choose.ts measures it)";
  /**
   * How weight textures allocated from now on are read ({@linkcode detectTextureReads}), and
   * whether the matmul may read X from a storage texture too ("storage"; matmul.ts, v8).
   * Tests set "sampled" to check that both paths agree.
   */
  textureReads: TextureReads = detectTextureReads();
  readonly #pipelines = new Map<string, GPUComputePipeline>();
  #firstError: string | null = null;
  /** The compute pass left open on each encoder, so consecutive dispatches share one. */
  readonly #passes = new WeakMap<GPUCommandEncoder, GPUComputePassEncoder>();
  /** Parameter blocks: sub-allocated from one buffer, released when their encoder finishes. */
  #arena: ParamArena | null = null;
  readonly #arenasOf = new WeakMap<GPUCommandEncoder, Set<ParamArena>>();

  constructor(device: GPUDevice, adapterName: string, isFallback = true) {
    this.device = device;
    this.adapterName = adapterName;
    this.isFallback = isFallback;
    this.hasTimestamps = device.features.has("timestamp-query");
    this.workgroupBudget = isFallback
      ? 4096
      : Math.min(16384, device.limits.maxComputeWorkgroupStorageSize);
    const k = defaultKernelFamily(isFallback);
    this.kernels = k.family;
    this.kernelsReason = k.reason;
    this.hasF16 = device.features.has("shader-f16");
    this.maxBindingBytes = device.limits.maxStorageBufferBindingSize;
    this.maxBufferBytes = device.limits.maxBufferSize;
    this.bindAlign = device.limits.minStorageBufferOffsetAlignment;
    device.addEventListener("uncapturederror", (e) => {
      const msg = (e as GPUUncapturedErrorEvent).error.message;
      this.#firstError ??= msg;
    });
  }

  /**
   * A compute pipeline for `code`'s entry point `main`, compiled once and cached by source.
   * Kernels generate specialised WGSL (dtype, tile sizes) as strings, so the cache key is
   * the source text itself.
   */
  pipeline(code: string, entryPoint = "main"): GPUComputePipeline {
    const key = entryPoint + "\0" + code;
    let p = this.#pipelines.get(key);
    if (!p) {
      const module = this.device.createShaderModule({ code });
      p = this.device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint },
      });
      this.#pipelines.set(key, p);
    }
    return p;
  }

  /** An uninitialised storage buffer of `bytes` (rounded up to 4), usable as src and dst. */
  buffer(bytes: number, label?: string): GPUBuffer {
    const size = this.checkSize(Math.max(4, Math.ceil(bytes / 4) * 4), label);
    this.bytesAllocated += size;
    return this.device.createBuffer({ size, usage: STORAGE, label });
  }

  /**
   * A small storage buffer that warm-up dispatches write their outputs into instead of the
   * real ones (one per device; what lands in it is never read). WebGPU keeps every store
   * inside its binding, so it may be far smaller than the output it stands in for.
   */
  get sink(): GPUBuffer {
    return this.#sink ??= this.buffer(256, "warm-up sink");
  }
  #sink: GPUBuffer | undefined;

  /**
   * Returns `bytes` if one buffer of that size may be created on this device, else throws a
   * {@linkcode GpuError} that says which buffer and what to do. Every buffer is checked
   * before `createBuffer`, which would otherwise fail later with a less helpful message.
   */
  checkSize(bytes: number, label?: string): number {
    if (bytes > this.maxBufferBytes) {
      throw new GpuError(
        `The buffer "${label ?? "unnamed"}" would need ${bytes} bytes, more than this ` +
          `adapter's maxBufferSize (${this.maxBufferBytes}) on ${this.adapterName}. Use a ` +
          `shorter prompt or an adapter with more memory.`,
      );
    }
    return bytes;
  }

  /** A storage buffer holding a copy of `data` (any typed array; padded to 4 bytes). */
  upload(data: ArrayBufferView, label?: string): GPUBuffer {
    const buf = this.buffer(data.byteLength, label);
    this.write(buf, data);
    return buf;
  }

  /** Writes `data` into `buf` at `offset` bytes (queued; visible to the next submit). */
  write(buf: GPUBuffer, data: ArrayBufferView, offset = 0): void {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const padded = bytes.byteLength % 4 === 0 ? bytes : (() => {
      const p = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      p.set(bytes);
      return p;
    })();
    this.device.queue.writeBuffer(buf, offset, padded as Uint8Array<ArrayBuffer>);
  }

  /**
   * Hands `data` to `write` in 32 MiB pieces (each with its byte offset in `data`), flushing
   * each (an empty submit). The driver copies every write into staging memory first; a piece
   * at a time lets it reuse that memory instead of allocating (and page-faulting) a fresh
   * copy of the whole array: on lavapipe a 117 MB matrix lands in ~60 ms instead of ~350 ms.
   * A hardware adapter's driver stages through its own pool: one write.
   * @example
   * ```ts ignore
   * gpu.writeLarge(bytes, (piece, at) => gpu.write(buf, piece, at));
   * ```
   */
  writeLarge(data: Uint8Array, write: (piece: Uint8Array, byteOffset: number) => void): void {
    const PIECE = this.isFallback ? 32 << 20 : Math.max(data.byteLength, 1);
    for (let at = 0; at < data.byteLength; at += PIECE) {
      write(data.subarray(at, at + PIECE), at);
      // On lavapipe a submit runs its copies before it returns; waiting would add ~11 ms.
      if (at + PIECE < data.byteLength) this.device.queue.submit([]);
    }
    this.throwIfError();
  }

  /** A storage buffer of `n` f32 values all set to NaN: the poison tests write before a run. */
  poisoned(n: number, label?: string): GPUBuffer {
    return this.upload(new Float32Array(n).fill(NaN), label);
  }

  /**
   * A small parameter block holding `words` (u32, i32 or f32 views of the same 4-byte
   * slots), bound as a uniform. Blocks are not buffers of their own: they are slices, at
   * `minUniformBufferOffsetAlignment`, of one 64 KiB parameter buffer (a layer's worth of
   * dispatches), written in place and destroyed once every encoder that used it has been
   * submitted through {@linkcode submit} and finished.
   */
  uniform(words: ArrayBufferView): Binding {
    const align = this.device.limits.minUniformBufferOffsetAlignment;
    const size = Math.max(16, Math.ceil(words.byteLength / 16) * 16);
    let a = this.#arena;
    if (!a || a.used + size > a.buffer.size) {
      if (a) a.full = true;
      if (a && a.users === 0) a.buffer.destroy();
      a = this.#arena = {
        buffer: this.device.createBuffer({
          size: this.checkSize(Math.max(PARAM_ARENA_BYTES, size), "parameters"),
          usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
          label: "parameters",
        }),
        used: 0,
        users: 0,
        full: false,
      };
    }
    const offset = a.used;
    a.used = Math.ceil((offset + size) / align) * align;
    this.write(a.buffer, words, offset);
    return { buffer: a.buffer, offset, size };
  }

  /**
   * Records one dispatch: binds `bindings` to `@group(0) @binding(0..n-1)` in order and
   * runs `workgroups` = [x, y?, z?] workgroups. Consecutive dispatches on one encoder share
   * one compute pass (WebGPU orders their memory accesses); {@linkcode copy},
   * {@linkcode endPass} and {@linkcode submit} close it.
   */
  dispatch(
    encoder: GPUCommandEncoder,
    pipeline: GPUComputePipeline,
    bindings: Binding[],
    workgroups: [number, number?, number?],
  ): void {
    const bindGroup = this.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: bindings.map((b, binding) => {
        if (b instanceof GPUBuffer) return { binding, resource: { buffer: b } };
        if (b instanceof GPUTextureView) return { binding, resource: b };
        this.#useArena(encoder, b.buffer);
        return { binding, resource: b };
      }),
    });
    const pass = this.beginPass(encoder);
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    const [x, y = 1, z = 1] = workgroups;
    pass.dispatchWorkgroups(x, y, z);
  }

  /**
   * The compute pass open on `encoder`, begun (with `desc`, e.g. timestamp writes) when
   * there is none.
   */
  beginPass(encoder: GPUCommandEncoder, desc?: GPUComputePassDescriptor): GPUComputePassEncoder {
    let pass = this.#passes.get(encoder);
    if (!pass) this.#passes.set(encoder, pass = encoder.beginComputePass(desc));
    return pass;
  }

  /** Ends the compute pass open on `encoder`, if any (before copies or `finish`). */
  endPass(encoder: GPUCommandEncoder): void {
    const pass = this.#passes.get(encoder);
    if (pass) {
      pass.end();
      this.#passes.delete(encoder);
    }
  }

  /** Records a buffer-to-buffer copy of `bytes`, closing the open compute pass first. */
  copy(
    encoder: GPUCommandEncoder,
    src: GPUBuffer,
    srcOffset: number,
    dst: GPUBuffer,
    dstOffset: number,
    bytes: number,
  ): void {
    this.endPass(encoder);
    if (bytes > 0) encoder.copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /** Ends the open pass and finishes `encoder` into a command buffer. */
  finish(encoder: GPUCommandEncoder): GPUCommandBuffer {
    this.endPass(encoder);
    return encoder.finish();
  }

  /**
   * Submits `encoder` without waiting and returns the promise of its completion; its
   * parameter blocks are released once the queue has finished it. A caller that never
   * awaits the promise loses nothing: a rejection (a lost device) is also seen here.
   */
  submitAsync(encoder: GPUCommandEncoder): Promise<void> {
    this.device.queue.submit([this.finish(encoder)]);
    const done = this.device.queue.onSubmittedWorkDone()
      .finally(() => this.#releaseArenas(encoder));
    done.catch(() => {}); // handled here too, so an unawaited completion cannot crash a run
    return done;
  }

  /** Submits `encoder` and resolves once the GPU has finished it. */
  async submit(encoder: GPUCommandEncoder): Promise<void> {
    await this.submitAsync(encoder);
    this.throwIfError();
  }

  #useArena(encoder: GPUCommandEncoder, buf: GPUBuffer): void {
    const a = this.#arena;
    if (!a || a.buffer !== buf) return; // only the current arena can be newly used
    let set = this.#arenasOf.get(encoder);
    if (!set) this.#arenasOf.set(encoder, set = new Set());
    if (!set.has(a)) {
      set.add(a);
      a.users++;
    }
  }

  #releaseArenas(encoder: GPUCommandEncoder): void {
    for (const a of this.#arenasOf.get(encoder) ?? []) {
      if (--a.users === 0 && a.full) a.buffer.destroy();
    }
    this.#arenasOf.delete(encoder);
  }

  /** Runs `record` in a fresh encoder, submits it and waits. */
  async run(record: (encoder: GPUCommandEncoder) => void): Promise<void> {
    const encoder = this.device.createCommandEncoder();
    record(encoder);
    await this.submit(encoder);
  }

  /** Copies `bytes` (default: all) of `buf` from `offset` back to the CPU as f32 values. */
  async read(buf: GPUBuffer, offset = 0, bytes = buf.size - offset): Promise<Float32Array> {
    return new Float32Array(await this.readBytes(buf, offset, bytes));
  }

  /** Copies a byte range of `buf` back to the CPU. */
  async readBytes(buf: GPUBuffer, offset = 0, bytes = buf.size - offset): Promise<ArrayBuffer> {
    const staging = this.device.createBuffer({
      size: this.checkSize(Math.ceil(bytes / 4) * 4, "readback"),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const encoder = this.device.createCommandEncoder();
    encoder.copyBufferToBuffer(buf, offset, staging, 0, staging.size);
    this.device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = staging.getMappedRange().slice(0, bytes);
    staging.unmap();
    staging.destroy();
    this.throwIfError();
    return out;
  }

  /** Throws the first uncaptured WebGPU error (validation, out of memory) seen so far. */
  throwIfError(): void {
    if (this.#firstError) {
      const msg = this.#firstError;
      this.#firstError = null;
      throw new GpuError(`WebGPU reported an error on ${this.adapterName}: ${msg}`);
    }
  }

  /** Releases the device. */
  destroy(): void {
    this.device.destroy();
  }
}

/** An error raised by the GPU layer: no adapter, a validation error, out of memory. */
export class GpuError extends Error {
  override name = "GpuError";
}

/** How to get a WebGPU adapter when there is none; used in error messages. */
export const NO_ADAPTER_HELP =
  "No WebGPU adapter was found. Deno needs a GPU driver: on Linux without a GPU, install " +
  "Mesa's software drivers (`sudo apt-get install mesa-vulkan-drivers` for lavapipe, or " +
  "libgl1-mesa-dri for llvmpipe through GL), then run again; check with " +
  "`deno eval 'console.log(await navigator.gpu.requestAdapter())'`.";

/**
 * Requests an adapter and a device with the adapter's full storage-buffer limits and,
 * where available, `shader-f16`. Resolves to `null` when there is no adapter at all.
 */
export async function requestGpu(opts: RequestGpuOptions = {}): Promise<Gpu | null> {
  if (typeof navigator === "undefined" || !("gpu" in navigator)) return null;
  ensureRuntimeDir();
  const adapter = await navigator.gpu.requestAdapter({
    powerPreference: opts.powerPreference ?? "high-performance",
  });
  if (!adapter) return null;
  const wantF16 = (opts.f16 ?? true) && adapter.features.has("shader-f16");
  const features: GPUFeatureName[] = wantF16 ? ["shader-f16"] : [];
  if (adapter.features.has("timestamp-query")) features.push("timestamp-query");
  const device = await adapter.requestDevice({
    requiredFeatures: features,
    requiredLimits: clampLimits(adapter.limits),
  });
  const info = adapter.info;
  const name = info.description || [info.vendor, info.architecture, info.device]
    .filter(Boolean).join(" ") ||
    "unknown adapter";
  return new Gpu(device, name, isFallbackAdapter(adapter));
}

/**
 * Gives the GL driver probe a private `XDG_RUNTIME_DIR` when none is set (a server, a
 * container, `ssh` without a login session). Without one, the first `requestAdapter`
 * prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." twice on
 * stderr — harmless (the adapter is found), but alarming in the middle of a run. The
 * folder is `$TMPDIR/gqa-viz-runtime-{uid}`, mode 0700, reused by every run of this user;
 * one owned by another user is left alone. Must run before the first adapter request.
 */
function ensureRuntimeDir(): void {
  try {
    if (Deno.build.os !== "linux" || Deno.env.get("XDG_RUNTIME_DIR")) return;
    const uid = Deno.uid();
    const dir = `${Deno.env.get("TMPDIR") ?? "/tmp"}/gqa-viz-runtime-${uid}`;
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = Deno.lstatSync(dir);
    if (!st.isDirectory || st.uid !== uid || ((st.mode ?? 0) & 0o077) !== 0) return;
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  } catch {
    // No env or write permission: the driver prints its warning, nothing else changes.
  }
}

/** The limits the kernels ask for, at the adapter's maximum. */
const WANTED_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxTextureDimension2D",
] as const;

/** Limits WebIDL types as `unsigned long long`; the rest are `unsigned long`. */
const LIMITS_64 = new Set(["maxStorageBufferBindingSize", "maxBufferSize"]);

/**
 * The adapter's limits as `requiredLimits`, each clamped to what WebIDL's `[EnforceRange]`
 * accepts (2³² − 1, or 2⁵³ − 1 for 64-bit sizes): drivers may report u64::MAX for
 * `maxBufferSize`, which would make `requestDevice` throw a TypeError.
 *
 * @example
 * ```ts
 * import { clampLimits } from "./gpu.ts";
 * clampLimits({ maxBufferSize: 2 ** 64 } as GPUSupportedLimits).maxBufferSize; // 2 ** 53 - 1
 * ```
 */
export function clampLimits(l: GPUSupportedLimits): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of WANTED_LIMITS) {
    const v = l[k];
    if (typeof v !== "number" || !(v > 0)) continue;
    out[k] = Math.min(Math.floor(v), LIMITS_64.has(k) ? Number.MAX_SAFE_INTEGER : 0xffffffff);
  }
  return out;
}

/**
 * Whether `adapter` is a software (CPU) adapter: `info.isFallbackAdapter` where the
 * implementation reports it, else Mesa's software driver names in the description.
 */
export function isFallbackAdapter(adapter: GPUAdapter): boolean {
  const info = adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean };
  if (info.isFallbackAdapter) return true;
  const a = adapter as GPUAdapter & { isFallbackAdapter?: boolean };
  if (a.isFallbackAdapter) return true;
  return /llvmpipe|lavapipe|softpipe|swiftshader/i.test(
    `${info.description} ${info.device} ${info.architecture}`,
  );
}

/** Splits a flat workgroup count into a 2-D grid that respects the 65535-per-dimension limit. */
export function grid2d(count: number, maxPerDim = 65535): [number, number] {
  if (count <= maxPerDim) return [Math.max(1, count), 1];
  const y = Math.ceil(count / maxPerDim);
  return [Math.ceil(count / y), y];
}
