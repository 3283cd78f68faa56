/**
 * How big is the explorer page for a real model? Builds a synthetic capture with the shapes
 * of Llama-3-8B (H = 32, KV = 8, HD = 128) for T tokens and L layers (random values: the size
 * does not depend on them, since every value is a 2-byte half float in base64), runs the real
 * encoder (viz/explorer.ts) and prints the page's size and the time it took.
 *
 * ```
 * deno run -A scripts/explorer_size.ts                  # 32 layers, 16 tokens
 * deno run -A scripts/explorer_size.ts --layers 8 --tokens 64
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { explorerHtml } from "../viz/explorer.ts";

/** A capture of Llama-3-8B's shapes with `layers` layers of `T` tokens of random values. */
export function syntheticCapture(layers: number, T: number) {
  const H = 32, KV = 8, HD = 128;
  let seed = 1;
  const rand = (n: number, scale: number) =>
    Float32Array.from({ length: n }, () => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return (seed / 2 ** 32 - 0.5) * scale;
    });
  const sweep = Array.from({ length: layers }, (_, layer) => ({
    layer,
    q: rand(T * H * HD, 4),
    qRope: rand(T * H * HD, 4),
    k: rand(T * KV * HD, 4),
    kRope: rand(T * KV * HD, 4),
    attn: rand(H * T * T, 1).map(Math.abs),
  }));
  const tokenIds = Array.from({ length: T }, (_, i) => 1000 + i);
  return {
    model: "meta-llama/Meta-Llama-3-8B",
    revision: "main",
    tokenIds,
    tokenTexts: tokenIds.map((i) => ` tok${i}`),
    T,
    H,
    KV,
    HD,
    sweep,
  };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { layers: { type: "string" }, tokens: { type: "string" } },
  });
  const L = Number(values.layers ?? 32), T = Number(values.tokens ?? 16);
  const cap = syntheticCapture(L, T);
  const t0 = performance.now();
  const html = explorerHtml(cap, { token: 0, dims: 20, rope: "pre", show: "k" });
  const ms = performance.now() - t0;
  const bytes = new TextEncoder().encode(html).byteLength;
  const values16 = L * (2 * T * 32 * 128 + 2 * T * 8 * 128 + 32 * T * T);
  console.log(
    `Llama-3-8B shapes, ${L} layers, ${T} tokens: ${(bytes / 1e6).toFixed(2)} MB ` +
      `(${values16} half floats = ${(2 * values16 / 1e6).toFixed(2)} MB raw, ` +
      `${(8 / 3 * values16 / 1e6).toFixed(2)} MB in base64), built in ${ms.toFixed(0)} ms`,
  );
}
