/**
 * Reading and writing the safetensors format, treating every byte of a file as untrusted.
 *
 * A safetensors file is three parts:
 *
 * ```
 * [ n: u64 little-endian ][ n bytes: JSON header, may end in spaces ][ data section ]
 *   bytes 0..8              bytes 8..8+n                              bytes 8+n..fileSize
 * ```
 *
 * The header is a JSON object. The key `__metadata__` (optional) maps strings to strings;
 * every other key names a tensor: `{"dtype": "BF16", "shape": [4096, 4096],
 * "data_offsets": [begin, end]}`, where the offsets are relative to the start of the data
 * section and `end - begin == product(shape) × bits(dtype) / 8`. Tensors are row-major and
 * little-endian. The spec requires the tensors to cover the data section exactly: no gaps,
 * no overlaps, nothing after the last tensor (this also rules out polyglot files).
 *
 * What is checked, in order, before anything else reads the file:
 * - the length field: non-zero, at most 100 MB (the limit the reference implementation
 *   uses) and at most the file size − 8, so no buffer is ever sized from an unchecked
 *   number;
 * - the header: UTF-8, starts with `{`, parses as a JSON object;
 * - `__metadata__`: an object of strings;
 * - each tensor: a known dtype, a shape of non-negative safe integers, two ordered
 *   offsets inside the data section, and a byte length that matches shape × dtype;
 * - all tensors together: sorted by offset they tile the data section exactly.
 *
 * Key order in the JSON does not matter (the reference writer sorts by dtype then name);
 * the returned map lists tensors in file order. Offsets returned are ABSOLUTE file
 * offsets: `begin = 8 + n + data_offsets[0]`.
 *
 * Every failure is a {@linkcode GqaError} with code "bad-file" that names the file and,
 * where there is one, the tensor.
 * @module
 */
import { GqaError } from "../errors.ts";

/** The largest header accepted, in bytes (the reference implementation's limit). */
export const MAX_HEADER_BYTES = 100_000_000;

/** Bits per element of every dtype the safetensors format defines. */
export const DTYPE_BITS: ReadonlyMap<string, number> = new Map([
  ["BOOL", 8],
  ["F4", 4],
  ["F6_E2M3", 6],
  ["F6_E3M2", 6],
  ["U8", 8],
  ["I8", 8],
  ["F8_E5M2", 8],
  ["F8_E4M3", 8],
  ["F8_E8M0", 8],
  ["F8_E4M3FNUZ", 8],
  ["F8_E5M2FNUZ", 8],
  ["I16", 16],
  ["U16", 16],
  ["F16", 16],
  ["BF16", 16],
  ["I32", 32],
  ["U32", 32],
  ["F32", 32],
  ["C64", 64],
  ["F64", 64],
  ["I64", 64],
  ["U64", 64],
]);

/** One tensor of a safetensors file. `begin`/`end`: ABSOLUTE byte offsets in the file. */
export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/** A validated header. `tensors` is in file (offset) order. */
export interface SafetensorsHeader {
  file: string;
  /** Absolute offset of the data section: 8 + header length. */
  dataStart: number;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

const FIX = "The file is not a valid safetensors file: it may be truncated or corrupt, so " +
  "delete it and download it again, or re-export it with the safetensors library.";

/** A short, printable rendering of an untrusted string for an error message. */
export function quote(s: string, max = 80): string {
  return JSON.stringify(s.length > max ? s.slice(0, max - 1) + "…" : s);
}

/** A short description of an untrusted JSON value; never walks into nested values. */
export function preview(v: unknown): string {
  if (v === undefined) return "missing";
  if (v === null) return "null";
  if (typeof v === "string") return `the string ${quote(v, 40)}`;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  if (Array.isArray(v)) return `an array of ${v.length} item${v.length === 1 ? "" : "s"}`;
  return "an object";
}

/** The reason JSON.parse gave, shortened and on one line (it quotes the bad input). */
export function jsonErrorReason(e: unknown): string {
  const why = e instanceof Error ? e.message : String(e);
  // deno-lint-ignore no-control-regex
  return why.slice(0, 160).replace(/[\x00-\x1f\x7f\u2028\u2029]+/g, " ");
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function showShape(shape: number[]): string {
  return shape.length > 8
    ? `[${shape.slice(0, 8).join(", ")}, … (${shape.length} dims)]`
    : `[${shape.join(", ")}]`;
}

function bad(file: string, what: string, fix = FIX): GqaError {
  return new GqaError("bad-file", `${file}: ${what}. ${fix}`);
}

/**
 * Validates the 8-byte length field at the start of a safetensors file and returns the
 * header length n. Reject before reading: n = 0, n > 100 MB, n > fileSize − 8.
 * @example
 * const n = headerLength(await src.read(file, 0, 8), { file, fileSize });
 * const header = parseHeader(await src.read(file, 8, 8 + n), { file, fileSize });
 */
export function headerLength(first8: Uint8Array, a: { file: string; fileSize: number }): number {
  const { file, fileSize } = a;
  if (!(fileSize >= 8)) {
    throw bad(
      file,
      `the file is ${fileSize} bytes long, too short to be a safetensors file (it must start ` +
        "with an 8-byte header length)",
    );
  }
  if (first8.byteLength < 8) {
    throw bad(file, `only ${first8.byteLength} of the first 8 bytes could be read`);
  }
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n === 0n) throw bad(file, "the header length field is 0, so there is no header");
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw bad(
      file,
      `the header length field says ${n} bytes, more than the ${MAX_HEADER_BYTES / 1e6} MB ` +
        "any real safetensors header needs",
    );
  }
  if (n > BigInt(fileSize - 8)) {
    throw bad(
      file,
      `the header length field says ${n} bytes but the file has only ${fileSize - 8} bytes ` +
        "after it",
    );
  }
  return Number(n);
}

