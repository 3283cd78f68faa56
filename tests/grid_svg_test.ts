/**
 * Tests for viz/grid_svg.ts (the GQA grid SVG) and viz/colors.ts (its colour scale).
 *
 * Each test builds a synthetic capture with seeded random Q/K (the seed is printed on
 * failure; set SEED to replay), renders it, parses the SVG with the strict little XML parser
 * below (well-formedness: one root, matched tags, quoted unique attributes, only the five
 * predefined or numeric entities, no characters XML forbids) and checks the picture through
 * the structure the module documents: data rects of class "k"/"q" inside
 * `<g class="cell" id="cell-g{g}-h{h}">`, each with a `<title>` tooltip
 * "KV head g · Q head h · [token t "…" · ]dim d · K = v", and labels as classed `<text>`.
 * The layout model (viz/layout.ts) is tested for what its later users rely on: the SVG is
 * exactly its writing out (a pinned hash), it is plain data, and its functions run the same
 * when embedded by their source text.
 * @module
 */
import assert from "node:assert/strict";
import { GqaError } from "../errors.ts";
import {
  divergingHex,
  formatTick,
  NAN_HEX,
  niceTicks,
  percentileAbs,
  valueToHex,
} from "../viz/colors.ts";
import {
  escapeXml,
  type GridCapture,
  type GridOptions,
  gridSvg,
  renderGqaGrid,
  sharingLegend,
  visibleToken,
} from "../viz/grid_svg.ts";
import { GRID_LAYOUT_FUNCTIONS, type GridLayout, gridProblem, layoutGrid } from "../viz/layout.ts";

// ---------------------------------------------------------------------------------------
// Seeded data (mulberry32 + Box-Muller; kept here so this GPU-free test does not import
// kernels/gpu.ts through tests/_helpers.ts)

function seedFromEnv(): number {
  const env = Deno.env.get("SEED");
  return env ? Number(env) : (Math.random() * 2 ** 32) >>> 0;
}

function normals(seed: number, n: number): Float32Array {
  let s = seed >>> 0;
  const next = () => {
    let t = (s = (s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a[i] = Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
  }
  return a;
}

/** A synthetic capture: Q, K, K-after-RoPE and V all N(0, 1), with one K outlier of 40. */
function makeCapture(
  a: { T: number; H: number; KV: number; HD: number; seed: number; texts?: string[] },
): GridCapture {
  const { T, H, KV, HD, seed } = a;
  const k = normals(seed, T * KV * HD);
  k[1 * HD + 2] = 40; // token 0, KV head 1, dim 2: far beyond the 99th percentile
  return {
    model: "test/tiny-llama",
    revision: "0123456789abcdef0123456789abcdef01234567",
    layer: 3,
    tokenIds: Array.from({ length: T }, (_, t) => 1000 + t),
    tokenTexts: a.texts ?? Array.from({ length: T }, (_, t) => (t === 0 ? "<s>" : ` w${t}`)),
    T,
    H,
    KV,
    HD,
    q: normals(seed + 1, T * H * HD),
    k,
    kRope: normals(seed + 2, T * KV * HD),
    v: normals(seed + 3, T * KV * HD),
  };
}

/** Runs `fn` with a fresh seed and names the seed in any failure. */
function seeded(name: string, fn: (seed: number) => void): void {
  Deno.test(name, () => {
    const seed = seedFromEnv();
    try {
      fn(seed);
    } catch (e) {
      if (e instanceof Error) e.message = `[SEED=${seed}] ${e.message}`;
      throw e;
    }
  });
}

// ---------------------------------------------------------------------------------------
// A strict, tiny XML parser (enough for well-formedness and for querying our SVG)

interface El {
  name: string;
  attrs: Record<string, string>;
  children: El[];
  text: string; // concatenated direct text content, entities decoded
  parent?: El;
}

const NAME = /^[A-Za-z_:][-A-Za-z0-9_:.]*/;

function decodeEntities(s: string, where: number): string {
  if (/[<]/.test(s)) throw new Error(`XML: '<' in text or attribute near offset ${where}`);
  return s.replace(/&([^;]*);?/g, (m, body: string) => {
    if (!m.endsWith(";")) throw new Error(`XML: unterminated entity near offset ${where}`);
    const named: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };
    if (body in named) return named[body];
    const num = /^#(\d+)$/.exec(body) ?? /^#x([0-9a-fA-F]+)$/.exec(body);
    if (num) return String.fromCodePoint(parseInt(num[1], body[1] === "x" ? 16 : 10));
    throw new Error(`XML: unknown entity &${body}; near offset ${where}`);
  });
}

/** Parses `src` as XML 1.0 (no DTD), throwing on anything not well-formed. Returns the root. */
function parseXml(src: string): El {
  // Characters XML 1.0 forbids: C0 controls other than tab/newline/return, lone surrogates,
  // U+FFFE and U+FFFF.
  for (let i = 0; i < src.length; i++) {
    const c = src.charCodeAt(i);
    if (c < 0x20 && c !== 9 && c !== 10 && c !== 13) throw new Error(`XML: char ${c} at ${i}`);
    if (c === 0xfffe || c === 0xffff) throw new Error(`XML: non-character at ${i}`);
    if (c >= 0xd800 && c < 0xdc00) {
      const d = src.charCodeAt(i + 1);
      if (!(d >= 0xdc00 && d < 0xe000)) throw new Error(`XML: lone surrogate at ${i}`);
      i++;
    } else if (c >= 0xdc00 && c < 0xe000) throw new Error(`XML: lone surrogate at ${i}`);
  }
  let i = 0;
  if (src.startsWith("<?xml")) {
    const end = src.indexOf("?>");
    if (end < 0) throw new Error("XML: unterminated declaration");
    i = end + 2;
  }
  const stack: El[] = [];
  let root: El | undefined;
  while (i < src.length) {
    if (src.startsWith("<!--", i)) {
      const end = src.indexOf("-->", i);
      if (end < 0) throw new Error("XML: unterminated comment");
      i = end + 3;
    } else if (src.startsWith("</", i)) {
      const m = NAME.exec(src.slice(i + 2));
      const top = stack.pop();
      if (!m || !top || top.name !== m[0]) {
        throw new Error(`XML: </${m?.[0]}> does not close <${top?.name}> at ${i}`);
      }
      i += 2 + m[0].length;
      while (/\s/.test(src[i])) i++;
      if (src[i] !== ">") throw new Error(`XML: bad end tag at ${i}`);
      i++;
    } else if (src[i] === "<") {
      const m = NAME.exec(src.slice(i + 1));
      if (!m) throw new Error(`XML: bad tag name at ${i}`);
      const el: El = { name: m[0], attrs: {}, children: [], text: "", parent: stack.at(-1) };
      i += 1 + m[0].length;
      for (;;) {
        const ws = /^\s*/.exec(src.slice(i))![0].length;
        i += ws;
        if (src.startsWith("/>", i) || src[i] === ">") break;
        if (!ws) throw new Error(`XML: attributes must be separated by space at ${i}`);
        const a = /^([A-Za-z_:][-A-Za-z0-9_:.]*)\s*=\s*("([^"]*)"|'([^']*)')/.exec(src.slice(i));
        if (!a) throw new Error(`XML: bad attribute at ${i}: ${src.slice(i, i + 30)}`);
        if (a[1] in el.attrs) throw new Error(`XML: duplicate attribute ${a[1]} at ${i}`);
        el.attrs[a[1]] = decodeEntities(a[3] ?? a[4], i);
        i += a[0].length;
      }
      if (stack.length) stack.at(-1)!.children.push(el);
      else if (root) throw new Error(`XML: second root element <${el.name}> at ${i}`);
      else root = el;
      if (src.startsWith("/>", i)) i += 2;
      else {
        i++;
        stack.push(el);
      }
    } else {
      const end = src.indexOf("<", i) < 0 ? src.length : src.indexOf("<", i);
      const raw = src.slice(i, end);
      if (raw.includes("]]>")) throw new Error(`XML: ']]>' in text at ${i}`);
      if (stack.length) stack.at(-1)!.text += decodeEntities(raw, i);
      else if (raw.trim()) throw new Error(`XML: text outside the root at ${i}`);
      i = end;
    }
  }
  if (stack.length) throw new Error(`XML: <${stack.at(-1)!.name}> is never closed`);
  if (!root) throw new Error("XML: no root element");
  return root;
}

