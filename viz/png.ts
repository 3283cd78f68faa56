/**
 * PNG output: an SVG (the grid of grid_svg.ts) rasterised by resvg (npm:@resvg/resvg-wasm, a
 * maintained SVG renderer compiled to WebAssembly), at 2× by default, with DejaVu Sans
 * (npm:dejavu-fonts-ttf) loaded from its npm package, so text renders the same on a machine
 * without any fonts installed. No system fonts are consulted.
 *
 * @example
 * ```ts ignore
 * const png = await svgToPng(renderGqaGrid(cap, { token: 0, dims: 20, rope: "pre", show: "k" }));
 * await Deno.writeFile("grid.png", png);
 * ```
 * @module
 */
import { initWasm, Resvg } from "@resvg/resvg-wasm";
import { createRequire } from "node:module";
// Imported so that Deno installs the font package with the module graph.
import "dejavu-fonts-ttf/package.json" with { type: "json" };

const require = createRequire(import.meta.url);
let wasmReady: Promise<void> | undefined;
let fonts: Uint8Array[] | undefined;

/** Options of {@linkcode svgToPng}. */
export interface PngOptions {
  /** Pixels per SVG unit (default 2; at least 2 keeps 10 px text legible). */
  scale?: number;
}

/** DejaVu Sans regular and bold, read once from the npm package. */
async function bundledFonts(): Promise<Uint8Array[]> {
  fonts ??= await Promise.all(
    ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf"].map((f) =>
      Deno.readFile(require.resolve(`dejavu-fonts-ttf/ttf/${f}`))
    ),
  );
  return fonts;
}

/** Rasterises `svg` to PNG bytes at `opts.scale` (default 2) with the bundled font. */
export async function svgToPng(svg: string, opts: PngOptions = {}): Promise<Uint8Array> {
  wasmReady ??= Deno.readFile(require.resolve("@resvg/resvg-wasm/index_bg.wasm")).then(initWasm);
  await wasmReady;
  const resvg = new Resvg(svg, {
    fitTo: { mode: "zoom", value: opts.scale ?? 2 },
    background: "#ffffff",
    font: {
      fontBuffers: await bundledFonts(),
      loadSystemFonts: false,
      defaultFontFamily: "DejaVu Sans",
      sansSerifFamily: "DejaVu Sans",
    },
  });
  const png = resvg.render().asPng();
  resvg.free();
  return png;
}
