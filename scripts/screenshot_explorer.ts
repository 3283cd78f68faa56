/**
 * Takes the README's screenshot of the explorer (docs/explorer.png): every layer of the tiny
 * model for a short prompt, opened in headless Chromium at 1280 px wide, the whole page.
 *
 * ```
 * deno run -A scripts/screenshot_explorer.ts [OUT.png]     # needs /usr/bin/chromium
 * ```
 * @module
 */
import puppeteer from "puppeteer-core";
import { captureLayer } from "../model/capture.ts";
import { explorerHtml } from "../viz/explorer.ts";
import { makeTinyModel } from "./make_tiny_model.ts";

const USAGE = "usage: deno run -A scripts/screenshot_explorer.ts [OUT.png]  " +
  "(default docs/explorer.png; needs /usr/bin/chromium, or the path in CHROMIUM)";

if (import.meta.main) {
  // One optional argument, a file name: an option (or a mistyped one) is not taken for one.
  const [arg, ...rest] = Deno.args;
  if (arg === "--help" || arg === "-h") {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (rest.length > 0 || arg?.startsWith("-")) {
    console.error(`error: expected at most one argument, the PNG to write.\n${USAGE}`);
    Deno.exit(2);
  }
  const out = arg ?? "docs/explorer.png";
  const { dir } = await makeTinyModel();
  const cap = await captureLayer({
    model: dir,
    layers: "all",
    prompt: "The quick brown fox",
    progress: false,
  });
  const file = await Deno.makeTempFile({ suffix: ".html" });
  await Deno.writeTextFile(
    file,
    explorerHtml({ ...cap, model: "tiny-llama" }, { token: 3, dims: 16, rope: "pre", show: "qk" }),
  );
  const browser = await puppeteer.launch({
    executablePath: Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium",
    args: ["--headless=new", "--no-sandbox"],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    await page.goto(`file://${file}`, { waitUntil: "load" });
    await page.select("#layer", "2");
    // The whole page, unscrolled: no sticky header, no scroll boxes.
    await page.addStyleTag({ content: "header { position: static } .scroll { max-height: none }" });
    await page.screenshot({ path: out as `${string}.png`, fullPage: true });
  } finally {
    await browser.close();
    await Deno.remove(file);
  }
  console.log(`wrote ${out}`);
}
