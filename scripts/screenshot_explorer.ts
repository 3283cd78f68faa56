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

if (import.meta.main) {
  const out = Deno.args[0] ?? "docs/explorer.png";
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
