/**
 * The CLI's many-layer and output-format features: `--layer N|A-B|all`, `--out` .html (the
 * explorer), .png (resvg, bundled font) and .svg with a range, and `--save-tensors` for a
 * sweep. The explorer's behaviour in a browser is tested in explorer_browser_test.ts.
 */
import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { join } from "node:path";
import { defaultOutName } from "../scripts/viz.ts";
import { parseLayerSpec } from "../scripts/_args.ts";
import { makeTinyModel } from "../scripts/make_tiny_model.ts";
import { headerLength, parseHeader } from "../model/safetensors.ts";
import { captureLayer } from "../model/capture.ts";
import { GqaError } from "../errors.ts";
import { gpuTest } from "./_helpers.ts";
import { cli } from "./_cli.ts";
import { darkPixels, decodePng, distinctColours } from "./_png.ts";

Deno.test("parseLayerSpec() reads N, A-B and all, and refuses the rest as bad input", () => {
  assertEquals(parseLayerSpec("5"), [5]);
  assertEquals(parseLayerSpec(" 2-4 "), [2, 3, 4]);
  assertEquals(parseLayerSpec("3-3"), [3]);
  assertEquals(parseLayerSpec("all"), "all");
  for (const bad of ["-1", "4-2", "x", "1-", "1.5", "1,2", ""]) {
    throws(
      () => parseLayerSpec(bad),
      (e) => e instanceof GqaError && e.code === "bad-input" && e.message.includes("--layer"),
      bad,
    );
  }
});

Deno.test("defaultOutName() names a range and all layers", () => {
  assertEquals(defaultOutName("a/tiny", [1, 2, 3]), "tiny_layers_1-3_gqa_keys.svg");
  assertEquals(defaultOutName("a/tiny", "all"), "tiny_layers_all_gqa_keys.svg");
  assertEquals(defaultOutName("a/tiny", [4]), "tiny_layer_4_gqa_keys.svg");
});

gpuTest(
  "viz --layer 1-3 --out x.html writes the explorer and every layer's tensors with `layers` metadata",
  async (gpu) => {
    const { dir } = await makeTinyModel();
    const tmp = await Deno.makeTempDir();
    const html = join(tmp, "x.html"), st = join(tmp, "t.safetensors");
    const ids = "752,72,101,108";
    const r = await cli([
      "--model",
      dir,
      "--layer",
      "1-3",
      "--token-ids",
      ids,
      "--out",
      html,
      "--save-tensors",
      st,
      "--quiet",
    ]);
    assertEquals(r.code, 0, r.err);
    const page = await Deno.readTextFile(html);
    assert(page.startsWith("<!DOCTYPE html>"));
    assert(!/\b(src|href)=["']?(https?:)?\/\//.test(page), "nothing from the network");
    for (const l of [1, 2, 3]) assert(page.includes(`>layer ${l}</option>`), `layer ${l} picker`);

    const bytes = await Deno.readFile(st);
    const n = headerLength(bytes.subarray(0, 8), { file: st, fileSize: bytes.byteLength });
    const h = parseHeader(bytes.subarray(8, 8 + n), { file: st, fileSize: bytes.byteLength });
    assertEquals(h.metadata.layers, "[1,2,3]");
    assertEquals(h.tensors.size, 15);
    const cap = await captureLayer({
      model: dir,
      layer: 2,
      tokenIds: ids.split(",").map(Number),
      gpu,
      progress: false,
    });
    for (const [name, want] of [["k_proj", cap.k], ["attn_weights", cap.attn]] as const) {
      const t = h.tensors.get(`model.layers.2.self_attn.${name}`)!;
      assertEquals(
        Array.from(new Float32Array(bytes.slice(t.begin, t.end).buffer)),
        Array.from(want),
        name,
      );
    }
    await Deno.remove(tmp, { recursive: true });
  },
);

gpuTest(
  "viz --layer all --out x.png rasterises the deepest layer's grid at 2× with readable text",
  async () => {
    const { dir } = await makeTinyModel();
    const tmp = await Deno.makeTempDir();
    const png = join(tmp, "x.png"), svg = join(tmp, "x.svg");
    const args = ["--model", dir, "--layer", "all", "--token-ids", "752,72,101", "--quiet"];
    assertEquals((await cli([...args, "--out", png])).code, 0);
    assertEquals((await cli([...args, "--out", svg])).code, 0);
    const text = await Deno.readTextFile(svg);
    assert(text.includes("layer 3"), "SVG with a range draws the deepest layer");
    const width = Number(/<svg[^>]* width="([\d.]+)"/.exec(text)![1]);
    const img = decodePng(await Deno.readFile(png));
    assertEquals(img.width, Math.round(2 * width));
    assert(distinctColours(img) > 50, `${distinctColours(img)} colours`);
    // The title's glyphs: dark pixels in the header band (no squares there, background white).
    const title = /<text class="title" x="([\d.]+)" y="([\d.]+)"/.exec(text)!;
    const [tx, ty] = [Number(title[1]), Number(title[2])];
    const box = { x0: 2 * tx, y0: 2 * (ty - 14), x1: 2 * (tx + 300), y1: 2 * (ty + 3) };
    assert(darkPixels(img, box) > 500, `${darkPixels(img, box)} text pixels in the title`);
    await Deno.remove(tmp, { recursive: true });
  },
);
