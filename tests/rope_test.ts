/**
 * Tests of kernels/rope.ts: the CPU reference and frequencies against hand-computed values,
 * the llama3 frequency scaling at its band edges, and the GPU kernel against the reference.
 */
import { assertClose, gpuTest } from "./_helpers.ts";
import { rope, type RopeConfig, ropeInvFreq, ropeRef, ropeTables } from "../kernels/rope.ts";
import type { Gpu } from "../kernels/gpu.ts";

/** Llama 3.1's rope settings (config.json of Meta-Llama-3.1-8B). */
const LLAMA31: RopeConfig = {
  theta: 500000,
  scaling: {
    type: "llama3",
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  },
};

function assertNear(actual: number, expected: number, relTol: number, what: string): void {
  if (!(Math.abs(actual - expected) <= relTol * Math.abs(expected))) {
    throw new Error(`${what}: ${actual} != ${expected} (relative tolerance ${relTol})`);
  }
}

/** Runs rope() on x and returns the result; the output buffer is x itself (in place). */
async function gpuRope(
  gpu: Gpu,
  a: { x: Float32Array; T: number; heads: number; HD: number; cfg: RopeConfig; posOffset: number },
): Promise<Float32Array> {
  const { cos, sin } = ropeTables(a);
  const x = gpu.upload(a.x);
  await gpu.run((enc) =>
    rope(gpu, enc, {
      x,
      cos: gpu.upload(cos),
      sin: gpu.upload(sin),
      T: a.T,
      heads: a.heads,
      HD: a.HD,
    })
  );
  return await gpu.read(x);
}

// HD = 4, theta = 10000: inv_freq = [1, 10000^(-2/4)] = [1, 0.01]. One head x = [1, 2, 3, 4];
// pairs (0, 2) at angle pos·1 and (1, 3) at angle pos·0.01:
//   out[0] = 1·cos(pos) − 3·sin(pos)          out[2] = 3·cos(pos) + 1·sin(pos)
//   out[1] = 2·cos(pos/100) − 4·sin(pos/100)  out[3] = 4·cos(pos/100) + 2·sin(pos/100)
// pos 1: cos 1 = 0.5403023059, sin 1 = 0.8414709848, cos .01 = 0.9999500004, sin .01 = 0.0099998333
// pos 2: cos 2 = −0.4161468365, sin 2 = 0.9092974268, cos .02 = 0.9998000067, sin .02 = 0.0199986667
// pos 3: cos 3 = −0.9899924966, sin 3 = 0.1411200081, cos .03 = 0.9995500337, sin .03 = 0.0299955002
const HAND: Record<number, number[]> = {
  0: [1, 2, 3, 4],
  1: [-1.9841106486, 1.9599006675, 2.4623779024, 4.0197996683],
  2: [-3.1440391170, 1.9196053466, -0.3391430828, 4.0391973601],
  3: [-1.4133525208, 1.8791180667, -2.8288574817, 4.0581911354],
};
const SMALL: RopeConfig = { theta: 10000 };

Deno.test("ropeInvFreq() matches 1/theta^(2i/HD) for hand-computed cases", () => {
  assertClose(ropeInvFreq(4, SMALL), [1, 0.01], 1e-7, "HD=4 theta=1e4");
  const inv = ropeInvFreq(128, { theta: 500000 });
  assertNear(inv[0], 1, 0, "i=0");
  assertNear(inv[32], 1 / Math.sqrt(500000), 1e-7, "i=32: 500000^-0.5");
  assertNear(inv[63], 2.455140791e-6, 1e-6, "i=63: 500000^(-126/128)");
});

Deno.test("ropeRef() matches rotate_half values computed by hand at positions 0..3", () => {
  const x = new Float32Array([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4]); // (4, 1*4)
  const out = ropeRef({ x, T: 4, heads: 1, HD: 4, cfg: SMALL });
  for (let t = 0; t < 4; t++) {
    // 1e-6: the reference uses f32 inv_freq, angles and tables, as HF does
    assertClose(out.subarray(4 * t, 4 * t + 4), HAND[t], 1e-6, `position ${t}`);
  }
});

