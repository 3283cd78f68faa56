/**
 * The colour scale of the GQA grid: one diverging blue–white–red scale centred on 0, plus
 * the helpers that pick its range and its tick values.
 *
 * Scale. The anchors are ColorBrewer's 11-class "RdBu" palette (Cynthia Brewer, designed for
 * diverging data: equal lightness steps on both sides of a light centre), reversed so that
 * negative values are blue and positive values red. Between anchors we interpolate in CIELAB
 * (D65), not in sRGB, so equal steps in value give roughly equal steps in perceived colour:
 *
 *   s = clamp(value / clip, −1, 1)       position on the scale, 0 at the centre
 *   i = (s + 1) / 2 · 10                 fractional index into the 11 anchors
 *   colour = lab⁻¹( lerp(lab(a⌊i⌋), lab(a⌈i⌉), i − ⌊i⌋) )
 *
 * NaN has no place on the scale and is drawn in {@linkcode NAN_HEX}.
 *
 * Range. The scale is symmetric, [−clip, clip], with clip a high percentile (default 99) of
 * |value| over everything drawn, so one outlier (Llama has a few large K dimensions) does not
 * wash every other cell out to white; values beyond clip take the end colours.
 *
 * Everything here is pure and deterministic: the same input gives the same hex string. No
 * function reads module state or imports anything, so a page can embed them by their source
 * text ({@linkcode COLOUR_SCALE_FUNCTIONS}) and get the very same colours.
 * @module
 */

/** The colour for NaN (not on the scale): a mid grey, distinct from the near-white centre. */
export const NAN_HEX = "#8c8c8c";

type Lab = [number, number, number];

/**
 * ColorBrewer RdBu (11 classes), from most negative (dark blue) to most positive (dark red).
 * A function rather than a module constant so that every function here is self-contained
 * (see {@linkcode COLOUR_SCALE_FUNCTIONS}).
 */
function rdbuAnchors(): string[] {
  return [
    "#053061",
    "#2166ac",
    "#4393c3",
    "#92c5de",
    "#d1e5f0",
    "#f7f7f7",
    "#fddbc7",
    "#f4a582",
    "#d6604d",
    "#b2182b",
    "#67001f",
  ];
}

/** The D65 reference white [Xn, Yn, Zn], XYZ scaled so that Y = 1. */
function d65White(): Lab {
  return [0.95047, 1.0, 1.08883];
}

function srgbToLinear(c: number): number {
  return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
}

function linearToSrgb(c: number): number {
  return c <= 0.0031308 ? 12.92 * c : 1.055 * c ** (1 / 2.4) - 0.055;
}

function hexToLab(hex: string): Lab {
  const [XN, YN, ZN] = d65White();
  const n = parseInt(hex.slice(1), 16);
  const r = srgbToLinear(((n >> 16) & 255) / 255);
  const g = srgbToLinear(((n >> 8) & 255) / 255);
  const b = srgbToLinear((n & 255) / 255);
  const x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / XN;
  const y = (0.2126729 * r + 0.7151522 * g + 0.072175 * b) / YN;
  const z = (0.0193339 * r + 0.119192 * g + 0.9503041 * b) / ZN;
  const f = (t: number) => (t > 216 / 24389 ? Math.cbrt(t) : (24389 / 27 * t + 16) / 116);
  const fx = f(x), fy = f(y), fz = f(z);
  return [116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)];
}

function labToHex([L, a, bb]: Lab): string {
  const [XN, YN, ZN] = d65White();
  const fy = (L + 16) / 116, fx = fy + a / 500, fz = fy - bb / 200;
  const inv = (f: number) => (f ** 3 > 216 / 24389 ? f ** 3 : (116 * f - 16) / (24389 / 27));
  const x = inv(fx) * XN, y = inv(fy) * YN, z = inv(fz) * ZN;
  const r = 3.2404542 * x - 1.5371385 * y - 0.4985314 * z;
  const g = -0.969266 * x + 1.8760108 * y + 0.041556 * z;
  const b = 0.0556434 * x - 0.2040259 * y + 1.0572252 * z;
  const byte = (c: number) => {
    const v = Math.round(Math.min(1, Math.max(0, linearToSrgb(c))) * 255);
    return v.toString(16).padStart(2, "0");
  };
  return `#${byte(r)}${byte(g)}${byte(b)}`;
}

