import assert from "node:assert/strict";
import { freshSeed, Rng } from "./_helpers.ts";
import {
  TEXEL_BYTES,
  type TextureLayout,
  textureLayout,
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
