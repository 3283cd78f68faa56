/**
 * Prints the WebGPU adapter Deno finds and the matmul variant the kernels will use on it
 * (CI runs this before each test run, so the log says what was tested).
 *
 *   deno run -A scripts/adapter_info.ts [--expect-f16 yes|no]
 *
 * With `--expect-f16` it exits 1 when the adapter's `shader-f16` differs: CI uses it to be
 * sure the first run really is on lavapipe (Vulkan, has it) and the second on GL (has not).
 * @module
 */
import { NO_ADAPTER_HELP, requestGpu } from "../kernels/gpu.ts";
import { chooseMatmulVariant, matmulVariantInfo } from "../kernels/matmul.ts";

const gpu = await requestGpu();
if (!gpu) {
  console.error(NO_ADAPTER_HELP);
  Deno.exit(1);
}
await chooseMatmulVariant(gpu);
const info = matmulVariantInfo(gpu);
console.log(`adapter: ${gpu.adapterName}; shader-f16: ${gpu.hasF16 ? "yes" : "no"}`);
console.log(`matmul variant: ${info.variant} (${info.reason})`);
gpu.destroy();
const i = Deno.args.indexOf("--expect-f16");
if (i >= 0 && (Deno.args[i + 1] === "yes") !== gpu.hasF16) {
  console.error(
    `expected an adapter ${gpu.hasF16 ? "without" : "with"} shader-f16: the wrong driver was ` +
      "found (is mesa-vulkan-drivers installed? is VK_ICD_FILENAMES set?)",
  );
  Deno.exit(1);
}
