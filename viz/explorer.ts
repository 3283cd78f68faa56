/**
 * The explorer: one self-contained HTML page (inline CSS, JS and data; nothing from the
 * network; opens from disk) to flip through the captured layers and tokens.
 *
 * ```
 *  ┌ pickers: layer · token · first dim + dims · K pre/post RoPE · K or Q · attention ┐
 *  │ the key grid        gridSvg(layoutGrid(capture, opts)): the very functions of    │
 *  │                     viz/layout.ts and viz/grid_svg.ts, embedded by source text   │
 *  │ attention weights   the same KV-group grid: row g = KV head g, its r query heads  │
 *  │                     side by side, each a T × T pattern (or the selected token's   │
 *  │                     row); heads that share one K sit next to each other           │
 *  │ across layers       mean Jensen–Shannon distance of attention rows within a KV    │
 *  │                     group vs across groups, per captured layer (viz/gqa_summary)  │
 *  └─────────────────────────────────────────────────────────────────────────────────┘
 * ```
 *
 * Data. The page draws q, q after RoPE, k, k after RoPE and the attention weights of every
 * captured layer. They travel as IEEE half floats (2 bytes a value, ~3 significant digits;
 * a tensor whose |max| exceeds 60000 is divided by a power-of-two scale first), base64, in a
 * `<script type="application/json">`; V is not drawn and not included. `--save-tensors`
 * keeps full precision. For Llama-3-8B, 32 layers and 16 tokens the page is about 15 MB
 * (docs/BENCHMARKS.md): (2·T·H·HD + 2·T·KV·HD + H·T²) values a layer.
 *
 * DOM (stable, for tests): pickers `#layer`, `#token`, `#dim-start` (the first head dim shown,
 * a slider 0…HD−1) and `#dims` (how many, 1…HD; the window is cut at HD), `#rope`, `#show`,
 * `#attn-mode`; `#dims-out` names the window ("64–83 of 128"); the grid in `#grid` (the SVG of grid_svg.ts: rects `.k`/`.q` with a `<title>`
 * of the exact value, in `g#cell-g{g}-h{h}`); the attention view in `#attn` (rects
 * `.p` with `data-h`, `data-t`, `data-j`, `data-v` and a `<title>`); the chart in `#summary`.
 * @module
 */
import type { Capture, LayerTensors } from "../model/capture.ts";
import { GRID_LAYOUT_FUNCTIONS, type GridOptions, sharingLegend, visibleToken } from "./layout.ts";
import { escapeXml, GRID_SVG_FUNCTIONS } from "./grid_svg.ts";
import { type GqaSummary, gqaSummary } from "./gqa_summary.ts";

/**
 * One captured layer's tensors, all but V (not drawn): q, qRope (T, H*HD), k, kRope
 * (T, KV*HD), attn (H, T, T).
 */
export type ExplorerLayer = Omit<LayerTensors, "v">;

/**
 * What the explorer needs of a model/capture.ts `Capture`: names, shape and every captured
 * layer (`sweep`, ascending).
 */
export type ExplorerCapture =
  & Pick<Capture, "model" | "revision" | "tokenIds" | "tokenTexts" | "T" | "H" | "KV" | "HD">
  & { sweep: ExplorerLayer[] };

/** A tensor as the page stores it: half floats, base64, times `scale`. */
interface PageTensor {
  f16: string;
  scale: number;
}

/**
 * `values` as little-endian IEEE half floats in base64, divided by a power-of-two `scale`
 * when |max| would overflow a half (65504).
 *
 * @example
 * ```ts
 * const t = halfBase64(new Float32Array([1, -2]));
 * // { f16: "ADwAwA==", scale: 1 }
 * ```
 */
export function halfBase64(values: Float32Array): PageTensor {
  let max = 0;
  for (const v of values) if (Math.abs(v) > max) max = Math.abs(v);
  const scale = max > 60000 ? 2 ** Math.ceil(Math.log2(max / 60000)) : 1;
  const half = new Float16Array(values.length);
  for (let i = 0; i < values.length; i++) half[i] = values[i] / scale;
  const bytes = new Uint8Array(half.buffer);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return { f16: btoa(bin), scale };
}

