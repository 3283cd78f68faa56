/**
 * Benchmark: capture layer 5 of a checkpoint with Meta-Llama-3-8B's exact shapes (BF16,
 * first 6 layers, written by make_8b_shaped.ts) for an 8-token prompt, from a local folder.
 *
 * ```
 * deno run -A scripts/bench_capture.ts [DIR] [--layer 5] [--runs 2]   # where the time goes
 * deno run -A scripts/bench_capture.ts [DIR] --peer [--rounds 3]      # race PyTorch
 * deno run -A scripts/bench_capture.ts [DIR] --peer --tokens 1        # the token-0 path
 * deno run -A scripts/bench_capture.ts [DIR] --one [--out K.f32]      # one timed capture (JSON)
 * ```
 *
 * `--layers N` sets how many layers the synthetic checkpoint has (default: layer + 1, at
 * least 6), so captures of layers 5 and 31 can share one 32-layer folder.
 *
 * **Default:** for each run the wall time, time per layer, bytes read and the process's peak
 * resident memory; and, to say what bounds it, the time to only read the planned bytes
 * (no GPU), the GPU time of one full layer with its weights already uploaded, and each step's
 * share of that layer (see bench_steps.ts).
 *
 * **--peer:** ours and bench/peer_torch.py (PyTorch fp32 on every core, memory-mapped BF16
 * converted by torch into reused buffers) alternately, each in a fresh process, best of
 * `--rounds` each, so background load hits both alike. Each side times itself from just
 * before it needs the hardware (our WebGPU device request; the peer's first file read,
 * after `import torch`) to K in hand; process wall times (start-up included) and their
 * ratio are printed too, and each side's CPU time (user + system, every thread), which a
 * busy machine disturbs less than wall time. The two K tensors are compared (relative L2)
 * so the race is between equal answers.
 * Needs /usr/bin/python3 with python3-torch; not part of CI.
 * @module
 */
import { parseArgs } from "node:util";
import { captureLayer } from "../model/capture.ts";
import { defaultRangeCacheDir, openSource } from "../model/source/mod.ts";
import { chooseKernels } from "../kernels/choose.ts";
import { parseConfigText } from "../model/config.ts";
import { loadTensorIndex } from "../model/tensors.ts";
import { planCapture } from "../model/plan.ts";
import { requestGpu } from "../kernels/gpu.ts";
import { make8bShaped } from "./make_8b_shaped.ts";
import { allocScratch, decoderLayer, type LayerWeights } from "../kernels/decoder_layer.ts";
import { layerDims, LayerSlots } from "../model/forward.ts";
import { timeLayerSteps } from "./bench_steps.ts";

/** "<bos>The quick brown fox jumps over the": the prompt every mode uses. */
const PROMPT = [128000, 791, 4062, 14198, 39935, 35308, 927, 279];
/** Its first `--tokens N` ids (default all 8; `--tokens 1` is the CLI's token-0 path). */
let TOKENS = PROMPT;

/** Peak resident set size of this process so far (Linux), in bytes. */
function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** CPU seconds (user + system, every thread) this process has used so far (Linux). */
function cpuSeconds(): number {
  const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ)
}

/** One timed capture in this process; prints {seconds, cpu, peakRss, layerSeconds} as JSON. */
async function one(dir: string, layer: number, out?: string): Promise<void> {
  const cpu0 = cpuSeconds();
  const t0 = performance.now();
  const gpu = await requestGpu();
  if (!gpu) throw new Error("no WebGPU adapter");
  await chooseKernels(gpu, { cacheDir: defaultRangeCacheDir() }); // as viz.ts does
  const cap = await captureLayer({ model: dir, layer, tokenIds: TOKENS, gpu, progress: false });
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds() - cpu0;
  gpu.destroy();
  if (out) {
    await Deno.writeFile(out, new Uint8Array(cap.k.buffer, cap.k.byteOffset, cap.k.byteLength));
  }
  console.log(JSON.stringify({
    seconds,
    cpu,
    peak_rss: peakRss(),
    layer_seconds: cap.report.layerSeconds,
    bytes: cap.report.bytesFetched,
  }));
}

