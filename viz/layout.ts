/**
 * The layout model of the GQA key grid: where every square, label, band and tick goes, what
 * colour each square is, and what every text says. No output format here: viz/grid_svg.ts
 * writes a {@linkcode GridLayout} as SVG text, and the next outputs (a PNG, an HTML explorer
 * that redraws the grid when the reader picks another layer, token or dims range) read the
 * same structure.
 *
 * What GQA shares. A layer has H query heads but only KV key/value heads (H a multiple of
 * KV, r = H / KV). Query head h reads KV head g = ⌊h / r⌋ (Hugging Face's repeat_kv), so KV
 * head g serves the r query heads h = g·r + j, j < r, and the K/V cache is r× smaller than
 * with one KV head per query head.
 *
 * The picture. One row per KV head g (KV rows), one column per query head that reads it
 * (r columns). Cell (g, j) is labelled "Q head h" with h = g·r + j and shows K of KV head g:
 *
 *   K[t, g, d] = k[t·(KV·HD) + g·HD + d],  d0 ≤ d < d0 + dims    capture.k or capture.kRope (T, KV·HD)
 *
 * so every cell of a row shows the same numbers: that is the sharing. With `show: "qk"` each
 * cell also shows that query head's own Q, which differs from column to column:
 *
 *   Q[t, h, d] = q[t·(H·HD) + h·HD + d],   d0 ≤ d < d0 + dims    capture.q (T, H·HD)
 *
 * The dims window [d0, d0 + dims) is `dimStart` (default 0) and `dims`, cut at HD: RoPE turns
 * the pairs of the first dims fast and those of the last dims slowly, so a window in the
 * middle or at the end of the head shows a different picture from the leading dims. The
 * axis under the grid and every tooltip name the real dim index d.
 *
 * With one token each cell is a 1 × dims strip (K above Q in "qk" mode); with `token: "all"`
 * it is a T × dims heatmap, tokens top to bottom (K beside Q in "qk" mode).
 *
 * Colour. One diverging scale centred on 0 (viz/colors.ts) for every cell, symmetric
 * [−clip, clip] with clip the `clipPercentile`-th percentile (default 99) of |value| over all
 * values drawn; a colour bar with ticks and a caption stating the clip sits under the grid.
 *
 * {@linkcode layoutGrid} reads top-down like a forward pass:
 *
 *   choice = resolveGrid(capture, opts)        which tokens, dims, K tensor, Q tensor
 *   scale  = colourScale(capture, choice)      the percentile clip over every value drawn
 *   frame  = gridFrame(capture, choice)        square sizes, cell and grid geometry
 *   words  = headerWords(capture, choice, frame)   title, subtitle, legend
 *   header, rows, axis, colour bar, canvas size
 *
 * Every function here is pure (a function of its arguments; no dates, no randomness, no
 * module state) and refers only to other functions of {@linkcode GRID_LAYOUT_FUNCTIONS}, so
 * a page can embed them all by their source text and call `layoutGrid` with the data.
 * @module
 */
import type { Capture } from "../model/capture.ts";
import {
  COLOUR_SCALE_FUNCTIONS,
  divergingHex,
  formatTick,
  niceTicks,
  percentileAbs,
  valueToHex,
} from "./colors.ts";

/**
 * The tensors and names the grid needs: the fields of model/capture.ts's `Capture` that it
 * draws (q (T, H*HD) and k (T, KV*HD) as they leave q_proj and k_proj, kRope after RoPE, v),
 * with Q after RoPE optional: `show: "qk"` with `rope: "post"` draws it when present. A
 * type-only import, so nothing of model/ runs here and these functions stay embeddable.
 */
export type GridCapture =
  & Pick<
    Capture,
    "model" | "revision" | "layer" | "tokenIds" | "tokenTexts" | "T" | "H" | "KV" | "HD"
  >
  & Pick<Capture, "q" | "k" | "kRope" | "v">
  & Partial<Pick<Capture, "qRope">>;

/** What to draw. */
export interface GridOptions {
  /** The token position drawn (0 ≤ token < T), or "all" for a tokens × dims heatmap per cell. */
  token: number | "all";
  /** How many head dimensions each cell shows from `dimStart` on (≥ 1; cut at HD). */
  dims: number;
  /**
   * The first head dimension shown (0 ≤ dimStart < HD; default 0): the cells show dims
   * dimStart … min(dimStart + dims, HD) − 1, e.g. `{ dimStart: 64, dims: 20 }` shows 64–83.
   */
  dimStart?: number;
  /** "pre": K as it leaves k_proj (capture.k); "post": K after RoPE (capture.kRope). */
  rope: "pre" | "post";
  /** "k": K only; "qk": each query head's own Q beside its copy of the shared K. */
  show: "k" | "qk";
  /** The colour scale ends at this percentile of |value| (0 < p ≤ 100; default 99). */
  clipPercentile?: number;
  /** Whether squares can be hovered (default true; false for a PNG), so the caption says so. */
  hover?: boolean;
}

// ---------------------------------------------------------------------------------------
// The layout model (plain data: numbers, strings, arrays; JSON-serialisable)

