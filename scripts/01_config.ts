/**
 * Step 1: what the model looks like. config.json gives every shape the rest needs, and the
 * GQA mapping follows from two numbers: H query heads, KV key/value heads.
 *
 *   deno run -A scripts/01_config.ts [--model meta-llama/Meta-Llama-3-8B]
 * @module
 */
import { openSource } from "../model/source/mod.ts";
import { parseConfigText } from "../model/config.ts";
import { tutorial } from "./_tutorial.ts";

await tutorial(
  { usage: "deno run -A scripts/01_config.ts [--model DIR|ID]" },
  async ({ model }) => {
    const src = await openSource({ model });
    const cfg = parseConfigText(await src.readText("config.json"), {
      where: `${model}/config.json`,
    });

    console.log(`${model}: ${cfg.architecture}, ${cfg.layers} layers`);
    console.log(`  D  = ${cfg.D}   model width (hidden_size)`);
    console.log(`  H  = ${cfg.H}   query heads`);
    console.log(`  KV = ${cfg.KV}   key/value heads`);
    console.log(`  HD = ${cfg.HD}   head dimension`);
    console.log(`  I  = ${cfg.I}   MLP width`);
    console.log(
      `  RoPE theta ${cfg.rope.theta}${
        cfg.rope.scaling ? ", llama3 scaling ×" + cfg.rope.scaling.factor : ""
      }`,
    );

    // GQA: H / KV query heads share each KV head. Query head h reads KV head ⌊h / (H/KV)⌋,
    // exactly transformers' repeat_kv: no copy of K is made, only an index is computed.
    const group = cfg.H / cfg.KV;
    console.log(`\n${group} query heads share each KV head:`);
    for (let g = 0; g < cfg.KV; g++) {
      const heads = Array.from({ length: group }, (_, j) => g * group + j);
      console.log(`  KV head ${g} ← query heads ${heads.join(", ")}`);
    }

    // What that saves: the K/V cache stores KV heads, not H.
    const perToken = (heads: number) => 2 * heads * cfg.HD * cfg.layers * 2; // K and V, BF16
    console.log(
      `\nK/V cache per token: ${perToken(cfg.KV)} bytes with GQA, ${perToken(cfg.H)} with one ` +
        `KV head per query head (${group}× more).`,
    );
  },
);
