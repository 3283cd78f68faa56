/**
 * Shared test helpers: a seeded random generator, relative L2 error, `gpuTest`, which runs a test on the adapter it finds (and fails loudly in CI when there
 * is none), GqaError assertions and `withEnv` for environment variables.
 * @module
 */
import { type Gpu, requestGpu } from "../kernels/gpu.ts";
import { GqaError } from "../errors.ts";

/** A small seeded generator (mulberry32) so every failure can be reproduced from its seed. */
export class Rng {
  #s: number;
  constructor(readonly seed: number) {
    this.#s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  /** `n` values ~ N(0, scale²). */
  normals(n: number, scale = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.normal() * scale;
    return a;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** A fresh seed per run (printed by the tests on failure), or `SEED` from the environment. */
export function freshSeed(): number {
  const env = Deno.env.get("SEED");
  return env ? Number(env) : (Math.random() * 2 ** 32) >>> 0;
}

/** ‖a − b‖₂ / ‖b‖₂; NaN anywhere in `a` gives NaN (so poisoned outputs never pass). */
export function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  return Math.sqrt(num / (den || 1));
}

/** Asserts every element is finite and the relative L2 error is within `tol`. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what: string,
): void {
  for (let i = 0; i < actual.length; i++) {
    if (!Number.isFinite(actual[i])) {
      throw new Error(`${what}: element ${i} is ${actual[i]} (expected ${expected[i]})`);
    }
  }
  const err = relL2(actual, expected);
  if (!(err <= tol)) throw new Error(`${what}: relative L2 error ${err.toExponential(2)} > ${tol}`);
}

let gpuPromise: Promise<Gpu | null> | null = null;
let announced = false;

/**
 * The shared test device, requested once per test module (Deno runs each test file in its
 * own isolate) and destroyed when the module unloads: leaving devices to process teardown
 * has crashed Mesa's drivers at exit.
 */
export function testGpu(): Promise<Gpu | null> {
  if (!gpuPromise) {
    gpuPromise = requestGpu();
    gpuPromise.then((gpu) => {
      if (gpu) globalThis.addEventListener("unload", () => gpu.destroy());
    });
  }
  return gpuPromise;
}

/**
 * Registers a test that needs a WebGPU adapter. Without one it skips with a message on a
 * developer machine, and fails in CI (`CI=true`), where a silent skip would hide a broken
 * driver install. The seed is printed when the test fails.
 */
export function gpuTest(name: string, fn: (gpu: Gpu, rng: Rng) => Promise<void>): void {
  Deno.test({
    name,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const gpu = await testGpu();
      if (!gpu) {
        if (Deno.env.get("CI") === "true") {
          throw new Error("no WebGPU adapter found in CI; install mesa-vulkan-drivers");
        }
        console.warn(`skipped "${name}": no WebGPU adapter on this machine`);
        return;
      }
      if (!announced) {
        announced = true;
        console.log(`adapter: ${gpu.adapterName} (shader-f16: ${gpu.hasF16})`);
      }
      const seed = freshSeed();
      try {
        await fn(gpu, new Rng(seed));
      } catch (e) {
        (e as Error).message += ` [seed ${seed}; rerun with SEED=${seed}]`;
        throw e;
      }
    },
  });
}

/** Runs `fn` and asserts it throws a GqaError with `code` whose message has every `parts`. */
export async function assertGqa(
  fn: () => unknown,
  code: string,
  ...parts: string[]
): Promise<GqaError> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  if (!(err instanceof GqaError)) {
    throw new Error(`expected GqaError(${code}), got ${err === undefined ? "no error" : err}`);
  }
  if (err.code !== code) throw new Error(`expected code ${code}, got ${err.code}: ${err.message}`);
  for (const p of parts) {
    if (!err.message.includes(p)) {
      throw new Error(`message lacks ${JSON.stringify(p)}: ${err.message}`);
    }
  }
  return err;
}

/**
 * The GqaError `p` rejects with (or `p()` throws or rejects with); fails if it succeeds or
 * fails with anything else.
 *
 * @example
 * ```ts ignore
 * const e = await gqaError(src.readText("missing.json"));
 * assert.equal(e.code, "not-found");
 * ```
 */
export async function gqaError(p: Promise<unknown> | (() => unknown)): Promise<GqaError> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    if (!(e instanceof GqaError)) throw new Error(`expected a GqaError, got ${e}`);
    return e;
  }
  throw new Error("expected a GqaError, but it succeeded");
}

/**
 * Sets (or, with undefined, unsets) environment variables for the duration of `fn`, then
 * puts back what was there before.
 *
 * @example
 * ```ts ignore
 * await withEnv({ HF_HUB_OFFLINE: "1", HF_TOKEN: undefined }, () => run());
 * ```
 */
export async function withEnv<T>(
  vars: Record<string, string | undefined>,
  fn: () => Promise<T>,
): Promise<T> {
  const old = Object.fromEntries(Object.keys(vars).map((k) => [k, Deno.env.get(k)]));
  const set = (m: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(m)) {
      v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
    }
  };
  set(vars);
  try {
    return await fn();
  } finally {
    set(old);
  }
}
