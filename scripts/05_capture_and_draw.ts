/**
 * Step 5: the whole pipeline through the public API: capture layer L's Q/K/V for a prompt
 * (reading only the bytes that layer needs) and draw the GQA grid into the repository's
 * gitignored out/ folder.
 *
 *   deno run -A scripts/05_capture_and_draw.ts [--model DIR|ID] [--layer N] [--token-ids A,B,...]
 *
 * `--token-ids` runs those ids instead of the prompt "Hello world", for a model without
 * tokenizer.json.
 * @module
 */
import { captureLayer, renderGqaGrid, writeFileAtomic } from "../mod.ts";
import { outPath, tutorial } from "./_tutorial.ts";

const usage =
  "deno run -A scripts/05_capture_and_draw.ts [--model DIR|ID] [--layer N] [--token-ids A,B,...]";

await tutorial({ usage, layer: 2, tokenIds: true }, async ({ model, layer, tokenIds }) => {
  const cap = await captureLayer({
    model,
    layer,
    ...(tokenIds ? { tokenIds } : { prompt: "Hello world" }),
    log: console.log,
  });
  console.log(`tokens: ${cap.tokenTexts.map((t) => JSON.stringify(t)).join(" ")}`);

  // K of token 0 as it leaves k_proj: (T, KV*HD), so KV head g is k[g*HD .. (g+1)*HD).
  const group = cap.H / cap.KV;
  for (const h of [0, 1, group]) {
    const g = Math.floor(h / group); // the GQA mapping: query head h reads KV head h / (H/KV)
    const kg = cap.k.subarray(g * cap.HD, g * cap.HD + 4);
    console.log(
      `query head ${h} reads KV head ${g}: K[0, ${g}, :4] = ${
        Array.from(kg, (v) => v.toFixed(3)).join(" ")
      }`,
    );
  }

  const out = await outPath(`step5_layer_${layer}.svg`);
  await writeFileAtomic(
    out.path,
    renderGqaGrid(cap, { token: 0, dims: 16, rope: "pre", show: "qk" }),
    "SVG",
  );
  console.log(`wrote ${out.shown}`);
});
