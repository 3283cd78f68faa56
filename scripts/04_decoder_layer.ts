/**
 * Step 4: one whole decoder layer on the GPU, and the same layer on the CPU written with
 * the kernels' reference functions, so the math can be read in twelve lines.
 *
 *   deno run -A scripts/04_decoder_layer.ts [--model DIR|ID]
 * @module
 */
import { openSource } from "../model/source/mod.ts";
import { parseConfigText } from "../model/config.ts";
import { loadTensorIndex } from "../model/tensors.ts";
import { decodeWeights, type WeightDtype } from "../kernels/dtype.ts";
import { matmulRef, uploadMatrix } from "../kernels/matmul.ts";
import { rmsnormRef } from "../kernels/rmsnorm.ts";
import { ropeRef, ropeTables } from "../kernels/rope.ts";
import { attentionRef } from "../kernels/attention.ts";
import { swigluRef } from "../kernels/swiglu.ts";
import { addRef } from "../kernels/add.ts";
import { allocScratch, decoderLayer, type LayerDims } from "../kernels/decoder_layer.ts";
import { tutorial, tutorialGpu } from "./_tutorial.ts";

await tutorial(
  { usage: "deno run -A scripts/04_decoder_layer.ts [--model DIR|ID]" },
  async ({ model }) => {
    const gpu = await tutorialGpu();
    const src = await openSource({ model });
    const cfg = parseConfigText(await src.readText("config.json"), { where: model });
    const tensors = await loadTensorIndex(src);
    const { D, H, KV, HD, I, eps } = cfg;

    // Layer 0's weights: raw bytes (for the GPU, which keeps the stored dtype) and f32 (CPU).
    const raw = async (name: string) => {
      const t = tensors.get(`model.layers.0.${name}.weight`)!;
      return { bytes: await src.read(t.file, t.begin, t.end), t };
    };
    const f32 = async (name: string) => {
      const { bytes, t } = await raw(name);
      return decodeWeights(bytes, t.dtype as WeightDtype);
    };
    const mat = async (name: string) => {
      const { bytes, t } = await raw(name);
      return uploadMatrix(gpu, {
        bytes,
        dtype: t.dtype as WeightDtype,
        N: t.shape[0],
        K: t.shape[1],
      });
    };

    // Input: T tokens of a smooth made-up residual stream (T, D).
    const T = 6;
    const x0 = new Float32Array(T * D).map((_, i) => Math.sin(i * 0.11) * 0.05);
    const dims: LayerDims = { T, D, H, KV, HD, I, eps };

    // --- GPU: the layer as the forward pass runs it (kernels/decoder_layer.ts)
    const s = allocScratch(gpu, dims);
    const tables = ropeTables({ T, HD, cfg: cfg.rope });
    gpu.write(s.cos, tables.cos);
    gpu.write(s.sin, tables.sin);
    const w = {
      inputNorm: gpu.upload(await f32("input_layernorm")),
      q: await mat("self_attn.q_proj"),
      k: await mat("self_attn.k_proj"),
      v: await mat("self_attn.v_proj"),
      o: await mat("self_attn.o_proj"),
      postNorm: gpu.upload(await f32("post_attention_layernorm")),
      gate: await mat("mlp.gate_proj"),
      up: await mat("mlp.up_proj"),
      down: await mat("mlp.down_proj"),
    };
    const x = gpu.upload(x0);
    await gpu.run((enc) => decoderLayer(gpu, enc, { dims, w, x, s }));
    const gpuOut = await gpu.read(x); // (T, D)

    // --- CPU: the same layer, one reference function per kernel
    const lin = async (x: Float32Array, name: string, N: number, K: number) =>
      matmulRef({ x, w: await f32(name), T, N, K });
    const xn = rmsnormRef({ x: x0, w: await f32("input_layernorm"), T, D, eps });
    const q = ropeRef({
      x: await lin(xn, "self_attn.q_proj", H * HD, D),
      T,
      heads: H,
      HD,
      cfg: cfg.rope,
    });
    const k = ropeRef({
      x: await lin(xn, "self_attn.k_proj", KV * HD, D),
      T,
      heads: KV,
      HD,
      cfg: cfg.rope,
    });
    const v = await lin(xn, "self_attn.v_proj", KV * HD, D);
    const attn = attentionRef({ q, k, v, T, H, KV, HD }); // query head h reads KV head h/(H/KV)
    const x1 = addRef({ x: x0, y: await lin(attn, "self_attn.o_proj", D, H * HD) });
    const xn2 = rmsnormRef({ x: x1, w: await f32("post_attention_layernorm"), T, D, eps });
    const act = swigluRef({
      gate: await lin(xn2, "mlp.gate_proj", I, D),
      up: await lin(xn2, "mlp.up_proj", I, D),
    });
    const cpuOut = addRef({ x: x1, y: await lin(act, "mlp.down_proj", D, I) });

    let num = 0, den = 0;
    for (let i = 0; i < cpuOut.length; i++) {
      num += (gpuOut[i] - cpuOut[i]) ** 2;
      den += cpuOut[i] ** 2;
    }
    console.log(`layer 0 of ${model}, T=${T}: x (T, ${D}) → x + attention + MLP`);
    console.log(`GPU: ${Array.from(gpuOut.slice(0, 4), (v) => v.toFixed(5)).join(" ")} ...`);
    console.log(`CPU: ${Array.from(cpuOut.slice(0, 4), (v) => v.toFixed(5)).join(" ")} ...`);
    console.log(`relative L2 error: ${Math.sqrt(num / den).toExponential(2)}`);
  },
);
