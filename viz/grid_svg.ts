/**
 * Draws the grouped-query-attention (GQA) key grid of one layer as a standalone SVG 1.1
 * document, laid out by hand (no charting library).
 *
 * What GQA shares. A layer has H query heads but only KV key/value heads (H a multiple of
 * KV, r = H / KV). Query head h reads KV head g = ⌊h / r⌋ (Hugging Face's repeat_kv), so KV
 * head g serves the r query heads h = g·r + j, j < r, and the K/V cache is r× smaller than
 * with one KV head per query head.
 *
 * The picture. One row per KV head g (KV rows), one column per query head that reads it
 * (r columns). Cell (g, j) is labelled "Q head h" with h = g·r + j and shows K of KV head g:
 *
 *   K[t, g, d] = k[t·(KV·HD) + g·HD + d],  d < dims        capture.k or capture.kRope (T, KV·HD)
 *
 * so every cell of a row shows the same numbers: that is the sharing. With `show: "qk"` each
 * cell also shows that query head's own Q, which differs from column to column:
 *
 *   Q[t, h, d] = q[t·(H·HD) + h·HD + d],   d < dims        capture.q (T, H·HD)
 *
 * With one token each cell is a 1 × dims strip (K above Q in "qk" mode); with `token: "all"`
 * it is a T × dims heatmap, tokens top to bottom (K beside Q in "qk" mode).
 *
 * Colour. One diverging scale centred on 0 (viz/colors.ts) for every cell, symmetric
 * [−clip, clip] with clip the `clipPercentile`-th percentile (default 99) of |value| over all
 * values drawn; a colour bar with ticks and a caption stating the clip sits under the grid.
 * Every data rect carries a `<title>` tooltip with its exact value (4 significant digits).
 *
 * SVG structure (stable, for tests and for anyone post-processing the file): data rects have
 * class "k" or "q" and sit in `<g class="cell" id="cell-g{g}-h{h}">`; labels are `<text>` with
 * classes "kv-label", "q-label", "token-label", "dim-tick"; the colour bar is
 * `<g class="colorbar">` with "tick-label" texts and a "colorbar-caption". Coordinates are
 * absolute (no transforms). Output is a pure function of the input: no dates, no randomness.
 * @module
 */
import { GqaError } from "../model/errors.ts";
import { divergingHex, formatTick, niceTicks, percentileAbs, valueToHex } from "./colors.ts";

/**
 * The tensors and names the grid needs: exactly the fields of model/capture.ts's `Capture`
 * (declared here so viz/ does not depend on model/; a `Capture` fits structurally).
 */
export interface GridCapture {
  model: string;
  revision: string;
  layer: number;
  tokenIds: number[];
  /** tokenTexts[t] is the decoded text of token t. */
  tokenTexts: string[];
  T: number;
  H: number;
  KV: number;
  HD: number;
  /** (T, H*HD) as it leaves q_proj (pre-RoPE). */
  q: Float32Array;
  /** (T, H*HD) after RoPE; drawn by `show: "qk"` with `rope: "post"` when present. */
  qRope?: Float32Array;
  /** (T, KV*HD) as it leaves k_proj (pre-RoPE): the capture point. */
  k: Float32Array;
  /** (T, KV*HD) after RoPE. */
  kRope: Float32Array;
  /** (T, KV*HD). */
  v: Float32Array;
}

/** What to draw. */
export interface GridOptions {
  /** The token position drawn (0 ≤ token < T), or "all" for a tokens × dims heatmap per cell. */
  token: number | "all";
  /** How many leading head dimensions each cell shows (≥ 1; clamped to HD). */
  dims: number;
  /** "pre": K as it leaves k_proj (capture.k); "post": K after RoPE (capture.kRope). */
  rope: "pre" | "post";
  /** "k": K only; "qk": each query head's own Q beside its copy of the shared K. */
  show: "k" | "qk";
  /** The colour scale ends at this percentile of |value| (0 < p ≤ 100; default 99). */
  clipPercentile?: number;
}

// ---------------------------------------------------------------------------------------
// Text helpers

/** Escapes the five XML special characters for element text and attribute values. */
export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => XML_ENTITIES[c]);
}
const XML_ENTITIES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&apos;",
};

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
function textWidth(s: string, fontSize: number, bold = false): number {
  let n = 0;
  for (const _ of s) n++;
  return n * fontSize * (bold ? 0.62 : 0.57);
}