/** Bytes of a tensor of `shape` and `dtype`, or why it has no representable size. */
function expectedBytes(dtype: string, shape: number[]): number | string {
  const bits = DTYPE_BITS.get(dtype)!;
  if (shape.includes(0)) return 0;
  // Every factor is ≥ 1, so the running product only grows: stop once it passes what any
  // file could hold, which also keeps it (and × bits) an exact integer.
  const limit = Math.floor(Number.MAX_SAFE_INTEGER / 64);
  let elements = 1;
  for (const d of shape) {
    elements *= d;
    if (elements > limit) return "more elements than any file could hold";
  }
  if ((elements * bits) % 8 !== 0) {
    return `${elements} elements of ${bits} bits, which is not a whole number of bytes`;
  }
  return (elements * bits) / 8;
}

/**
 * Parses and validates the JSON header (the n bytes after the length field) of a file
 * of `fileSize` bytes. Returns absolute offsets. The steps, in the order their errors are
 * reported:
 *
 *   headerObject   the header fits the file and is UTF-8 JSON text of an object
 *   metadata       "__metadata__": an object of strings
 *   tensorEntry    per tensor: dtype, shape, data_offsets, bounds, shape × dtype size = span
 *   checkTiling    sorted by offset, the tensors cover the data section exactly (no overlap,
 *                  no gap, nothing after the last)
 */
export function parseHeader(
  json: Uint8Array,
  a: { file: string; fileSize: number },
): SafetensorsHeader {
  const { file, fileSize } = a;
  const dataStart = 8 + json.byteLength;
  const root = headerObject(json, a);
  const dataBytes = fileSize - dataStart;
  let metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const name of Object.keys(root)) {
    if (name === "__metadata__") metadata = readMetadata(root[name], file);
    else entries.push(tensorEntry(name, root[name], file, dataBytes));
  }
  entries.sort((x, y) => x.start - y.start || x.stop - y.stop);
  checkTiling(entries, dataBytes, file);
  const tensors = new Map<string, TensorInfo>();
  for (const e of entries) {
    tensors.set(e.name, {
      name: e.name,
      dtype: e.dtype,
      shape: e.shape,
      begin: dataStart + e.start,
      end: dataStart + e.stop,
    });
  }
  return { file, dataStart, tensors, metadata };
}

/** One tensor of a header, offsets relative to the data section. */
interface HeaderEntry {
  name: string;
  dtype: string;
  shape: number[];
  start: number;
  stop: number;
}

/** The header bytes as a JSON object: they fit the file, start with "{", are UTF-8 and JSON. */
function headerObject(
  json: Uint8Array,
  a: { file: string; fileSize: number },
): Record<string, unknown> {
  const { file, fileSize } = a;
  const dataStart = 8 + json.byteLength;
  if (!(dataStart <= fileSize)) {
    throw bad(
      file,
      `the ${json.byteLength}-byte header runs past the end of the ${fileSize}-byte file`,
    );
  }
  if (json[0] !== 0x7b) {
    throw bad(file, `the header does not start with "{" (its first byte is ${json[0]})`);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(json);
  } catch {
    throw bad(file, "the header is not valid UTF-8 text");
  }
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch (e) {
    const why = jsonErrorReason(e);
    throw bad(file, `the header is not valid JSON (${why})`);
  }
  if (!isObject(root)) throw bad(file, `the header is ${preview(root)}, not a JSON object`);
  return root;
}