/** One line of text: anchored at x (left, middle or end) with its baseline at y, in px. */
export interface LaidText {
  x: number;
  y: number;
  text: string;
  /** Its role: "title", "kv-label", "q-label", "token-label", "dim-tick", "tick-label"… */
  cls: string;
  /** Font size, px. */
  size: number;
  fill: string;
  bold?: boolean;
  /** Where x sits on the text; absent means its start. */
  anchor?: "middle" | "end";
}

/** An axis-aligned rectangle, px. */
export interface LaidBox {
  x: number;
  y: number;
  w: number;
  h: number;
}

/** One coloured square: one value of K or Q at one token and one dim. */
export interface LaidSquare extends LaidBox {
  kind: "k" | "q";
  value: number;
  /** Its colour on the scale (viz/colors.ts valueToHex). */
  fill: string;
  /** "KV head g · Q head h · [token t "…" · ]dim d · K = v" (4 significant digits). */
  tooltip: string;
}

/** A K or Q block of a cell: its squares, its frame (the box itself) and its "K"/"Q" letter. */
export interface LaidBlock extends LaidBox {
  kind: "k" | "q";
  label?: LaidText;
  squares: LaidSquare[];
}

/** Cell (g, j): query head h = g·r + j and its blocks. */
export interface LaidCell {
  g: number;
  h: number;
  /** "cell-g{g}-h{h}". */
  id: string;
  label: LaidText;
  blocks: LaidBlock[];
}

/** Row g: its shaded band, its "KV head g" labels, its cells and (all tokens) token labels. */
export interface LaidRow {
  g: number;
  band: LaidBox;
  labels: LaidText[];
  cells: LaidCell[];
  tokenLabels: LaidText[];
}

/** The colour bar under the grid: a gradient box, end labels, ticks and the caption. */
export interface LaidColourBar extends LaidBox {
  /** Gradient stops left to right: offset in [0, 1] and its colour. */
  stops: { offset: number; color: string }[];
  ends: LaidText[];
  ticks: { x: number; y1: number; y2: number; label: LaidText }[];
  caption: LaidText[];
}

/** Colours and line widths shared by every output. */
export interface GridStyle {
  font: string;
  ink: string;
  frame: string;
  band: string;
  background: string;
  bandRadius: number;
  frameWidth: number;
  tickWidth: number;
}

/** The whole picture, in drawing order: header, rows, dim axis, colour bar. */
export interface GridLayout {
  width: number;
  height: number;
  style: GridStyle;
  /** The document's title and a one-paragraph description (for SVG title/desc, alt text). */
  title: string;
  desc: string;
  /** The symmetric scale [−clip, clip]; allZero: every value drawn is 0 (clip shown as 1). */
  scale: { clip: number; percentile: number; allZero: boolean; nanCount: number };
  header: LaidText[];
  rows: LaidRow[];
  axis: LaidText[];
  colourBar: LaidColourBar;
}

// ---------------------------------------------------------------------------------------
// Metrics and small helpers

/** Sizes (px), fonts and colours of the grid. A function so that no code reads module state. */
export function gridMetrics() {
  return {
    PAD: 20, // outer margin
    FONT: "sans-serif",
    FS_TITLE: 17,
    FS_TEXT: 12,
    FS_ROW: 13,
    FS_ROW_SUB: 10,
    FS_CELL: 11,
    FS_SMALL: 10,
    COL_GAP: 18,
    ROW_GAP: 12,
    BAND_PAD: 5,
    CELL_LABEL_H: 15, // "Q head h" line above the data
    QK_GAP: 3, // K strip to Q strip (one token), or K block to Q block (+5) for all tokens
    GUTTER: 12, // room for the "K"/"Q" letters left of the strips (one token, qk)
    BAR_W_MAX: 420,
    BAR_H: 14,
    INK: "#222",
    MUTED: "#555",
    FRAME: "#8a8a8a",
    BAND: "#f1f3f5",
  };
}

/** `x` clamped to [lo, hi]. */
function clamp(x: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, x));
}

/** `x` rounded to one decimal (coordinates of texts and ticks). */
export function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

/** A text item with the defaults of the grid (size FS_TEXT, ink). */
function laidText(
  x: number,
  y: number,
  text: string,
  a: { cls: string; size?: number; bold?: boolean; fill?: string; anchor?: "middle" | "end" },
): LaidText {
  const M = gridMetrics();
  const t: LaidText = { x, y, text, cls: a.cls, size: a.size ?? M.FS_TEXT, fill: a.fill ?? M.INK };
  if (a.bold) t.bold = true;
  if (a.anchor) t.anchor = a.anchor;
  return t;
}

/**
 * A token's text made visible and XML-safe (before escaping): space → "␣", newline → "↵",
 * tab → "⇥", other control characters → their Unicode "control picture" (U+2400 + code),
 * no-break space → "⍽", lone surrogates and non-characters → "�"; longer than `max` code
 * points → cut with "…".
 *
 * @example
 * ```ts
 * visibleToken(" the\n"); // "␣the↵"
 * ```
 */
export function visibleToken(s: string, max = 24): string {
  const out: string[] = [];
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === " ") out.push("\u2423");
    else if (ch === "\n") out.push("\u21b5");
    else if (ch === "\t") out.push("\u21e5");
    else if (c < 0x20) out.push(String.fromCodePoint(0x2400 + c));
    else if (c === 0x7f) out.push("\u2421");
    else if (c >= 0x80 && c < 0xa0) out.push(`\\x${c.toString(16)}`);
    else if (c === 0xa0) out.push("\u237d");
    else if ((c >= 0xd800 && c < 0xe000) || c === 0xfffe || c === 0xffff) out.push("\ufffd");
    else out.push(ch);
  }
  return out.length > max ? out.slice(0, max - 1).join("") + "\u2026" : out.join("");
}

