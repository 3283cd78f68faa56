/**
 * How alike are the attention patterns of the query heads that share one K? For one layer's
 * attention weights A (H, T, T) this compares every pair of query heads by the Jensen–Shannon
 * distance of their attention rows, averaged over query tokens, and splits the pairs in two:
 *
 *   within   pairs in one KV group (h1 / r = h2 / r, r = H / KV): same K, different Q
 *   across   pairs in different groups: different K and different Q
 *
 *   JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m),  m = ½ (p + q),  in bits (log base 2): 0 … 1
 *   distance  = √JSD (a metric: 0 for the same row, 1 for rows with disjoint support)
 *   pair(h1, h2) = mean over t = 1 … T−1 of distance(A[h1, t, :], A[h2, t, :])
 *
 * Token 0 is left out: it can attend only to itself, so every head's row there is [1] and
 * the distance 0 says nothing. `within` below `across` means that sharing K makes a group's
 * heads look at the same tokens; near-equal values mean the queries alone set the pattern.
 * With T = 1, or with r = 1 (no pairs within) or KV = 1 (no pairs across), the missing mean
 * is NaN.
 *
 * Pure functions (no module state), listed in {@linkcode GQA_SUMMARY_FUNCTIONS} so a page
 * can embed them by source text.
 * @module
 */

/** One layer's summary. */
export interface GqaSummary {
  layer: number;
  /** Mean JS distance between query heads of one KV group (NaN when H = KV or T = 1). */
  within: number;
  /** Mean JS distance between query heads of different KV groups (NaN when KV = 1 or T = 1). */
  across: number;
}

/**
 * Jensen–Shannon distance (√JSD, log base 2) between two probability rows of length n.
 *
 * @example
 * ```ts
 * jsDistance([1, 0], [0, 1], 2); // 1
 * jsDistance([0.5, 0.5], [0.5, 0.5], 2); // 0
 * ```
 */
export function jsDistance(p: ArrayLike<number>, q: ArrayLike<number>, n: number): number {
  let jsd = 0;
  for (let i = 0; i < n; i++) {
    const m = (p[i] + q[i]) / 2;
    if (p[i] > 0) jsd += 0.5 * p[i] * Math.log2(p[i] / m);
    if (q[i] > 0) jsd += 0.5 * q[i] * Math.log2(q[i] / m);
  }
  return Math.sqrt(Math.max(0, jsd));
}

/**
 * Mean JS distance within KV groups and across them for one layer's attention weights
 * `attn` (H, T, T), row (h, t) at (h·T + t)·T; query head h belongs to group ⌊h / (H/KV)⌋.
 *
 * @example
 * ```ts
 * // H = 2, KV = 1, T = 2: at token 1 head 0 attends [1, 0], head 1 [0, 1].
 * const attn = new Float32Array([1, 0, 1, 0, 1, 0, 0, 1]);
 * gqaSummary({ attn, H: 2, KV: 1, T: 2, layer: 0 }); // { layer: 0, within: 1, across: NaN }
 * ```
 */
export function gqaSummary(
  a: { attn: ArrayLike<number>; H: number; KV: number; T: number; layer: number },
): GqaSummary {
  const { attn, H, KV, T } = a;
  const r = H / KV;
  let within = 0, nWithin = 0, across = 0, nAcross = 0;
  const row = (h: number, t: number) => {
    const o = (h * T + t) * T;
    return Array.prototype.slice.call(attn, o, o + t + 1) as number[];
  };
  for (let h1 = 0; h1 < H; h1++) {
    for (let h2 = h1 + 1; h2 < H; h2++) {
      let d = 0;
      for (let t = 1; t < T; t++) d += jsDistance(row(h1, t), row(h2, t), t + 1);
      if (T < 2) continue;
      d /= T - 1;
      if (Math.floor(h1 / r) === Math.floor(h2 / r)) (within += d), nWithin++;
      else (across += d), nAcross++;
    }
  }
  return {
    layer: a.layer,
    within: nWithin ? within / nWithin : NaN,
    across: nAcross ? across / nAcross : NaN,
  };
}

/** The functions above, for pages that embed them by source text. */
export const GQA_SUMMARY_FUNCTIONS: readonly ((...args: never[]) => unknown)[] = [
  jsDistance,
  gqaSummary,
];