/** The page's data: shapes, token texts, the per-layer tensors and the GQA summary. */
function pageData(c: ExplorerCapture, summary: GqaSummary[]) {
  return {
    model: c.model,
    revision: c.revision,
    tokenIds: c.tokenIds,
    tokenTexts: c.tokenTexts,
    T: c.T,
    H: c.H,
    KV: c.KV,
    HD: c.HD,
    layers: c.sweep.map((l) => ({
      layer: l.layer,
      q: halfBase64(l.q),
      qRope: halfBase64(l.qRope),
      k: halfBase64(l.k),
      kRope: halfBase64(l.kRope),
      attn: halfBase64(l.attn),
    })),
    summary: summary.map((s) => ({
      layer: s.layer,
      within: Number.isFinite(s.within) ? s.within : null,
      across: Number.isFinite(s.across) ? s.across : null,
    })),
  };
}

/** JSON safe inside `<script>`: "<" escaped so no "</script>" can end it early. */
function scriptJson(v: unknown): string {
  return JSON.stringify(v).replace(/</g, "\\u003c").replace(
    /\u2028|\u2029/g,
    (c) => c === "\u2028" ? "\\u2028" : "\\u2029",
  );
}

/**
 * The dims window as the page names it: the first and last dim shown (cut at HD) of HD.
 * Pure, so the page embeds it by its source text beside the grid's functions.
 *
 * @example
 * ```ts
 * dimWindow(64, 20, 128); // "64–83 of 128"
 * dimWindow(120, 20, 128); // "120–127 of 128"
 * ```
 */
export function dimWindow(d0: number, dims: number, HD: number): string {
  const last = Math.min(d0 + dims, HD) - 1;
  return `${d0 === last ? d0 : `${d0}\u2013${last}`} of ${HD}`;
}

/** The pickers, with the initial choices of `opts` selected. */
function controlsHtml(c: ExplorerCapture, opts: GridOptions): string {
  const sel = (on: boolean) => (on ? " selected" : "");
  const last = c.sweep.length - 1;
  const layers = c.sweep.map((l, i) =>
    `<option value="${i}"${sel(i === last)}>layer ${l.layer}</option>`
  ).join("");
  const tokens = [`<option value="all"${sel(opts.token === "all")}>all tokens</option>`]
    .concat(
      c.tokenTexts.map((t, i) =>
        `<option value="${i}"${sel(opts.token === i)}>${i}: ${escapeXml(visibleToken(t))}</option>`
      ),
    ).join("");
  const dims = Math.min(Math.max(1, opts.dims), c.HD);
  const d0 = Math.min(Math.max(0, opts.dimStart ?? 0), c.HD - 1);
  return `<form id="controls" onsubmit="return false">
<label>Layer <select id="layer">${layers}</select></label>
<label>Token <select id="token">${tokens}</select></label>
<label>First dim <input type="range" id="dim-start" min="0" max="${c.HD - 1}" value="${d0}"></label>
<label>Dims <input type="range" id="dims" min="1" max="${c.HD}" value="${dims}">
<output id="dims-out" for="dim-start dims">${dimWindow(d0, dims, c.HD)}</output></label>
<label>K <select id="rope"><option value="pre"${
    sel(opts.rope === "pre")
  }>as it leaves k_proj (pre-RoPE)</option>
<option value="post"${sel(opts.rope === "post")}>after RoPE</option></select></label>
<label>Show <select id="show"><option value="k"${sel(opts.show === "k")}>K alone</option>
<option value="qk"${sel(opts.show === "qk")}>Q beside K</option></select></label>
<label>Attention <select id="attn-mode"><option value="full">T × T per head</option>
<option value="row">the selected token's row</option></select></label>
</form>`;
}

/**
 * The explorer page for `capture` (every layer in `capture.sweep`), starting at its deepest
 * layer with the grid options `opts`.
 *
 * @example
 * ```ts ignore
 * const cap = await captureLayer({ model: dir, layers: "all", prompt: "Hello" });
 * await Deno.writeTextFile("explorer.html", explorerHtml(cap, { token: 0, dims: 20, rope: "pre", show: "k" }));
 * ```
 */
export function explorerHtml(capture: ExplorerCapture, opts: GridOptions): string {
  const c = capture;
  const summary = c.sweep.map((l) => gqaSummary({ ...c, attn: l.attn, layer: l.layer }));
  const layers = c.sweep.map((l) => l.layer);
  const span = layers.length > 1 ? `layers ${layers[0]}–${layers.at(-1)}` : `layer ${layers[0]}`;
  const title = `GQA explorer: ${c.model}, ${span}`;
  const code = [...GRID_LAYOUT_FUNCTIONS, ...GRID_SVG_FUNCTIONS, dimWindow].map(String).join("\n");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeXml(title)}</title>
