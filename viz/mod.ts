/**
 * The picture side of the project: the GQA key grid as SVG ({@linkcode renderGqaGrid}) and
 * the diverging colour scale it uses. Pure functions of their inputs; no GPU, files or network.
 * @module
 */
export {
  escapeXml,
  formatValue,
  type GridCapture,
  type GridOptions,
  renderGqaGrid,
  sharingLegend,
  visibleToken,
} from "./grid_svg.ts";
export {
  divergingHex,
  formatTick,
  NAN_HEX,
  niceTicks,
  percentileAbs,
  valueToHex,
} from "./colors.ts";