/**
 * The colour at position `s` of the diverging scale: −1 dark blue, 0 near white, +1 dark red.
 * `s` outside [−1, 1] is clamped; NaN gives {@linkcode NAN_HEX}.
 *
 * @example
 * ```ts
 * divergingHex(0);  // "#f7f7f7" (the centre)
 * divergingHex(-1); // "#053061" (dark blue)
 * divergingHex(2);  // "#67001f" (clamped to dark red)
 * ```
 */
export function divergingHex(s: number): string {
  if (Number.isNaN(s)) return "#8c8c8c"; // NAN_HEX, spelled out to keep this self-contained
  const anchors = rdbuAnchors();
  const c = Math.min(1, Math.max(-1, s));
  const i = (c + 1) / 2 * (anchors.length - 1);
  const lo = Math.floor(i), hi = Math.min(lo + 1, anchors.length - 1);
  const f = i - lo;
  if (f === 0) return anchors[lo];
  const a = hexToLab(anchors[lo]), b = hexToLab(anchors[hi]);
  return labToHex([a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f]);
}

/**
 * The colour of `value` on the symmetric scale [−clip, clip] (clip > 0): value / clip mapped
 * by {@linkcode divergingHex}; values beyond ±clip (and ±Infinity) take the end colours.
 *
 * @example
 * ```ts
 * valueToHex(0.5, 2);  // a light red, a quarter of the way from the centre
 * valueToHex(-9, 2);   // "#053061": clipped to the most negative colour
 * ```
 */
export function valueToHex(value: number, clip: number): string {
  if (Number.isNaN(value)) return divergingHex(NaN);
  if (value === Infinity) return divergingHex(1);
  if (value === -Infinity) return divergingHex(-1);
  return divergingHex(value / clip);
}

/**
 * The `p`-th percentile (0 < p ≤ 100) of |v| over the finite values of `values`, with linear
 * interpolation between order statistics (NumPy's default); 0 when there are none.
 *
 * @example
 * ```ts
 * percentileAbs([1, -2, 3, -4, 5], 50); // 3
 * percentileAbs([1, -2, 3, -4, 5], 100); // 5
 * ```
 */
export function percentileAbs(values: Iterable<number>, p: number): number {
  const a: number[] = [];
  for (const v of values) if (Number.isFinite(v)) a.push(Math.abs(v));
  if (a.length === 0) return 0;
  a.sort((x, y) => x - y);
  const pos = (p / 100) * (a.length - 1);
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  return a[lo] + (a[hi] - a[lo]) * (pos - lo);
}

/**
 * Tick values for a colour bar over [−clip, clip]: multiples of a "nice" step (1, 2 or 5
 * times a power of ten), the smallest that puts at most `perSide + 1` ticks on each side of
 * 0, always including 0, sorted ascending. Returns the step too, which fixes the decimals.
 *
 * @example
 * ```ts
 * niceTicks(3.21, 3); // { step: 1, ticks: [-3, -2, -1, 0, 1, 2, 3] }
 * ```
 */
export function niceTicks(clip: number, perSide = 3): { step: number; ticks: number[] } {
  const p10 = 10 ** Math.floor(Math.log10(clip / perSide));
  const step = [1, 2, 5, 10, 20].map((m) => m * p10)
    .find((s) => Math.floor(clip / s + 1e-9) <= perSide + 1) ?? 20 * p10;
  const n = Math.floor(clip / step + 1e-9);
  const ticks: number[] = [];
  for (let i = -n; i <= n; i++) ticks.push(i === 0 ? 0 : i * step);
  return { step, ticks };
}

/**
 * A tick label for a multiple of `step`: as many decimals as the step needs, and a true
 * minus sign (U+2212), e.g. `formatTick(-1.5, 0.5)` is "−1.5"; zero is "0".
 */
export function formatTick(v: number, step: number): string {
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const s = Math.abs(v).toFixed(decimals);
  if (Number(s) === 0) return "0";
  return v < 0 ? `\u2212${s}` : s;
}

/**
 * Every function of the colour scale, the private helpers included, in an order that can be
 * pasted into a script: `COLOUR_SCALE_FUNCTIONS.map(String).join("\n")` defines them all by
 * their names (no function here refers to anything outside this list).
 */
export const COLOUR_SCALE_FUNCTIONS: readonly ((...args: never[]) => unknown)[] = [
  rdbuAnchors,
  d65White,
  srgbToLinear,
  linearToSrgb,
  hexToLab,
  labToHex,
  divergingHex,
  valueToHex,
  percentileAbs,
  niceTicks,
  formatTick,
];
