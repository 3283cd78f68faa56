/**
 * Many layers in one pass: captureLayer({ layers }) against the independent float64 forward
 * pass (reference_llama.ts) at every layer, for every captured tensor and the attention
 * weights, on three shapes of model: the tiny Llama (H/KV = 4, llama3 RoPE, two shards), a
 * model with H/KV = 2 and no tokenizer, and a Qwen2-shaped one (q/k/v biases, groups of 7,
 * tied embeddings, one model.safetensors). Also: a range reads no more bytes than its
 * deepest layer alone, and the device holds one layer of weights plus the captures.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { captureLayer } from "../model/capture.ts";
import { makeTinyModel, type TinyModelOptions } from "../scripts/make_tiny_model.ts";
import { assertClose, gpuTest, relL2 } from "./_helpers.ts";
import { referenceSweep } from "./reference_llama.ts";
import { loadReference } from "./_reference_model.ts";

const TOKENS = [752, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33]; // BOS "Hello world!"

/** Every layer of the model at `opts` through captureLayer, against the reference. */
async function checkSweep(
  gpu: Parameters<Parameters<typeof gpuTest>[1]>[0],
  opts: TinyModelOptions,
) {
  const { dir } = await makeTinyModel(undefined, opts);
  const m = await loadReference(dir);
  const cap = await captureLayer({
    model: dir,
    layers: "all",
    tokenIds: TOKENS,
    gpu,
    progress: false,
  });
  const L = m.cfg.layers - 1;
  const ref = referenceSweep({
    cfg: m.ref,
    embeds: m.embeds(TOKENS),
    T: TOKENS.length,
    layers: (l) => m.layers[l],
    L,
  });
  assertEquals(cap.sweep.map((s) => s.layer), [...Array(L + 1).keys()]);
  assertEquals(cap.layer, L);
  let worst = 0;
  for (const s of cap.sweep) {
    const r = ref[s.layer];
    for (const key of ["q", "k", "kRope", "qRope", "v", "attn"] as const) {
      assertClose(s[key], r[key], 1e-4, `${opts.variant ?? "llama"} layer ${s.layer} ${key}`);
      worst = Math.max(worst, relL2(s[key], r[key]));
    }
  }
  assertEquals(Array.from(cap.attn), Array.from(cap.sweep[L].attn)); // the top-level fields are layer L's
  console.log(
    `${opts.variant ?? "llama"}: worst relative L2 over ${L + 1} layers × 6 tensors: ${
      worst.toExponential(2)
    }`,
  );
  return cap;
}

gpuTest(
  'captureLayer({ layers: "all" }) matches the float64 reference at every layer of the tiny Llama, attention weights included',
  async (gpu) => {
    const cap = await checkSweep(gpu, {});
    assertEquals([cap.H, cap.KV, cap.T], [32, 8, TOKENS.length]);
  },
);

gpuTest(
  'captureLayer({ layers: "all" }) matches the reference on a model with H/KV = 2 and no tokenizer',
  async (gpu) => {
    const cap = await checkSweep(gpu, { variant: "gqa2", shards: 1, layers: 3 });
    assertEquals([cap.H, cap.KV], [8, 4]);
    assertEquals(cap.tokenTexts[1], "#72"); // no tokenizer: ids are named by number
  },
);

gpuTest(
  'captureLayer({ layers: "all" }) matches the reference on a Qwen2-shaped model: q/k/v biases, groups of 7, tied embeddings',
  async (gpu) => {
    const cap = await checkSweep(gpu, { variant: "qwen2", shards: 1, layers: 3 });
    assertEquals([cap.H, cap.KV], [14, 2]);
    assertEquals(cap.report.config.architecture, "Qwen2ForCausalLM");
    assert(
      cap.report.plan.reads.some((r) => r.tensor.endsWith("k_proj.bias")),
      "the plan reads the biases",
    );
  },
);

gpuTest(
  "captureLayer({ layers: [1, 2, 3] }) fetches exactly the bytes of layer 3 alone and holds one layer of weights plus captures",
  async (gpu) => {
    const { dir } = await makeTinyModel();
    const one = await captureLayer({
      model: dir,
      layer: 3,
      tokenIds: TOKENS,
      gpu,
      progress: false,
    });
    const range = await captureLayer({
      model: dir,
      layers: [3, 1, 2, 2],
      tokenIds: TOKENS,
      gpu,
      progress: false,
    });
    assertEquals(range.sweep.map((s) => s.layer), [1, 2, 3]);
    assertEquals(range.report.bytesFetched, one.report.bytesFetched);
    assertEquals(range.report.plan.bytes, one.report.plan.bytes);
    assertEquals(Array.from(range.k), Array.from(one.k)); // same pass, same layer 3
    const T = TOKENS.length, { D, I } = one.report.config, { H, KV, HD } = one;
    const layerBytes = one.report.plan.layers[0].reduce((n, r) => n + r.end - r.begin, 0);
    const captureBytes = 4 * (T * (2 * H * HD + 3 * KV * HD) + H * T * T); // one layer's capture
    const scratch = 4 * T * (4 * D + 3 * I + 2 * H * HD + 2 * KV * HD);
    assert(
      range.report.deviceBytes <= layerBytes + scratch + 3 * captureBytes + 64 * 1024,
      `${range.report.deviceBytes} B on the device for a layer of ${layerBytes} B and 3 captures`,
    );
    assert(
      range.report.deviceBytes - one.report.deviceBytes >= 2 * captureBytes,
      "two more captures",
    );
  },
);

gpuTest("captureLayer() refuses a bad layer list before reading anything", async (gpu) => {
  const { dir } = await makeTinyModel();
  for (
    const [opts, msg] of [
      [{ layers: [] }, "empty"],
      [{ layers: [1, -1] }, "≥ 0, got -1"],
      [{ layer: 1, layers: [2] }, "exactly one"],
      [{ layers: [2, 9] }, "0 to 3"],
    ] as const
  ) {
    try {
      await captureLayer({ model: dir, tokenIds: [1], gpu, progress: false, ...opts } as never);
      throw new Error("expected an error");
    } catch (e) {
      assert((e as Error).message.includes(msg), (e as Error).message);
    }
  }
});
