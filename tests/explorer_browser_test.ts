/**
 * The explorer page (viz/explorer.ts) in a real browser: Debian's headless Chromium driven
 * by npm:puppeteer-core, one launch for every check. On the tiny model with every layer
 * captured, it checks that the page logs no errors, that picking another layer, token or
 * RoPE setting (with the mouse-free pickers, one of them from the keyboard) redraws the cells
 * with the values of the capture, that the attention view shows the capture's weights in
 * the KV-group grid, and that the screenshot is not blank.
 *
 * Without /usr/bin/chromium (or $CHROMIUM) it skips with a message; in CI (`CI=true`) it
 * fails instead, because .ci/run installs the `chromium` package.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { join } from "node:path";
import puppeteer, { type Page } from "puppeteer-core";
import { captureLayer } from "../model/capture.ts";
import { makeTinyModel } from "../scripts/make_tiny_model.ts";
import { explorerHtml } from "../viz/explorer.ts";
import { testGpu } from "./_helpers.ts";
import { decodePng, distinctColours } from "./_png.ts";

const CHROMIUM = Deno.env.get("CHROMIUM") ?? "/usr/bin/chromium";
const TOKENS = [752, 72, 101, 108, 108, 111, 32, 119]; // BOS "Hello w"

function haveChromium(): boolean {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
}

/** The page's half floats and 4-significant-digit tooltips: within 1e-3 relative (+ 1e-4). */
function near(got: number, want: number, what: string) {
  assert(
    Math.abs(got - want) <= 1e-3 * Math.abs(want) + 1e-4,
    `${what}: page ${got}, capture ${want}`,
  );
}

/** The value in the tooltip of K square `d` of cell (g, h) ("… K = 0.1234"). */
async function kValue(page: Page, g: number, h: number, d: number): Promise<number> {
  const tip = await page.$$eval(
    `#grid #cell-g${g}-h${h} rect.k`,
    (rs, d) => rs[d as number].textContent,
    d,
  );
  return Number(/K = (\S+)$/.exec(tip ?? "")![1].replace("\u2212", "-"));
}

/** data-v of the attention square (h, t, j). */
async function pValue(page: Page, h: number, t: number, j: number): Promise<number> {
  return Number(
    await page.$eval(
      `#attn rect.p[data-h="${h}"][data-t="${t}"][data-j="${j}"]`,
      (r) => r.getAttribute("data-v"),
    ),
  );
}

Deno.test({
  name:
    "explorer in headless Chromium: no console errors, pickers redraw with the capture's values, screenshot not blank",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    if (!haveChromium()) {
      if (Deno.env.get("CI") === "true") {
        throw new Error(`no Chromium at ${CHROMIUM}; install the chromium package`);
      }
      console.warn(
        `skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`,
      );
      return;
    }
    const gpu = await testGpu();
    if (!gpu) {
      if (Deno.env.get("CI") === "true") throw new Error("no WebGPU adapter in CI");
      console.warn("skipped: no WebGPU adapter to make the capture");
      return;
    }
    const { dir } = await makeTinyModel();
    const cap = await captureLayer({
      model: dir,
      layers: "all",
      tokenIds: TOKENS,
      gpu,
      progress: false,
    });
    const { T, KV, HD } = cap;
    const tmp = await Deno.makeTempDir();
    const file = join(tmp, "explorer.html");
    await Deno.writeTextFile(
      file,
      explorerHtml(cap, { token: 0, dims: 16, rope: "pre", show: "k" }),
    );

    const browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      args: ["--headless=new", "--no-sandbox"],
    });
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
      page.on("pageerror", (e) => errors.push(String(e)));
      page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()}`));
      await page.setViewport({ width: 1280, height: 900 });
      await page.goto(`file://${file}`, { waitUntil: "load" });

      // Initially: the deepest layer (3), token 0, K pre-RoPE.
      const k = (l: number, t: number, g: number, d: number, rope = false) =>
        (rope ? cap.sweep[l].kRope : cap.sweep[l].k)[t * KV * HD + g * HD + d];
      near(await kValue(page, 1, 5, 2), k(3, 0, 1, 2), "layer 3 token 0 g1 d2");

      // Another layer: the cells change to that layer's values.
      await page.select("#layer", "1");
      for (const [g, h, d] of [[0, 0, 0], [1, 5, 2], [7, 30, 15]]) {
        near(await kValue(page, g, h, d), k(1, 0, g, d), `layer 1 g${g} d${d}`);
      }
      assert(
        Math.abs(k(1, 0, 1, 2) - k(3, 0, 1, 2)) > 1e-2,
        "layers 1 and 3 differ, so the check can fail",
      );

      // Another token, then K after RoPE.
      await page.select("#token", "5");
      near(await kValue(page, 2, 9, 3), k(1, 5, 2, 3), "layer 1 token 5");
      await page.select("#rope", "post");
      near(await kValue(page, 2, 9, 3), k(1, 5, 2, 3, true), "layer 1 token 5 after RoPE");

      // The attention view: the KV-group grid, T × T per head, values of the capture.
      const a = (l: number, h: number, t: number, j: number) =>
        cap.sweep[l].attn[(h * T + t) * T + j];
      near(await pValue(page, 6, 4, 2), a(1, 6, 4, 2), "attn layer 1 h6 t4 j2");
      assertEquals(await page.$$eval("#attn-g1-h5 rect.p", (rs) => rs.length), T * T);
      await page.select("#attn-mode", "row");
      assertEquals(await page.$$eval("#attn-g1-h5 rect.p", (rs) => rs.length), T); // token 5's row
      near(await pValue(page, 5, 5, 3), a(1, 5, 5, 3), "attn row mode h5 t5 j3");

      // The keyboard: focus the layer picker and step down one layer with an arrow key.
      await page.focus("#layer");
      await page.keyboard.press("ArrowDown");
      assertEquals(await page.$eval("body", (b) => b.getAttribute("data-layer")), "2");
      near(await kValue(page, 0, 2, 1), k(2, 5, 0, 1, true), "layer 2 after the arrow key");

      // Hover shows the exact value in the status line.
      await page.hover("#grid #cell-g0-h0 rect.k");
      assert(/K = /.test(await page.$eval("#hover", (e) => e.textContent ?? "")), "hover status");

      // The summary chart has a point per layer for each series; the screenshot is not blank.
      assertEquals(await page.$$eval("#summary circle", (cs) => cs.length), 2 * cap.sweep.length);
      const shot = decodePng(new Uint8Array(await page.screenshot({ fullPage: false })));
      assertEquals(shot.width, 1280);
      assert(distinctColours(shot) > 100, `${distinctColours(shot)} colours in the screenshot`);
      assertEquals(errors, []);
    } finally {
      await browser.close();
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
