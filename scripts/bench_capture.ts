/**
 * Benchmark: capture layer 5 of a checkpoint with Meta-Llama-3-8B's exact shapes (BF16,
 * first 6 layers, written by make_8b_shaped.ts) for an 8-token prompt, from a local folder.
 *
 *   deno run -A scripts/bench_capture.ts [DIR] [--layer 5] [--runs 2]
 *
 * Prints, for each run: wall time, time per layer, bytes read, and the process's peak
 * resident memory; and, to say what bounds it, the time to only read the planned bytes
 * (no GPU) and the GPU time of one full layer with its weights already uploaded.
 * @module
 */
import { parseArgs } from "node:util";
import { captureLayer } from "../model/capture.ts";
import { openSource } from "../model/source/mod.ts";
import { parseConfigText } from "../model/config.ts";
import { loadTensorIndex } from "../model/tensors.ts";
import { planCapture } from "../model/plan.ts";
import { requestGpu } from "../kernels/gpu.ts";
import { make8bShaped } from "./make_8b_shaped.ts";
import { allocScratch, decoderLayer, type LayerWeights } from "../kernels/decoder_layer.ts";
import { layerDims, LayerSlots } from "../model/forward.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { layer: { type: "string", default: "5" }, runs: { type: "string", default: "2" } },
});
const dir = positionals[0] ?? "/tmp/llama3-8b-shaped";
const layer = Number(values.layer);
const TOKENS = [128000, 791, 4062, 14198, 39935, 35308, 927, 279]; // "<bos>The quick brown fox jumps over the"

await make8bShaped(dir, Math.max(6, layer + 1));
const gpu = await requestGpu();
if (!gpu) throw new Error("no WebGPU adapter");

/** Peak resident set size of this process so far (Linux), in bytes. */
function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
  return m ? Number(m[1]) * 1024 : NaN;
}

// 1. Read only: every planned byte, in plan order, no GPU.
const src = await openSource({ model: dir, progress: false });
const cfg = parseConfigText(await src.readText("config.json"), { where: dir });
const tensors = await loadTensorIndex(src);
const plan = planCapture({ config: cfg, tensors, layer, tokenIds: TOKENS, model: "8B-shaped" });
// One reused buffer per tensor role, as the forward pass does (fresh buffers of hundreds
// of MB cost more to page-fault than to fill). Read twice: the second pass is the warm one.
const buffers = new Map<string, Uint8Array>();
const into = (name: string, n: number) => {
  const key = name.replace(/^model\.layers\.\d+\./, "");
  let b = buffers.get(key);
  if (b?.byteLength !== n) buffers.set(key, b = new Uint8Array(n));
  return b;
};
let t0 = 0;
for (let pass = 0; pass < 2; pass++) {
  t0 = performance.now();
  for (const r of plan.reads) {
    await src.read(r.file, r.begin, r.end, into(r.tensor, r.end - r.begin));
  }
}
const readS = (performance.now() - t0) / 1000;
console.log(`adapter: ${gpu.adapterName} (shader-f16: ${gpu.hasF16})`);
console.log(plan.describe(dir));
console.log(
  `read only: ${(plan.bytes / 1e9).toFixed(2)} GB in ${readS.toFixed(2)} s ` +
    `(${(plan.bytes / 1e9 / readS).toFixed(2)} GB/s from the page cache, into reused buffers)`,
);

// 2. Compute only: layer 0's weights uploaded once, the full layer run 3 times.
{
  // The same upload path as the forward pass.
  const dims = layerDims(cfg, TOKENS.length);
  const bytes = new Map<string, Uint8Array>();
  for (const r of plan.layers[0]) bytes.set(r.tensor, await src.read(r.file, r.begin, r.end));
  const slots = new LayerSlots(gpu, tensors);
  await slots.load(0, bytes);
  const w = slots.w as LayerWeights;
  const s = allocScratch(gpu, dims);
  const x = gpu.upload(new Float32Array(dims.T * dims.D).fill(0.01));
  const times: number[] = [];
  for (let i = 0; i < 4; i++) {
    const t1 = performance.now();
    await gpu.run((enc) => decoderLayer(gpu, enc, { dims, w, x, s }));
    times.push((performance.now() - t1) / 1000);
  }
  const layerBytes = plan.layers[0].reduce((n, r) => n + r.end - r.begin, 0);
  const median = times.slice(1).sort((a, b) => a - b)[1];
  console.log(
    `compute only: one full layer (T=${dims.T}) in ${median.toFixed(3)} s on the GPU ` +
      `(median of 3 after a warm-up; ${(layerBytes / 1e9 / median).toFixed(2)} GB/s of weights)`,
  );
}

// 3. The whole capture, `runs` times.
for (let run = 0; run < Number(values.runs); run++) {
  t0 = performance.now();
  const cap = await captureLayer({ model: dir, layer, tokenIds: TOKENS, gpu, progress: false });
  const wall = (performance.now() - t0) / 1000;
  const per = cap.report.layerSeconds.map((s) => s.toFixed(2)).join(" ");
  console.log(
    `run ${run + 1}: wall ${wall.toFixed(2)} s; per layer [${per}] s; ` +
      `read ${(cap.report.bytesFetched / 1e9).toFixed(3)} GB; ` +
      `device memory ${(cap.report.deviceBytes / 1e9).toFixed(2)} GB; ` +
      `peak RSS ${(peakRss() / 1e9).toFixed(2)} GB`,
  );
}
gpu.destroy();
