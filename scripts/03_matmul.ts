/**
 * Step 3: one projection on the GPU, checked against the CPU.
 *
 * K = X · W_kᵀ: X is (T, D) activations, W_k is k_proj's (KV·HD, D) weight exactly as
 * stored (BF16 here: two values per u32, unpacked inside the kernel), K is (T, KV·HD).
 *
 *   deno run -A scripts/03_matmul.ts [--model DIR|ID]
 * @module
 */
import { openSource } from "../model/source/mod.ts";
import { loadTensorIndex } from "../model/tensors.ts";
import { decodeWeights, type WeightDtype } from "../kernels/dtype.ts";
import { matmul, matmulRef, uploadMatrix } from "../kernels/matmul.ts";
import { tutorial, tutorialGpu } from "./_tutorial.ts";

await tutorial(
  { usage: "deno run -A scripts/03_matmul.ts [--model DIR|ID]" },
  async ({ model }) => {
    const gpu = await tutorialGpu();
    const src = await openSource({ model });
    const t = (await loadTensorIndex(src)).get("model.layers.0.self_attn.k_proj.weight")!;
    const [N, K] = t.shape; // (KV*HD, D)
    const bytes = await src.read(t.file, t.begin, t.end);
    const dtype = t.dtype as WeightDtype;

    const T = 5;
    const x = new Float32Array(T * K).map((_, i) => Math.sin(i * 0.37)); // (T, D) any input
    const w = uploadMatrix(gpu, { bytes, dtype, N, K }); // stays BF16 on the GPU
    const xBuf = gpu.upload(x);
    const yBuf = gpu.poisoned(T * N); // NaN, so a missed element would show
    await gpu.run((enc) => matmul(gpu, enc, { x: xBuf, w, y: yBuf, T }));
    const y = await gpu.read(yBuf); // (T, KV*HD)

    const ref = matmulRef({ x, w: decodeWeights(bytes, dtype), T, N, K });
    let num = 0, den = 0;
    for (let i = 0; i < y.length; i++) {
      num += (y[i] - ref[i]) ** 2;
      den += ref[i] ** 2;
    }
    console.log(`Y = X·Wᵀ with X (${T}, ${K}), W ${dtype} (${N}, ${K}) → Y (${T}, ${N})`);
    console.log(`GPU: ${Array.from(y.slice(0, 4), (v) => v.toFixed(5)).join(" ")} ...`);
    console.log(`CPU: ${Array.from(ref.slice(0, 4), (v) => v.toFixed(5)).join(" ")} ...`);
    console.log(`relative L2 error: ${Math.sqrt(num / den).toExponential(2)}`);
  },
);