<style>${PAGE_CSS}</style>
</head>
<body>
<header>
<h1>${escapeXml(title)}</h1>
<p class="sub">${escapeXml(c.model)} @ ${escapeXml(c.revision)} · ${c.T} tokens · H = ${c.H} query
heads, KV = ${c.KV} key/value heads, HD = ${c.HD} · ${escapeXml(sharingLegend(c.H, c.KV))}</p>
${controlsHtml(c, opts)}
<p id="hover" role="status" aria-live="polite">Hover over a square for its exact value.</p>
</header>
<main>
<section><h2>Keys: one row per KV head, one column per query head that reads it</h2>
<div id="grid" class="scroll"></div></section>
<section><h2>Attention weights, in the same KV-group grid</h2>
<p class="note">Each square is softmax(q·kᵀ/√HD) with the causal mask, from q and k after RoPE:
query token down, key token across. The query heads of one row read the same keys.</p>
<div id="attn" class="scroll"></div></section>
<section><h2>Across layers: how alike are the heads that share one K?</h2>
<p class="note">Mean Jensen–Shannon distance (0 = same attention, 1 = disjoint) between the
attention rows of two query heads, over query tokens 1…T−1: pairs within one KV group vs pairs
from different groups. Click a point to show that layer.</p>
<div id="summary"></div></section>
</main>
<script id="gqa-data" type="application/json">${scriptJson(pageData(c, summary))}</script>
<script>
${code}
${PAGE_SCRIPT}
</script>
</body>
</html>
`;
}

const PAGE_CSS = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { position: sticky; top: 0; z-index: 1; background: #fff; border-bottom: 1px solid #ddd;
  padding: 8px 16px; }
h1 { font-size: 18px; margin: 0 0 2px; }
h2 { font-size: 15px; margin: 12px 0 4px; }
.sub, .note { margin: 0 0 6px; color: #555; max-width: 1200px; }
form { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; }
label { white-space: nowrap; }
select, input { font: inherit; }
#dims, #dim-start { width: 140px; vertical-align: middle; }
#dims-out { display: inline-block; min-width: 7.5em; font-variant-numeric: tabular-nums; }
#hover { margin: 4px 0 0; min-height: 1.4em; font-variant-numeric: tabular-nums; color: #333; }
main { padding: 0 16px 24px; }
section { background: #fff; border: 1px solid #e4e4e4; border-radius: 6px; padding: 4px 12px 12px;
  margin-top: 12px; }
.scroll { overflow: auto; max-height: 80vh; }
svg { display: block; }
#summary circle { cursor: pointer; }
`;

/**
 * The page's own code (plain ES2017, no modules): decode the data, wire the pickers, draw.
 * It calls layoutGrid/gridSvg/dimWindow (embedded before it) and valueToHex/formatValue/escapeXml.
 */