function all(el: El, pred: (e: El) => boolean, out: El[] = []): El[] {
  if (pred(el)) out.push(el);
  for (const c of el.children) all(c, pred, out);
  return out;
}
const byClass = (root: El, name: string, cls: string) =>
  all(root, (e) => e.name === name && (e.attrs.class ?? "").split(" ").includes(cls));
const num = (e: El, a: string) => Number(e.attrs[a]);
const tooltip = (e: El) => e.children.find((c) => c.name === "title")?.text ?? "";

interface DataRect {
  g: number;
  h: number;
  t?: number;
  d: number;
  v: number;
  kind: "k" | "q";
  x: number;
  y: number;
  fill: string;
  cellId: string;
}

/** All data rects of one kind, with their tooltip parsed and their enclosing cell's id. */
function dataRects(root: El, kind: "k" | "q"): DataRect[] {
  const re = new RegExp(
    `^KV head (\\d+) · Q head (\\d+) · (?:token (\\d+) "[^]*" · )?dim (\\d+) · ` +
      `${kind.toUpperCase()} = (\\S+)$`,
  );
  return byClass(root, "rect", kind).map((e) => {
    const m = re.exec(tooltip(e));
    assert.ok(m, `tooltip of a ${kind} rect does not parse: ${JSON.stringify(tooltip(e))}`);
    assert.equal(e.parent?.attrs.class, "cell", "a data rect must sit in its cell group");
    return {
      g: +m[1],
      h: +m[2],
      t: m[3] === undefined ? undefined : +m[3],
      d: +m[4],
      v: Number(m[5]),
      kind,
      x: num(e, "x"),
      y: num(e, "y"),
      fill: e.attrs.fill,
      cellId: e.parent!.attrs.id,
    };
  });
}

const shown = (v: number) => Number(v.toPrecision(4)); // what a tooltip prints
const kOf = (c: GridCapture, arr: Float32Array, t: number, g: number, d: number) =>
  arr[t * c.KV * c.HD + g * c.HD + d];
const qOf = (c: GridCapture, t: number, h: number, d: number) => c.q[t * c.H * c.HD + h * c.HD + d];

/** The p-th percentile of |v| with linear interpolation, written independently of colors.ts. */
function refPercentile(values: number[], p: number): number {
  const a = values.map(Math.abs).sort((x, y) => x - y);
  const pos = p / 100 * (a.length - 1);
  const lo = Math.floor(pos);
  return lo + 1 < a.length ? a[lo] * (1 - (pos - lo)) + a[lo + 1] * (pos - lo) : a[lo];
}

const BASE: GridOptions = { token: 2, dims: 10, rope: "pre", show: "k" };
const LLAMA = { T: 5, H: 32, KV: 8, HD: 16 };

// ---------------------------------------------------------------------------------------
// The grid

