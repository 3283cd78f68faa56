/**
 * Prints the WebGPU adapter Deno finds, the kernel family the kernels will use on it (timed
 * here, see kernels/choose.ts), the CPU family's F16 variant and where it keeps weights
 * (buffers or textures, also timed) — CI runs this before each test run, so the log says
 * what was tested.
 *
 *   deno run -A scripts/adapter_info.ts [--expect-f16 yes|no] [--no-measure]
 *
 * With `--expect-f16` it exits 1 when the adapter's `shader-f16` differs: CI uses it to be
 * sure the first run really is on lavapipe (Vulkan, has it) and the second on GL (has not).
 * The family is measured even on a fallback adapter (where the capture CLI skips timing and
 * keeps the CPU family), unless `--no-measure`; `GQA_VIZ_KERNELS` forces it without timing,
 * `GQA_VIZ_WEIGHTS=buffer|texture` the weight storage.
 * @module
 */
import { NO_ADAPTER_HELP, requestGpu } from "../kernels/gpu.ts";
import { chooseMatmulVariant, matmulVariantInfo } from "../kernels/matmul.ts";
import { chooseKernels } from "../kernels/choose.ts";
import { defaultRangeCacheDir } from "../model/source/range_cache.ts";

const gpu = await requestGpu();
if (!gpu) {
  console.error(NO_ADAPTER_HELP);
  Deno.exit(1);
}
const measure = !Deno.args.includes("--no-measure");
const kernels = measure
  ? await chooseKernels(gpu, { force: true, cacheDir: defaultRangeCacheDir() })
  : { family: gpu.kernels, reason: gpu.kernelsReason };
await chooseMatmulVariant(gpu);
const info = matmulVariantInfo(gpu);
const l = gpu.device.limits;
console.log(
  `adapter: ${gpu.adapterName}; fallback: ${gpu.isFallback ? "yes" : "no"}; shader-f16: ${
    gpu.hasF16 ? "yes" : "no"
  }; timestamp-query: ${gpu.hasTimestamps ? "yes" : "no"}`,
);
console.log(
  `limits: maxStorageBufferBindingSize ${l.maxStorageBufferBindingSize}, maxBufferSize ` +
    `${l.maxBufferSize}, maxComputeWorkgroupStorageSize ${l.maxComputeWorkgroupStorageSize}`,
);
console.log(`kernel family: ${kernels.family} (${kernels.reason})`);
console.log(`matmul F16 variant (cpu family): ${info.variant} (${info.reason})`);
console.log(`cpu family weights in: ${gpu.weightStorage}s (${gpu.weightStorageReason})`);
gpu.destroy();
const i = Deno.args.indexOf("--expect-f16");
if (i >= 0 && (Deno.args[i + 1] === "yes") !== gpu.hasF16) {
  console.error(
    `expected an adapter ${gpu.hasF16 ? "without" : "with"} shader-f16: the wrong driver was ` +
      "found (is mesa-vulkan-drivers installed? is VK_ICD_FILENAMES set?)",
  );
  Deno.exit(1);
}
