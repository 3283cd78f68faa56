/** Tests of viz/gqa_summary.ts on cases checked by hand. */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { gqaSummary, jsDistance } from "../viz/gqa_summary.ts";

const near = (a: number, b: number, what: string) =>
  assert(Math.abs(a - b) < 1e-12, `${what}: ${a} ≠ ${b}`);

Deno.test("jsDistance() is 0 for equal rows, 1 for disjoint ones, and √JSD in bits between", () => {
  near(jsDistance([0.3, 0.7], [0.3, 0.7], 2), 0, "equal");
  near(jsDistance([1, 0], [0, 1], 2), 1, "disjoint");
  // p = [1, 0], q = [½, ½]: m = [¾, ¼]; KL(p‖m) = log2(4/3); KL(q‖m) = ½log2(2/3) + ½log2(2)
  const jsd = 0.5 * Math.log2(4 / 3) + 0.5 * (0.5 * Math.log2(2 / 3) + 0.5 * Math.log2(2));
  near(jsDistance([1, 0], [0.5, 0.5], 2), Math.sqrt(jsd), "half");
  near(jsDistance([0.5, 0.5], [1, 0], 2), Math.sqrt(jsd), "symmetric");
});

Deno.test("gqaSummary() averages pairs within a KV group and across groups separately", () => {
  // H = 4, KV = 2 (heads 0, 1 share K; heads 2, 3 share K), T = 2. Rows at token 1:
  // head 0 [1, 0], head 1 [1, 0], head 2 [0, 1], head 3 [½, ½].
  const rows1 = [[1, 0], [1, 0], [0, 1], [0.5, 0.5]];
  const attn = new Float32Array(4 * 2 * 2);
  rows1.forEach((r, h) => attn.set([1, 0, ...r], h * 4)); // token 0 always [1, 0]
  const half = jsDistance([1, 0], [0.5, 0.5], 2); // ≈ 0.5579
  const s = gqaSummary({ attn, H: 4, KV: 2, T: 2, layer: 7 });
  // within: (0,1) → 0, (2,3) → half; across: (0,2) 1, (0,3) half, (1,2) 1, (1,3) half
  near(s.within, half / 2, "within");
  near(s.across, (2 + 2 * half) / 4, "across");
  assertEquals(s.layer, 7);
});

Deno.test("gqaSummary() gives NaN where no pair exists (MHA has no pairs within; T = 1 nothing)", () => {
  const one = gqaSummary({ attn: new Float32Array([1, 1]), H: 2, KV: 2, T: 1, layer: 0 });
  assert(Number.isNaN(one.within) && Number.isNaN(one.across));
  const mha = gqaSummary({
    attn: new Float32Array([1, 0, 1, 0, 1, 0, 0, 1]),
    H: 2,
    KV: 2,
    T: 2,
    layer: 0,
  });
  assert(Number.isNaN(mha.within));
  near(mha.across, 1, "across");
});
