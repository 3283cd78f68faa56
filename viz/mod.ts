/**
 * The picture side of the project: the GQA key grid's layout model ({@linkcode layoutGrid}:
 * positions, colours, labels; no output format), its SVG writer ({@linkcode renderGqaGrid},
 * {@linkcode gridSvg}), its PNG rasteriser ({@linkcode svgToPng}), the explorer page
 * ({@linkcode explorerHtml}: every captured layer and token, attention weights, a per-layer
 * GQA summary from {@linkcode gqaSummary}) and the diverging colour scale they share. Pure
 * functions of their inputs (svgToPng reads its font and WebAssembly from the npm cache); no
 * GPU or network.
 * @module
 */
export {
  formatValue,
  GRID_LAYOUT_FUNCTIONS,
  type GridCapture,
  type GridLayout,
  gridMetrics,
  type GridOptions,
  gridProblem,
  type GridStyle,
  type LaidBlock,
  type LaidBox,
  type LaidCell,
  type LaidColourBar,
  type LaidRow,
  type LaidSquare,
  type LaidText,
  layoutGrid,
  sharingLegend,
  textWidth,
  visibleToken,
  wrap,
} from "./layout.ts";
export { escapeXml, GRID_SVG_FUNCTIONS, gridSvg, renderGqaGrid } from "./grid_svg.ts";
export { type ExplorerCapture, explorerHtml, type ExplorerLayer, halfBase64 } from "./explorer.ts";
export { type PngOptions, svgToPng } from "./png.ts";
export { GQA_SUMMARY_FUNCTIONS, type GqaSummary, gqaSummary, jsDistance } from "./gqa_summary.ts";
export {
  COLOUR_SCALE_FUNCTIONS,
  divergingHex,
  formatTick,
  NAN_HEX,
  niceTicks,
  percentileAbs,
  valueToHex,
} from "./colors.ts";
