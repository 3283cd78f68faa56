/**
 * The checkpoint's tensor table — name → dtype, shape, shard file and absolute byte range —
 * built from the safetensors headers alone.
 *
 * ```
 * model.safetensors.index.json present?  weight_map: tensor → shard   (sharded checkpoint)
 *   else model.safetensors                one file holds every tensor
 * for each shard:  read bytes [0, 8)       → header length n (validated against the size)
 *                  read bytes [8, 8 + n)   → header JSON (validated)
 * ```
 *
 * Only those two small ranges of each shard are read, never the tensor data; the length
 * field is checked against the shard's size before the header is requested, so a hostile
 * file cannot make us allocate more than it holds. With an index, the index is
 * authoritative: every tensor it lists must be in the shard it names, and tensors a
 * header holds but the index does not list are ignored (as transformers does).
 * @module
 */
import type { ByteSource } from "./source/mod.ts";
import { GqaError } from "../errors.ts";
import {
  headerLength,
  MAX_HEADER_BYTES,
  parseHeader,
  parseIndex,
  quote,
  type SafetensorsHeader,
  type TensorInfo,
} from "./safetensors.ts";

/** The index file of a sharded checkpoint. */
export const INDEX_FILE = "model.safetensors.index.json";
/** The file of a single-file checkpoint. */
export const SINGLE_FILE = "model.safetensors";

/** Reads `[begin, end)` of `file` and insists on getting exactly that many bytes. */
async function readExactly(
  src: ByteSource,
  file: string,
  begin: number,
  end: number,
): Promise<Uint8Array> {
  const bytes = await src.read(file, begin, end);
  if (bytes.byteLength !== end - begin) {
    throw new GqaError(
      "bad-file",
      `${src.name}/${file}: asked for bytes ${begin}..${end} and got ${bytes.byteLength} ` +
        "bytes instead; the file is shorter than it says or changed while being read. " +
        "Download it again.",
    );
  }
  return bytes;
}

/**
 * Reads and validates one shard's header by range: 8 bytes, then exactly the header.
 * @example
 * const h = await readShardHeader(src, "model-00001-of-00004.safetensors");
 * h.tensors.get("model.embed_tokens.weight")?.shape; // [128256, 4096]
 */
export async function readShardHeader(src: ByteSource, file: string): Promise<SafetensorsHeader> {
  const where = `${src.name}/${file}`;
  const fileSize = await src.size(file);
  const first8 = fileSize >= 8 ? await readExactly(src, file, 0, 8) : new Uint8Array(0);
  const n = headerLength(first8, { file: where, fileSize });
  const json = await readExactly(src, file, 8, 8 + n);
  return parseHeader(json, { file: where, fileSize });
}

/**
 * Builds the tensor table of the checkpoint in `src`, reading only the index and the
 * shards' headers.
 * @throws GqaError "not-found" when there is no safetensors checkpoint, "bad-file" for a
 *   malformed index or header, an index naming a missing shard, or a tensor the index
 *   lists but its shard lacks.
 */
export async function loadTensorIndex(
  src: ByteSource,
): Promise<Map<string, TensorInfo & { file: string }>> {
  const out = new Map<string, TensorInfo & { file: string }>();
  if (await src.exists(INDEX_FILE)) {
    const where = `${src.name}/${INDEX_FILE}`;
    const size = await src.size(INDEX_FILE);
    if (size > MAX_HEADER_BYTES) {
      throw new GqaError(
        "bad-file",
        `${where} is ${size} bytes, far larger than any real index (they are kilobytes). ` +
          "Download it again.",
      );
    }
    const map = parseIndex(await src.readText(INDEX_FILE), { file: where });
    const shards = [...new Set(map.values())];
    // Check every shard exists before reading any header, so the error names the index.
    for (const shard of shards) {
      if (!(await src.exists(shard))) {
        const example = [...map].find(([, s]) => s === shard)![0];
        throw new GqaError(
          "bad-file",
          `${where} names the shard ${quote(shard)} (for tensors such as ${quote(example)}), ` +
            `but ${src.name} has no such file. The download is incomplete or the index ` +
            "belongs to another revision; download the model again.",
        );
      }
    }
    // Headers are read concurrently; failures are reported in shard order.
    const settled = await Promise.allSettled(shards.map((s) => readShardHeader(src, s)));
    const headers = new Map<string, SafetensorsHeader>();
    settled.forEach((r, i) => {
      if (r.status === "rejected") throw r.reason;
      headers.set(shards[i], r.value);
    });
    for (const [name, shard] of map) {
      const info = headers.get(shard)!.tensors.get(name);
      if (!info) {
        throw new GqaError(
          "bad-file",
          `${where} says tensor ${quote(name)} is in ${quote(shard)}, but that shard's header ` +
            "has no such tensor. The index and the shards come from different revisions or a " +
            "download is incomplete; download the model again.",
        );
      }
      out.set(name, { ...info, file: shard });
    }
    return out;
  }
  if (await src.exists(SINGLE_FILE)) {
    const header = await readShardHeader(src, SINGLE_FILE);
    for (const [name, info] of header.tensors) out.set(name, { ...info, file: SINGLE_FILE });
    return out;
  }
  throw new GqaError(
    "not-found",
    `${src.name} has neither ${INDEX_FILE} nor ${SINGLE_FILE}. This tool reads safetensors ` +
      "checkpoints only (not PyTorch .bin or GGUF files); choose a model that has them.",
  );
}