seeded("renderGqaGrid() output is a well-formed, self-contained SVG 1.1 document", (seed) => {
  const svg = renderGqaGrid(makeCapture({ ...LLAMA, seed }), BASE);
  const root = parseXml(svg);
  assert.equal(root.name, "svg");
  assert.equal(root.attrs.xmlns, "http://www.w3.org/2000/svg");
  assert.equal(root.attrs.version, "1.1");
  const [w, h] = [num(root, "width"), num(root, "height")];
  assert.ok(w > 200 && w < 3000 && h > 200 && h < 3000, `size ${w} x ${h}`);
  assert.equal(root.attrs.viewBox, `0 0 ${w} ${h}`);
  assert.match(root.attrs["font-family"], /^(sans-serif|serif|monospace)$/);
  // no external resources: no links, no imports, no URLs except the namespace and #ids
  assert.ok(!/href|@import|<image|<script|<foreignObject/.test(svg), "external reference");
  assert.deepEqual(svg.match(/https?:\/\/[^"]*/g), ["http://www.w3.org/2000/svg"]);
  for (const u of svg.match(/url\([^)]*\)/g) ?? []) assert.match(u, /^url\(#[-\w]+\)$/);
  // every text lies inside the canvas (left edge / baseline estimate)
  for (const t of all(root, (e) => e.name === "text")) {
    assert.ok(num(t, "x") >= 0 && num(t, "x") < w && num(t, "y") > 0 && num(t, "y") <= h);
  }
  assert.ok(svg.length < 200_000, `SVG is ${svg.length} bytes for 32 cells x 10 dims`);
});

seeded("renderGqaGrid() draws 32 cells x dims K rects in an 8 x 4 layout (H=32, KV=8)", (seed) => {
  const c = makeCapture({ ...LLAMA, seed });
  const root = parseXml(renderGqaGrid(c, BASE));
  const rects = dataRects(root, "k");
  assert.equal(rects.length, 32 * 10);
  assert.equal(dataRects(root, "q").length, 0, "no Q unless show = qk");
  const cells = byClass(root, "g", "cell");
  assert.equal(cells.length, 32);
  const box = new Map<string, { x0: number; y0: number; x1: number; y1: number; g: number }>();
  for (const r of rects) {
    assert.equal(r.cellId, `cell-g${r.g}-h${r.h}`);
    assert.equal(r.g, Math.floor(r.h / 4), `Q head ${r.h} must sit in the row of KV head h/4`);
    const b = box.get(r.cellId) ??
      { x0: Infinity, y0: Infinity, x1: -Infinity, y1: -Infinity, g: r.g };
    b.x0 = Math.min(b.x0, r.x);
    b.y0 = Math.min(b.y0, r.y);
    b.x1 = Math.max(b.x1, r.x);
    b.y1 = Math.max(b.y1, r.y);
    box.set(r.cellId, b);
  }
  for (const [id, n] of Object.entries(Object.groupBy(rects, (r) => r.cellId))) {
    assert.equal(n!.length, 10, `${id} has ${n!.length} rects`);
    // dims left to right, one row
    const xs = n!.toSorted((a, b) => a.d - b.d).map((r) => r.x);
    for (let d = 1; d < xs.length; d++) assert.ok(xs[d] > xs[d - 1], `${id}: dims out of order`);
    assert.equal(new Set(n!.map((r) => r.y)).size, 1, `${id}: one token, one row`);
  }
  // 8 distinct row tops ordered by g; 4 distinct column lefts ordered by j = h mod 4
  const rowY = new Map<number, Set<number>>(), colX = new Map<number, Set<number>>();
  for (const [id, b] of box) {
    const h = Number(/h(\d+)$/.exec(id)![1]);
    rowY.set(b.g, (rowY.get(b.g) ?? new Set()).add(b.y0));
    colX.set(h % 4, (colX.get(h % 4) ?? new Set()).add(b.x0));
  }
  assert.equal(rowY.size, 8);
  assert.equal(colX.size, 4);
  const ys = [...Array(8).keys()].map((g) => {
    assert.equal(rowY.get(g)!.size, 1, `cells of KV head ${g} are not in one row`);
    return [...rowY.get(g)!][0];
  });
  const xs = [...Array(4).keys()].map((j) => {
    assert.equal(colX.get(j)!.size, 1, `cells of column ${j} are not aligned`);
    return [...colX.get(j)!][0];
  });
  for (let i = 1; i < 8; i++) assert.ok(ys[i] > ys[i - 1], "rows must go down with g");
  for (let i = 1; i < 4; i++) assert.ok(xs[i] > xs[i - 1], "columns must go right with j");
  // cells do not overlap: the next column starts after the previous one's last rect
  const maxX = (j: number) =>
    Math.max(
      ...[...box.entries()].filter(([id]) => +/h(\d+)$/.exec(id)![1] % 4 === j).map(([, b]) =>
        b.x1
      ),
    );
  for (let j = 1; j < 4; j++) assert.ok(xs[j] > maxX(j - 1));
});

seeded("renderGqaGrid() labels rows 'KV head g' and cells 'Q head h' with h = g*4 + j", (seed) => {
  const root = parseXml(renderGqaGrid(makeCapture({ ...LLAMA, seed }), BASE));
  const kv = byClass(root, "text", "kv-label");
  assert.deepEqual(kv.map((e) => e.text), [...Array(8).keys()].map((g) => `KV head ${g}`));
  const rects = dataRects(root, "k");
  for (let g = 0; g < 8; g++) {
    // the row label's baseline lies within the row's vertical span
    const rowRects = rects.filter((r) => r.g === g);
    const top = Math.min(...rowRects.map((r) => r.y)) - 20;
    const bottom = Math.max(...rowRects.map((r) => r.y)) + 20;
    assert.ok(num(kv[g], "y") > top && num(kv[g], "y") < bottom, `KV head ${g} label misplaced`);
  }
  const ql = byClass(root, "text", "q-label");
  assert.equal(ql.length, 32);
  for (const e of ql) {
    const cell = e.parent!;
    const [, g, h] = /^cell-g(\d+)-h(\d+)$/.exec(cell.attrs.id)!.map(Number);
    assert.equal(e.text, `Q head ${h}`);
    assert.equal(g, Math.floor(h / 4));
    const cellRects = rects.filter((r) => r.h === h);
    assert.equal(num(e, "x"), Math.min(...cellRects.map((r) => r.x)), "label over its cell");
    assert.ok(num(e, "y") <= Math.min(...cellRects.map((r) => r.y)), "label above the data");
  }
  const text = all(root, (e) => e.name === "text").map((e) => e.text).join("\n");
  assert.match(text, /4 query heads share each KV head/);
  assert.match(text, /4× smaller/);
});

seeded("renderGqaGrid() shows the capture's K exactly and identically along each row", (seed) => {
  const c = makeCapture({ ...LLAMA, seed });
  for (const rope of ["pre", "post"] as const) {
    const arr = rope === "pre" ? c.k : c.kRope;
    const root = parseXml(renderGqaGrid(c, { ...BASE, rope }));
    const rects = dataRects(root, "k");
    for (const r of rects) {
      assert.equal(r.v, shown(kOf(c, arr, 2, r.g, r.d)), `${rope}: g=${r.g} h=${r.h} d=${r.d}`);
    }
    for (let g = 0; g < 8; g++) {
      const row = (j: number) =>
        rects.filter((r) => r.h === g * 4 + j).sort((a, b) => a.d - b.d)
          .map((r) => [r.v, r.fill].join());
      for (let j = 1; j < 4; j++) assert.deepEqual(row(j), row(0), `row ${g} differs at ${j}`);
    }
    const sub = byClass(root, "text", "subtitle")[0].text;
    assert.match(sub, rope === "pre" ? /k_proj \(pre-RoPE\)/ : /after RoPE/);
  }
  // pre and post really draw different tensors
  const pre = dataRects(parseXml(renderGqaGrid(c, BASE)), "k").map((r) => r.v);
  const post = dataRects(parseXml(renderGqaGrid(c, { ...BASE, rope: "post" })), "k").map((r) =>
    r.v
  );
  assert.notDeepEqual(pre, post);
});

seeded("renderGqaGrid() colours every cell on one scale clipped at the 99th percentile", (seed) => {
  const c = makeCapture({ ...LLAMA, seed });
  const opts: GridOptions = { ...BASE, token: 0 }; // token 0 holds the K outlier (40)
  const root = parseXml(renderGqaGrid(c, opts));
  const drawn: number[] = [];
  for (let g = 0; g < 8; g++) for (let d = 0; d < 10; d++) drawn.push(kOf(c, c.k, 0, g, d));
  const clip = refPercentile(drawn, 99);
  assert.ok(clip < 40, "the outlier must be clipped");
  const caption = byClass(root, "text", "colorbar-caption").map((e) => e.text).join(" ");
  const m = /clipped at the 99th percentile of \|K\| = ([\d.]+)/.exec(caption);
  assert.ok(m, `caption: ${caption}`);
  assert.equal(Number(m[1]), Number(clip.toPrecision(3)));
  for (const r of dataRects(root, "k")) {
    const exact = kOf(c, c.k, 0, r.g, r.d);
    assert.equal(r.fill, valueToHex(exact, clip), `fill of g=${r.g} d=${r.d}`);
    const [red, , blue] = [1, 3, 5].map((i) => parseInt(r.fill.slice(i, i + 2), 16));
    if (exact > 0.2 * clip) assert.ok(red > blue, `positive ${exact} must be red: ${r.fill}`);
    if (exact < -0.2 * clip) assert.ok(blue > red, `negative ${exact} must be blue: ${r.fill}`);
  }
  // the outlier takes the end colour
  const outlier = dataRects(root, "k").find((r) => r.g === 1 && r.d === 2)!;
  assert.equal(outlier.v, 40);
  assert.equal(outlier.fill, divergingHex(1));

  const other = parseXml(renderGqaGrid(c, { ...opts, clipPercentile: 90 }));
  const cap90 = byClass(other, "text", "colorbar-caption").map((e) => e.text).join(" ");
  assert.match(cap90, /clipped at the 90th percentile of \|K\| = /);
});

seeded("renderGqaGrid() draws a colour bar with symmetric tick values around 0", (seed) => {
  const root = parseXml(renderGqaGrid(makeCapture({ ...LLAMA, seed }), BASE));
  const bars = byClass(root, "g", "colorbar");
  assert.equal(bars.length, 1);
  const fill = byClass(bars[0], "rect", "colorbar-fill");
  assert.equal(fill.length, 1);
  assert.match(fill[0].attrs.fill, /^url\(#colorbar-gradient\)$/);
  const grad = all(root, (e) => e.name === "linearGradient" && e.attrs.id === "colorbar-gradient");
  assert.equal(grad.length, 1);
  const stops = grad[0].children.filter((e) => e.name === "stop");
  assert.ok(stops.length >= 3);
  assert.equal(stops[0].attrs["stop-color"], divergingHex(-1));
  assert.equal(stops.at(-1)!.attrs["stop-color"], divergingHex(1));
  const labels = byClass(bars[0], "text", "tick-label");
  const values = labels.map((e) => Number(e.text.replace("\u2212", "-")));
  assert.ok(values.length >= 3, `ticks: ${labels.map((e) => e.text)}`);
  assert.ok(values.includes(0));
  assert.deepEqual(values, values.toSorted((a, b) => a - b), "ticks ascend left to right");
  assert.deepEqual(values.map((v) => 0 - v || 0).reverse(), values, "ticks symmetric around 0");
  const xs = labels.map((e) => num(e, "x"));
  const x0 = num(fill[0], "x"), w = num(fill[0], "width");
  assert.ok(xs.every((x) => x >= x0 && x <= x0 + w), "ticks on the bar");
  const zeroX = xs[values.indexOf(0)];
  assert.ok(Math.abs(zeroX - (x0 + w / 2)) <= 0.1, "0 at the middle of the bar");
  assert.equal(byClass(bars[0], "line", "tick").length, labels.length);
});

seeded("renderGqaGrid() with show=qk adds each query head's own Q beside the shared K", (seed) => {
  const c = makeCapture({ ...LLAMA, seed });
  const root = parseXml(renderGqaGrid(c, { ...BASE, show: "qk" }));
  const ks = dataRects(root, "k"), qs = dataRects(root, "q");
  assert.equal(ks.length, 320);
  assert.equal(qs.length, 320);
  for (const r of qs) {
    assert.equal(r.cellId, `cell-g${Math.floor(r.h / 4)}-h${r.h}`);
    assert.equal(r.v, shown(qOf(c, 2, r.h, r.d)), `Q of head ${r.h} dim ${r.d}`);
  }
  for (const r of ks) assert.equal(r.v, shown(kOf(c, c.k, 2, r.g, r.d)));
  // Q differs between the query heads of a row (random data), K does not
  const qRow = (h: number) => qs.filter((r) => r.h === h).sort((a, b) => a.d - b.d).map((r) => r.v);
  assert.notDeepEqual(qRow(0), qRow(1));
  // K and Q strips of a cell are labelled and do not overlap
  const blockLabels = byClass(root, "text", "block-label").map((e) => e.text);
  assert.equal(blockLabels.filter((t) => t === "K").length, 32);
  assert.equal(blockLabels.filter((t) => t === "Q").length, 32);
  const kY = new Set(ks.filter((r) => r.h === 5).map((r) => r.y));
  const qY = new Set(qs.filter((r) => r.h === 5).map((r) => r.y));
  assert.ok([...qY].every((y) => !kY.has(y)));
  const caption = byClass(root, "text", "colorbar-caption").map((e) => e.text).join(" ");
  assert.match(caption, /\|K\| and \|Q\|/);
});

seeded(
  "renderGqaGrid() with token=all draws T x dims rects per cell, tokens top to bottom",
  (seed) => {
    const c = makeCapture({ ...LLAMA, seed });
    for (const show of ["k", "qk"] as const) {
      const root = parseXml(renderGqaGrid(c, { ...BASE, token: "all", show }));
      const kinds = show === "k" ? ["k"] as const : ["k", "q"] as const;
      for (const kind of kinds) {
        const rects = dataRects(root, kind);
        assert.equal(rects.length, 32 * 5 * 10, `${show}/${kind}`);
        for (const [id, n] of Object.entries(Object.groupBy(rects, (r) => r.cellId))) {
          assert.equal(n!.length, 5 * 10, id);
          const yByT = [...Array(5).keys()].map((t) =>
            new Set(n!.filter((r) => r.t === t).map((r) => r.y))
          );
          for (let t = 0; t < 5; t++) assert.equal(yByT[t].size, 1, `${id}: token ${t} in one row`);
          const ys = yByT.map((s) => [...s][0]);
          for (let t = 1; t < 5; t++) assert.ok(ys[t] > ys[t - 1], `${id}: tokens top to bottom`);
        }
        for (const r of rects) {
          const want = kind === "k" ? kOf(c, c.k, r.t!, r.g, r.d) : qOf(c, r.t!, r.h, r.d);
          assert.equal(r.v, shown(want), `${kind} t=${r.t} g=${r.g} h=${r.h} d=${r.d}`);
        }
      }
      const title = byClass(root, "text", "title")[0].text;
      assert.match(title, /all 5 tokens/);
      assert.ok(byClass(root, "text", "token-label").length >= 8, "token labels beside rows");
    }
  },
);

seeded("renderGqaGrid() handles MHA (one column) and MQA (one row)", (seed) => {
  const mha = makeCapture({ T: 3, H: 6, KV: 6, HD: 8, seed });
  const r1 = parseXml(renderGqaGrid(mha, { token: 1, dims: 8, rope: "pre", show: "qk" }));
  const k1 = dataRects(r1, "k");
  assert.equal(k1.length, 6 * 8);
  assert.equal(new Set(k1.map((r) => r.x)).size, 8, "MHA: one column of cells");
  for (const r of k1) assert.equal(r.g, r.h);
  assert.deepEqual(
    byClass(r1, "text", "q-label").map((e) => e.text),
    [...Array(6).keys()].map((h) => `Q head ${h}`),
  );
  const t1 = all(r1, (e) => e.name === "text").map((e) => e.text).join(" ");
  assert.match(t1, /own KV head \(MHA/);
  assert.doesNotMatch(t1, /share each|identical along a row/);

  const mqa = makeCapture({ T: 3, H: 6, KV: 1, HD: 8, seed });
  const r2 = parseXml(renderGqaGrid(mqa, { token: 0, dims: 4, rope: "pre", show: "k" }));
  const k2 = dataRects(r2, "k");
  assert.equal(k2.length, 6 * 4);
  assert.equal(new Set(k2.map((r) => r.y)).size, 1, "MQA: one row of cells");
  assert.deepEqual(byClass(r2, "text", "kv-label").map((e) => e.text), ["KV head 0"]);
  const t2 = all(r2, (e) => e.name === "text").map((e) => e.text).join(" ");
  assert.match(t2, /All 6 query heads share one KV head \(MQA/);
  assert.match(t2, /6× smaller/);
});

seeded("renderGqaGrid() clamps dims to HD and says so", (seed) => {
  const c = makeCapture({ ...LLAMA, seed });
  const root = parseXml(renderGqaGrid(c, { ...BASE, dims: 20 }));
  assert.equal(dataRects(root, "k").length, 32 * 16);
  assert.match(byClass(root, "text", "subtitle")[0].text, /all 16 dims/);
  const sub10 = byClass(parseXml(renderGqaGrid(c, BASE)), "text", "subtitle")[0].text;
  assert.match(sub10, /first 10 of 16 dims/);
});

/** The dim-tick labels of the axis under the grid, as numbers, with their x. */
function dimTicks(root: El): { d: number; x: number }[] {
  return byClass(root, "text", "dim-tick").map((e) => ({ d: Number(e.text), x: num(e, "x") }));
}

seeded(
  "renderGqaGrid() with dimStart draws a window in the middle of the head: values, dims, labels",
  (seed) => {
    const c = makeCapture({ T: 5, H: 32, KV: 8, HD: 128, seed });
    const c0 = { ...c, qRope: normals(seed + 4, c.T * c.H * c.HD) };
    for (
      const [rope, show, token] of [["pre", "k", 2], ["post", "qk", 0], [
        "pre",
        "qk",
        "all",
      ]] as const
    ) {
      const opts: GridOptions = { token, dims: 20, dimStart: 64, rope, show };
      const root = parseXml(renderGqaGrid(c0, opts));
      const nT = token === "all" ? 5 : 1;
      const kArr = rope === "pre" ? c0.k : c0.kRope;
      const qArr = rope === "pre" ? c0.q : c0.qRope;
      const k = dataRects(root, "k"), q = dataRects(root, "q");
      assert.equal(k.length, 32 * 20 * nT);
      assert.equal(q.length, show === "qk" ? 32 * 20 * nT : 0);
      for (const r of [...k, ...q]) {
        assert.ok(r.d >= 64 && r.d <= 83, `dim ${r.d} outside the window 64–83`);
        const t = r.t ?? (token as number);
        const want = r.kind === "k"
          ? kOf(c0, kArr, t, r.g, r.d)
          : qArr[t * c0.H * c0.HD + r.h * c0.HD + r.d];
        assert.equal(r.v, shown(want), `${r.kind} t${t} g${r.g} h${r.h} d${r.d}`);
      }
      // dims left to right within a cell: the first dim of the window sits at the cell's left
      const cell0 = k.filter((r) => r.h === 0 && (r.t ?? token) === (token === "all" ? 0 : token));
      const byD = cell0.toSorted((a, b) => a.d - b.d);
      assert.deepEqual(byD.map((r) => r.d), [...Array(20).keys()].map((i) => 64 + i));
      for (let i = 1; i < byD.length; i++) assert.ok(byD[i].x > byD[i - 1].x, "dims out of order");
      // the axis names the real dims, starting at 64, each tick under its square
      const ticks = dimTicks(root);
      assert.ok(ticks.length >= 4, `ticks: ${JSON.stringify(ticks)}`);
      assert.ok(ticks.every((tk) => tk.d >= 64 && tk.d <= 83), JSON.stringify(ticks));
      assert.ok(ticks.some((tk) => tk.d === 64), "the first dim of the window is labelled");
      const cs = byD[1].x - byD[0].x;
      for (const tk of ticks.filter((tk) => tk.x < byD.at(-1)!.x + cs)) {
        const sq = byD.find((r) => r.d === tk.d)!;
        assert.ok(Math.abs(sq.x + cs / 2 - tk.x) < 0.01, `tick ${tk.d} is not under its square`);
      }
      const sub = byClass(root, "text", "subtitle")[0].text;
      assert.match(sub, /dims 64–83 of 128/);
      assert.doesNotMatch(sub, /first 20/);
    }
  },
);

seeded("renderGqaGrid() with dimStart scales colour over the window's values only", (seed) => {
  const c = makeCapture({ ...LLAMA, seed });
  c.k[1 * 16 + 9] = -55; // token 0, KV head 1, dim 9: inside the window 8–15 only
  const opts: GridOptions = { ...BASE, token: 0, dims: 8, dimStart: 8 };
  const root = parseXml(renderGqaGrid(c, opts));
  const drawn: number[] = [];
  for (let g = 0; g < 8; g++) for (let d = 8; d < 16; d++) drawn.push(kOf(c, c.k, 0, g, d));
  const clip = refPercentile(drawn, 99);
  const caption = byClass(root, "text", "colorbar-caption").map((e) => e.text).join(" ");
  const m = /percentile of \|K\| = ([\d.]+)/.exec(caption);
  assert.ok(m, caption);
  assert.equal(Number(m[1]), Number(clip.toPrecision(3)));
  for (const r of dataRects(root, "k")) {
    assert.equal(r.fill, valueToHex(kOf(c, c.k, 0, r.g, r.d), clip), `fill g${r.g} d${r.d}`);
  }
  // the K outlier at dim 2 (40) is outside the window and is not drawn
  assert.ok(!dataRects(root, "k").some((r) => r.v === 40));
});

seeded("renderGqaGrid() cuts a window that runs past HD at the last dim and says so", (seed) => {
  const c = makeCapture({ T: 5, H: 32, KV: 8, HD: 128, seed });
  const root = parseXml(renderGqaGrid(c, { ...BASE, dims: 20, dimStart: 120 }));
  const k = dataRects(root, "k");
  assert.equal(k.length, 32 * 8);
  assert.deepEqual([...new Set(k.map((r) => r.d))].sort((a, b) => a - b), [
    120,
    121,
    122,
    123,
    124,
    125,
    126,
    127,
  ]);
  for (const r of k) assert.equal(r.v, shown(kOf(c, c.k, 2, r.g, r.d)));
  assert.ok(dimTicks(root).every((tk) => tk.d >= 120 && tk.d <= 127));
  assert.equal(dimTicks(root)[0].d, 120);
  assert.match(byClass(root, "text", "subtitle")[0].text, /dims 120–127 of 128/);
  // the last dim alone
  const last = parseXml(renderGqaGrid(c, { ...BASE, dims: 5, dimStart: 127 }));
  assert.deepEqual(dataRects(last, "k").map((r) => r.d), Array(32).fill(127));
  assert.deepEqual(dimTicks(last).map((tk) => tk.d), [127, 127, 127, 127]); // one per column
  assert.match(byClass(last, "text", "subtitle")[0].text, /dim 127 of 128/);
  // the whole head from 0 is "all dims"; dimStart 0 is the default, byte for byte
  assert.equal(renderGqaGrid(c, { ...BASE, dimStart: 0 }), renderGqaGrid(c, BASE));
  const all = parseXml(renderGqaGrid(c, { ...BASE, dims: 128, dimStart: 0 }));
  assert.match(byClass(all, "text", "subtitle")[0].text, /all 128 dims/);
});

seeded("renderGqaGrid() escapes XML in token text and model name, showing whitespace", (seed) => {
  const texts = ['<&">', " the", "\n", "a\u0000b", "'x'"];
  const c = makeCapture({ ...LLAMA, seed, texts });
  c.model = "org/model<&>";
  for (let t = 0; t < 5; t++) {
    const svg = renderGqaGrid(c, { ...BASE, token: t });
    const root = parseXml(svg); // throws on a raw '<', '&' or NUL
    const title = byClass(root, "text", "title")[0].text;
    assert.ok(title.includes("org/model<&>"), title);
    assert.ok(title.includes(`token ${t} "${visibleToken(texts[t])}"`), title);
    assert.ok(!svg.includes('<&">'));
  }
  assert.equal(visibleToken(" the"), "\u2423the");
  assert.equal(visibleToken("\n"), "\u21b5");
  assert.equal(visibleToken("a\u0000b"), "a\u2400b");
  assert.equal(escapeXml(`<&"'>`), "&lt;&amp;&quot;&apos;&gt;");
  // token=all carries the texts in tooltips and row labels, escaped too
  parseXml(renderGqaGrid(c, { ...BASE, token: "all" }));
});

seeded("renderGqaGrid() is deterministic", (seed) => {
  const c = makeCapture({ ...LLAMA, seed });
  const opts: GridOptions = { token: "all", dims: 7, rope: "post", show: "qk" };
  assert.equal(renderGqaGrid(c, opts), renderGqaGrid(structuredClone(c), opts));
});

seeded("renderGqaGrid() keeps token=all with T=64 at a reasonable size", (seed) => {
  const c = makeCapture({ T: 64, H: 32, KV: 8, HD: 128, seed });
  const svg = renderGqaGrid(c, { token: "all", dims: 20, rope: "pre", show: "k" });
  const root = parseXml(svg);
  assert.equal(dataRects(root, "k").length, 32 * 64 * 20);
  const [w, h] = [num(root, "width"), num(root, "height")];
  assert.ok(w < 2000 && h < 2000, `${w} x ${h} px`);
  assert.ok(svg.length < 8_000_000, `${svg.length} bytes`);
});

Deno.test("renderGqaGrid() rejects bad options with GqaError('bad-input') naming the range", () => {
  const c = makeCapture({ ...LLAMA, seed: 7 });
  const bad: [Partial<Record<keyof GridOptions, unknown>>, RegExp][] = [
    [{ dims: 0 }, /dims .*whole number ≥ 1, got 0/],
    [{ dims: 2.5 }, /dims .*got 2\.5/],
    [{ dims: Number.NaN }, /dims/],
    [{ dimStart: -1 }, /dimStart must be a whole number in 0\.\.15 \(HD = 16 here\), got -1\./],
    [{ dimStart: 16 }, /dimStart .*0\.\.15.*got 16\./],
    [{ dimStart: 2.5 }, /dimStart .*got 2\.5\./],
    [{ dimStart: Number.NaN }, /dimStart .*got NaN\./],
    [{ dimStart: "4" }, /dimStart .*got "4"\./],
    [{ token: -1 }, /token .*-1 is out of range.*T = 5 tokens.*0\.\.4/],
    [{ token: 5 }, /token .*5 is out of range.*0\.\.4/],
    [{ token: 1.5 }, /token .*0\.\.4/],
    [{ token: "first" }, /token .*"first".*0\.\.4 or "all"/],
    [{ rope: "mid" }, /rope .*"pre".*"post".*got "mid"/],
    [{ show: "v" }, /show .*"k".*"qk".*got "v"/],
    [{ clipPercentile: 0 }, /clipPercentile .*\(0, 100\]/],
    [{ clipPercentile: 101 }, /clipPercentile .*101/],
  ];
  for (const [patch, re] of bad) {
    const opts = { ...BASE, ...patch } as GridOptions;
    assert.throws(() => renderGqaGrid(c, opts), (e: unknown) => {
      assert.ok(e instanceof GqaError, `${JSON.stringify(patch)}: ${e}`);
      assert.equal(e.code, "bad-input");
      assert.match(e.message, re);
      return true;
    });
  }
  const short = { ...c, k: c.k.subarray(1) };
  assert.throws(
    () => renderGqaGrid(short, BASE),
    (e: unknown) => e instanceof GqaError && /capture\.k has/.test(e.message),
  );
  const ragged = { ...c, KV: 7 };
  assert.throws(
    () => renderGqaGrid(ragged, BASE),
    (e: unknown) => e instanceof GqaError && /multiple of KV/.test(e.message),
  );
});

// ---------------------------------------------------------------------------------------
// The layout model (viz/layout.ts)

/** Option combinations over GQA, MHA and MQA shapes, for the pinned-output and embed tests. */
function layoutCases(): [GridCapture, GridOptions][] {
  const gqa = makeCapture({ ...LLAMA, seed: 20240611 });
  const mha = makeCapture({ T: 4, H: 6, KV: 6, HD: 10, seed: 99 });
  const mqa = makeCapture({
    T: 3,
    H: 5,
    KV: 1,
    HD: 9,
    seed: 5,
    texts: [" a&b", "<\n>", "\u00a0x"],
  });
  const withQRope = { ...gqa, qRope: normals(77, gqa.T * gqa.H * gqa.HD) };
  const nan = makeCapture({ T: 3, H: 4, KV: 2, HD: 8, seed: 15 });
  nan.k[3] = Number.NaN;
  nan.q[1] = Number.NaN;
  const cases: [GridCapture, GridOptions][] = [];
  for (const c of [gqa, mha, mqa, withQRope, nan]) {
    for (const token of [0, c.T - 1, "all"] as const) {
      for (const [rope, show] of [["pre", "k"], ["post", "qk"], ["pre", "qk"]] as const) {
        cases.push([c, { token, dims: token === "all" ? 7 : 20, rope, show }]);
      }
    }
  }
  cases.push([gqa, { token: 1, dims: 3, rope: "post", show: "k", clipPercentile: 100 }]);
  cases.push([mha, { token: "all", dims: 4, rope: "pre", show: "qk", clipPercentile: 99.5 }]);
  return cases;
}

Deno.test("renderGqaGrid() output is pinned: layout + SVG writer reproduce the pre-split bytes", async () => {
  // The hash of every case's SVG, recorded with the single-function renderer before it was
  // split into viz/layout.ts + viz/grid_svg.ts. Any change to the picture changes it: update
  // it only for an intended change to the drawing.
  const svgs = layoutCases().map(([c, o]) => renderGqaGrid(c, o)).join("\u0000");
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(svgs));
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(hex, "12979cc5ea88b48127eaa67d21d26d5649dea8b34a181e091190f6b8ab808998");
});

Deno.test("renderGqaGrid() with hover: false (a PNG) drops the caption's hover sentence, not a square", () => {
  const c = makeCapture({ T: 3, H: 8, KV: 2, HD: 16, seed: 7 });
  const opts: GridOptions = { token: 1, dims: 12, rope: "pre", show: "qk" };
  const svg = renderGqaGrid(c, opts), still = renderGqaGrid(c, { ...opts, hover: false });
  assert.ok(svg.includes("Hover a square for its exact value."));
  assert.ok(!still.includes("Hover"));
  // the data squares (value, colour, tooltip) are the same; only the caption's text reflows
  const squares = (x: string) => x.match(/<rect class="[kq]"[^>]*fill="[^"]*"><title>[^<]*/g);
  assert.equal(squares(still)?.length, 8 * 12 * 2); // H × dims × (K and Q)
  assert.deepEqual(
    squares(still)?.map((r) => r.replace(/ [xy]="\d+(\.\d+)?"/g, "")),
    squares(svg)?.map((r) => r.replace(/ [xy]="\d+(\.\d+)?"/g, "")),
  );
});

Deno.test("layoutGrid() is plain data that gridSvg() writes out as renderGqaGrid() does", () => {
  for (const [c, o] of layoutCases().slice(0, 9)) {
    const layout = layoutGrid(c, o);
    const copy: GridLayout = JSON.parse(JSON.stringify(layout));
    // JSON keeps everything but NaN values (null); the cases without NaN round-trip exactly
    const squares = layout.rows.flatMap((r) => r.cells.flatMap((x) => x.blocks))
      .flatMap((b) => b.squares);
    if (squares.every((s) => !Number.isNaN(s.value))) assert.deepEqual(copy, layout);
    assert.equal(gridSvg(copy), renderGqaGrid(c, o));
    const nT = o.token === "all" ? c.T : 1;
    assert.equal(squares.length, c.H * Math.min(o.dims, c.HD) * nT * (o.show === "qk" ? 2 : 1));
  }
});

Deno.test("layoutGrid() runs identically from its functions' source text (for an HTML page)", () => {
  const source = GRID_LAYOUT_FUNCTIONS.map(String).join("\n");
  // the same text a page would put in a <script>: no imports, no module state
  assert.ok(!/\bimport\b|\bexport\b/.test(source), "the embedded source must not import");
  const embedded = new Function(
    "capture",
    "opts",
    `${source}\nconst problem = gridProblem(capture, opts);\n` +
      `return problem === null ? layoutGrid(capture, opts) : problem;`,
  ) as (c: GridCapture, o: GridOptions) => GridLayout | string;
  for (const [c, o] of layoutCases()) {
    assert.deepEqual(embedded(c, o), layoutGrid(c, o), JSON.stringify(o));
  }
  // dims windows (not in layoutCases: those pin the bytes of the default, dimStart 0)
  for (const [c, o] of layoutCases().slice(0, 12)) {
    for (const dimStart of [3, c.HD - 2]) {
      const windowed = { ...o, dimStart };
      assert.deepEqual(embedded(c, windowed), layoutGrid(c, windowed), JSON.stringify(windowed));
    }
  }
  const c = makeCapture({ ...LLAMA, seed: 3 });
  const bad: GridOptions = { ...BASE, token: 9 };
  assert.equal(embedded(c, bad), gridProblem(c, bad));
  assert.match(gridProblem(c, bad)!, /token \(--token\) 9 is out of range/);
  assert.equal(gridProblem(c, BASE), null);
  const badStart: GridOptions = { ...BASE, dimStart: 16 };
  assert.equal(embedded(c, badStart), gridProblem(c, badStart));
  assert.match(gridProblem(c, badStart)!, /dimStart must be a whole number in 0\.\.15/);
});

// ---------------------------------------------------------------------------------------
// The colour scale

Deno.test("divergingHex() runs dark blue -> light centre -> dark red, clamped", () => {
  assert.equal(divergingHex(-1), "#053061");
  assert.equal(divergingHex(0), "#f7f7f7");
  assert.equal(divergingHex(1), "#67001f");
  assert.equal(divergingHex(-5), divergingHex(-1));
  assert.equal(divergingHex(5), divergingHex(1));
  assert.equal(divergingHex(Number.NaN), NAN_HEX);
  // luminance falls monotonically away from the centre on both sides
  const lum = (hex: string) => {
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  for (let i = 0; i < 50; i++) {
    const a = i / 50, b = (i + 1) / 50;
    assert.ok(lum(divergingHex(b)) <= lum(divergingHex(a)) + 0.5, `red side at ${a}`);
    assert.ok(lum(divergingHex(-b)) <= lum(divergingHex(-a)) + 0.5, `blue side at ${-a}`);
  }
  for (let s = -1; s <= 1; s += 0.01) assert.match(divergingHex(s), /^#[0-9a-f]{6}$/);
});

Deno.test("valueToHex() maps value/clip onto the scale and clips beyond ±clip", () => {
  assert.equal(valueToHex(0, 3), divergingHex(0));
  assert.equal(valueToHex(1.5, 3), divergingHex(0.5));
  assert.equal(valueToHex(-30, 3), divergingHex(-1));
  assert.equal(valueToHex(Infinity, 3), divergingHex(1));
  assert.equal(valueToHex(Number.NaN, 3), NAN_HEX);
});

Deno.test("percentileAbs() interpolates linearly and ignores non-finite values", () => {
  assert.equal(percentileAbs([1, -2, 3, -4, 5], 50), 3);
  assert.equal(percentileAbs([1, -2, 3, -4, 5], 100), 5);
  assert.equal(percentileAbs([1, -2, 3, -4, 5], 75), 4);
  assert.equal(percentileAbs([0, 10], 99), 9.9);
  assert.equal(percentileAbs([Number.NaN, -2, Infinity], 99), 2);
  assert.equal(percentileAbs([], 99), 0);
});

Deno.test("niceTicks() gives symmetric 1-2-5 steps inside ±clip including 0", () => {
  assert.deepEqual(niceTicks(3.21, 3), { step: 1, ticks: [-3, -2, -1, 0, 1, 2, 3] });
  for (const clip of [0.0123, 0.9, 1, 2.29, 5.5, 9.9, 41, 1234]) {
    const { step, ticks } = niceTicks(clip, 2);
    assert.ok(ticks.includes(0) && ticks.length >= 3 && ticks.length <= 7, `${clip}: ${ticks}`);
    assert.ok(ticks.every((t) => Math.abs(t) <= clip + 1e-12));
    assert.match(step.toExponential(), /^[125]e/);
  }
  assert.equal(formatTick(-1.5, 0.5), "\u22121.5");
  assert.equal(formatTick(0, 0.5), "0");
  assert.equal(formatTick(2, 1), "2");
});

Deno.test("sharingLegend() words GQA, MHA and MQA from the shapes", () => {
  assert.match(sharingLegend(32, 8), /^4 query heads share each KV head.*4× smaller/);
  assert.match(sharingLegend(8, 8), /own KV head \(MHA/);
  assert.match(sharingLegend(8, 1), /^All 8 query heads share one KV head \(MQA.*8× smaller/);
});