/** "__metadata__": an object whose values are all strings (any key, "__proto__" included). */
function readMetadata(value: unknown, file: string): Record<string, string> {
  if (!isObject(value)) {
    throw bad(file, `"__metadata__" is ${preview(value)}, not an object of strings`);
  }
  const metadata: Record<string, string> = {};
  for (const k of Object.keys(value)) {
    const v = value[k];
    if (typeof v !== "string") {
      throw bad(file, `"__metadata__" entry ${quote(k)} is ${preview(v)}, not a string`);
    }
    // defineProperty keeps a key such as "__proto__" an ordinary own property.
    Object.defineProperty(metadata, k, {
      value: v,
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return metadata;
}

/**
 * One tensor's entry, checked on its own: a known dtype, a shape of non-negative integers,
 * data_offsets [begin, end] in order and inside the `dataBytes`-byte data section, spanning
 * exactly the bytes its dtype and shape need.
 */
function tensorEntry(name: string, value: unknown, file: string, dataBytes: number): HeaderEntry {
  const where = `tensor ${quote(name)}`;
  if (!isObject(value)) throw bad(file, `${where} is ${preview(value)}, not an object`);
  const { dtype, shape, data_offsets: offsets } = value;
  if (typeof dtype !== "string" || !DTYPE_BITS.has(dtype)) {
    throw bad(
      file,
      `${where} has dtype ${preview(dtype)}, which is not a safetensors dtype (known: ` +
        `${[...DTYPE_BITS.keys()].join(", ")})`,
    );
  }
  const dims = checkShape(shape, where, file);
  const [start, stop] = checkOffsets(offsets, where, file, dataBytes);
  const want = expectedBytes(dtype, dims);
  if (want !== stop - start) {
    throw bad(
      file,
      `${where} is ${dtype} of shape ${showShape(dims)}, ` +
        `${typeof want === "number" ? `${want} bytes` : want}, but its data_offsets ` +
        `[${start}, ${stop}] span ${stop - start} bytes`,
    );
  }
  return { name, dtype, shape: dims.slice(), start, stop };
}

/** A shape: an array of non-negative integers. */
function checkShape(shape: unknown, where: string, file: string): number[] {
  if (!Array.isArray(shape)) {
    throw bad(file, `${where} has shape ${preview(shape)}, not an array`);
  }
  for (const d of shape) {
    if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) {
      throw bad(
        file,
        `${where} has a shape entry ${preview(d)}; every entry must be a non-negative integer`,
      );
    }
  }
  return shape as number[];
}

/** data_offsets: [begin, end], non-negative integers, begin ≤ end ≤ the data section's size. */
function checkOffsets(
  offsets: unknown,
  where: string,
  file: string,
  dataBytes: number,
): [number, number] {
  if (!Array.isArray(offsets) || offsets.length !== 2) {
    throw bad(
      file,
      `${where} has data_offsets ${preview(offsets)}; it must be an array [begin, end]`,
    );
  }
  const [start, stop] = offsets;
  for (const o of [start, stop]) {
    if (typeof o !== "number" || !Number.isSafeInteger(o) || o < 0) {
      throw bad(
        file,
        `${where} has a data_offsets entry ${preview(o)}; offsets must be non-negative integers`,
      );
    }
  }
  if (start > stop) {
    throw bad(
      file,
      `${where} has data_offsets [${start}, ${stop}] in the wrong order (begin > end)`,
    );
  }
  if (stop > dataBytes) {
    throw bad(
      file,
      `${where} has data_offsets [${start}, ${stop}], past the end of the ${dataBytes}-byte ` +
        "data section",
    );
  }
  return [start, stop];
}

/** Sorted by offset, the tensors must tile [0, dataBytes) exactly: no overlap, no gap. */
function checkTiling(sorted: HeaderEntry[], dataBytes: number, file: string): void {
  let cursor = 0;
  let last = "";
  for (const e of sorted) {
    if (e.start < cursor) {
      throw bad(
        file,
        `tensor ${quote(e.name)} (data_offsets [${e.start}, ${e.stop}]) overlaps tensor ` +
          `${quote(last)}, which ends at ${cursor}`,
      );
    }
    if (e.start > cursor) {
      throw bad(
        file,
        `bytes ${cursor}..${e.start} of the data section (before tensor ${quote(e.name)}) ` +
          "belong to no tensor; the spec requires the tensors to cover the data section exactly",
      );
    }
    cursor = e.stop;
    last = e.name;
  }
  if (cursor !== dataBytes) {
    throw bad(
      file,
      `the data section is ${dataBytes} bytes but the tensors cover only ${cursor}` +
        (last ? ` (the last one, ${quote(last)}, ends there)` : "") +
        "; the file is longer than its header describes",
    );
  }
}

/** A tensor's description for {@linkcode safetensorsPrefix}: its data is written separately. */
export interface TensorSpec {
  name: string;
  dtype: string;
  shape: number[];
}

/**
 * The first bytes of a safetensors file: the 8-byte length and the JSON header (padded with
 * spaces so the data section starts at a multiple of 8), for tensors whose data follows in
 * the given order. Lets a writer stream large tensors instead of building the file in memory.
 * Throws a plain Error (a bug in the caller) for a duplicate name or an unknown dtype.
 */
export function safetensorsPrefix(tensors: TensorSpec[], metadata?: Record<string, string>): {
  prefix: Uint8Array;
  dataBytes: number;
} {
  // Built by hand so key order is exactly the given order (a JS object would move
  // integer-like names such as "0" to the front).
  const parts: string[] = [];
  if (metadata) parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  const seen = new Set<string>();
  let offset = 0;
  for (const t of tensors) {
    if (t.name === "__metadata__" || seen.has(t.name)) {
      throw new Error(`writeSafetensors: duplicate or reserved tensor name ${quote(t.name)}`);
    }
    seen.add(t.name);
    const bits = DTYPE_BITS.get(t.dtype);
    if (bits === undefined) throw new Error(`writeSafetensors: unknown dtype ${quote(t.dtype)}`);
    const bytes = (t.shape.reduce((p, d) => p * d, 1) * bits) / 8;
    const info = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    parts.push(`${JSON.stringify(t.name)}:${JSON.stringify(info)}`);
    offset += bytes;
  }
  const header = new TextEncoder().encode(`{${parts.join(",")}}`);
  const padded = Math.ceil(header.byteLength / 8) * 8;
  const prefix = new Uint8Array(8 + padded).fill(0x20);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(padded), true);
  prefix.set(header, 8);
  return { prefix, dataBytes: offset };
}

/**
 * Serialises tensors into a safetensors file, in the given order, with the header padded
 * with spaces so the data section starts at a multiple of 8 bytes.
 * Throws a plain Error (a bug in the caller) when a tensor's bytes do not match its shape.
 * @example
 * const bytes = writeSafetensors(
 *   [{ name: "k", dtype: "F32", shape: [2, 3], data: new Uint8Array(new Float32Array(6).buffer) }],
 *   { layer: "5" },
 * );
 */
export function writeSafetensors(
  tensors: (TensorSpec & { data: Uint8Array })[],
  metadata?: Record<string, string>,
): Uint8Array {
  const { prefix, dataBytes } = safetensorsPrefix(tensors, metadata);
  const out = new Uint8Array(prefix.byteLength + dataBytes);
  out.set(prefix);
  let at = prefix.byteLength;
  for (const t of tensors) {
    const want = (t.shape.reduce((p, d) => p * d, 1) * DTYPE_BITS.get(t.dtype)!) / 8;
    if (want !== t.data.byteLength) {
      throw new Error(
        `writeSafetensors: tensor ${quote(t.name)} is ${t.dtype} [${t.shape}] (${want} bytes) ` +
          `but has ${t.data.byteLength} bytes of data`,
      );
    }
    out.set(t.data, at);
    at += t.data.byteLength;
  }
  return out;
}

/** True when `name` is a plain file name a shard may have (no folders, no traversal). */
export function isPlainShardName(name: string): boolean {
  return name.length > 0 && name.length <= 255 && name !== "." && name !== ".." &&
    // deno-lint-ignore no-control-regex
    !/[\/\\:\x00-\x1f\x7f]/.test(name) && name.endsWith(".safetensors");
}

/**
 * Parses `model.safetensors.index.json`: `{"metadata": {...}, "weight_map": {tensor: shard}}`.
 * Shard names must be plain `*.safetensors` file names in the same folder.
 * @returns tensor name → shard file name
 */
export function parseIndex(text: string, a: { file: string }): Map<string, string> {
  const { file } = a;
  const fix = "Download the index again, or remove it if the model is a single model.safetensors.";
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch (e) {
    const why = jsonErrorReason(e);
    throw bad(file, `the index is not valid JSON (${why})`, fix);
  }
  if (!isObject(root)) throw bad(file, `the index is ${preview(root)}, not a JSON object`, fix);
  const map = root.weight_map;
  if (!isObject(map)) {
    throw bad(
      file,
      `"weight_map" is ${preview(map)}; it must map tensor names to shard files`,
      fix,
    );
  }
  const out = new Map<string, string>();
  for (const name of Object.keys(map)) {
    const shard = map[name];
    if (typeof shard !== "string") {
      throw bad(file, `tensor ${quote(name)} maps to ${preview(shard)}, not a file name`, fix);
    }
    if (!isPlainShardName(shard)) {
      throw bad(
        file,
        `tensor ${quote(name)} maps to shard ${quote(shard)}, which is not a plain ` +
          '*.safetensors file name in the model\'s folder (paths such as "../x" or "/x" are ' +
          "refused)",
        fix,
      );
    }
    out.set(name, shard);
  }
  if (out.size === 0) throw bad(file, "the index's weight_map names no tensors", fix);
  return out;
}