/** Greedy word wrap of `s` to lines no wider than `maxWidth` px (estimated). */
function wrap(s: string, fontSize: number, maxWidth: number): string[] {
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
// Validation

interface Checked {
  tokens: number[]; // the token positions drawn, top to bottom
  dims: number; // clamped to HD
  kData: Float32Array; // (T, KV*HD)
  qk: boolean;
  pct: number;
  r: number; // H / KV
}

function badInput(message: string): GqaError {
  return new GqaError("bad-input", `renderGqaGrid: ${message}`);
}

function isCount(n: unknown): n is number {
  return typeof n === "number" && Number.isInteger(n) && n >= 1;
}

function check(c: GridCapture, opts: GridOptions): Checked {
  if (typeof opts !== "object" || opts === null) {
    throw badInput(
      `the options must be an object { token, dims, rope, show }, got ${String(opts)}.`,
    );
  }
  const { T, H, KV, HD } = c;
  if (![T, H, KV, HD].every(isCount) || H % KV !== 0) {
    throw badInput(
      `the capture's shapes are not usable (T = ${T}, H = ${H}, KV = ${KV}, HD = ${HD}): ` +
        `all must be whole numbers ≥ 1 and H a multiple of KV. The capture is malformed; ` +
        `this is a bug in whatever produced it.`,
    );
  }
  const { token, dims, rope, show } = opts;
  if (token !== "all" && !(typeof token === "number" && Number.isInteger(token))) {
    throw badInput(
      `token (--token) must be a token position (a whole number) or "all", got ` +
        `${JSON.stringify(token)}. This capture has T = ${T} tokens: use 0..${T - 1} or "all".`,
    );
  }
  if (token !== "all" && (token < 0 || token >= T)) {
    throw badInput(
      `token (--token) ${token} is out of range: this capture has T = ${T} token` +
        `${T === 1 ? "" : "s"}, so the valid positions are 0..${T - 1} (or "all" for every ` +
        `token). Pick a position inside the prompt, or use a longer prompt.`,
    );
  }
  if (!isCount(dims)) {
    throw badInput(
      `dims (--dims) must be a whole number ≥ 1, got ${JSON.stringify(dims)}. It is how many ` +
        `of the first head dimensions each cell shows (HD = ${HD} here); 20 is a good default.`,
    );
  }
  if (rope !== "pre" && rope !== "post") {
    throw badInput(
      `rope (--rope) must be "pre" (K as it leaves k_proj) or "post" (K after RoPE), got ` +
        `${JSON.stringify(rope)}.`,
    );
  }
  if (show !== "k" && show !== "qk") {
    throw badInput(
      `show (--show) must be "k" (the shared K only) or "qk" (each query head's Q beside ` +
        `the shared K), got ${JSON.stringify(show)}.`,
    );
  }
  const pct = opts.clipPercentile ?? 99;
  if (typeof pct !== "number" || !(pct > 0 && pct <= 100)) {
    throw badInput(
      `clipPercentile must be a number in (0, 100], got ${JSON.stringify(pct)}. The colour ` +
        `scale ends at that percentile of |value|; 99 keeps a few outliers from washing out ` +
        `the rest, 100 means no clipping.`,
    );
  }
  const kData = rope === "pre" ? c.k : c.kRope;
  const kName = rope === "pre" ? "k" : "kRope";
  if (!kData || kData.length !== T * KV * HD) {
    throw badInput(
      `capture.${kName} has ${kData?.length} values, expected T·KV·HD = ${T}·${KV}·${HD} = ` +
        `${T * KV * HD}. The capture is malformed; this is a bug in whatever produced it.`,
    );
  }
  if (show === "qk" && (!c.q || c.q.length !== T * H * HD)) {
    throw badInput(
      `capture.q has ${c.q?.length} values, expected T·H·HD = ${T}·${H}·${HD} = ` +
        `${T * H * HD}. The capture is malformed; this is a bug in whatever produced it.`,
    );
  }
  const tokens = token === "all" ? Array.from({ length: T }, (_, t) => t) : [token];
  return { tokens, dims: Math.min(dims, HD), kData, qk: show === "qk", pct, r: H / KV };
}

// ---------------------------------------------------------------------------------------
// Layout constants (px)

const PAD = 20; // outer margin
const FONT = "sans-serif";
const FS_TITLE = 17, FS_TEXT = 12, FS_ROW = 13, FS_ROW_SUB = 10, FS_CELL = 11, FS_SMALL = 10;
const COL_GAP = 18, ROW_GAP = 12, BAND_PAD = 5;
const CELL_LABEL_H = 15; // "Q head h" line above the data
const QK_GAP = 3; // K strip to Q strip (one token), or K block to Q block (+5) for all tokens
const GUTTER = 12; // room for the "K"/"Q" letters left of the strips (one token, qk)
const BAR_W_MAX = 420, BAR_H = 14;
const INK = "#222", MUTED = "#555", FRAME = "#8a8a8a", BAND = "#f1f3f5";

const clamp = (x: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, x));
const r1 = (x: number) => Math.round(x * 10) / 10;

