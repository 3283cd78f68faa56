/**
 * Writes the grouped-query-attention (GQA) key grid of one layer as a standalone SVG 1.1
 * document, by hand (no charting library). What is drawn where, and in which colour, is
 * decided by viz/layout.ts ({@linkcode layoutGrid}: see its module comment for what the grid
 * shows); this module only turns that layout into SVG text.
 *
 *   renderGqaGrid(capture, opts)
 *     gridProblem(capture, opts)   a message → GqaError "bad-input"
 *     layoutGrid(capture, opts)    positions, colours, labels, tooltips
 *     gridSvg(layout)              the document: header, rows, dim axis, colour bar
 *
 * Every data rect carries a `<title>` tooltip with its exact value (4 significant digits).
 *
 * SVG structure (stable, for tests and for anyone post-processing the file): data rects have
 * class "k" or "q" and sit in `<g class="cell" id="cell-g{g}-h{h}">`; labels are `<text>` with
 * classes "kv-label", "q-label", "token-label", "dim-tick"; the colour bar is
 * `<g class="colorbar">` with "tick-label" texts and a "colorbar-caption". Coordinates are
 * absolute (no transforms). Output is a pure function of the input: no dates, no randomness.
 * @module
 */
import { GqaError } from "../errors.ts";
import {
  type GridCapture,
  type GridLayout,
  type GridOptions,
  gridProblem,
  type LaidBox,
  type LaidCell,
  type LaidColourBar,
  type LaidRow,
  type LaidText,
  layoutGrid,
  round1,
} from "./layout.ts";

export {
  formatValue,
  type GridCapture,
  type GridOptions,
  sharingLegend,
  visibleToken,
} from "./layout.ts";

