/**
 * Tests of kernels/attention.ts: the reference against a hand-computed case, the GPU kernel
 * against the reference (awkward T, GQA ratios, head dims, long sequences, huge scores),
 * the GQA head mapping, and exact causality.
 */
import { assertClose, gpuTest, type Rng } from "./_helpers.ts";
import { attention, attentionRef } from "../kernels/attention.ts";
import type { Gpu, KernelFamily } from "../kernels/gpu.ts";

const FAMILIES: KernelFamily[] = ["cpu", "gpu"];

interface Problem {
  q: Float32Array; // (T, H*HD)
  k: Float32Array; // (T, KV*HD)
  v: Float32Array; // (T, KV*HD)
  T: number;
  H: number;
  KV: number;
  HD: number;
}

function randomProblem(rng: Rng, T: number, H: number, KV: number, HD: number): Problem {
  const q = rng.normals(T * H * HD), k = rng.normals(T * KV * HD), v = rng.normals(T * KV * HD);
  return { q, k, v, T, H, KV, HD };
}

/** Runs attention() into a NaN-poisoned output and reads it back. */
async function gpuAttention(gpu: Gpu, p: Problem, family?: KernelFamily): Promise<Float32Array> {
  const out = gpu.poisoned(p.T * p.H * p.HD);
  const [q, k, v] = [gpu.upload(p.q), gpu.upload(p.k), gpu.upload(p.v)];
  await gpu.run((enc) => attention(gpu, enc, { ...p, q, k, v, out, family }));
  const got = await gpu.read(out);
  for (const b of [q, k, v, out]) b.destroy();
  return got;
}

Deno.test("attentionRef() matches a causal softmax computed by hand", () => {
  // T=2, H=KV=1, HD=4 (scale 1/2). Token 0 sees only itself: out0 = v0.
  // Token 1: s0 = q1·k0/2 = 0, s1 = q1·k1/2 = (2·ln 3)/2 = ln 3, softmax = [1/4, 3/4],
  // out1 = v0/4 + 3·v1/4 = [4, 0, 0, 8]/4 + 3·[0, 4, 8, 0]/4 = [1, 3, 6, 2].
  const ln3 = Math.log(3);
  const q = new Float32Array([9, 9, 9, 9, 2, 0, 0, 0]);
  const k = new Float32Array([0, 0, 0, 0, ln3, 0, 0, 0]);
  const v = new Float32Array([4, 0, 0, 8, 0, 4, 8, 0]);
  const out = attentionRef({ q, k, v, T: 2, H: 1, KV: 1, HD: 4 });
  assertClose(out, [4, 0, 0, 8, 1, 3, 6, 2], 1e-7, "hand case"); // ln 3 rounded to f32
});

gpuTest("attention() at T=1 returns KV head floor(h/(H/KV)) for query head h", async (gpu, rng) => {
  // One token: softmax over one key is 1, so out[0, h] = v[0, g(h)] exactly. H=8, KV=2:
  // heads 0..3 read KV head 0 and heads 4..7 KV head 1 (h % KV would interleave them).
  const p = randomProblem(rng, 1, 8, 2, 24);
  for (const family of FAMILIES) {
    const out = await gpuAttention(gpu, p, family);
    for (let h = 0; h < 8; h++) {
      const g = Math.floor(h / 4);
      const want = p.v.subarray(g * 24, g * 24 + 24);
      assertClose(out.subarray(h * 24, h * 24 + 24), want, 1e-7, `${family}: head ${h} -> ${g}`);
    }
  }
});

gpuTest("attention() matches attentionRef at awkward T for GQA, MHA and MQA", async (gpu, rng) => {
  // [T, H, KV, HD]: H/KV = 4 (Llama 3), 1 (MHA), H (MQA); HD 64, 128, 256, 24, and 18
  // (not a multiple of 4: the scalar-load variant of the shader)
  const cases = [
    [1, 4, 1, 64],
    [3, 8, 2, 128],
    [17, 3, 3, 18],
    [130, 4, 1, 64],
    [17, 4, 4, 128],
    [66, 2, 1, 256],
    [130, 8, 2, 24],
    [7, 4, 2, 6], // HD 6: the last lane of the tiled kernel owns one dimension fewer
    [600, 4, 1, 64], // many key tiles and query tiles
  ];
  for (const family of FAMILIES) {
    for (const [T, H, KV, HD] of cases) {
      const p = randomProblem(rng, T, H, KV, HD);
      assertClose(
        await gpuAttention(gpu, p, family),
        attentionRef(p),
        1e-5,
        `${family}: T=${T} H=${H} KV=${KV} HD=${HD}`,
      );
    }
  }
});

gpuTest(
  "attention() matches attentionRef at Llama-3-8B sizes (H=32, KV=8, HD=128)",
  async (gpu, rng) => {
    const p = randomProblem(rng, 19, 32, 8, 128);
    for (const family of FAMILIES) {
      assertClose(await gpuAttention(gpu, p, family), attentionRef(p), 1e-5, `${family}: T=19`);
    }
  },
);

