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

/** A buffer, or a byte range of one, to bind to a `@binding(i)`. */
export type Binding = GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number };

/** Options for {@linkcode requestGpu}. */
export interface RequestGpuOptions {
  /** Ask for `shader-f16` when the adapter has it (default true). */
  f16?: boolean;
  /** Prefer a low-power or high-performance adapter (passed to `requestAdapter`). */
  powerPreference?: GPUPowerPreference;
}

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
  readonly #pipelines = new Map<string, GPUComputePipeline>();
  #firstError: string | null = null;

  constructor(device: GPUDevice, adapterName: string) {
    this.device = device;
    this.adapterName = adapterName;
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
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    if (size > this.maxBufferBytes) {
      throw new RangeError(
        `buffer ${label ?? ""} of ${size} bytes exceeds this adapter's maxBufferSize ` +
          `(${this.maxBufferBytes})`,
      );
    }
    this.bytesAllocated += size;
    return this.device.createBuffer({ size, usage: STORAGE, label });
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
   * Writes like {@linkcode write}, in 32 MiB pieces, waiting for each to land. The driver
   * copies every write into staging memory first; a piece at a time lets it reuse that
   * memory instead of allocating (and page-faulting) a fresh copy of the whole array:
   * on lavapipe a 117 MB matrix lands in ~60 ms instead of ~350 ms.
   */
  async writeLarge(buf: GPUBuffer, data: ArrayBufferView, offset = 0): Promise<void> {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const PIECE = 32 << 20;
    for (let at = 0; at < bytes.byteLength; at += PIECE) {
      this.write(buf, bytes.subarray(at, at + PIECE), offset + at);
      if (at + PIECE < bytes.byteLength) {
        this.device.queue.submit([]);
        await this.device.queue.onSubmittedWorkDone();
      }
    }
    this.throwIfError();
  }

  /** A storage buffer of `n` f32 values all set to NaN: the poison tests write before a run. */
  poisoned(n: number, label?: string): GPUBuffer {
    return this.upload(new Float32Array(n).fill(NaN), label);
  }

  /** A small uniform buffer holding `words` (u32, i32 or f32 views of the same 4-byte slots). */
  uniform(words: ArrayBufferView): GPUBuffer {
    const size = Math.max(16, Math.ceil(words.byteLength / 16) * 16);
    const buf = this.device.createBuffer({
      size,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.write(buf, words);
    return buf;
  }

  /**
   * Records one dispatch: binds `bindings` to `@group(0) @binding(0..n-1)` in order and
   * runs `workgroups` = [x, y?, z?] workgroups.
   */
  dispatch(
    encoder: GPUCommandEncoder,
    pipeline: GPUComputePipeline,
    bindings: Binding[],
    workgroups: [number, number?, number?],
  ): void {
    const bindGroup = this.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: bindings.map((b, binding) => ({
        binding,
        resource: b instanceof GPUBuffer ? { buffer: b } : b,
      })),
    });
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    const [x, y = 1, z = 1] = workgroups;
    pass.dispatchWorkgroups(x, y, z);
    pass.end();
  }

  /** Submits `encoder` and resolves once the GPU has finished it. */
  async submit(encoder: GPUCommandEncoder): Promise<void> {
    this.device.queue.submit([encoder.finish()]);
    await this.device.queue.onSubmittedWorkDone();
    this.throwIfError();
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
      size: Math.ceil(bytes / 4) * 4,
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
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: opts.powerPreference });
  if (!adapter) return null;
  const wantF16 = (opts.f16 ?? true) && adapter.features.has("shader-f16");
  const l = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures: wantF16 ? ["shader-f16"] : [],
    requiredLimits: {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
    },
  });
  const info = adapter.info;
  const name = info.description || [info.vendor, info.architecture, info.device]
    .filter(Boolean).join(" ") ||
    "unknown adapter";
  return new Gpu(device, name);
}

/** Splits a flat workgroup count into a 2-D grid that respects the 65535-per-dimension limit. */
export function grid2d(count: number, maxPerDim = 65535): [number, number] {
  if (count <= maxPerDim) return [Math.max(1, count), 1];
  const y = Math.ceil(count / maxPerDim);
  return [Math.ceil(count / y), y];
}
