/**
 * Tests of kernels/read_probe.ts: every pattern reads every word of the buffer exactly once
 * (XOR of the per-invocation outputs equals XOR of the words, which a missed or doubled
 * word would break), at sizes that are not multiples of any block.
 */
import { gpuTest } from "./_helpers.ts";
import {
  READ_PROBE_PATTERNS,
  readProbe,
  readProbeOutputBytes,
  readProbeRef,
  readProbeTexture,
  readProbeTextureInvocations,
  TEXTURE_PROBE_PATTERNS,
} from "../kernels/read_probe.ts";
import type { Gpu, TextureReads } from "../kernels/gpu.ts";
import { allocWeightTextures } from "../kernels/weight_texture.ts";
import assert from "node:assert/strict";

Deno.test("readProbeRef() is the XOR of all words", () => {
  assert.equal(readProbeRef(new Uint32Array([0b1100, 0b1010, 0xffffffff])), 0xfffffff9);
  assert.equal(readProbeRef(new Uint32Array([])), 0);
});

Deno.test("readProbe() rejects a size that is not a multiple of its load", () => {
  const stub = { maxBindingBytes: 1 << 30 } as Gpu;
  const buffer = { size: 1024 } as GPUBuffer;
  const vec4 = READ_PROBE_PATTERNS.find((p) => p.elem === "vec4")!;
  assert.throws(() =>
    readProbe(stub, {} as GPUCommandEncoder, { buffer, bytes: 20, out: buffer, pattern: vec4 })
  );
  assert.throws(() =>
    readProbe(stub, {} as GPUCommandEncoder, { buffer, bytes: 2048, out: buffer, pattern: vec4 })
  );
});

gpuTest("readProbe() reads every word exactly once with every pattern", async (gpu, rng) => {
  // 16 B: fewer elements than invocations; 16·1000003 B: no block size divides it
  for (const bytes of [16, 16 * 1000003, 4 * 12345]) {
    const words = new Uint32Array(bytes / 4);
    for (let i = 0; i < words.length; i++) words[i] = (rng.next() * 2 ** 32) >>> 0;
    const buffer = gpu.upload(words);
    for (const pattern of READ_PROBE_PATTERNS) {
      if (pattern.elem === "vec4" && bytes % 16 !== 0) continue;
      // poison the output so an invocation that does not write shows up in the XOR
      const poison = new Uint32Array(readProbeOutputBytes(pattern) / 4);
      for (let i = 0; i < poison.length; i++) poison[i] = (rng.next() * 2 ** 32) >>> 0;
      const out = gpu.upload(poison);
      await gpu.run((enc) => readProbe(gpu, enc, { buffer, bytes, out, pattern }));
      const got = readProbeRef(new Uint32Array(await gpu.readBytes(out)));
      assert.equal(got, readProbeRef(words), `${pattern.name} at ${bytes} bytes`);
      out.destroy();
    }
    buffer.destroy();
  }
});

gpuTest(
  "readProbeTexture() reads every texel exactly once with every pattern",
  async (gpu, rng) => {
    // [width, height] in texels: one texel; rows not a multiple of 16 or of a workgroup
    for (const [width, height] of [[1, 1], [37, 301], [512, 17]]) {
      const words = new Uint32Array(width * height * 4);
      for (let i = 0; i < words.length; i++) words[i] = (rng.next() * 2 ** 32) >>> 0;
      const storage = gpu.textureReads === "storage";
      const layout = { width, rowsPerTexture: height, textures: 1, rowBytes: width * 16 };
      const [texture] = allocWeightTextures(gpu, layout); // storage and sampled reads alike
      gpu.device.queue.writeTexture({ texture }, words, { bytesPerRow: width * 16 }, [
        width,
        height,
      ]);
      const modes: TextureReads[] = storage ? ["storage", "sampled"] : ["sampled"];
      for (const pattern of TEXTURE_PROBE_PATTERNS) {
        for (const reads of modes) {
          const poison = new Uint32Array(readProbeTextureInvocations(pattern, height));
          for (let i = 0; i < poison.length; i++) poison[i] = (rng.next() * 2 ** 32) >>> 0;
          const out = gpu.upload(poison);
          await gpu.run((enc) => readProbeTexture(gpu, enc, { texture, out, pattern, reads }));
          const got = readProbeRef(new Uint32Array(await gpu.readBytes(out)));
          const where = `${pattern.name}, ${reads} reads, at ${width} × ${height}`;
          assert.equal(got, readProbeRef(words), where);
          out.destroy();
        }
      }
      texture.destroy();
    }
  },
);
