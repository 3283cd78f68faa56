/**
 * What the numbered tutorial scripts share: `--model` (default: the generated tiny model)
 * and a GPU or a clear exit.
 * @module
 */
import { parseArgs } from "node:util";
import { relative } from "node:path";
import { makeTinyModel } from "./make_tiny_model.ts";
import { type Gpu, NO_ADAPTER_HELP, requestGpu } from "../kernels/gpu.ts";

/** The model the step runs on: `--model X`, else the tiny model (generated on first use). */
export async function tutorialModel(): Promise<string> {
  const { values } = parseArgs({ args: Deno.args, options: { model: { type: "string" } } });
  if (values.model) return values.model;
  const { dir } = await makeTinyModel();
  return relative(Deno.cwd(), dir) || ".";
}

/** The first WebGPU adapter, or exit with how to get one. */
export async function tutorialGpu(): Promise<Gpu> {
  const gpu = await requestGpu();
  if (!gpu) {
    console.error(NO_ADAPTER_HELP);
    Deno.exit(1);
  }
  // Release the device when the script ends: Mesa's drivers have crashed when left to teardown.
  globalThis.addEventListener("unload", () => gpu.destroy());
  console.log(`WebGPU adapter: ${gpu.adapterName} (shader-f16: ${gpu.hasF16})\n`);
  return gpu;
}
