/**
 * Tests of kernels/attention_probs.ts: the reference against a hand-computed case, the GPU
 * kernel against the reference on awkward sizes (NaN-poisoned output), the GQA head
 * mapping, exact zeros above the diagonal, and rows that sum to 1 with huge scores.
 */
import { assertClose, gpuTest, type Rng } from "./_helpers.ts";
import { attentionProbs, attentionProbsRef } from "../kernels/attention_probs.ts";
import type { Gpu } from "../kernels/gpu.ts";

interface Problem {
  q: Float32Array; // (T, H*HD)
  k: Float32Array; // (T, KV*HD)
  T: number;
  H: number;
  KV: number;
  HD: number;
}

function randomProblem(rng: Rng, T: number, H: number, KV: number, HD: number): Problem {
  return { q: rng.normals(T * H * HD, 2), k: rng.normals(T * KV * HD, 2), T, H, KV, HD };
}

/** Runs attentionProbs() into a NaN-poisoned output and reads it back. */
async function gpuProbs(gpu: Gpu, p: Problem): Promise<Float32Array> {
  const probs = gpu.poisoned(p.H * p.T * p.T);
  const [q, k] = [gpu.upload(p.q), gpu.upload(p.k)];
  await gpu.run((enc) => attentionProbs(gpu, enc, { ...p, q, k, probs }));
  return await gpu.read(probs);
}

Deno.test("attentionProbsRef() matches a causal softmax computed by hand", () => {
  // T=2, H=KV=1, HD=4 (scale 1/2). Row 0: [1, 0]. Row 1: scores [0, ln 3] → [1/4, 3/4].
  const ln3 = Math.log(3);
  const q = new Float32Array([9, 9, 9, 9, 2, 0, 0, 0]);
  const k = new Float32Array([0, 0, 0, 0, ln3, 0, 0, 0]);
  const p = attentionProbsRef({ q, k, T: 2, H: 1, KV: 1, HD: 4 });
  assertClose(p, [1, 0, 0.25, 0.75], 1e-7, "hand case");
});

gpuTest(
  "attentionProbs() matches attentionProbsRef at awkward sizes for GQA, MHA and MQA",
  async (gpu, rng) => {
    // [T, H, KV, HD]: H/KV = 4 (Llama 3), 7 (Qwen2), 1 (MHA), H (MQA); odd T and HD.
    const cases = [[1, 4, 1, 64], [3, 8, 2, 128], [17, 3, 3, 18], [13, 14, 2, 7], [70, 4, 1, 24]];
    for (const [T, H, KV, HD] of cases) {
      const p = randomProblem(rng, T, H, KV, HD);
      assertClose(await gpuProbs(gpu, p), attentionProbsRef(p), 1e-5, `T=${T} H=${H} KV=${KV}`);
    }
  },
);

gpuTest(
  "attentionProbs() reads KV head floor(h/(H/KV)): heads of one group differ only by q",
  async (gpu, rng) => {
    // H=6, KV=2: give heads 0..5 the same q; then heads 0..2 (KV head 0) have equal rows,
    // heads 3..5 (KV head 1) equal rows, and the two groups differ (h % KV would mix them).
    const T = 5, H = 6, KV = 2, HD = 8;
    const p = randomProblem(rng, T, H, KV, HD);
    for (let t = 0; t < T; t++) {
      for (let h = 1; h < H; h++) p.q.copyWithin((t * H + h) * HD, t * H * HD, (t * H + 1) * HD);
    }
    const out = await gpuProbs(gpu, p);
    const head = (h: number) => out.subarray(h * T * T, (h + 1) * T * T);
    for (const [a, b] of [[0, 1], [0, 2], [3, 4], [3, 5]]) {
      assertClose(
        head(b),
        head(a),
        1e-6,
        `${a}~${b}`,
      );
    }
    let diff = 0;
    for (let i = 0; i < T * T; i++) diff += Math.abs(head(0)[i] - head(3)[i]);
    if (diff < 1e-3) throw new Error("the two KV groups gave the same attention");
  },
);

gpuTest(
  "attentionProbs() writes exact zeros above the diagonal and rows summing to 1, even with huge scores",
  async (gpu, rng) => {
    const p = randomProblem(rng, 33, 4, 2, 16);
    for (let i = 0; i < p.q.length; i++) p.q[i] *= 40; // scores in the hundreds
    const out = await gpuProbs(gpu, p);
    for (let h = 0; h < 4; h++) {
      for (let t = 0; t < 33; t++) {
        let sum = 0;
        for (let j = 0; j < 33; j++) {
          const x = out[(h * 33 + t) * 33 + j];
          if (j > t && x !== 0) throw new Error(`probs[${h}, ${t}, ${j}] = ${x}, not 0`);
          if (!(x >= 0 && x <= 1)) throw new Error(`probs[${h}, ${t}, ${j}] = ${x}`);
          sum += x;
        }
        if (Math.abs(sum - 1) > 1e-5) throw new Error(`row (${h}, ${t}) sums to ${sum}`);
      }
    }
    assertClose(out, attentionProbsRef(p), 1e-5, "huge scores");
  },
);