Deno.test("ropeRef() with a position offset rotates by posOffset + t (odd positions)", () => {
  const x = new Float32Array([1, 2, 3, 4, 1, 2, 3, 4]); // (2, 1*4)
  const out = ropeRef({ x: x.subarray(0, 4), T: 1, heads: 1, HD: 4, cfg: SMALL, posOffset: 3 });
  assertClose(out, HAND[3], 1e-6, "posOffset 3");
  const two = ropeRef({ x, T: 2, heads: 1, HD: 4, cfg: SMALL, posOffset: 1 });
  assertClose(two.subarray(0, 4), HAND[1], 1e-6, "posOffset 1, t=0");
  assertClose(two.subarray(4, 8), HAND[2], 1e-6, "posOffset 1, t=1");
});

Deno.test("ropeTables() with posOffset equals the later rows of a table from 0", () => {
  const full = ropeTables({ T: 40, HD: 128, cfg: LLAMA31 });
  const part = ropeTables({ T: 13, HD: 128, cfg: LLAMA31, posOffset: 27 });
  for (const k of ["cos", "sin"] as const) {
    const want = full[k].subarray(27 * 64);
    if (part[k].some((v, i) => v !== want[i])) throw new Error(`${k} rows differ`);
  }
  // Row t = 1 of the offset table is position 28: cos(28 · inv_freq[0]) = cos(28)
  assertNear(part.cos[64], Math.cos(28), 1e-6, "cos(28)");
});

Deno.test("ropeInvFreq() llama3 scaling matches the published formula at its band edges", () => {
  // Llama 3.1: factor 8, low_freq_factor 1, high_freq_factor 4, original 8192, theta 5e5,
  // HD 128. low_freq_wavelen = 8192 / 1 = 8192; high_freq_wavelen = 8192 / 4 = 2048.
  // inv_freq[i] = 500000^(−2i/128), wavelen = 2π / inv_freq[i].
  const plain = ropeInvFreq(128, { theta: 500000 });
  const scaled = ropeInvFreq(128, LLAMA31);
  // i = 0: wavelen 2π, far below 2048: unchanged.
  assertNear(scaled[0], 1, 0, "i=0 unchanged");
  // i = 28: wavelen 1956.5, just below 2048: unchanged (bit for bit).
  assertNear(scaled[28], plain[28], 0, "i=28 (wavelen 1956 < 2048) unchanged");
  // i = 35: wavelen 8218.7, just above 8192: divided by the factor, exactly.
  assertNear(scaled[35], plain[35] / 8, 0, "i=35 (wavelen 8219 > 8192) divided by 8");
  // i = 63: wavelen 2.56e6, far above 8192: divided by 8 exactly = 2.455140791e-6 / 8.
  assertNear(scaled[63], plain[63] / 8, 0, "i=63 divided by 8");
  assertNear(scaled[63], 3.068925989e-7, 1e-6, "i=63 value");
  // i = 32, in between: inv = 1/√500000 = 0.00141421356, wavelen = 2π√500000 = 4442.88294,
  // smooth = (8192 / 4442.88294 − 1) / (4 − 1) = 0.28128261,
  // inv' = (1 − smooth) · inv / 8 + smooth · inv = 0.00141421356 · 0.37112234 = 0.000524846161
  assertNear(scaled[32], 0.000524846161, 1e-6, "i=32 smooth interpolation");
  // Every band-interior frequency lies strictly between inv/8 and inv.
  for (let i = 29; i <= 34; i++) {
    if (!(scaled[i] > plain[i] / 8 && scaled[i] < plain[i])) {
      throw new Error(`i=${i}: ${scaled[i]} not between ${plain[i] / 8} and ${plain[i]}`);
    }
  }
});

