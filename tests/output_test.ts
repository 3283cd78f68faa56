import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import { join } from "node:path";
import { captureToSafetensors, writeFileAtomic } from "../model/output.ts";
import { GqaError } from "../errors.ts";
import { headerLength, parseHeader } from "../model/safetensors.ts";

Deno.test("writeFileAtomic() replaces a file whole and leaves no temp file behind", async () => {
  const dir = await Deno.makeTempDir();
  const p = join(dir, "a.svg");
  await writeFileAtomic(p, "first", "SVG");
  await writeFileAtomic(p, "second", "SVG");
  assertEquals(await Deno.readTextFile(p), "second");
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["a.svg"]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("writeFileAtomic() refuses a directory and a special file with a clear error", async () => {
  const dir = await Deno.makeTempDir();
  await rejects(
    writeFileAtomic(dir, "x", "SVG"),
    (e) => e instanceof GqaError && /is a directory/.test(e.message),
  );
  await rejects(
    writeFileAtomic("/dev/null", "x", "SVG"),
    (e) => e instanceof GqaError && /not a regular file/.test(e.message),
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("writeFileAtomic() into a missing folder fails clearly and writes nothing", async () => {
  const dir = await Deno.makeTempDir();
  await rejects(
    writeFileAtomic(join(dir, "no", "such", "x.svg"), "x", "SVG"),
    (e) => e instanceof GqaError && e.code === "output" && /exists and is writable/.test(e.message),
  );
  assertEquals([...Deno.readDirSync(dir)].length, 0);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("captureToSafetensors() writes the five F32 tensors of one layer with exact names, shapes and metadata", () => {
  const T = 3, H = 4, KV = 2, HD = 2;
  const seq = (n: number, o: number) => Float32Array.from({ length: n }, (_, i) => i + o);
  const bytes = captureToSafetensors({
    model: "m/x",
    revision: "abc",
    layer: 7,
    tokenIds: [5, 6, 7],
    T,
    H,
    KV,
    HD,
    q: seq(T * H * HD, 100),
    k: seq(T * KV * HD, 200),
    kRope: seq(T * KV * HD, 300),
    v: seq(T * KV * HD, 400),
    attn: seq(H * T * T, 500),
  });
  const n = headerLength(bytes.subarray(0, 8), { file: "t", fileSize: bytes.byteLength });
  const h = parseHeader(bytes.subarray(8, 8 + n), { file: "t", fileSize: bytes.byteLength });
  assertEquals(h.metadata, {
    model: "m/x",
    revision: "abc",
    layer: "7",
    layers: "[7]",
    token_ids: "[5,6,7]",
  });
  const k = h.tensors.get("model.layers.7.self_attn.k_proj")!;
  assertEquals([k.dtype, k.shape], ["F32", [3, 4]]);
  assertEquals(
    Array.from(new Float32Array(bytes.slice(k.begin, k.end).buffer)),
    Array.from(seq(12, 200)),
  );
  const q = h.tensors.get("model.layers.7.self_attn.q_proj")!;
  assertEquals(q.shape, [3, 8]);
  assertEquals(new Float32Array(bytes.slice(q.begin, q.end).buffer)[23], 123);
  assert(h.tensors.has("model.layers.7.self_attn.v_proj"));
  assert(h.tensors.has("model.layers.7.self_attn.k_rope"));
  const a = h.tensors.get("model.layers.7.self_attn.attn_weights")!;
  assertEquals([a.dtype, a.shape], ["F32", [4, 3, 3]]);
  assertEquals(new Float32Array(bytes.slice(a.begin, a.end).buffer)[35], 535);
  assertEquals(h.tensors.size, 5);
});

Deno.test("captureToSafetensors() writes every layer of a sweep and lists them in the metadata", () => {
  const T = 2, H = 2, KV = 1, HD = 2;
  const layer = (l: number) => ({
    layer: l,
    q: new Float32Array(T * H * HD).fill(l),
    k: new Float32Array(T * KV * HD).fill(l + 0.5),
    kRope: new Float32Array(T * KV * HD),
    v: new Float32Array(T * KV * HD),
    attn: new Float32Array(H * T * T).fill(l / 10),
  });
  const sweep = [layer(2), layer(3), layer(4)];
  const bytes = captureToSafetensors({
    model: "m",
    revision: "r",
    tokenIds: [1, 2],
    T,
    H,
    KV,
    HD,
    ...sweep[2],
    sweep,
  });
  const n = headerLength(bytes.subarray(0, 8), { file: "t", fileSize: bytes.byteLength });
  const h = parseHeader(bytes.subarray(8, 8 + n), { file: "t", fileSize: bytes.byteLength });
  assertEquals(h.metadata.layers, "[2,3,4]");
  assertEquals(h.metadata.layer, "4");
  assertEquals(h.tensors.size, 15);
  for (const l of [2, 3, 4]) {
    const k = h.tensors.get(`model.layers.${l}.self_attn.k_proj`)!;
    assertEquals(new Float32Array(bytes.slice(k.begin, k.end).buffer)[3], l + 0.5);
    const a = h.tensors.get(`model.layers.${l}.self_attn.attn_weights`)!;
    assertEquals(a.shape, [2, 2, 2]);
    assertEquals(new Float32Array(bytes.slice(a.begin, a.end).buffer)[0], Math.fround(l / 10));
  }
});
