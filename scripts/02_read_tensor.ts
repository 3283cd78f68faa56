/**
 * Step 2: find one tensor in a sharded checkpoint and read just its bytes.
 *
 * A safetensors file is an 8-byte length n, n bytes of JSON describing every tensor
 * (dtype, shape, byte offsets), then the raw data. So the headers (a few kB) tell us where
 * each tensor lives, and a range read fetches exactly one tensor, or one row of it.
 *
 *   deno run -A scripts/02_read_tensor.ts [--model DIR|ID]
 * @module
 */
import { openSource } from "../model/source/mod.ts";
import { loadTensorIndex } from "../model/tensors.ts";
import { decodeWeights, type WeightDtype } from "../kernels/dtype.ts";
import { tutorial } from "./_tutorial.ts";

await tutorial(
  { usage: "deno run -A scripts/02_read_tensor.ts [--model DIR|ID]" },
  async ({ model }) => {
    const src = await openSource({ model });
    const tensors = await loadTensorIndex(src); // reads the index and each shard's header only
    const headerBytes = src.stats.bytesFetched;
    const shards = new Set([...tensors.values()].map((t) => t.file));
    console.log(
      `${tensors.size} tensors in ${shards.size} shard(s); headers took ${headerBytes} bytes`,
    );

    const name = "model.layers.0.self_attn.k_proj.weight";
    const t = tensors.get(name)!;
    console.log(`\n${name}: ${t.dtype} [${t.shape}] in ${t.file}, bytes ${t.begin}..${t.end}`);

    // One row of k_proj = the weights that produce dimension 0 of KV head 0.
    const K = t.shape[1];
    const rowBytes = (t.end - t.begin) / t.shape[0];
    const before = src.stats.bytesFetched;
    const row = await src.read(t.file, t.begin, t.begin + rowBytes);
    const values = decodeWeights(row, t.dtype as WeightDtype); // (K) f32
    console.log(
      `row 0 (${K} values, ${rowBytes} bytes read): ${
        Array.from(values.slice(0, 6), (v) => v.toFixed(4)).join(" ")
      } ...`,
    );
    console.log(
      `read ${src.stats.bytesFetched - before} bytes for it, not the ${
        t.end - t.begin
      } of the tensor`,
    );
  },
);