/** Rough rendered width of `s` in px for a generic sans-serif face (layout estimate only). */
export function textWidth(s: string, fontSize: number, bold = false): number {
  let n = 0;
  for (const _ of s) n++;
  return n * fontSize * (bold ? 0.62 : 0.57);
}

/** Greedy word wrap of `s` to lines no wider than `maxWidth` px (estimated). */
export function wrap(s: string, fontSize: number, maxWidth: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of s.split(" ")) {
    const next = line ? `${line} ${word}` : word;
    if (line && textWidth(next, fontSize) > maxWidth) {
      lines.push(line);
      line = word;
    } else line = next;
  }
  if (line) lines.push(line);
  return lines;
}

/** A value for a tooltip: 4 significant digits ("0.1234", "-12.35", "1.234e-7"), or NaN/Infinity. */
export function formatValue(v: number): string {
  return Number.isFinite(v) ? v.toPrecision(4) : String(v);
}

/** An ordinal for the clip caption: 99 → "99th", 1 → "1st", 99.5 → "99.5th". */
function ordinal(p: number): string {
  const n = Number.isInteger(p) ? p : NaN;
  const suffix = n % 100 >= 11 && n % 100 <= 13
    ? "th"
    : n % 10 === 1
    ? "st"
    : n % 10 === 2
    ? "nd"
    : n % 10 === 3
    ? "rd"
    : "th";
  return `${p}${suffix}`;
}

/** The clip value for captions: 3 significant digits, no exponent for ordinary sizes. */
function formatClip(v: number): string {
  return Number(v.toPrecision(3)).toString();
}

/**
 * One sentence on how many query heads share each KV head and what that saves, computed
 * from the shapes (H a multiple of KV).
 *
 * @example
 * ```ts
 * sharingLegend(32, 8);
 * // "4 query heads share each KV head (GQA: H = 32, KV = 8); the K/V cache is 4× smaller
 * //  than with one KV head per query head."
 * ```
 */
export function sharingLegend(H: number, KV: number): string {
  const r = H / KV;
  if (r === 1) {
    return `Each query head has its own KV head (MHA: H = KV = ${H}): nothing is shared, ` +
      `so each row has a single cell and the K/V cache holds one K and V per query head.`;
  }
  if (KV === 1) {
    return `All ${H} query heads share one KV head (MQA: H = ${H}, KV = 1); the K/V cache is ` +
      `${H}× smaller than with one KV head per query head.`;
  }
  return `${r} query heads share each KV head (GQA: H = ${H}, KV = ${KV}); the K/V cache is ` +
    `${r}× smaller than with one KV head per query head.`;
}

// ---------------------------------------------------------------------------------------
// Validation: a message, or null when the capture and options can be drawn

function isCount(n: unknown): n is number {
  return typeof n === "number" && Number.isInteger(n) && n >= 1;
}

/**
 * What is wrong with drawing `capture` with `opts`, as one paragraph (what, where, what to
 * do), or null when nothing is. {@linkcode layoutGrid} assumes null; renderGqaGrid turns a
 * message into a GqaError "bad-input".
 *
 * @example
 * ```ts
 * gridProblem(capture, { token: 99, dims: 20, rope: "pre", show: "k" });
 * // "token (--token) 99 is out of range: this capture has T = 5 tokens, …"
 * ```
 */
export function gridProblem(c: GridCapture, opts: GridOptions): string | null {
  return shapeProblem(c, opts) ?? choiceProblem(c, opts) ?? arrayProblem(c, opts);
}

/** The options are an object and the capture's shapes are whole numbers with KV | H. */
function shapeProblem(c: GridCapture, opts: GridOptions): string | null {
  if (typeof opts !== "object" || opts === null) {
    return `the options must be an object { token, dims, rope, show }, got ${String(opts)}.`;
  }
  const { T, H, KV, HD } = c;
  if (![T, H, KV, HD].every(isCount) || H % KV !== 0) {
    return `the capture's shapes are not usable (T = ${T}, H = ${H}, KV = ${KV}, HD = ${HD}): ` +
      `all must be whole numbers ≥ 1 and H a multiple of KV. The capture is malformed; ` +
      `this is a bug in whatever produced it.`;
  }
  return null;
}

