/**
 * An independent float64 CPU implementation of the Llama forward pass up to the capture
 * point of layer L, written from transformers' modeling_llama.py without using any code
 * from kernels/ (not even the kernels' CPU references), so that it can check the GPU path.
 *
 * Every weight is given as f32 values (already rounded to the stored dtype); all arithmetic
 * is float64, except the RoPE angle, which Hugging Face computes in float32 (inv_freq and
 * position * inv_freq are float32 tensors), so it is rounded with Math.fround here too.
 * @module
 */

/** The shapes and constants the reference needs. */
export interface RefConfig {
  D: number;
  H: number;
  KV: number;
  HD: number;
  I: number;
  eps: number;
  theta: number;
  llama3?: { factor: number; low: number; high: number; original: number };
}

/** One layer's weights, row-major as stored: (out, in). */
export interface RefLayer {
  inputNorm: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  qBias?: Float32Array;
  kBias?: Float32Array;
  vBias?: Float32Array;
  o: Float32Array;
  postNorm: Float32Array;
  gate: Float32Array;
  up: Float32Array;
  down: Float32Array;
}

/** What the reference captures at layer L: same layout as the GPU capture. */
export interface RefCapture {
  q: Float64Array; //     (T, H*HD)
  k: Float64Array; //     (T, KV*HD)
  kRope: Float64Array; // (T, KV*HD)
  qRope: Float64Array; // (T, H*HD)
  v: Float64Array; //     (T, KV*HD)
  attn: Float64Array; //  (H, T, T)   softmax(q·kᵀ/√HD + causal mask), after RoPE
}

function linear(
  x: Float64Array,
  w: Float32Array,
  T: number,
  inF: number,
  outF: number,
  b?: Float32Array,
) {
  const y = new Float64Array(T * outF);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < outF; o++) {
      let s = b ? b[o] : 0;
      const wr = o * inF, xr = t * inF;
      for (let i = 0; i < inF; i++) s += x[xr + i] * w[wr + i];
      y[t * outF + o] = s;
    }
  }
  return y;
}

function rmsNorm(x: Float64Array, w: Float32Array, T: number, D: number, eps: number) {
  const y = new Float64Array(T * D);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < D; i++) ss += x[t * D + i] ** 2;
    const r = 1 / Math.sqrt(ss / D + eps);
    for (let i = 0; i < D; i++) y[t * D + i] = x[t * D + i] * r * w[i];
  }
  return y;
}

/** inv_freq as HF computes it (float32), with the "llama3" frequency bands if given. */
export function refInvFreq(cfg: RefConfig): Float32Array {
  const half = cfg.HD / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(cfg.theta, (2 * i) / cfg.HD);
  const s = cfg.llama3;
  if (!s) return inv;
  const lowWave = s.original / s.low, highWave = s.original / s.high;
  for (let i = 0; i < half; i++) {
    const f = inv[i], wave = 2 * Math.PI / f;
    if (wave < highWave) continue; // high frequency: unchanged
    if (wave > lowWave) inv[i] = f / s.factor; // low frequency: scaled down
    else {
      const smooth = (s.original / wave - s.low) / (s.high - s.low);
      inv[i] = (1 - smooth) * f / s.factor + smooth * f;
    }
  }
  return inv;
}

function applyRope(x: Float64Array, T: number, heads: number, HD: number, inv: Float32Array) {
  const y = new Float64Array(x.length);
  const half = HD / 2;
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const ang = Math.fround(t * inv[i]);
      const c = Math.cos(ang), s = Math.sin(ang);
      for (let h = 0; h < heads; h++) {
        const base = t * heads * HD + h * HD;
        const a = x[base + i], b = x[base + i + half];
        y[base + i] = a * c - b * s; //        x * cos + rotate_half(x) * sin
        y[base + i + half] = b * c + a * s;
      }
    }
  }
  return y;
}

