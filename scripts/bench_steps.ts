/**
 * Where the time of one decoder layer goes: each step of {@linkcode decoderLayer} timed
 * alone, recorded `reps` times into one encoder and submitted once (after a warm-up that
 * compiles its pipeline), so the ~11 ms it takes Deno to notice a finished submit is paid
 * once per step, not once per dispatch. Used by bench_capture.ts.
 *
 * The per-dispatch cost (binding, pass, launch) is measured the same way with the cheapest
 * step (the residual add), so "fixed costs" shows what a layer of many small dispatches pays
 * beyond its arithmetic.
 * @module
 */
import type { Gpu } from "../kernels/gpu.ts";
import type { LayerDims, LayerScratch, LayerWeights } from "../kernels/decoder_layer.ts";
import { matmul } from "../kernels/matmul.ts";
import { rmsnorm } from "../kernels/rmsnorm.ts";
import { rope } from "../kernels/rope.ts";
import { attention } from "../kernels/attention.ts";
import { swiglu } from "../kernels/swiglu.ts";
import { add } from "../kernels/add.ts";
import { createFiniteCheck, finiteCheck } from "../kernels/finite_check.ts";

/** Seconds per call of `record`, from `reps` calls in one submit (after one warm-up submit). */
async function perCall(gpu: Gpu, reps: number, record: (enc: GPUCommandEncoder) => void) {
  await gpu.run(record);
  const t0 = performance.now();
  await gpu.run((enc) => {
    for (let i = 0; i < reps; i++) record(enc);
  });
  return (performance.now() - t0) / 1000 / reps;
}

/**
 * Times every step of one full layer with weights `w` already on the device and returns a
 * Markdown table: step, ms per call, share of the steps' sum.
 * @example
 * ```ts ignore
 * console.log(await timeLayerSteps(gpu, { dims, w, x, s }));
 * ```
 */
export async function timeLayerSteps(
  gpu: Gpu,
  a: { dims: LayerDims; w: LayerWeights; x: GPUBuffer; s: LayerScratch },
): Promise<string> {
  const { dims, w, x, s } = a;
  const { T, D, H, KV, HD, I, eps } = dims;
  const check = createFiniteCheck(gpu, 1);
  const mm = (m: keyof LayerWeights, xin: GPUBuffer, y: GPUBuffer) => (enc: GPUCommandEncoder) =>
    matmul(gpu, enc, { x: xin, w: w[m] as NonNullable<LayerWeights["q"]>, y, T });
  const steps: [string, number, (enc: GPUCommandEncoder) => void][] = [
    [
      "rmsnorm (x2 per layer)",
      2,
      (e) => rmsnorm(gpu, e, { x, w: w.inputNorm, y: s.xn, T, D, eps }),
    ],
    ["q_proj", 1, mm("q", s.xn, s.q)],
    ["k_proj", 1, mm("k", s.xn, s.k)],
    ["v_proj", 1, mm("v", s.xn, s.v)],
    ["rope q and k", 1, (e) => {
      rope(gpu, e, { x: s.q, cos: s.cos, sin: s.sin, T, heads: H, HD });
      rope(gpu, e, { x: s.k, cos: s.cos, sin: s.sin, T, heads: KV, HD });
    }],
    [
      "attention",
      1,
      (e) => attention(gpu, e, { q: s.q, k: s.k, v: s.v, out: s.attn, T, H, KV, HD }),
    ],
    ["o_proj", 1, mm("o", s.attn, s.out)],
    ["residual add (x2 per layer)", 2, (e) => add(gpu, e, { x: s.out, y: s.xn, n: T * D })],
    ["gate_proj", 1, mm("gate", s.xn, s.gate)],
    ["up_proj", 1, mm("up", s.xn, s.up)],
    ["silu(gate)*up", 1, (e) => swiglu(gpu, e, { gate: s.gate, up: s.up, out: s.act, n: T * I })],
    ["down_proj", 1, mm("down", s.act, s.out)],
    [
      "finite check of x (1 per layer)",
      1,
      (e) => finiteCheck(gpu, e, { check, step: 0, x, n: T * D }),
    ],
  ];
  const rows: [string, number][] = [];
  for (const [name, times, record] of steps) {
    const isMatmul = name.endsWith("_proj");
    rows.push([name, times * await perCall(gpu, isMatmul ? 4 : 32, record)]);
  }
  const total = rows.reduce((n, [, t]) => n + t, 0);
  const matmuls = rows.filter(([n]) => n.endsWith("_proj")).reduce((n, [, t]) => n + t, 0);
  const lines = [
    `steps of one layer (T = ${T}), each timed alone (many per submit):`,
    "",
    "| step                            | ms    | share |",
    "| ------------------------------- | ----- | ----- |",
    ...rows.map(([n, t]) =>
      `| ${n.padEnd(31)} | ${(t * 1e3).toFixed(2).padStart(5)} | ${
        (100 * t / total).toFixed(1).padStart(4)
      }% |`
    ),
    `| ${"sum".padEnd(31)} | ${(total * 1e3).toFixed(1).padStart(5)} |  100% |`,
    "",
    `matmuls: ${(matmuls * 1e3).toFixed(1)} ms (${(100 * matmuls / total).toFixed(0)} %); ` +
    `everything else: ${((total - matmuls) * 1e3).toFixed(1)} ms`,
  ];
  check.flags.destroy();
  return lines.join("\n");
}