/** Each option is one of its allowed values (token, dims, rope, show, clipPercentile). */
function choiceProblem(c: GridCapture, opts: GridOptions): string | null {
  const { T, HD } = c;
  const { token, dims, rope, show } = opts;
  if (token !== "all" && !(typeof token === "number" && Number.isInteger(token))) {
    return `token (--token) must be a token position (a whole number) or "all", got ` +
      `${JSON.stringify(token)}. This capture has T = ${T} tokens: use 0..${T - 1} or "all".`;
  }
  if (token !== "all" && (token < 0 || token >= T)) {
    return `token (--token) ${token} is out of range: this capture has T = ${T} token` +
      `${T === 1 ? "" : "s"}, so the valid positions are 0..${T - 1} (or "all" for every ` +
      `token). Pick a position inside the prompt, or use a longer prompt.`;
  }
  if (!isCount(dims)) {
    return `dims (--dims) must be a whole number ≥ 1, got ${JSON.stringify(dims)}. It is how ` +
      `many of the first head dimensions each cell shows (HD = ${HD} here); 20 is a good default.`;
  }
  const d0 = opts.dimStart ?? 0;
  if (typeof d0 !== "number" || !Number.isInteger(d0) || d0 < 0 || d0 >= HD) {
    return `dimStart must be a whole number in 0..${HD - 1} (HD = ${HD} here), got ` +
      `${typeof d0 === "number" ? String(d0) : JSON.stringify(d0)}. It is the first head ` +
      `dimension each cell shows: the cells show dims dimStart..dimStart + dims − 1, cut at HD.`;
  }
  if (rope !== "pre" && rope !== "post") {
    return `rope (--rope) must be "pre" (K as it leaves k_proj) or "post" (K after RoPE), got ` +
      `${JSON.stringify(rope)}.`;
  }
  if (show !== "k" && show !== "qk") {
    return `show (--show) must be "k" (the shared K only) or "qk" (each query head's Q beside ` +
      `the shared K), got ${JSON.stringify(show)}.`;
  }
  const pct = opts.clipPercentile ?? 99;
  if (typeof pct !== "number" || !(pct > 0 && pct <= 100)) {
    return `clipPercentile must be a number in (0, 100], got ${JSON.stringify(pct)}. The ` +
      `colour scale ends at that percentile of |value|; 99 keeps a few outliers from washing ` +
      `out the rest, 100 means no clipping.`;
  }
  return null;
}

