/**
 * The picture side of the project: the GQA key grid's layout model ({@linkcode layoutGrid}:
 * positions, colours, labels; no output format), its SVG writer ({@linkcode renderGqaGrid},
 * {@linkcode gridSvg}) and the diverging colour scale it uses. Pure functions of their inputs;
 * no GPU, files or network.
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
export { escapeXml, gridSvg, renderGqaGrid } from "./grid_svg.ts";
export {
  COLOUR_SCALE_FUNCTIONS,
  divergingHex,
  formatTick,
  NAN_HEX,
  niceTicks,
  percentileAbs,
  valueToHex,
} from "./colors.ts";