gpuTest("attention() handles a long sequence (T=4096) with an online softmax", async (gpu, rng) => {
  // Few, narrow heads keep the float64 reference quick; the kernel holds nothing T-sized.
  const p = randomProblem(rng, 4096, 2, 1, 8);
  for (const family of FAMILIES) {
    assertClose(await gpuAttention(gpu, p, family), attentionRef(p), 1e-5, `${family}: T=4096`);
  }
});

gpuTest("attention() stays finite and accurate with scores in the hundreds", async (gpu, rng) => {
  // Integer q and k with HD = 64 (scale exactly 1/8) make every score exact in f32, so the
  // comparison measures the softmax alone. exp(s) would overflow f32 above s ≈ 88.7.
  const T = 70, H = 4, KV = 2, HD = 64;
  const ints = (n: number, r: number) =>
    Float32Array.from({ length: n }, () => rng.int(2 * r + 1) - r);
  const intProblem = (r: number) => ({
    q: ints(T * H * HD, r),
    k: ints(T * KV * HD, r),
    v: rng.normals(T * KV * HD),
    T,
    H,
    KV,
    HD,
  });
  // (a) entries in [−20, 20]: scores spread over hundreds, nearly one-hot rows
  const wide = intProblem(20);
  // (b) entries in [−2, 2] plus 64 in dimension 0 of every q and k: a common offset of
  //     64·64/8 = 512 with a spread of a few units — a non-trivial softmax that a kernel
  //     without max subtraction would turn into Inf/Inf
  const high = intProblem(2);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) high.q[(t * H + h) * HD] = 64;
    for (let g = 0; g < KV; g++) high.k[(t * KV + g) * HD] = 64;
  }
  for (const family of FAMILIES) {
    for (const [name, p] of [["spread", wide], ["offset", high]] as const) {
      assertClose(await gpuAttention(gpu, p, family), attentionRef(p), 1e-5, `${family}: ${name}`);
    }
  }
});

gpuTest(
  "attention() is causal: changing later tokens leaves earlier outputs bit-identical",
  async (gpu, rng) => {
    for (const family of FAMILIES) await causalCheck(gpu, rng, family);
  },
);

gpuTest(
  "attention() over query windows (qPos0) matches attention over the whole prompt",
  async (gpu, rng) => {
    const T = 75, H = 4, KV = 2, HD = 24, cut = 33;
    const p = randomProblem(rng, T, H, KV, HD);
    const want = attentionRef(p);
    const [q, k, v] = [gpu.upload(p.q), gpu.upload(p.k), gpu.upload(p.v)];
    const out = gpu.poisoned(T * H * HD);
    const part = (t0: number, n: number) => {
      const qc = gpu.upload(p.q.subarray(t0 * H * HD, (t0 + n) * H * HD));
      const oc = gpu.poisoned(n * H * HD);
      return { qc, oc, t0, n };
    };
    const parts = [part(0, cut), part(cut, T - cut)];
    await gpu.run((enc) => {
      for (const c of parts) {
        attention(gpu, enc, { q: c.qc, k, v, out: c.oc, T: c.n, H, KV, HD, qPos0: c.t0 });
        gpu.copy(enc, c.oc, 0, out, c.t0 * H * HD * 4, c.n * H * HD * 4);
      }
    });
    assertClose(await gpu.read(out), want, 1e-5, "two query windows");
    for (const b of [q, k, v, out, ...parts.flatMap((c) => [c.qc, c.oc])]) b.destroy();
  },
);

/**
 * Attention of `family` on a random problem and on a copy whose tokens from `cut` on are
 * redrawn: the outputs before `cut` must be bit-identical, those after must change.
 */
async function causalCheck(gpu: Gpu, rng: Rng, family: KernelFamily): Promise<void> {
  {
    const T = 37, H = 4, KV = 2, HD = 64, cut = 20;
    const a = randomProblem(rng, T, H, KV, HD);
    const b = { ...a, q: a.q.slice(), k: a.k.slice(), v: a.v.slice() };
    b.q.set(rng.normals((T - cut) * H * HD), cut * H * HD);
    b.k.set(rng.normals((T - cut) * KV * HD), cut * KV * HD);
    b.v.set(rng.normals((T - cut) * KV * HD), cut * KV * HD);
    const [outA, outB] = [await gpuAttention(gpu, a, family), await gpuAttention(gpu, b, family)];
    const n = cut * H * HD;
    for (let i = 0; i < n; i++) {
      if (!Object.is(outA[i], outB[i])) {
        throw new Error(
          `output ${i} (token ${Math.floor(i / (H * HD))}) changed`,
        );
      }
    }
    // ... while the later outputs do change (so the comparison above can fail)
    if (outA.subarray(n).every((x, i) => x === outB[n + i])) {
      throw new Error(
        "later tokens had no effect",
      );
    }
    assertClose(outB, attentionRef(b), 1e-5, `${family}: after the change`);
  }
}
