/**
 * End-to-end: captureLayer() on the generated tiny model (Llama-3.1 architecture, H=32,
 * KV=8, explicit head_dim, llama3 RoPE, BF16, two shards), from a folder and through the
 * mock Hub, against the independent float64 forward pass in reference_llama.ts.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { join } from "node:path";
import { captureLayer } from "../model/capture.ts";
import { GqaError } from "../errors.ts";
import { openSource } from "../model/source/mod.ts";
import { loadTensorIndex } from "../model/tensors.ts";
import { makeTinyModel } from "../scripts/make_tiny_model.ts";
import { assertClose, gpuTest, relL2 } from "./_helpers.ts";
import { MOCK_REPO, MOCK_TOKEN, startMockHub } from "./mock_hub.ts";
import { referenceCapture } from "./reference_llama.ts";
import { loadReference } from "./_reference_model.ts";

const TOKENS = [752, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33]; // BOS "Hello world!"

gpuTest(
  "captureLayer() matches the float64 reference at every layer of the tiny model",
  async (gpu) => {
    const { dir } = await makeTinyModel();
    const m = await loadReference(dir);
    let worst = 0;
    for (let L = 0; L < m.cfg.layers; L++) {
      const cap = await captureLayer({
        model: dir,
        layer: L,
        tokenIds: TOKENS,
        gpu,
        progress: false,
      });
      const ref = referenceCapture({
        cfg: m.ref,
        embeds: m.embeds(TOKENS),
        T: TOKENS.length,
        layers: (l) => m.layers[l],
        L,
      });
      assertEquals([cap.T, cap.H, cap.KV, cap.HD], [TOKENS.length, 32, 8, 16]);
      assertClose(cap.q, ref.q, 1e-3, `layer ${L} q`);
      assertClose(cap.k, ref.k, 1e-3, `layer ${L} k (as it leaves k_proj)`);
      assertClose(cap.kRope, ref.kRope, 1e-3, `layer ${L} k after RoPE`);
      assertClose(cap.qRope, ref.qRope, 1e-3, `layer ${L} q after RoPE`);
      assertClose(cap.v, ref.v, 1e-3, `layer ${L} v`);
      worst = Math.max(worst, ...[
        relL2(cap.q, ref.q),
        relL2(cap.k, ref.k),
        relL2(cap.kRope, ref.kRope),
        relL2(cap.qRope, ref.qRope),
        relL2(cap.v, ref.v),
      ]);
    }
    console.log(
      `worst relative L2 error over layers 0-3, q/k/kRope/qRope/v: ${worst.toExponential(2)}`,
    );
  },
);

gpuTest("captureLayer() tokenizes the prompt with BOS and names each token", async (gpu) => {
  const { dir } = await makeTinyModel();
  const cap = await captureLayer({
    model: dir,
    layer: 0,
    prompt: "Hello world",
    gpu,
    progress: false,
  });
  assertEquals(cap.tokenIds[0], 752); // the tiny tokenizer's <|begin_of_text|>
  assertEquals(cap.tokenTexts.join(""), "<|begin_of_text|>Hello world");
});

gpuTest(
  "captureLayer() holds one layer of weights on the device, whatever the depth",
  async (gpu) => {
    const { dir } = await makeTinyModel();
    const cap = await captureLayer({
      model: dir,
      layer: 3,
      tokenIds: TOKENS,
      gpu,
      progress: false,
    });
    const layerBytes = cap.report.plan.layers[0].reduce((n, r) => n + r.end - r.begin, 0);
    const T = TOKENS.length, { D, I } = cap.report.config;
    const activations = 4 * T * (4 * D + 3 * I + 6 * cap.H * cap.HD); // scratch + capture, f32
    assert(
      cap.report.deviceBytes <= layerBytes + activations + 64 * 1024,
      `${cap.report.deviceBytes} B on the device for 4 layers of ${layerBytes} B`,
    );
    assert(cap.report.deviceBytes >= layerBytes, "every weight of a layer is on the device");
  },
);

gpuTest(
  "captureLayer(): K of token 0 does not depend on the tokens after it (causality)",
  async (gpu) => {
    const { dir } = await makeTinyModel();
    const a = await captureLayer({ model: dir, layer: 3, tokenIds: TOKENS, gpu, progress: false });
    // Same length, so both runs take the same kernels (the GPU family's GEMV for T ≤ 8 and
    // GEMM above add in different orders); only the tokens after the first differ.
    const other = [TOKENS[0], ...TOKENS.slice(1).map((t) => (t * 7 + 500) % 700)];
    const b = await captureLayer({ model: dir, layer: 3, tokenIds: other, gpu, progress: false });
    const row = 8 * 16; // KV*HD
    assertEquals(Array.from(a.k.subarray(0, row)), Array.from(b.k.subarray(0, row)));
    assertEquals(Array.from(a.kRope.subarray(0, row)), Array.from(b.kRope.subarray(0, row)));
    assert(a.k[row] !== b.k[row], "token 1 differs, so its K should differ");
  },
);

gpuTest(
  "captureLayer({ firstTokenOnly }) runs T = 1 and gives token 0's Q, K, V of the whole prompt",
  async (gpu) => {
    const { dir } = await makeTinyModel();
    const all = await captureLayer({
      model: dir,
      layer: 3,
      tokenIds: TOKENS,
      gpu,
      progress: false,
    });
    const one = await captureLayer({
      model: dir,
      layer: 3,
      tokenIds: TOKENS,
      gpu,
      progress: false,
      firstTokenOnly: true,
    });
    assertEquals([one.T, one.tokenIds], [1, [TOKENS[0]]]);
    for (const key of ["q", "k", "kRope", "qRope", "v"] as const) {
      const row = one[key].length;
      assertEquals(row, all[key].length / TOKENS.length);
      const err = relL2(one[key], all[key].subarray(0, row));
      assert(
        err <= 1e-6,
        `${key}: relative L2 ${err} between T = 1 and token 0 of T = ${TOKENS.length}`,
      );
    }
    assert(one.report.plan.bytes < all.report.plan.bytes, "one embedding row instead of several");
  },
);

gpuTest(
  "captureLayer() streams weights in tiny pieces, mapped or read, and gets the same K",
  async (gpu) => {
    const { dir } = await makeTinyModel();
    const base = { model: dir, layer: 3, tokenIds: TOKENS, gpu, progress: false };
    const a = await captureLayer(base); // mapped pieces of 16 MiB (whole tensors here)
    // ~1000-byte pieces, 3 slots: many pieces per tensor, most waiting for a free slot,
    // tensors not a whole number of pieces; once mapped (ranges start mid-page), once read
    // into host pieces.
    for (const map of [true, false]) {
      const b = await captureLayer({
        ...base,
        stream: { pieceBytes: 1000, ringBytes: 3000, map },
      });
      assertEquals(Array.from(b.k), Array.from(a.k), `map: ${map}`);
      assertEquals(Array.from(b.v), Array.from(a.v), `map: ${map}`);
      assertEquals(Array.from(b.qRope), Array.from(a.qRope), `map: ${map}`);
    }
  },
);

gpuTest(
  "captureLayer(): a layer out of range names the valid range before reading tensors",
  async (gpu) => {
    const { dir } = await makeTinyModel();
    try {
      await captureLayer({ model: dir, layer: 4, tokenIds: [1], gpu, progress: false });
      throw new Error("expected an error");
    } catch (e) {
      assert(e instanceof GqaError, String(e));
      assert(/0 to 3/.test(e.message), e.message);
    }
  },
);

gpuTest(
  "captureLayer() through the mock Hub reads within 1.02 × the plan + 1 MiB, then from its cache",
  async (gpu) => {
    const { dir } = await makeTinyModel();
    const cache = await Deno.makeTempDir();
    const hfHome = await Deno.makeTempDir();
    await using hub = await startMockHub({
      repos: { [MOCK_REPO]: { dir } },
      redirect: /safetensors$/,
    });
    const opts = {
      model: MOCK_REPO,
      tokenIds: TOKENS,
      gpu,
      progress: false,
      source: { endpoint: hub.endpoint, cacheDir: cache, hfCacheDir: hfHome, token: "" },
    };
    const first = await captureLayer({ ...opts, layer: 2 });
    const planned = first.report.plan.bytes;
    assert(first.report.bytesFetched >= planned, "fetched less than the plan");
    assert(
      hub.stats.bytesServed <= 1.02 * planned + 2 ** 20,
      `served ${hub.stats.bytesServed} bytes for a plan of ${planned}`,
    );
    // The same layer again, then a lower one: no tensor bytes.
    hub.resetStats();
    const again = await captureLayer({ ...opts, layer: 2 });
    await captureLayer({ ...opts, layer: 1 });
    assert(hub.bytesFor(".safetensors") === 0, `re-fetched ${hub.bytesFor(".safetensors")} B`);
    assertEquals(Array.from(again.k), Array.from(first.k));
    // A higher layer fetches only the difference: layer 2's o/MLP weights and layer 3's q/k/v.
    hub.resetStats();
    const higher = await captureLayer({ ...opts, layer: 3 });
    const diff = higher.report.plan.bytes - planned;
    assert(
      hub.bytesFor(".safetensors") <= diff + 2 ** 16,
      `${hub.bytesFor(".safetensors")} > ${diff}`,
    );
    await Deno.remove(cache, { recursive: true });
    await Deno.remove(hfHome, { recursive: true });
  },
);

gpuTest(
  "captureLayer() on a gated repo explains HF_TOKEN without a token and with a wrong one",
  async (gpu) => {
    const { dir } = await makeTinyModel();
    const cache = await Deno.makeTempDir();
    await using hub = await startMockHub({ repos: { [MOCK_REPO]: { dir, gated: true } } });
    const wrong = "hf_wrongWrongWrongWrong0123456789";
    for (const token of ["", wrong]) {
      try {
        await captureLayer({
          model: MOCK_REPO,
          layer: 0,
          tokenIds: [1],
          gpu,
          progress: false,
          source: { endpoint: hub.endpoint, cacheDir: cache, hfCacheDir: false, token },
        });
        throw new Error("expected an auth error");
      } catch (e) {
        assert(e instanceof GqaError && e.code === "auth", String(e));
        assert(e.message.includes("HF_TOKEN"), e.message);
        assert(!e.message.includes(wrong) && !e.message.includes(MOCK_TOKEN), "token leaked");
      }
    }
    const ok = await captureLayer({
      model: MOCK_REPO,
      layer: 0,
      tokenIds: [1],
      gpu,
      progress: false,
      source: { endpoint: hub.endpoint, cacheDir: cache, hfCacheDir: false, token: MOCK_TOKEN },
    });
    assertEquals(ok.T, 1);
    await Deno.remove(cache, { recursive: true });
  },
);

gpuTest("captureLayer() stops at the layer and step where a NaN first appears", async (gpu) => {
  const { dir } = await makeTinyModel();
  const tmp = await Deno.makeTempDir();
  for (const e of Deno.readDirSync(dir)) await Deno.copyFile(join(dir, e.name), join(tmp, e.name));
  const t = (await loadTensorIndex(await openSource({ model: tmp })))
    .get("model.layers.1.mlp.up_proj.weight")!;
  const f = await Deno.open(join(tmp, t.file), { read: true, write: true });
  await f.seek(t.begin + 2 * 77, Deno.SeekMode.Start);
  await f.write(new Uint8Array([0xc0, 0x7f])); // BF16 NaN, little-endian
  f.close();
  try {
    await captureLayer({ model: tmp, layer: 3, tokenIds: TOKENS, gpu, progress: false });
    throw new Error("expected a non-finite error");
  } catch (e) {
    assert(e instanceof GqaError && e.code === "non-finite", String(e));
    assert(/layer 1 at step "up_proj"/.test(e.message), e.message);
  }
  // Layer 1 itself is still fine to capture: its q/k/v come before the MLP.
  const ok = await captureLayer({ model: tmp, layer: 1, tokenIds: TOKENS, gpu, progress: false });
  assert(ok.k.every(Number.isFinite));
  await Deno.remove(tmp, { recursive: true });
});