/** Runs `cmd` to completion; returns its last stdout line as JSON plus the process wall time. */
async function timed(cmd: string[], env?: Record<string, string>) {
  const t0 = performance.now();
  const p = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    env,
    clearEnv: env !== undefined,
    stderr: "piped",
  }).output();
  const wall = (performance.now() - t0) / 1000;
  const text = new TextDecoder().decode(p.stdout).trim();
  if (!p.success) {
    throw new Error(`${cmd.join(" ")} failed:\n${text}\n${new TextDecoder().decode(p.stderr)}`);
  }
  const r = JSON.parse(text.split("\n").at(-1)!);
  return {
    seconds: r.seconds as number,
    cpu: r.cpu as number,
    wall,
    peakRss: r.peak_rss as number,
  };
}

/** Relative L2 distance ‖a − b‖ / ‖b‖. */
function relL2(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

const load = () => Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");

/** The race: ours and the PyTorch peer alternately, best of `rounds` each, and the ratio. */
async function race(dir: string, layer: number, rounds: number): Promise<void> {
  const loadBefore = load();
  const oursK = await Deno.makeTempFile({ suffix: ".f32" });
  const peerK = await Deno.makeTempFile({ suffix: ".f32" });
  const self = new URL(import.meta.url).pathname;
  const ours = ["deno", "run", "-A", self, dir, "--one", "--layer", `${layer}`, "--out", oursK];
  ours.push("--tokens", `${TOKENS.length}`);
  const peerScript = new URL("../bench/peer_torch.py", import.meta.url).pathname;
  const peer = ["/usr/bin/python3", peerScript, dir, "--layer", `${layer}`, "--out", peerK];
  // The peer's BLAS picks its own kernels: clear the overrides some machines set (for the
  // peer's command only).
  const peerEnv = Deno.env.toObject();
  for (const k of ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"]) delete peerEnv[k];
  peer.push("--tokens", TOKENS.join(","));
  type Run = Awaited<ReturnType<typeof timed>>;
  const runs = { ours: [] as Run[], peer: [] as Run[] };
  for (let r = 0; r < rounds; r++) {
    runs.ours.push(await timed(ours));
    runs.peer.push(await timed(peer, peerEnv));
    const [o, p] = [runs.ours[r], runs.peer[r]];
    console.error(
      `round ${r + 1}: ours ${o.seconds.toFixed(2)} s, peer ${p.seconds.toFixed(2)} s ` +
        `(ratio ${(o.seconds / p.seconds).toFixed(2)})`,
    );
  }
  const a = new Float32Array((await Deno.readFile(oursK)).buffer);
  const b = new Float32Array((await Deno.readFile(peerK)).buffer);
  const err = relL2(a, b);
  await Deno.remove(oursK);
  await Deno.remove(peerK);
  const best = (xs: number[]) => Math.min(...xs);
  const row = (name: string, xs: Run[]) =>
    `| ${name.padEnd(31)} | ${best(xs.map((x) => x.seconds)).toFixed(2).padStart(6)} | ${
      xs.map((x) => x.seconds.toFixed(2)).join(" / ").padEnd(18)
    } | ${best(xs.map((x) => x.cpu)).toFixed(2).padStart(10)} | ${
      best(xs.map((x) => x.wall)).toFixed(2).padStart(9)
    } | ${(best(xs.map((x) => x.peakRss)) / 1e9).toFixed(2).padStart(8)} |`;
  const ratio = best(runs.ours.map((x) => x.seconds)) / best(runs.peer.map((x) => x.seconds));
  const ratios = runs.ours.map((o, i) => o.seconds / runs.peer[i].seconds);
  const perRound = ratios.map((r) => r.toFixed(2));
  // The median round: on a VM where either side's time swings, steadier than best/best.
  const median = [...ratios].sort((p, q) => p - q)[ratios.length >> 1];
  const cpuRatio = best(runs.ours.map((x) => x.cpu)) / best(runs.peer.map((x) => x.cpu));
  // What a user waits for: the whole process, start-up included (Deno's, and the peer's
  // `import torch`). Printed beside the race, which starts each side at its hardware.
  const processRatio = best(runs.ours.map((x) => x.wall)) / best(runs.peer.map((x) => x.wall));
  console.log(
    [
      `layer ${layer} of ${dir}, ${TOKENS.length} tokens; load average ${loadBefore} before, ` +
      `${load()} after; ${navigator.hardwareConcurrency} CPUs`,
      "",
      "| side                            | best s | runs, s            | best CPU s | process s | peak GB  |",
      "| ------------------------------- | ------ | ------------------ | ---------- | --------- | -------- |",
      row("ours (WebGPU)", runs.ours),
      row("peer (PyTorch fp32, all cores)", runs.peer),
      "",
      `ratio ours / peer, best against best: ${ratio.toFixed(2)} ` +
      `(per round: ${perRound.join(", ")}; median round ${median.toFixed(2)}); CPU time, ` +
      `best against best: ${cpuRatio.toFixed(2)}`,
      `whole process, start-up included, best against best: ${processRatio.toFixed(2)}`,
      `K agrees with the peer's: relative L2 ${err.toExponential(2)} ` +
      `(${err <= 1e-3 ? "ok, ≤ 1e-3" : "NOT within 1e-3"})`,
    ].join("\n"),
  );
}

/** Reads every planned byte (no GPU), twice; returns the warm pass's seconds. */
async function readOnly(dir: string, layer: number) {
  const src = await openSource({ model: dir, progress: false });
  const cfg = parseConfigText(await src.readText("config.json"), { where: dir });
  const tensors = await loadTensorIndex(src);
  const plan = planCapture({ config: cfg, tensors, layer, tokenIds: TOKENS, model: "8B-shaped" });
  // One reused buffer per tensor role (fresh buffers of hundreds of MB cost more to
  // page-fault than to fill). Read twice: the second pass is the warm one.
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
  return { src, cfg, tensors, plan, seconds: (performance.now() - t0) / 1000 };
}

/** The default mode: what bounds a capture, then `runs` whole captures in this process. */
async function breakdown(dir: string, layer: number, runs: number): Promise<void> {
  const gpu = await requestGpu();
  if (!gpu) throw new Error("no WebGPU adapter");
  await chooseKernels(gpu, { cacheDir: defaultRangeCacheDir() });
  console.log(
    `adapter: ${gpu.adapterName} (shader-f16: ${gpu.hasF16}; ${gpu.kernels} kernels: ` +
      `${gpu.kernelsReason}; weights in ${gpu.weightStorage}s: ${gpu.weightStorageReason}); ` +
      `load ${load()}`,
  );

  // 1. Read only: every planned byte, in plan order, no GPU.
  const { src, cfg, tensors, plan, seconds: readS } = await readOnly(dir, layer);
  console.log(plan.describe(dir));
  console.log(
    `read only: ${(plan.bytes / 1e9).toFixed(2)} GB in ${readS.toFixed(2)} s ` +
      `(${(plan.bytes / 1e9 / readS).toFixed(2)} GB/s from the page cache, into reused buffers)`,
  );

  // 2. Compute only: layer 0's weights uploaded once, the full layer run 4 times.
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
      `(median of 3 after a warm-up of ${times[0].toFixed(3)} s; ` +
      `${(layerBytes / 1e9 / median).toFixed(2)} GB/s of weights)`,
  );
  // 3. Each step's share of that layer.
  console.log(await timeLayerSteps(gpu, { dims, w, x, s }));

  // 4. The whole capture, `runs` times.
  for (let run = 0; run < runs; run++) {
    const t0 = performance.now();
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
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      layer: { type: "string", default: "5" },
      runs: { type: "string", default: "2" },
      rounds: { type: "string", default: "3" },
      peer: { type: "boolean" },
      one: { type: "boolean" },
      out: { type: "string" },
      layers: { type: "string", default: "0" },
      tokens: { type: "string", default: `${PROMPT.length}` },
    },
  });
  const n = Number(values.tokens);
  if (!Number.isInteger(n) || n < 1 || n > PROMPT.length) {
    throw new Error(`--tokens must be 1 to ${PROMPT.length}, got ${values.tokens}`);
  }
  TOKENS = PROMPT.slice(0, n);
  const dir = positionals[0] ?? "/tmp/llama3-8b-shaped";
  const layer = Number(values.layer);
  await make8bShaped(dir, Math.max(6, layer + 1, Number(values.layers)));
  if (values.one) await one(dir, layer, values.out);
  else if (values.peer) await race(dir, layer, Number(values.rounds));
  else await breakdown(dir, layer, Number(values.runs));
}
