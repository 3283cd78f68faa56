/**
 * `deno task demo`: the whole pipeline offline, on the tiny Llama-3.1-shaped model that
 * scripts/make_tiny_model.ts generates (32 query heads, 8 KV heads: the real 8 × 4 grid).
 * No network, no token. Extra arguments go to the viz command, e.g.
 * `deno task demo --show qk --token all`.
 * @module
 */
import { relative } from "node:path";
import { makeTinyModel } from "./make_tiny_model.ts";
import { main } from "./viz.ts";

const { dir, generated } = await makeTinyModel();
if (generated) console.error(`generated the tiny model in ${dir}`);
const args = Deno.args.includes("--layer") ? [] : ["--layer", "2"];
// The output is named like the real model's: tiny-llama_layer_2_gqa_keys.svg
Deno.exit(await main(["--model", relative(Deno.cwd(), dir) || ".", ...args, ...Deno.args]));