function causalAttention(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  T: number,
  c: RefConfig,
) {
  const { H, KV, HD } = c;
  const out = new Float64Array(T * H * HD);
  const probs = new Float64Array(H * T * T); // (H, T, T), zero above the diagonal
  const groups = H / KV; // repeat_kv: query head h uses KV head h / groups
  for (let h = 0; h < H; h++) {
    const g = Math.floor(h / groups);
    for (let t = 0; t < T; t++) {
      const scores = new Float64Array(t + 1);
      let max = -Infinity;
      for (let u = 0; u <= t; u++) {
        let s = 0;
        for (let d = 0; d < HD; d++) s += q[t * H * HD + h * HD + d] * k[u * KV * HD + g * HD + d];
        scores[u] = s / Math.sqrt(HD);
        max = Math.max(max, scores[u]);
      }
      let sum = 0;
      for (let u = 0; u <= t; u++) sum += scores[u] = Math.exp(scores[u] - max);
      for (let u = 0; u <= t; u++) probs[(h * T + t) * T + u] = scores[u] / sum;
      for (let d = 0; d < HD; d++) {
        let acc = 0;
        for (let u = 0; u <= t; u++) acc += scores[u] * v[u * KV * HD + g * HD + d];
        out[t * H * HD + h * HD + d] = acc / sum;
      }
    }
  }
  return { out, probs };
}

/** One whole layer from residual x (T, D): the projections at the capture point and the new x. */
export function referenceLayer(
  a: { cfg: RefConfig; x: Float64Array; T: number; w: RefLayer },
): RefCapture & { out: Float64Array } {
  const { cfg, T, w } = a;
  const { D, H, KV, HD, I, eps } = cfg;
  const inv = refInvFreq(cfg);
  const x = Float64Array.from(a.x);
  const xn = rmsNorm(x, w.inputNorm, T, D, eps);
  const q = linear(xn, w.q, T, D, H * HD, w.qBias);
  const k = linear(xn, w.k, T, D, KV * HD, w.kBias);
  const v = linear(xn, w.v, T, D, KV * HD, w.vBias);
  const qr = applyRope(q, T, H, HD, inv);
  const kr = applyRope(k, T, KV, HD, inv);
  const attn = causalAttention(qr, kr, v, T, cfg);
  const o = linear(attn.out, w.o, T, H * HD, D);
  for (let i = 0; i < x.length; i++) x[i] += o[i];
  const xn2 = rmsNorm(x, w.postNorm, T, D, eps);
  const g = linear(xn2, w.gate, T, D, I);
  const u = linear(xn2, w.up, T, D, I);
  for (let i = 0; i < g.length; i++) g[i] = (g[i] / (1 + Math.exp(-g[i]))) * u[i];
  const down = linear(g, w.down, T, I, D);
  for (let i = 0; i < x.length; i++) x[i] += down[i];
  return { q, k, kRope: kr, qRope: qr, v, attn: attn.probs, out: x };
}

/**
 * The input of a reference pass: embedding rows `embeds` (T, D), the weights of layer l as
 * `layers(l)` (only l ≤ L are asked for), and the deepest layer L.
 */
export interface RefPassArgs {
  cfg: RefConfig;
  embeds: Float32Array;
  T: number;
  layers: (l: number) => RefLayer;
  L: number;
}

/**
 * Runs layers 0..L-1 fully and returns layer L's capture (see {@linkcode RefPassArgs}).
 */
export function referenceCapture(a: RefPassArgs): RefCapture {
  return referenceSweep(a)[a.L];
}

/** Like {@linkcode referenceCapture}, but returns the capture of every layer 0..L. */
export function referenceSweep(a: RefPassArgs): RefCapture[] {
  let x: Float64Array = Float64Array.from(a.embeds);
  const out: RefCapture[] = [];
  for (let l = 0; l <= a.L; l++) {
    const { out: next, ...capture } = referenceLayer({ cfg: a.cfg, x, T: a.T, w: a.layers(l) });
    out.push(capture);
    x = next;
  }
  return out;
}
