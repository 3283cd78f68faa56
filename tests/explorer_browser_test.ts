/**
 * The explorer page (viz/explorer.ts) in a real browser: Debian's headless Chromium driven
 * by npm:puppeteer-core, one launch for every check. On the tiny model with every layer
 * captured, it checks that the page logs no errors, that picking another layer, token or
 * RoPE setting (with the mouse-free pickers, one of them from the keyboard) or moving the dims
 * window (first dim and count, from the keyboard) redraws the cells with the values of the
 * capture at those dims, that the attention view shows the capture's weights in
 * the KV-group grid, and that the screenshot is not blank.
 *
 * A second test, without a browser, checks that the page starts on the dims window asked for.
 *
 * Without /usr/bin/chromium (or $CHROMIUM) the browser test skips with a message; in CI (`CI=true`) it
 * fails instead, because .ci/run installs the `chromium` package.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { join } from "node:path";
import puppeteer, { type Page } from "puppeteer-core";
import { captureLayer } from "../model/capture.ts";
import { makeTinyModel } from "../scripts/make_tiny_model.ts";
import { dimWindow, explorerHtml } from "../viz/explorer.ts";
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

/** Every K square of cell (g, h), left to right: its dim and value, read from its tooltip. */
async function kSquares(page: Page, g: number, h: number): Promise<{ d: number; v: number }[]> {
  const tips = await page.$$eval(
    `#grid #cell-g${g}-h${h} rect.k`,
    (rs) => rs.map((r) => r.textContent ?? ""),
  );
  return tips.map((tip) => {
    const m = /dim (\d+) \u00b7 K = (\S+)$/.exec(tip);
    assert(m, `tooltip: ${tip}`);
    return { d: Number(m[1]), v: Number(m[2].replace("\u2212", "-")) };
  });
}

/**
 * Moves the dims window from the keyboard (4 dims from dim 6, then the last dim alone) and
 * checks the K squares against the capture: `kAt(g, d)` is K[token, g, d] of what is shown.
 */
async function checkDimsWindow(page: Page, kAt: (g: number, d: number) => number, HD: number) {
  // The dims window from the keyboard: 4 dims from dim 6, then the last dim alone.
  await page.focus("#dims");
  await page.keyboard.press("Home"); // 1 dim
  for (let i = 0; i < 3; i++) await page.keyboard.press("ArrowRight"); // 4 dims
  await page.focus("#dim-start");
  for (let i = 0; i < 6; i++) await page.keyboard.press("ArrowRight"); // from dim 6
  assertEquals(await page.$eval("#dims-out", (e) => e.textContent), "6\u20139 of 16");
  for (const [g, h] of [[0, 2], [3, 13], [7, 31]]) {
    const squares = await kSquares(page, g, h);
    assertEquals(squares.map((s) => s.d), [6, 7, 8, 9]);
    for (const s of squares) near(s.v, kAt(g, s.d), `dims 6–9: g${g} d${s.d}`);
  }
  assert(
    Math.abs(kAt(0, 6) - kAt(0, 0)) > 1e-2,
    "dims 0 and 6 differ, so the check can fail",
  );
  const ticks = await page.$$eval("#grid text.dim-tick", (ts) => ts.map((t) => t.textContent));
  assertEquals(ticks[0], "6");
  assert(
    /dims 6\u20139 of 16/.test(
      await page.$eval("#grid text.subtitle", (e) => e.textContent ?? ""),
    ),
    "the grid's subtitle names the window",
  );
  await page.keyboard.press("End"); // the first dim at HD − 1: the window is cut to one dim
  assertEquals(await page.$eval("#dims-out", (e) => e.textContent), `${HD - 1} of ${HD}`);
  const lastDim = await kSquares(page, 4, 17);
  assertEquals(lastDim.map((s) => s.d), [HD - 1]);
  near(lastDim[0].v, kAt(4, HD - 1), "the last dim alone");
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

      // The dims window, from the keyboard.
      await checkDimsWindow(page, (g, d) => k(2, 5, g, d, true), HD);

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

Deno.test("dimWindow() and explorerHtml() name the dims window the sliders start at, cut at HD", () => {
  assertEquals(dimWindow(64, 20, 128), "64\u201383 of 128");
  assertEquals(dimWindow(120, 20, 128), "120\u2013127 of 128");
  assertEquals(dimWindow(127, 5, 128), "127 of 128");
  assertEquals(dimWindow(0, 1, 16), "0 of 16");
  const [T, H, KV, HD] = [2, 4, 2, 16];
  const fill = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i));
  const attn = new Float32Array(H * T * T).fill(0.5);
  const cap = {
    model: "m",
    revision: "main",
    tokenIds: [1, 2],
    tokenTexts: ["a", "b"],
    T,
    H,
    KV,
    HD,
    sweep: [{
      layer: 0,
      q: fill(T * H * HD),
      qRope: fill(T * H * HD),
      k: fill(T * KV * HD),
      kRope: fill(T * KV * HD),
      attn,
    }],
  };
  const html = explorerHtml(cap, { token: 0, dims: 4, dimStart: 5, rope: "pre", show: "k" });
  assert(/<input type="range" id="dim-start" min="0" max="15" value="5">/.test(html), "dim-start");
  assert(/<input type="range" id="dims" min="1" max="16" value="4">/.test(html), "dims");
  assert(html.includes(`>${dimWindow(5, 4, 16)}</output>`), "the window's name");
  // out-of-range starts are pulled into the head: the page never starts on a bad window
  const late = explorerHtml(cap, { token: 0, dims: 4, dimStart: 99, rope: "pre", show: "k" });
  assert(/id="dim-start" min="0" max="15" value="15"/.test(late), "dimStart cut to HD - 1");
});