/** The arrays drawn have the lengths the shapes promise. */
function arrayProblem(c: GridCapture, opts: GridOptions): string | null {
  const { T, H, KV, HD } = c;
  const kData = opts.rope === "pre" ? c.k : c.kRope;
  const kName = opts.rope === "pre" ? "k" : "kRope";
  if (!kData || kData.length !== T * KV * HD) {
    return `capture.${kName} has ${kData?.length} values, expected T·KV·HD = ${T}·${KV}·${HD} = ` +
      `${T * KV * HD}. The capture is malformed; this is a bug in whatever produced it.`;
  }
  if (opts.show === "qk" && (!c.q || c.q.length !== T * H * HD)) {
    return `capture.q has ${c.q?.length} values, expected T·H·HD = ${T}·${H}·${HD} = ` +
      `${T * H * HD}. The capture is malformed; this is a bug in whatever produced it.`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// Layout steps

/** The resolved choices: what is drawn, from which tensors. */
interface Choice {
  tokens: number[]; // the token positions drawn, top to bottom
  d0: number; // the first dim drawn (dimStart)
  dims: number; // how many dims are drawn: d0 + dims ≤ HD
  all: boolean; // token "all": a T × dims heatmap per block
  qk: boolean; // Q beside K
  hover: boolean; // squares carry hover values (not in a PNG)
  pct: number; // clip percentile
  r: number; // H / KV
  rope: "pre" | "post";
  qPost: boolean; // Q drawn after RoPE (rope "post" and capture.qRope present)
  kAt: (t: number, g: number, d: number) => number; // K[t, g, d]
  qAt: (t: number, h: number, d: number) => number; // Q[t, h, d]
  tokText: (t: number) => string; // token t's visible text
}

/** Resolves `opts` against `c` (assumed valid: see {@linkcode gridProblem}). */
function resolveGrid(c: GridCapture, opts: GridOptions): Choice {
  const { T, H, KV, HD } = c;
  const all = opts.token === "all";
  const tokens = opts.token === "all" ? Array.from({ length: T }, (_, t) => t) : [opts.token];
  const kData = opts.rope === "pre" ? c.k : c.kRope; // (T, KV*HD)
  const qPost = opts.rope === "post" && c.qRope?.length === T * H * HD;
  const qData = qPost ? c.qRope! : c.q; // (T, H*HD)
  const d0 = opts.dimStart ?? 0;
  return {
    tokens,
    d0,
    dims: Math.min(opts.dims, HD - d0),
    all,
    qk: opts.show === "qk",
    hover: opts.hover ?? true,
    pct: opts.clipPercentile ?? 99,
    r: H / KV,
    rope: opts.rope,
    qPost,
    kAt: (t, g, d) => kData[t * KV * HD + g * HD + d],
    qAt: (t, h, d) => qData[t * H * HD + h * HD + d],
    tokText: (t) => visibleToken(c.tokenTexts[t] ?? `#${c.tokenIds[t]}`),
  };
}

/** One percentile over every value drawn (each K once, each Q once); NaNs counted. */
function colourScale(c: GridCapture, ch: Choice): GridLayout["scale"] {
  const drawn: number[] = [];
  let nanCount = 0;
  for (const t of ch.tokens) {
    const end = ch.d0 + ch.dims;
    for (let g = 0; g < c.KV; g++) for (let d = ch.d0; d < end; d++) drawn.push(ch.kAt(t, g, d));
    if (ch.qk) {
      for (let h = 0; h < c.H; h++) for (let d = ch.d0; d < end; d++) drawn.push(ch.qAt(t, h, d));
    }
  }
  for (const v of drawn) if (Number.isNaN(v)) nanCount++;
  let clip = percentileAbs(drawn, ch.pct);
  const allZero = !(clip > 0);
  if (allZero) clip = 1;
  return { clip, percentile: ch.pct, allZero, nanCount };
}

/** The geometry shared by every row: square sizes, blocks of a cell, cell and grid extents. */
interface Frame {
  cs: number; // width of one dim
  rh: number; // height of one token
  blockW: number;
  blockH: number;
  blocks: { kind: "k" | "q"; dx: number; dy: number }[]; // relative to a cell's data origin
  dataY0: number; // cell top to data origin
  cellW: number;
  cellH: number;
  tokStep: number; // every tokStep-th token is labelled (all tokens)
  tokFs: number;
  kvSub: (g: number) => string; // "Q heads 4–7"
  gridX: number;
  gridW: number;
  gridRight: number;
}

/** Sizes the squares so the grid is about 960 px wide, and places the blocks of a cell. */
function gridFrame(c: GridCapture, ch: Choice): Frame {
  const M = gridMetrics();
  const { r, dims, all, qk } = ch;
  const nT = ch.tokens.length;
  const blocksAcross = qk && all ? 2 : 1;
  const cs = clamp(Math.floor(960 / (r * dims * blocksAcross)), 6, 16);
  const rh = all ? clamp(Math.floor(100 / nT), 2, cs) : Math.max(cs, 14);
  const blockW = dims * cs, blockH = nT * rh;
  const blocks: Frame["blocks"] = [{ kind: "k", dx: 0, dy: 0 }];
  let dataW = blockW, dataH = blockH, dataY0 = M.CELL_LABEL_H;
  if (qk && !all) {
    blocks[0].dx = M.GUTTER;
    blocks.push({ kind: "q", dx: M.GUTTER, dy: blockH + M.QK_GAP });
    dataW = M.GUTTER + blockW;
    dataH = 2 * blockH + M.QK_GAP;
  } else if (qk && all) {
    blocks.push({ kind: "q", dx: blockW + M.QK_GAP + 5, dy: 0 });
    dataW = 2 * blockW + M.QK_GAP + 5;
    dataY0 = M.CELL_LABEL_H + 12; // a "K" / "Q" header line above the blocks
  }
  const cellW = Math.max(dataW, Math.ceil(textWidth(`Q head ${c.H - 1}`, M.FS_CELL, true)) + 4);
  const cellH = dataY0 + dataH;
  return { cs, rh, blockW, blockH, blocks, dataY0, cellW, cellH, ...gridExtent(c, ch, rh, cellW) };
}

/** Row labels on the left, token labels on the right (all tokens): where the grid sits. */
function gridExtent(c: GridCapture, ch: Choice, rh: number, cellW: number) {
  const M = gridMetrics();
  const { r, all, tokens } = ch;
  // token labels at the right of each row (all tokens only): every k-th so they do not collide
  const tokStep = all ? Math.ceil(9 / rh) : 1;
  const tokFs = all ? Math.min(10, rh * tokStep - 1) : 0;
  let tokLabelW = 0;
  if (all) {
    for (let i = 0; i < tokens.length; i += tokStep) {
      const label = `${tokens[i]} ${ch.tokText(tokens[i])}`;
      tokLabelW = Math.max(tokLabelW, textWidth(label, tokFs));
    }
    tokLabelW = Math.ceil(tokLabelW) + 8;
  }
  const kvSub = (g: number) => r === 1 ? `Q head ${g}` : `Q heads ${g * r}\u2013${g * r + r - 1}`;
  const rowLabelW = Math.ceil(
    Math.max(
      textWidth(`KV head ${c.KV - 1}`, M.FS_ROW, true),
      textWidth(kvSub(c.KV - 1), M.FS_ROW_SUB),
    ),
  ) + 14;
  const gridX = M.PAD + rowLabelW;
  const gridW = r * cellW + (r - 1) * M.COL_GAP;
  const gridRight = gridX + gridW + (all ? 6 + tokLabelW : 0);
  return { tokStep, tokFs, kvSub, gridX, gridW, gridRight };
}

/** The title, subtitle and legend lines, and the width text wraps to. */
function headerWords(c: GridCapture, ch: Choice, f: Frame) {
  const M = gridMetrics();
  const { H, KV, HD, T } = c;
  const { tokens, all, qk, dims, d0 } = ch;
  const kName = ch.rope === "pre" ? "K as it leaves k_proj (pre-RoPE)" : "K after RoPE (post-RoPE)";
  const tokenPart = all ? `all ${T} tokens` : `token ${tokens[0]} "${ch.tokText(tokens[0])}"` +
    (c.tokenIds[tokens[0]] !== undefined ? ` (id ${c.tokenIds[tokens[0]]})` : "");
  const title = `GQA ${qk ? "keys and queries" : "keys"} \u2014 ${c.model} \u00b7 ` +
    `layer ${c.layer} \u00b7 ${tokenPart}`;
  const rev = /^[0-9a-f]{40}$/.test(c.revision) ? c.revision.slice(0, 7) : c.revision;
  const dimsPart = dims === HD
    ? `all ${HD} dims`
    : d0 === 0
    ? `first ${dims} of ${HD} dims`
    : dims === 1
    ? `dim ${d0} of ${HD}`
    : `dims ${d0}\u2013${d0 + dims - 1} of ${HD}`;
  const qName = ch.qPost
    ? " and Q after RoPE (post-RoPE)"
    : " and Q as it leaves q_proj (pre-RoPE)";
  const subtitle = `${kName}${qk ? qName : ""} \u00b7 ` +
    `${dimsPart} \u00b7 revision ${rev}`;
  const r = ch.r;
  const headsPart = r === 1
    ? `Rows: KV heads g; the one cell of row g is query head h = g.`
    : KV === 1
    ? `One row (the single KV head); columns: the ${r} query heads that read it.`
    : `Rows: KV heads g; columns: the query heads h = g\u00b7${r} + j (j = 0..${r - 1}) ` +
      `that read KV head g.`;
  const textW = Math.max(f.gridRight - M.PAD, textWidth(title, M.FS_TITLE, true), 640);
  const legendLines = [
    ...wrap(sharingLegend(H, KV), M.FS_TEXT, textW),
    ...wrap(`${headsPart} ${cellSentence(qk, all, r > 1, T)}`, M.FS_TEXT, textW),
  ];
  return { title, subtitle, legendLines, textW };
}

/** The legend's sentence on what one cell shows. */
function cellSentence(qk: boolean, all: boolean, shared: boolean, T: number): string {
  const tokensPart = `tokens 0..${T - 1} top to bottom, dims left to right`;
  if (qk && all) {
    return shared
      ? `Each cell: the shared K (left, "K"; identical along a row) and that query head's ` +
        `own Q (right, "Q"; different in every column), ${tokensPart}.`
      : `Each cell: K of that KV head (left, "K") and the query head's Q (right, "Q"), ` +
        `${tokensPart}.`;
  }
  if (qk) {
    return shared
      ? `Each cell: the shared K (top strip, "K"; identical along a row) and that query ` +
        `head's own Q (bottom strip, "Q"; different in every column), dims left to right.`
      : `Each cell: K of that KV head (top strip, "K") and the query head's Q (bottom ` +
        `strip, "Q"), dims left to right.`;
  }
  if (all) {
    return `Each cell: K of that KV head, ${tokensPart}${shared ? "; identical along a row" : ""}.`;
  }
  return `Each cell: K of that KV head, dims left to right${
    shared ? "; identical along a row, because those query heads read one cached K" : ""
  }.`;
}

/** Title, subtitle and legend lines from the top; returns them and the grid's top edge. */
function headerTexts(w: ReturnType<typeof headerWords>): { texts: LaidText[]; gridY: number } {
  const M = gridMetrics();
  const texts: LaidText[] = [];
  let y = M.PAD + M.FS_TITLE;
  texts.push(laidText(M.PAD, y, w.title, { cls: "title", size: M.FS_TITLE, bold: true }));
  y += 20;
  texts.push(laidText(M.PAD, y, w.subtitle, { cls: "subtitle", fill: M.MUTED }));
  y += 20;
  for (const line of w.legendLines) {
    texts.push(laidText(M.PAD, y, line, { cls: "legend" }));
    y += 16;
  }
  return { texts, gridY: y + 8 };
}

/** The left edge of column j and the top edge of row g. */
function cellX(f: Frame, j: number): number {
  return f.gridX + j * (f.cellW + gridMetrics().COL_GAP);
}
function cellY(f: Frame, gridY: number, g: number): number {
  return gridY + g * (f.cellH + gridMetrics().ROW_GAP);
}

/** Row g: band, labels, its r cells and (all tokens) the token labels at its right. */
function gridRow(ch: Choice, f: Frame, clip: number, cy: number, g: number) {
  const M = gridMetrics();
  const band = {
    x: M.PAD - M.BAND_PAD,
    y: cy - M.BAND_PAD,
    w: f.gridRight - M.PAD + 2 * M.BAND_PAD,
    h: f.cellH + 2 * M.BAND_PAD,
  };
  const labelTop = cy + Math.max(0, (f.cellH - 26) / 2); // two lines, 26 px, centred
  const labels = [
    laidText(M.PAD, labelTop + 12, `KV head ${g}`, { cls: "kv-label", size: M.FS_ROW, bold: true }),
    laidText(M.PAD, labelTop + 25, f.kvSub(g), {
      cls: "kv-sub",
      size: M.FS_ROW_SUB,
      fill: M.MUTED,
    }),
  ];
  const cells: LaidCell[] = [];
  for (let j = 0; j < ch.r; j++) cells.push(gridCell(ch, f, clip, cy, g, j));
  const tokenLabels: LaidText[] = [];
  if (ch.all) {
    const lx = f.gridX + f.gridW + 8;
    for (let i = 0; i < ch.tokens.length; i += f.tokStep) {
      const ty = cy + f.dataY0 + i * f.rh + Math.min(f.rh * f.tokStep, 10) / 2 + f.tokFs * 0.35;
      const label = `${ch.tokens[i]} ${ch.tokText(ch.tokens[i])}`;
      tokenLabels.push(
        laidText(lx, ty, label, { cls: "token-label", size: f.tokFs, fill: M.MUTED }),
      );
    }
  }
  return { g, band, labels, cells, tokenLabels };
}

/** Cell (g, j) of the row whose top is cy: query head h = g·r + j, its label and blocks. */
function gridCell(ch: Choice, f: Frame, clip: number, cy: number, g: number, j: number): LaidCell {
  const M = gridMetrics();
  const h = g * ch.r + j;
  const x0 = cellX(f, j), y0 = cy + f.dataY0;
  const label = laidText(x0, cy + M.FS_CELL, `Q head ${h}`, {
    cls: "q-label",
    size: M.FS_CELL,
    bold: true,
  });
  const blocks: LaidBlock[] = [];
  for (const b of f.blocks) {
    const bx = x0 + b.dx, by = y0 + b.dy;
    const letter = b.kind === "k" ? "K" : "Q";
    const style = { cls: "block-label", size: M.FS_SMALL, fill: M.MUTED };
    const blockLabel = ch.qk && !ch.all
      ? laidText(x0, by + f.blockH / 2 + 4, letter, style)
      : ch.qk && ch.all
      ? laidText(bx + f.blockW / 2, y0 - 3, letter, { ...style, anchor: "middle" })
      : undefined;
    const squares = blockSquares(ch, f, clip, { kind: b.kind, g, h, bx, by });
    const block: LaidBlock = { kind: b.kind, x: bx, y: by, w: f.blockW, h: f.blockH, squares };
    if (blockLabel) block.label = blockLabel;
    blocks.push(block);
  }
  return { g, h, id: `cell-g${g}-h${h}`, label, blocks };
}

/** The tokens × dims squares of one K or Q block, each with its colour and tooltip. */
function blockSquares(
  ch: Choice,
  f: Frame,
  clip: number,
  b: { kind: "k" | "q"; g: number; h: number; bx: number; by: number },
): LaidSquare[] {
  const squares: LaidSquare[] = [];
  const name = b.kind === "k" ? "K" : "Q";
  for (let i = 0; i < ch.tokens.length; i++) {
    const t = ch.tokens[i];
    const where = `KV head ${b.g} \u00b7 Q head ${b.h} \u00b7 ` +
      (ch.all ? `token ${t} "${ch.tokText(t)}" \u00b7 ` : "");
    for (let col = 0; col < ch.dims; col++) {
      const d = ch.d0 + col; // the real dim index
      const value = b.kind === "k" ? ch.kAt(t, b.g, d) : ch.qAt(t, b.h, d);
      squares.push({
        kind: b.kind,
        x: b.bx + col * f.cs,
        y: b.by + i * f.rh,
        w: f.cs,
        h: f.rh,
        value,
        fill: valueToHex(value, clip),
        tooltip: `${where}dim ${d} \u00b7 ${name} = ${formatValue(value)}`,
      });
    }
  }
  return squares;
}

/**
 * The "dim" label and the dimension ticks under the last row, from the axis baseline: every
 * dimStep-th dim from the first one drawn, labelled with its real index (d0, d0 + step, …).
 */
function dimAxis(ch: Choice, f: Frame, axisY: number): LaidText[] {
  const M = gridMetrics();
  const dimStep = [1, 2, 5, 10, 20, 50, 100, 200, 500].find((s) => s * f.cs >= 30) ?? 1000;
  const small = { size: M.FS_SMALL, fill: M.MUTED };
  const texts = [laidText(M.PAD, axisY, "dim", { cls: "dim-axis", ...small })];
  for (let j = 0; j < ch.r; j++) {
    for (const b of f.blocks) {
      if (b.kind === "q" && !ch.all) continue; // stacked strips share one axis
      for (let i = 0; i < ch.dims; i += dimStep) {
        const x = cellX(f, j) + b.dx + i * f.cs + f.cs / 2;
        const label = String(ch.d0 + i);
        texts.push(laidText(x, axisY, label, { cls: "dim-tick", ...small, anchor: "middle" }));
      }
    }
  }
  return texts;
}

/** The caption under the colour bar: what is coloured, the clip, NaNs. */
function colourCaption(c: GridCapture, ch: Choice, scale: GridLayout["scale"]): string {
  const { clip, allZero, nanCount, percentile: pct } = scale;
  const valueName = ch.qk ? "|K| and |Q|" : "|K|";
  const clipText = allZero
    ? `every value drawn is 0 (scale shown as \u00b11)`
    : pct === 100
    ? `not clipped: the scale ends at max ${valueName} = ${formatClip(clip)}`
    : `clipped at the ${ordinal(pct)} percentile of ${valueName} = ${formatClip(clip)}; ` +
      `larger values take the end colours`;
  return `Colour: ${ch.qk ? "K and Q" : "K"}, one scale centred on 0 for all ` +
    `${c.KV * ch.r} cells, ${clipText}` +
    (nanCount ? `; grey: ${nanCount} NaN value${nanCount === 1 ? "" : "s"}` : "") +
    (ch.hover ? `. Hover a square for its exact value.` : ".");
}

/** The colour bar whose top-left is (x, y): gradient, end labels, ticks, caption lines. */
function colourBar(
  caption: string,
  clip: number,
  at: { x: number; y: number; w: number; textW: number },
): LaidColourBar {
  const M = gridMetrics();
  const { x, y, w } = at, h = M.BAR_H;
  const stops: LaidColourBar["stops"] = [];
  for (let i = 0; i <= 64; i++) {
    stops.push({ offset: round1(i / 64 * 1000) / 1000, color: divergingHex(-1 + i / 32) });
  }
  const endStyle = { cls: "bar-end", size: M.FS_SMALL, fill: M.MUTED };
  const ends = [
    laidText(x - 8, y + h - 3, `\u2264 \u2212${formatClip(clip)}`, { ...endStyle, anchor: "end" }),
    laidText(x + w + 8, y + h - 3, `\u2265 ${formatClip(clip)}`, endStyle),
  ];
  const { step, ticks: values } = niceTicks(clip, 2);
  const ticks = values.map((tv) => {
    const tx = round1(x + (tv / clip + 1) / 2 * w);
    const label = laidText(tx, y + h + 15, formatTick(tv, step), {
      cls: "tick-label",
      size: M.FS_SMALL,
      anchor: "middle",
    });
    return { x: tx, y1: y + h, y2: y + h + 4, label };
  });
  const lines: LaidText[] = [];
  let capY = y + h + 34;
  for (const line of wrap(caption, M.FS_TEXT, at.textW)) {
    lines.push(laidText(M.PAD, capY, line, { cls: "colorbar-caption", fill: M.MUTED }));
    capY += 16;
  }
  return { x, y, w, h, stops, ends, ticks, caption: lines };
}

/** The canvas: wide enough for every text's estimated width, tall enough for the caption. */
function canvasSize(f: Frame, bar: LaidColourBar, header: LaidText[], clip: number) {
  const M = gridMetrics();
  const lastLine = bar.caption.at(-1)?.y ?? bar.y + bar.h + 34 - 16;
  const contentRight = Math.max(
    f.gridRight,
    bar.x + bar.w + 8 + textWidth(`\u2265 ${formatClip(clip)}`, M.FS_SMALL),
    ...header.map((t) => t.x + textWidth(t.text, t.size, t.bold)),
    ...bar.caption.map((t) => M.PAD + textWidth(t.text, M.FS_TEXT)),
  );
  return { width: Math.ceil(contentRight + M.PAD), height: Math.ceil(lastLine + M.PAD) };
}

/**
 * Lays out the GQA grid of `capture`: every square, label and tick with its position (px),
 * colour and text. `capture` and `opts` must pass {@linkcode gridProblem} (null).
 *
 * @example
 * ```ts
 * const layout = layoutGrid(capture, { token: 0, dims: 20, rope: "pre", show: "k" });
 * layout.rows[1].cells[0].blocks[0].squares[3].tooltip; // "KV head 1 · Q head 4 · dim 3 · K = …"
 * ```
 */
export function layoutGrid(capture: GridCapture, opts: GridOptions): GridLayout {
  const M = gridMetrics();
  const ch = resolveGrid(capture, opts);
  const scale = colourScale(capture, ch);
  const f = gridFrame(capture, ch);
  const words = headerWords(capture, ch, f);
  const header = headerTexts(words);
  const rows: LaidRow[] = [];
  for (let g = 0; g < capture.KV; g++) {
    rows.push(gridRow(ch, f, scale.clip, cellY(f, header.gridY, g), g));
  }
  const gridBottom = cellY(f, header.gridY, capture.KV - 1) + f.cellH;
  const axisY = gridBottom + M.BAND_PAD + 12;
  const axis = dimAxis(ch, f, axisY);
  const caption = colourCaption(capture, ch, scale);
  const bar = colourBar(caption, scale.clip, {
    x: f.gridX,
    y: axisY + 18,
    w: Math.min(M.BAR_W_MAX, Math.max(f.gridW, 240)),
    textW: words.textW,
  });
  const { width, height } = canvasSize(f, bar, header.texts, scale.clip);
  const style = {
    font: M.FONT,
    ink: M.INK,
    frame: M.FRAME,
    band: M.BAND,
    background: "#ffffff",
    bandRadius: 4,
    frameWidth: 0.6,
    tickWidth: 1,
  };
  const desc = [words.subtitle, ...words.legendLines, caption].join(" ");
  return {
    width,
    height,
    style,
    title: words.title,
    desc,
    scale,
    header: header.texts,
    rows,
    axis,
    colourBar: bar,
  };
}

/**
 * Every function {@linkcode layoutGrid} calls (and the colour scale's), in an order that can
 * be pasted into a script: `GRID_LAYOUT_FUNCTIONS.map(String).join("\n")` defines them all by
 * name, after which `layoutGrid(capture, opts)` runs there exactly as here.
 */
export const GRID_LAYOUT_FUNCTIONS: readonly ((...args: never[]) => unknown)[] = [
  ...COLOUR_SCALE_FUNCTIONS,
  gridMetrics,
  clamp,
  round1,
  laidText,
  visibleToken,
  textWidth,
  wrap,
  formatValue,
  ordinal,
  formatClip,
  sharingLegend,
  isCount,
  gridProblem,
  shapeProblem,
  choiceProblem,
  arrayProblem,
  resolveGrid,
  colourScale,
  gridFrame,
  gridExtent,
  headerWords,
  cellSentence,
  headerTexts,
  cellX,
  cellY,
  gridRow,
  gridCell,
  blockSquares,
  dimAxis,
  colourCaption,
  colourBar,
  canvasSize,
  layoutGrid,
];
