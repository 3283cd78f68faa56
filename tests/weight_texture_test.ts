import assert from "node:assert/strict";
import { assertClose, freshSeed, gpuTest, Rng } from "./_helpers.ts";
import { destroyMatrix, matmul, matmulRef, uploadMatrix } from "../kernels/matmul.ts";
import { decodeWeights, encodeWeights } from "../kernels/dtype.ts";
import {
  TEXEL_BYTES,
  type TextureLayout,
  textureLayout,
  textureSize,
  textureWrites,
} from "../kernels/weight_texture.ts";
import type { Gpu } from "../kernels/gpu.ts";

/** A stand-in for a device with the given texture limits (textureLayout reads nothing else). */
function limits(maxTextureDimension2D: number): Gpu {
  return { device: { limits: { maxTextureDimension2D } } } as Gpu;
}

/**
 * Applies `textureWrites` for matrix bytes [offset, offset + length) to a CPU model of the
 * texture (one slot per texel, holding the matrix texel index that landed there) and
 * returns it; -1 marks texels nothing wrote.
 */
function land(layout: TextureLayout, offset: number, length: number): Int32Array {
  const { width, rowsPerTexture, textures } = layout;
  const tex = new Int32Array(width * rowsPerTexture * textures).fill(-1);
  const first = offset / TEXEL_BYTES;
  for (const w of textureWrites(layout, offset, length)) {
    assert(w.x + w.width <= width && w.y + w.rows <= rowsPerTexture && w.texture < textures);
    for (let r = 0; r < w.rows; r++) {
      for (let i = 0; i < w.width; i++) {
        // Source texel: the data offset, then bytesPerRow (one matrix row) per texture row.
        const src = first + (w.dataOffset + r * layout.rowBytes) / TEXEL_BYTES + i;
        const slot = (w.texture * rowsPerTexture + w.y + r) * width + w.x + i;
        assert.equal(tex[slot], -1, "a texel was written twice");
        tex[slot] = src;
      }
    }
  }
  return tex;
}

Deno.test("textureWrites() lands every texel of any 16-byte range where the layout says", () => {
  const seed = freshSeed(), rng = new Rng(seed);
  for (let trial = 0; trial < 300; trial++) {
    const width = 1 + rng.int(9), rowsPerTexture = 1 + rng.int(7), N = 1 + rng.int(40);
    const layout: TextureLayout = {
      width,
      rowsPerTexture: Math.min(rowsPerTexture, N),
      textures: Math.ceil(N / Math.min(rowsPerTexture, N)),
      rowBytes: width * TEXEL_BYTES,
    };
    const texels = N * width;
    const a = rng.int(texels + 1), b = a + rng.int(texels - a + 1);
    const tex = land(layout, a * TEXEL_BYTES, (b - a) * TEXEL_BYTES);
    // Reference: matrix texel t is row ⌊t / width⌋, column t % width; row n sits in texture
    // ⌊n / R⌋ at texel row n % R.
    for (let t = 0; t < texels; t++) {
      const n = Math.floor(t / width), R = layout.rowsPerTexture;
      const slot = (Math.floor(n / R) * R + (n % R)) * width + (t % width);
      assert.equal(tex[slot], t >= a && t < b ? t : -1, `seed ${seed} trial ${trial} texel ${t}`);
    }
  }
});

Deno.test("textureWrites() rejects ranges that do not start and end on texels", () => {
  const layout: TextureLayout = { width: 4, rowsPerTexture: 3, textures: 1, rowBytes: 64 };
  assert.throws(() => textureWrites(layout, 8, 32), RangeError);
  assert.throws(() => textureWrites(layout, 16, 40), RangeError);
  assert.deepEqual(textureWrites(layout, 32, 0), []);
});

Deno.test("textureLayout() fits rows as texels and returns null where a texture cannot hold them", () => {
  assert.deepEqual(textureLayout(limits(16384), { dtype: "BF16", N: 14336, K: 4096 }), {
    width: 512,
    rowsPerTexture: 14336,
    textures: 1,
    rowBytes: 8192,
  });
  // Rows past the 2-D limit go to further textures; F32 rows are twice as wide.
  assert.deepEqual(textureLayout(limits(8192), { dtype: "F32", N: 20000, K: 4096 }), {
    width: 1024,
    rowsPerTexture: 8192,
    textures: 3,
    rowBytes: 16384,
  });
  assert.equal(textureLayout(limits(8192), { dtype: "BF16", N: 10, K: 12 }), null); // 24 B rows
  assert.equal(textureLayout(limits(8192), { dtype: "BF16", N: 10, K: 8 * 8193 }), null); // wide
  assert.equal(textureLayout(limits(8), { dtype: "BF16", N: 17, K: 8 })?.textures, 3);
  assert.equal(textureLayout(limits(8192), { dtype: "F16", N: 17, K: 8 }, 5)?.textures, 4);
});

Deno.test("textureSize() pads each power-of-two side by one, so every weight texture has one shape class", () => {
  const size = (width: number, rowsPerTexture: number, maxDim = 16384) =>
    textureSize(limits(maxDim), { width, rowsPerTexture, textures: 1, rowBytes: width * 16 });
  // Llama-3-8B BF16: q/o, k/v, gate/up, down. llvmpipe compiles a shader variant per
  // combination of "width is a power of two" and "height is a power of two".
  assert.deepEqual(size(512, 4096), [513, 4097]);
  assert.deepEqual(size(512, 1024), [513, 1025]);
  assert.deepEqual(size(512, 14336), [513, 14336]);
  assert.deepEqual(size(1792, 4096), [1792, 4097]);
  assert.deepEqual(size(1, 1), [2, 2]); // 1 is 2^0 too
  // Never past the device's limit: a side at the limit stays as it is.
  assert.deepEqual(size(8192, 8192, 8192), [8192, 8192]);
  const isPow2 = (n: number) => (n & (n - 1)) === 0;
  for (const [w, h] of [[512, 4096], [512, 1024], [512, 14336], [1792, 4096], [96, 40]]) {
    const [pw, ph] = size(w, h);
    assert(
      !isPow2(pw) && !isPow2(ph) && pw - w <= 1 && ph - h <= 1,
      `${w} x ${h} -> ${pw} x ${ph}`,
    );
  }
});

gpuTest(
  "uploadMatrix() pads power-of-two texture sides; matmul() reads only the matrix",
  async (gpu, rng) => {
    // (64, 64) BF16: rows of 8 texels, 64 rows per texture, both powers of two.
    const [T, N, K] = [3, 64, 64];
    const w = new Float32Array(N * K).map(() => rng.next() * 2 - 1);
    const bytes = encodeWeights(w, "BF16");
    const x = new Float32Array(T * K).map(() => rng.next() * 2 - 1);
    const m = uploadMatrix(gpu, { bytes, dtype: "BF16", N, K, storage: "texture" });
    assert.deepEqual([m.textures![0].width, m.textures![0].height], [9, 65]);
    const y = gpu.poisoned(T * N);
    await gpu.run((enc) => matmul(gpu, enc, { x: gpu.upload(x), w: m, y, T, family: "cpu" }));
    const ref = matmulRef({ x, w: decodeWeights(bytes, "BF16"), T, N, K });
    assertClose(await gpu.read(y), ref, 1e-4, "padded texture");
    destroyMatrix(m);
  },
);