/**
 * Renders the GQA grid of `capture` as an SVG 1.1 document (a string, UTF-8 text with an XML
 * declaration). See the module comment for the layout.
 *
 * @throws {GqaError} "bad-input" when an option is out of range (dims < 1, a token position
 *   outside 0..T−1, an unknown rope/show value, a clip percentile outside (0, 100]) or the
 *   capture's shapes do not match its arrays.
 * @example
 * ```ts
 * const svg = renderGqaGrid(capture, { token: 0, dims: 20, rope: "pre", show: "k" });
 * await Deno.writeTextFile("layer_5_gqa_keys.svg", svg);
 * ```
 */
export function renderGqaGrid(capture: GridCapture, opts: GridOptions): string {
  const { tokens, dims, kData, qk, pct, r } = check(capture, opts);
  const { H, KV, HD, T } = capture;
  const all = opts.token === "all";
  const nT = tokens.length;
  const kAt = (t: number, g: number, d: number) => kData[t * KV * HD + g * HD + d];
  const qPost = opts.rope === "post" && capture.qRope?.length === T * H * HD;
  const qData = qPost ? capture.qRope! : capture.q;
  const qAt = (t: number, h: number, d: number) => qData[t * H * HD + h * HD + d];
  const tokText = (t: number) => visibleToken(capture.tokenTexts[t] ?? `#${capture.tokenIds[t]}`);

  // --- colour range: one percentile over every value drawn (each K once, each Q once)
  const drawn: number[] = [];
  let nanCount = 0;
  for (const t of tokens) {
    for (let g = 0; g < KV; g++) for (let d = 0; d < dims; d++) drawn.push(kAt(t, g, d));
    if (qk) { for (let h = 0; h < H; h++) for (let d = 0; d < dims; d++) drawn.push(qAt(t, h, d)); }
  }
  for (const v of drawn) if (Number.isNaN(v)) nanCount++;
  let clip = percentileAbs(drawn, pct);
  const allZero = !(clip > 0);
  if (allZero) clip = 1;

  // --- sizes
  const blocksAcross = qk && all ? 2 : 1;
  const cs = clamp(Math.floor(960 / (r * dims * blocksAcross)), 6, 16); // width of one dim
  const rh = all ? clamp(Math.floor(100 / nT), 2, cs) : Math.max(cs, 14); // height of one token
  const blockW = dims * cs, blockH = nT * rh;
  // data blocks of a cell, relative to the cell's data origin
  const blocks: { kind: "k" | "q"; dx: number; dy: number }[] = [{ kind: "k", dx: 0, dy: 0 }];
  let dataW = blockW, dataH = blockH, dataY0 = CELL_LABEL_H;
  if (qk && !all) {
    blocks[0].dx = GUTTER;
    blocks.push({ kind: "q", dx: GUTTER, dy: blockH + QK_GAP });
    dataW = GUTTER + blockW;
    dataH = 2 * blockH + QK_GAP;
  } else if (qk && all) {
    blocks.push({ kind: "q", dx: blockW + QK_GAP + 5, dy: 0 });
    dataW = 2 * blockW + QK_GAP + 5;
    dataY0 = CELL_LABEL_H + 12; // a "K" / "Q" header line above the blocks
  }
  const cellW = Math.max(dataW, Math.ceil(textWidth(`Q head ${H - 1}`, FS_CELL, true)) + 4);
  const cellH = dataY0 + dataH;

  // token labels at the right of each row (all tokens only): every k-th so they do not collide
  const tokStep = all ? Math.ceil(9 / rh) : 1;
  const tokFs = all ? Math.min(10, rh * tokStep - 1) : 0;
  let tokLabelW = 0;
  if (all) {
    for (let i = 0; i < nT; i += tokStep) {
      tokLabelW = Math.max(tokLabelW, textWidth(`${tokens[i]} ${tokText(tokens[i])}`, tokFs));
    }
    tokLabelW = Math.ceil(tokLabelW) + 8;
  }

  const kvSub = (g: number) => r === 1 ? `Q head ${g}` : `Q heads ${g * r}\u2013${g * r + r - 1}`;
  const rowLabelW = Math.ceil(
    Math.max(textWidth(`KV head ${KV - 1}`, FS_ROW, true), textWidth(kvSub(KV - 1), FS_ROW_SUB)),
  ) + 14;
  const gridX = PAD + rowLabelW;
  const gridW = r * cellW + (r - 1) * COL_GAP;
  const gridRight = gridX + gridW + (all ? 6 + tokLabelW : 0);

  // --- header text
  const kName = opts.rope === "pre"
    ? "K as it leaves k_proj (pre-RoPE)"
    : "K after RoPE (post-RoPE)";
  const tokenPart = all ? `all ${T} tokens` : `token ${tokens[0]} "${tokText(tokens[0])}"` +
    (capture.tokenIds[tokens[0]] !== undefined ? ` (id ${capture.tokenIds[tokens[0]]})` : "");
  const title = `GQA ${qk ? "keys and queries" : "keys"} \u2014 ${capture.model} \u00b7 ` +
    `layer ${capture.layer} \u00b7 ${tokenPart}`;
  const rev = /^[0-9a-f]{40}$/.test(capture.revision)
    ? capture.revision.slice(0, 7)
    : capture.revision;
  const dimsPart = dims === HD ? `all ${HD} dims` : `first ${dims} of ${HD} dims`;
  const qName = qPost ? " and Q after RoPE (post-RoPE)" : " and Q as it leaves q_proj (pre-RoPE)";
  const subtitle = `${kName}${qk ? qName : ""} \u00b7 ` +
    `${dimsPart} \u00b7 revision ${rev}`;
  const headsPart = r === 1
    ? `Rows: KV heads g; the one cell of row g is query head h = g.`
    : KV === 1
    ? `One row (the single KV head); columns: the ${r} query heads that read it.`
    : `Rows: KV heads g; columns: the query heads h = g\u00b7${r} + j (j = 0..${r - 1}) ` +
      `that read KV head g.`;
  const shared = r > 1;
  const tokensPart = `tokens 0..${T - 1} top to bottom, dims left to right`;
  const cellPart = qk
    ? (all
      ? (shared
        ? `Each cell: the shared K (left, "K"; identical along a row) and that query head's ` +
          `own Q (right, "Q"; different in every column), ${tokensPart}.`
        : `Each cell: K of that KV head (left, "K") and the query head's Q (right, "Q"), ` +
          `${tokensPart}.`)
      : (shared
        ? `Each cell: the shared K (top strip, "K"; identical along a row) and that query ` +
          `head's own Q (bottom strip, "Q"; different in every column), dims left to right.`
        : `Each cell: K of that KV head (top strip, "K") and the query head's Q (bottom ` +
          `strip, "Q"), dims left to right.`))
    : (all
      ? `Each cell: K of that KV head, ${tokensPart}${shared ? "; identical along a row" : ""}.`
      : `Each cell: K of that KV head, dims left to right${
        shared ? "; identical along a row, because those query heads read one cached K" : ""
      }.`);
  const textW = Math.max(gridRight - PAD, textWidth(title, FS_TITLE, true), 640);
  const legendLines = [
    ...wrap(sharingLegend(H, KV), FS_TEXT, textW),
    ...wrap(`${headsPart} ${cellPart}`, FS_TEXT, textW),
  ];

  const out: string[] = [];
  const text = (
    x: number,
    y: number,
    s: string,
    a: { cls?: string; size?: number; bold?: boolean; fill?: string; anchor?: string } = {},
  ) => {
    out.push(
      `<text${a.cls ? ` class="${a.cls}"` : ""} x="${r1(x)}" y="${r1(y)}"` +
        ` font-size="${a.size ?? FS_TEXT}"${a.bold ? ` font-weight="bold"` : ""}` +
        ` fill="${a.fill ?? INK}"${a.anchor ? ` text-anchor="${a.anchor}"` : ""}>` +
        `${escapeXml(s)}</text>`,
    );
  };

  // --- header
  let y = PAD + FS_TITLE;
  text(PAD, y, title, { cls: "title", size: FS_TITLE, bold: true });
  y += 20;
  text(PAD, y, subtitle, { cls: "subtitle", fill: MUTED });
  y += 20;
  for (const line of legendLines) {
    text(PAD, y, line, { cls: "legend" });
    y += 16;
  }
  const gridY = y + 8;

  // --- grid
  const bandX = PAD - BAND_PAD, bandW = gridRight - PAD + 2 * BAND_PAD;
  const cellX = (j: number) => gridX + j * (cellW + COL_GAP);
  const cellY = (g: number) => gridY + g * (cellH + ROW_GAP);
  for (let g = 0; g < KV; g++) {
    const cy = cellY(g);
    out.push(
      `<rect class="band" x="${bandX}" y="${cy - BAND_PAD}" width="${bandW}"` +
        ` height="${cellH + 2 * BAND_PAD}" rx="4" fill="${BAND}"/>`,
    );
    const labelTop = cy + Math.max(0, (cellH - 26) / 2); // two lines, 26 px, centred
    text(PAD, labelTop + 12, `KV head ${g}`, { cls: "kv-label", size: FS_ROW, bold: true });
    text(PAD, labelTop + 25, kvSub(g), { cls: "kv-sub", size: FS_ROW_SUB, fill: MUTED });
    for (let j = 0; j < r; j++) {
      const h = g * r + j;
      const x0 = cellX(j), y0 = cy + dataY0;
      out.push(`<g class="cell" id="cell-g${g}-h${h}">`);
      text(x0, cy + FS_CELL, `Q head ${h}`, { cls: "q-label", size: FS_CELL, bold: true });
      for (const b of blocks) {
        const bx = x0 + b.dx, by = y0 + b.dy;
        if (qk && !all) {
          text(x0, by + blockH / 2 + 4, b.kind === "k" ? "K" : "Q", {
            cls: "block-label",
            size: FS_SMALL,
            fill: MUTED,
          });
        } else if (qk && all) {
          text(bx + blockW / 2, y0 - 3, b.kind === "k" ? "K" : "Q", {
            cls: "block-label",
            size: FS_SMALL,
            fill: MUTED,
            anchor: "middle",
          });
        }
        for (let i = 0; i < nT; i++) {
          const t = tokens[i];
          const where = `KV head ${g} \u00b7 Q head ${h} \u00b7 ` +
            (all ? `token ${t} "${tokText(t)}" \u00b7 ` : "");
          for (let d = 0; d < dims; d++) {
            const v = b.kind === "k" ? kAt(t, g, d) : qAt(t, h, d);
            const name = b.kind === "k" ? "K" : "Q";
            out.push(
              `<rect class="${b.kind}" x="${bx + d * cs}" y="${by + i * rh}" width="${cs}"` +
                ` height="${rh}" fill="${valueToHex(v, clip)}"><title>` +
                `${escapeXml(`${where}dim ${d} \u00b7 ${name} = ${formatValue(v)}`)}` +
                `</title></rect>`,
            );
          }
        }
        out.push(
          `<rect class="frame" x="${bx}" y="${by}" width="${blockW}" height="${blockH}"` +
            ` fill="none" stroke="${FRAME}" stroke-width="0.6"/>`,
        );
      }
      out.push(`</g>`);
    }
    if (all) {
      const lx = gridX + gridW + 8;
      for (let i = 0; i < nT; i += tokStep) {
        const ty = cy + dataY0 + i * rh + Math.min(rh * tokStep, 10) / 2 + tokFs * 0.35;
        text(lx, ty, `${tokens[i]} ${tokText(tokens[i])}`, {
          cls: "token-label",
          size: tokFs,
          fill: MUTED,
        });
      }
    }
  }
  const gridBottom = cellY(KV - 1) + cellH;

  // --- dimension ticks under the last row
  const dimStep = [1, 2, 5, 10, 20, 50, 100, 200, 500].find((s) => s * cs >= 30) ?? 1000;
  const axisY = gridBottom + BAND_PAD + 12;
  text(PAD, axisY, "dim", { cls: "dim-axis", size: FS_SMALL, fill: MUTED });
  for (let j = 0; j < r; j++) {
    for (const b of blocks) {
      if (b.kind === "q" && !all) continue; // stacked strips share one axis
      for (let d = 0; d < dims; d += dimStep) {
        text(cellX(j) + b.dx + d * cs + cs / 2, axisY, String(d), {
          cls: "dim-tick",
          size: FS_SMALL,
          fill: MUTED,
          anchor: "middle",
        });
      }
    }
  }

  // --- colour bar
  const barX = gridX, barY = axisY + 18;
  const barW = Math.min(BAR_W_MAX, Math.max(gridW, 240));
  const stops: string[] = [];
  for (let i = 0; i <= 64; i++) {
    stops.push(
      `<stop offset="${r1(i / 64 * 1000) / 1000}" stop-color="${divergingHex(-1 + i / 32)}"/>`,
    );
  }
  const valueName = qk ? "|K| and |Q|" : "|K|";
  const clipText = allZero
    ? `every value drawn is 0 (scale shown as \u00b11)`
    : pct === 100
    ? `not clipped: the scale ends at max ${valueName} = ${formatClip(clip)}`
    : `clipped at the ${ordinal(pct)} percentile of ${valueName} = ${formatClip(clip)}; ` +
      `larger values take the end colours`;
  const caption = `Colour: ${qk ? "K and Q" : "K"}, one scale centred on 0 for all ` +
    `${KV * r} cells, ${clipText}` +
    (nanCount ? `; grey: ${nanCount} NaN value${nanCount === 1 ? "" : "s"}` : "") +
    `. Hover a square for its exact value.`;
  const captionLines = wrap(caption, FS_TEXT, textW);
  out.push(`<g class="colorbar">`);
  text(barX - 8, barY + BAR_H - 3, `\u2264 \u2212${formatClip(clip)}`, {
    cls: "bar-end",
    size: FS_SMALL,
    fill: MUTED,
    anchor: "end",
  });
  text(barX + barW + 8, barY + BAR_H - 3, `\u2265 ${formatClip(clip)}`, {
    cls: "bar-end",
    size: FS_SMALL,
    fill: MUTED,
  });
  out.push(
    `<rect class="colorbar-fill" x="${barX}" y="${barY}" width="${barW}" height="${BAR_H}"` +
      ` fill="url(#colorbar-gradient)" stroke="${FRAME}" stroke-width="0.6"/>`,
  );
  const { step, ticks } = niceTicks(clip, 2);
  for (const tv of ticks) {
    const tx = r1(barX + (tv / clip + 1) / 2 * barW);
    out.push(
      `<line class="tick" x1="${tx}" y1="${barY + BAR_H}" x2="${tx}" y2="${barY + BAR_H + 4}"` +
        ` stroke="${INK}" stroke-width="1"/>`,
    );
    text(tx, barY + BAR_H + 15, formatTick(tv, step), {
      cls: "tick-label",
      size: FS_SMALL,
      anchor: "middle",
    });
  }
  let capY = barY + BAR_H + 34;
  for (const line of captionLines) {
    text(PAD, capY, line, { cls: "colorbar-caption", fill: MUTED });
    capY += 16;
  }
  out.push(`</g>`);

  // --- document
  const contentRight = Math.max(
    gridRight,
    barX + barW + 8 + textWidth(`\u2265 ${formatClip(clip)}`, FS_SMALL),
    PAD + textWidth(title, FS_TITLE, true),
    PAD + textWidth(subtitle, FS_TEXT),
    ...legendLines.map((l) => PAD + textWidth(l, FS_TEXT)),
    ...captionLines.map((l) => PAD + textWidth(l, FS_TEXT)),
  );
  const W = Math.ceil(contentRight + PAD);
  const Hpx = Math.ceil(capY - 16 + PAD);
  return [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="${W}" height="${Hpx}"` +
    ` viewBox="0 0 ${W} ${Hpx}" font-family="${FONT}">`,
    `<title>${escapeXml(title)}</title>`,
    `<desc>${escapeXml([subtitle, ...legendLines, caption].join(" "))}</desc>`,
    `<defs><linearGradient id="colorbar-gradient" x1="0" y1="0" x2="1" y2="0">`,
    ...stops,
    `</linearGradient></defs>`,
    `<rect class="background" x="0" y="0" width="${W}" height="${Hpx}" fill="#ffffff"/>`,
    ...out,
    `</svg>`,
    "",
  ].join("\n");
}