/** Escapes the five XML special characters for element text and attribute values. */
export function escapeXml(s: string): string {
  const entities: Record<string, string> = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&apos;",
  };
  return s.replace(/[&<>"']/g, (c) => entities[c]);
}

/**
 * Renders the GQA grid of `capture` as an SVG 1.1 document (a string, UTF-8 text with an XML
 * declaration). See viz/layout.ts for the layout.
 *
 * @throws {GqaError} "bad-input" when an option is out of range (dims < 1, dimStart outside
 *   0..HD−1, a token position outside 0..T−1, an unknown rope/show value, a clip percentile outside (0, 100]) or the
 *   capture's shapes do not match its arrays.
 * @example
 * ```ts
 * const svg = renderGqaGrid(capture, { token: 0, dims: 20, rope: "pre", show: "k" });
 * await Deno.writeTextFile("layer_5_gqa_keys.svg", svg);
 * ```
 */
export function renderGqaGrid(capture: GridCapture, opts: GridOptions): string {
  const problem = gridProblem(capture, opts);
  if (problem !== null) throw new GqaError("bad-input", `renderGqaGrid: ${problem}`);
  return gridSvg(layoutGrid(capture, opts));
}

/**
 * Writes a laid-out grid as an SVG 1.1 document: a background, then the layout's items in
 * its drawing order, with the colour bar's gradient in `<defs>`.
 *
 * @example
 * ```ts
 * const svg = gridSvg(layoutGrid(capture, { token: "all", dims: 16, rope: "post", show: "qk" }));
 * ```
 */
export function gridSvg(layout: GridLayout): string {
  const { width: W, height: H, style } = layout;
  const out: string[] = [];
  for (const t of layout.header) out.push(svgText(t));
  for (const row of layout.rows) out.push(...rowSvg(row, layout));
  for (const t of layout.axis) out.push(svgText(t));
  out.push(...colourBarSvg(layout.colourBar, layout));
  return [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="${W}" height="${H}"` +
    ` viewBox="0 0 ${W} ${H}" font-family="${style.font}">`,
    `<title>${escapeXml(layout.title)}</title>`,
    `<desc>${escapeXml(layout.desc)}</desc>`,
    `<defs><linearGradient id="colorbar-gradient" x1="0" y1="0" x2="1" y2="0">`,
    ...layout.colourBar.stops.map((s) => `<stop offset="${s.offset}" stop-color="${s.color}"/>`),
    `</linearGradient></defs>`,
    `<rect class="background" x="0" y="0" width="${W}" height="${H}" fill="${style.background}"/>`,
    ...out,
    `</svg>`,
    "",
  ].join("\n");
}

/** One `<text>`; coordinates rounded to 0.1 px. */
function svgText(t: LaidText): string {
  return `<text class="${t.cls}" x="${round1(t.x)}" y="${round1(t.y)}"` +
    ` font-size="${t.size}"${t.bold ? ` font-weight="bold"` : ""}` +
    ` fill="${t.fill}"${t.anchor ? ` text-anchor="${t.anchor}"` : ""}>` +
    `${escapeXml(t.text)}</text>`;
}

/** `x="…" y="…" width="…" height="…"` of a box, unrounded. */
function boxAttrs(b: LaidBox): string {
  return `x="${b.x}" y="${b.y}" width="${b.w}" height="${b.h}"`;
}

/** Row g: its band, its labels, its cells, its token labels. */
function rowSvg(row: LaidRow, layout: GridLayout): string[] {
  const out = [
    `<rect class="band" ${boxAttrs(row.band)} rx="${layout.style.bandRadius}"` +
    ` fill="${layout.style.band}"/>`,
  ];
  for (const t of row.labels) out.push(svgText(t));
  for (const cell of row.cells) out.push(...cellSvg(cell, layout));
  for (const t of row.tokenLabels) out.push(svgText(t));
  return out;
}

/** `<g class="cell">`: the "Q head h" label, then per block its letter, squares and frame. */
function cellSvg(cell: LaidCell, layout: GridLayout): string[] {
  const { frame, frameWidth } = layout.style;
  const out = [`<g class="cell" id="${cell.id}">`, svgText(cell.label)];
  for (const b of cell.blocks) {
    if (b.label) out.push(svgText(b.label));
    for (const s of b.squares) {
      out.push(
        `<rect class="${s.kind}" ${boxAttrs(s)} fill="${s.fill}"><title>` +
          `${escapeXml(s.tooltip)}</title></rect>`,
      );
    }
    out.push(
      `<rect class="frame" ${boxAttrs(b)} fill="none" stroke="${frame}"` +
        ` stroke-width="${frameWidth}"/>`,
    );
  }
  out.push(`</g>`);
  return out;
}

/** `<g class="colorbar">`: end labels, the gradient box, ticks, caption lines. */
function colourBarSvg(bar: LaidColourBar, layout: GridLayout): string[] {
  const { frame, frameWidth, ink, tickWidth } = layout.style;
  const out = [`<g class="colorbar">`, ...bar.ends.map(svgText)];
  out.push(
    `<rect class="colorbar-fill" ${boxAttrs(bar)} fill="url(#colorbar-gradient)"` +
      ` stroke="${frame}" stroke-width="${frameWidth}"/>`,
  );
  for (const t of bar.ticks) {
    out.push(
      `<line class="tick" x1="${t.x}" y1="${t.y1}" x2="${t.x}" y2="${t.y2}"` +
        ` stroke="${ink}" stroke-width="${tickWidth}"/>`,
      svgText(t.label),
    );
  }
  for (const t of bar.caption) out.push(svgText(t));
  out.push(`</g>`);
  return out;
}

/**
 * {@linkcode gridSvg} and its helpers, self-contained like GRID_LAYOUT_FUNCTIONS: a page that
 * embeds both lists by source text draws `gridSvg(layoutGrid(capture, opts))` exactly as here.
 */
export const GRID_SVG_FUNCTIONS: readonly ((...args: never[]) => unknown)[] = [
  escapeXml,
  gridSvg,
  svgText,
  boxAttrs,
  rowSvg,
  cellSvg,
  colourBarSvg,
];