Deno.test("ropeInvFreq() llama3 scaling matches a float64 evaluation at every frequency", () => {
  // The published formula, evaluated independently in float64; ropeInvFreq works in f32.
  const llama3 = (HD: number, cfg: RopeConfig) => {
    const s = cfg.scaling!;
    const out: number[] = [];
    for (let i = 0; i < HD / 2; i++) {
      const inv = 1 / cfg.theta ** ((2 * i) / HD);
      const wavelen = (2 * Math.PI) / inv;
      const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) /
        (s.highFreqFactor - s.lowFreqFactor);
      if (wavelen < s.originalMaxPositionEmbeddings / s.highFreqFactor) out.push(inv);
      else if (wavelen > s.originalMaxPositionEmbeddings / s.lowFreqFactor) {
        out.push(inv / s.factor);
      } else out.push((1 - smooth) * inv / s.factor + smooth * inv);
    }
    return out;
  };
  // Llama 3.1 at HD 128, and a small made-up config whose 16 frequencies fall in all 3 bands
  const small: RopeConfig = {
    theta: 10000,
    scaling: {
      type: "llama3",
      factor: 4,
      lowFreqFactor: 1,
      highFreqFactor: 8,
      originalMaxPositionEmbeddings: 512,
    },
  };
  for (const [HD, cfg] of [[128, LLAMA31], [32, small]] as const) {
    const got = ropeInvFreq(HD, cfg), want = llama3(HD, cfg);
    for (let i = 0; i < HD / 2; i++) assertNear(got[i], want[i], 1e-6, `HD=${HD} i=${i}`);
  }
});

gpuTest("rope() matches ropeRef at awkward sizes and odd position offsets", async (gpu, rng) => {
  const cases = [
    { T: 1, heads: 1, HD: 2, posOffset: 0 },
    { T: 3, heads: 5, HD: 6, posOffset: 7 },
    { T: 17, heads: 3, HD: 18, posOffset: 0 },
    { T: 130, heads: 2, HD: 64, posOffset: 1001 },
  ];
  for (const c of cases) {
    for (const cfg of [SMALL, LLAMA31]) {
      const x = rng.normals(c.T * c.heads * c.HD, 2);
      const got = await gpuRope(gpu, { ...c, x, cfg });
      assertClose(got, ropeRef({ ...c, x, cfg }), 1e-5, `rope ${JSON.stringify(c)}`);
    }
  }
});

gpuTest(
  "rope() matches ropeRef on Q and K at Llama-3-8B sizes (H=32, KV=8, HD=128)",
  async (gpu, rng) => {
    const T = 23, HD = 128;
    for (const heads of [32, 8]) {
      for (const posOffset of [0, 4093]) {
        const x = rng.normals(T * heads * HD, 3);
        const a = { x, T, heads, HD, cfg: LLAMA31, posOffset };
        assertClose(await gpuRope(gpu, a), ropeRef(a), 1e-5, `heads=${heads} pos0=${posOffset}`);
      }
    }
  },
);

gpuTest(
  "rope() touches nothing past T·heads·HD and leaves position 0 unchanged",
  async (gpu, rng) => {
    const T = 5, heads = 3, HD = 10, n = T * heads * HD;
    const x = new Float32Array(n + 37).fill(NaN);
    x.set(rng.normals(n));
    const got = await gpuRope(gpu, { x, T, heads, HD, cfg: SMALL, posOffset: 0 });
    if (!got.subarray(n).every(Number.isNaN)) throw new Error("rope wrote past the end");
    // position 0: angle 0, cos 1, sin 0 — the first token's heads come back as they went in
    assertClose(got.subarray(0, heads * HD), x.subarray(0, heads * HD), 0, "position 0");
    assertClose(got.subarray(0, n), ropeRef({ x, T, heads, HD, cfg: SMALL }), 1e-5, "rope");
  },
);