const PAGE_SCRIPT = String.raw`
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("gqa-data").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var cache = {};

  function halfToFloat(h) {
    var s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    if (e === 0) return s * f * Math.pow(2, -24);
    if (e === 31) return f ? NaN : s * Infinity;
    return s * (1 + f / 1024) * Math.pow(2, e - 15);
  }

  function decode(t) {
    var bin = atob(t.f16), n = bin.length / 2, out = new Float32Array(n);
    for (var i = 0; i < n; i++) {
      out[i] = halfToFloat(bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)) * t.scale;
    }
    return out;
  }

  function layerData(i) {
    if (!cache[i]) {
      var L = DATA.layers[i];
      cache[i] = { layer: L.layer, q: decode(L.q), qRope: decode(L.qRope), k: decode(L.k),
        kRope: decode(L.kRope), attn: decode(L.attn) };
    }
    return cache[i];
  }

  function choices() {
    var tok = $("token").value;
    return { layer: Number($("layer").value), token: tok === "all" ? "all" : Number(tok),
      dimStart: Number($("dim-start").value), dims: Number($("dims").value), rope: $("rope").value, show: $("show").value,
      attnMode: $("attn-mode").value };
  }

  function drawGrid(ld, ch) {
    var cap = { model: DATA.model, revision: DATA.revision, layer: ld.layer,
      tokenIds: DATA.tokenIds, tokenTexts: DATA.tokenTexts, T: DATA.T, H: DATA.H, KV: DATA.KV,
      HD: DATA.HD, q: ld.q, qRope: ld.qRope, k: ld.k,
      kRope: ld.kRope, v: ld.k };
    var opts = { token: ch.token, dims: ch.dims, dimStart: ch.dimStart, rope: ch.rope,
      show: ch.show };
    $("grid").innerHTML = gridSvg(layoutGrid(cap, opts)).replace(/^<\?xml[^>]*>\s*/, "");
  }

  function tokenName(t) { return t + " \u201c" + visibleToken(DATA.tokenTexts[t], 16) + "\u201d"; }

  function attnCell(ld, h, rows, x0, y0, s) {
    var T = DATA.T, out = [];
    for (var i = 0; i < rows.length; i++) {
      var t = rows[i];
      for (var j = 0; j < T; j++) {
        var p = ld.attn[(h * T + t) * T + j];
        var tip = "Q head " + h + " \u00b7 query token " + tokenName(t) + " \u00b7 key token " +
          tokenName(j) + " \u00b7 p = " + formatValue(p) + (j > t ? " (masked: after the query)" : "");
        out.push('<rect class="p" data-h="' + h + '" data-t="' + t + '" data-j="' + j +
          '" data-v="' + p + '" x="' + (x0 + j * s) + '" y="' + (y0 + i * s) + '" width="' + s +
          '" height="' + s + '" fill="' + (j > t ? "#eeeeee" : valueToHex(p, 1)) + '"><title>' +
          escapeXml(tip) + "</title></rect>");
      }
    }
    out.push('<rect x="' + x0 + '" y="' + y0 + '" width="' + T * s + '" height="' +
      rows.length * s + '" fill="none" stroke="#999" stroke-width="0.6"/>');
    return out.join("");
  }

  function attnLegend(x, y) {
    var out = ['<text x="' + x + '" y="' + (y - 4) + '" font-size="11">attention weight (same ' +
      'diverging scale as the keys, clipped at 1): 0 \u2192 1</text>'];
    for (var i = 0; i <= 20; i++) {
      out.push('<rect x="' + (x + i * 12) + '" y="' + y + '" width="12" height="12" fill="' +
        valueToHex(i / 20, 1) + '"><title>p = ' + i / 20 + "</title></rect>");
    }
    out.push('<text x="' + x + '" y="' + (y + 24) + '" font-size="11">0</text>');
    out.push('<text x="' + (x + 252) + '" y="' + (y + 24) + '" font-size="11" ' +
      'text-anchor="end">1</text>');
    return out.join("");
  }

  function drawAttention(ld, ch) {
    var T = DATA.T, H = DATA.H, KV = DATA.KV, r = H / KV;
    var rowMode = ch.attnMode === "row" && ch.token !== "all";
    var rows = [];
    if (rowMode) rows.push(ch.token); else for (var t = 0; t < T; t++) rows.push(t);
    var s = Math.max(3, Math.min(rowMode ? 16 : 18, Math.floor((rowMode ? 260 : 150) / T)));
    var labelW = 86, gap = 16, cw = T * s, chH = rows.length * s, rowH = chH + 22;
    var out = [];
    for (var g = 0; g < KV; g++) {
      var y = 10 + g * (rowH + gap);
      out.push('<text x="0" y="' + (y + 16 + chH / 2) + '" font-size="12" font-weight="bold">' +
        "KV head " + g + "</text>");
      for (var jj = 0; jj < r; jj++) {
        var h = g * r + jj, x = labelW + jj * (cw + gap);
        out.push('<g class="attn-cell" id="attn-g' + g + "-h" + h + '"><text x="' + x + '" y="' +
          (y + 12) + '" font-size="11">Q head ' + h + "</text>" + attnCell(ld, h, rows, x, y + 16, s) +
          "</g>");
      }
    }
    var W = Math.max(labelW + r * (cw + gap), 360), Hgt = 10 + KV * (rowH + gap) + 40;
    out.push(attnLegend(labelW, Hgt - 28));
    $("attn").innerHTML = '<svg xmlns="http://www.w3.org/2000/svg" width="' + W + '" height="' +
      Hgt + '" font-family="sans-serif">' + out.join("") + "</svg>";
  }

  function drawSummary(ch) {
    var S = DATA.summary, W = 640, Hh = 220, left = 48, right = 150, top = 12, bottom = 36;
    var ys = [];
    S.forEach(function (p) { if (p.within !== null) ys.push(p.within); if (p.across !== null) ys.push(p.across); });
    var ymax = Math.max(0.05, Math.max.apply(null, ys.concat([0])) * 1.1);
    var x = function (i) { return left + (S.length === 1 ? 0.5 : i / (S.length - 1)) * (W - left - right); };
    var y = function (v) { return top + (1 - v / ymax) * (Hh - top - bottom); };
    var out = ['<line x1="' + left + '" y1="' + y(0) + '" x2="' + (W - right) + '" y2="' + y(0) +
      '" stroke="#999"/>', '<line x1="' + left + '" y1="' + top + '" x2="' + left + '" y2="' + y(0) +
      '" stroke="#999"/>'];
    [0, ymax / 2, ymax].forEach(function (v) {
      out.push('<text x="' + (left - 6) + '" y="' + (y(v) + 4) + '" font-size="11" text-anchor="end">' +
        v.toFixed(2) + "</text>");
    });
    var series = [["within", "#b2182b", "", "within a KV group"], ["across", "#2166ac", "5 4", "across groups"]];
    series.forEach(function (sr, k) {
      var pts = [];
      S.forEach(function (p, i) { if (p[sr[0]] !== null) pts.push(x(i) + "," + y(p[sr[0]])); });
      out.push('<polyline fill="none" stroke="' + sr[1] + '" stroke-width="2" stroke-dasharray="' +
        sr[2] + '" points="' + pts.join(" ") + '"/>');
      S.forEach(function (p, i) {
        if (p[sr[0]] === null) return;
        var on = i === ch.layer;
        out.push('<circle data-index="' + i + '" cx="' + x(i) + '" cy="' + y(p[sr[0]]) + '" r="' +
          (on ? 6 : 3.5) + '" fill="' + sr[1] + '"' + (on ? ' stroke="#000"' : "") + "><title>layer " +
          p.layer + ", " + sr[3] + ": " + p[sr[0]].toFixed(4) + "</title></circle>");
      });
      var ly = top + 14 + k * 20;
      out.push('<line x1="' + (W - right + 12) + '" y1="' + ly + '" x2="' + (W - right + 40) +
        '" y2="' + ly + '" stroke="' + sr[1] + '" stroke-width="2" stroke-dasharray="' + sr[2] + '"/>');
      out.push('<text x="' + (W - right + 46) + '" y="' + (ly + 4) + '" font-size="12">' + sr[3] + "</text>");
    });
    S.forEach(function (p, i) {
      if (S.length <= 16 || i % Math.ceil(S.length / 16) === 0) {
        out.push('<text x="' + x(i) + '" y="' + (Hh - bottom + 16) + '" font-size="11" ' +
          'text-anchor="middle">' + p.layer + "</text>");
      }
    });
    out.push('<text x="' + ((left + W - right) / 2) + '" y="' + (Hh - 4) + '" font-size="12" ' +
      'text-anchor="middle">layer</text>');
    $("summary").innerHTML = '<svg xmlns="http://www.w3.org/2000/svg" width="' + W + '" height="' +
      Hh + '" font-family="sans-serif">' + out.join("") + "</svg>";
  }

  function update() {
    var ch = choices(), ld = layerData(ch.layer);
    var win = dimWindow(ch.dimStart, ch.dims, DATA.HD);
    $("dims-out").textContent = win;
    $("dim-start").setAttribute("aria-valuetext", "dims " + win);
    $("dims").setAttribute("aria-valuetext", ch.dims + " dims: " + win);
    $("attn-mode").disabled = ch.token === "all";
    drawGrid(ld, ch);
    drawAttention(ld, ch);
    drawSummary(ch);
    document.body.setAttribute("data-layer", String(ld.layer));
  }

  ["layer", "token", "dim-start", "dims", "rope", "show", "attn-mode"].forEach(function (id) {
    $(id).addEventListener("input", update);
    $(id).addEventListener("change", update);
  });
  $("summary").addEventListener("click", function (e) {
    var i = e.target && e.target.getAttribute && e.target.getAttribute("data-index");
    if (i !== null && i !== undefined) { $("layer").value = i; update(); }
  });
  document.addEventListener("mouseover", function (e) {
    var t = e.target && e.target.querySelector && e.target.querySelector("title");
    if (t && (e.target.tagName === "rect" || e.target.tagName === "circle")) $("hover").textContent = t.textContent;
  });
  update();
})();
`;
