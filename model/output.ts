/**
 * Writing results: files are written atomically (a temp file beside the target, then a
 * rename), so an interrupted run never leaves a half-written SVG or tensor file, and a
 * path that is a directory or a special file is refused instead of clobbered.
 *
 * `captureToSafetensors` turns a capture (one layer or a sweep) into the F32 safetensors file that numpy and
 * torch users load directly (`safetensors.numpy.load_file`).
 * @module
 */
import { GqaError } from "../errors.ts";
import { writeSafetensors } from "./safetensors.ts";
import { dirname, join } from "node:path";

/**
 * Checks, before any work, that `path` could be written as {@linkcode writeFileAtomic} will:
 * its folder exists and accepts a new file (tried for real, with a temp file removed at
 * once, so permissions, read-only mounts and root all answer truthfully), and the path is
 * not a directory or a special file. Throws a "bad-input" GqaError naming `option`.
 * @example
 * ```ts
 * await checkWritable("out/grid.svg", "--out"); // throws if out/ does not exist
 * ```
 */
export async function checkWritable(path: string, option: string): Promise<void> {
  const refuse = (why: string): never => {
    throw new GqaError("bad-input", `${option} ${path}: ${why}`);
  };
  if (path === "" || path.endsWith("/")) {
    refuse("the path names a folder, not a file. Name a file, e.g. out/grid.svg.");
  }
  try {
    const st = await Deno.stat(path);
    if (st.isDirectory) refuse("it is a directory. Name a file inside it instead.");
    if (!st.isFile) refuse("it exists and is not a regular file. Choose another path.");
  } catch (e) {
    if (e instanceof GqaError) throw e;
    if (!(e instanceof Deno.errors.NotFound)) refuse(`${(e as Error).message}.`);
  }
  const dir = dirname(path);
  let st: Deno.FileInfo | undefined;
  try {
    st = await Deno.stat(dir);
  } catch { /* reported below */ }
  if (!st?.isDirectory) {
    refuse(
      `the folder ${dir} does not exist. Create it first (mkdir -p ${dir}) or choose another path.`,
    );
  }
  const probe = join(dir, `.${crypto.randomUUID()}.tmp`);
  try {
    await Deno.writeFile(probe, new Uint8Array(0), { createNew: true });
  } catch (e) {
    refuse(`the folder ${dir} is not writable (${(e as Error).message}). Choose another path.`);
  }
  await Deno.remove(probe).catch(() => {});
}

/** Writes `data` to `path` atomically; refuses directories and special files. */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array | string,
  what: string,
): Promise<void> {
  try {
    const st = await Deno.stat(path);
    if (!st.isFile) {
      throw new GqaError(
        "output",
        `Cannot write the ${what} to ${path}: it exists and is ${
          st.isDirectory ? "a directory" : "not a regular file"
        }. Choose another path (for a directory, name a file inside it).`,
      );
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      if (e instanceof GqaError) throw e;
      throw new GqaError("output", `Cannot write the ${what} to ${path}: ${(e as Error).message}.`);
    }
  }
  const dir = dirname(path);
  const tmp = join(dir, `.${crypto.randomUUID()}.tmp`);
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new GqaError(
      "output",
      `Cannot write the ${what} to ${path}: ${(e as Error).message}. Check that the folder ` +
        `${dir} exists and is writable, or choose another path.`,
    );
  }
}

/** One captured layer's tensors, as a tensor file stores them. */
export interface SavedLayer {
  layer: number;
  q: Float32Array; //     (T, H*HD)
  k: Float32Array; //     (T, KV*HD)
  kRope: Float32Array; // (T, KV*HD)
  v: Float32Array; //     (T, KV*HD)
  attn: Float32Array; //  (H, T, T)
}

/** The capture fields that go into a tensor file. */
export interface SavedCapture extends SavedLayer {
  model: string;
  revision: string;
  tokenIds: number[];
  T: number;
  H: number;
  KV: number;
  HD: number;
  /** Every captured layer (default: just the fields above, as layer `layer`). */
  sweep?: SavedLayer[];
}

/**
 * The capture as an F32 safetensors file. For every captured layer l:
 * `model.layers.{l}.self_attn.{k_proj, q_proj, v_proj, k_rope}` with shapes [T, KV·HD] /
 * [T, H·HD], and `model.layers.{l}.self_attn.attn_weights` [H, T, T]. `__metadata__` holds
 * `model`, `revision`, `layer` (the deepest), `layers` (a JSON list of every captured layer)
 * and `token_ids` (a JSON array).
 *
 * @example
 * ```ts ignore
 * await writeFileAtomic("layer5.safetensors", captureToSafetensors(cap), "tensor file");
 * ```
 */
export function captureToSafetensors(c: SavedCapture): Uint8Array {
  const sweep = c.sweep ?? [c];
  const tensors = sweep.flatMap((l) => {
    const p = `model.layers.${l.layer}.self_attn.`;
    const t = (name: string, a: Float32Array, shape: number[]) => ({
      name: p + name,
      dtype: "F32",
      shape,
      data: new Uint8Array(a.buffer, a.byteOffset, a.byteLength),
    });
    return [
      t("k_proj", l.k, [c.T, c.KV * c.HD]),
      t("q_proj", l.q, [c.T, c.H * c.HD]),
      t("v_proj", l.v, [c.T, c.KV * c.HD]),
      t("k_rope", l.kRope, [c.T, c.KV * c.HD]),
      t("attn_weights", l.attn, [c.H, c.T, c.T]),
    ];
  });
  return writeSafetensors(tensors, {
    model: c.model,
    revision: c.revision,
    layer: String(c.layer),
    layers: JSON.stringify(sweep.map((l) => l.layer)),
    token_ids: JSON.stringify(c.tokenIds),
  });
}
