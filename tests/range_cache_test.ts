/**
 * The range cache: serving a request from the union of cached ranges, verifying every
 * entry (a truncated or altered one is re-fetched), ignoring what an interrupted run left,
 * and two processes sharing one cache.
 * @module
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import {
  type CachedFile,
  type CacheEntry,
  planSegments,
  RangeCache,
  sha256Hex,
} from "../model/source/range_cache.ts";
import { makeRepoDir, MOCK_COMMIT, patternBytes, startMockHub } from "./mock_hub.ts";

const assertEquals = (a: unknown, b: unknown, msg?: string) => assert.deepStrictEqual(a, b, msg);
const DATA = patternBytes(1_000_000, 5);

function assertBytes(actual: Uint8Array, expected: Uint8Array, what: string) {
  assertEquals(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) throw new Error(`${what}: byte ${i} differs`);
  }
}

/** A cache in a temp folder, one file in it, and a fetcher of DATA that records its calls. */
async function fixture() {
  const dir = await Deno.makeTempDir({ prefix: "gqa-range-cache-" });
  const cache = new RangeCache({ dir });
  const file = cache.file({ host: "hub.test", repo: "o/m", commit: MOCK_COMMIT, file: "w.bin" });
  const calls: [number, number][] = [];
  const fetchGap = (b: number, e: number) => {
    calls.push([b, e]);
    return Promise.resolve(DATA.slice(b, e));
  };
  return {
    dir,
    cache,
    file,
    calls,
    fetchGap,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

async function entryPaths(f: CachedFile): Promise<string[]> {
  return (await f.entries()).map((e) => join(f.dir, e.name)).sort();
}

Deno.test("planSegments covers a request with the entries reaching furthest, leaving only gaps", () => {
  const e = (begin: number, end: number): CacheEntry => ({
    begin,
    end,
    sha256: "",
    name: `${begin}`,
  });
  const segs = planSegments([e(0, 100), e(50, 400), e(100, 300), e(500, 600)], 20, 700);
  assertEquals(segs.map((s) => [s.begin, s.end, s.entry?.name ?? "gap"]), [
    [20, 100, "0"],
    [100, 400, "50"], // at 100, [50, 400) reaches further than [100, 300)
    [400, 500, "gap"],
    [500, 600, "500"],
    [600, 700, "gap"],
  ]);
  assertEquals(planSegments([], 5, 9), [{ begin: 5, end: 9 }]);
  assertEquals(planSegments([e(0, 10)], 3, 7).map((s) => s.entry?.name), ["0"]);
});

Deno.test("CachedFile.read serves a range covered by the union of entries without fetching", async () => {
  await using f = await fixture();
  for (const [b, e] of [[0, 100_000], [100_000, 300_000], [50_000, 400_000]]) {
    await f.file.read(b, e, f.fetchGap);
  }
  f.calls.length = 0;
  const r = await f.file.read(20_000, 350_000, f.fetchGap);
  assertBytes(r.bytes, DATA.subarray(20_000, 350_000), "union");
  assertEquals(f.calls, []);
  assertEquals([r.fromCache, r.fetched], [330_000, 0]);
  // Partly covered: only the gap is fetched, and it becomes an entry of its own.
  const r2 = await f.file.read(390_000, 410_000, f.fetchGap);
  assertBytes(r2.bytes, DATA.subarray(390_000, 410_000), "partial");
  assertEquals(f.calls, [[400_000, 410_000]]);
  assertEquals((await f.file.entries()).length, 4);
});

Deno.test("CachedFile.read re-fetches a truncated entry and deletes it", async () => {
  await using f = await fixture();
  await f.file.read(0, 200_000, f.fetchGap);
  const [path] = await entryPaths(f.file);
  await Deno.truncate(path, 150_000);
  f.calls.length = 0;
  const r = await f.file.read(10, 190_000, f.fetchGap);
  assertBytes(r.bytes, DATA.subarray(10, 190_000), "after truncation");
  assertEquals(f.calls, [[10, 190_000]]);
  assertEquals(f.cache.discarded, 1);
  assert(!(await entryPaths(f.file)).includes(path));
});

Deno.test("CachedFile.read re-fetches an entry whose bytes were altered (SHA-256 check)", async () => {
  await using f = await fixture();
  await f.file.read(1000, 2000, f.fetchGap);
  await f.file.read(2000, 3000, f.fetchGap);
  const [a] = await entryPaths(f.file); // "1000-2000-…"
  const bytes = await Deno.readFile(a);
  bytes[500] ^= 1; // same length, one bit flipped
  await Deno.writeFile(a, bytes);
  f.calls.length = 0;
  const r = await f.file.read(1000, 3000, f.fetchGap);
  assertBytes(r.bytes, DATA.subarray(1000, 3000), "after alteration");
  assertEquals(f.calls, [[1000, 2000]]);
  assertEquals(r.fromCache, 1000);
  // The re-fetched range is cached again, correctly.
  f.calls.length = 0;
  assertBytes((await f.file.read(1000, 3000, f.fetchGap)).bytes, DATA.subarray(1000, 3000), "3");
  assertEquals(f.calls, []);
});

Deno.test("CachedFile ignores what an interrupted run left (temp files) and sweeps old ones", async () => {
  await using f = await fixture();
  await Deno.mkdir(f.file.dir, { recursive: true });
  // A run killed between write and rename leaves a temp file, even one holding right bytes.
  const fresh = join(f.file.dir, ".tmp-4242-fresh");
  const old = join(f.file.dir, ".tmp-4242-old");
  await Deno.writeFile(fresh, DATA.subarray(0, 5000));
  await Deno.writeFile(old, DATA.subarray(0, 5000));
  const dayAgo = new Date(Date.now() - 2 * 24 * 3600 * 1000);
  await Deno.utime(old, dayAgo, dayAgo);
  // And a file with an entry-like name that is not what its name says.
  await Deno.writeFile(join(f.file.dir, `0-5000-${"0".repeat(64)}.bin`), DATA.subarray(0, 5000));
  const r = await f.file.read(0, 5000, f.fetchGap);
  assertBytes(r.bytes, DATA.subarray(0, 5000), "bytes");
  assertEquals(f.calls, [[0, 5000]]);
  assertEquals(r.fromCache, 0);
  const names = [...Deno.readDirSync(f.file.dir)].map((d) => d.name).sort();
  assertEquals(names, [".tmp-4242-fresh", `0-5000-${sha256Hex(DATA.subarray(0, 5000))}.bin`]);
});

Deno.test("RangeCache meta and refs round-trip, and an altered record is ignored", async () => {
  await using f = await fixture();
  assertEquals(await f.file.meta(), undefined);
  await f.file.setMeta({ size: 1234, etag: '"abc"' });
  assertEquals(await f.file.meta(), { size: 1234, etag: '"abc"' });
  const path = join(f.file.dir, "meta.json");
  await Deno.writeTextFile(path, (await Deno.readTextFile(path)).replace("1234", "9999"));
  assertEquals(await f.file.meta(), undefined);
  await Deno.writeTextFile(path, "{trunc");
  assertEquals(await f.file.meta(), undefined);
  await f.file.setMeta({ missing: true });
  assertEquals(await f.file.meta(), { missing: true });

  assertEquals(await f.cache.readRef("hub.test", "o/m", "main"), undefined);
  await f.cache.writeRef("hub.test", "o/m", "refs/pr/1", MOCK_COMMIT);
  assertEquals(await f.cache.readRef("hub.test", "o/m", "refs/pr/1"), MOCK_COMMIT);
  assertEquals(await f.cache.readRef("other.host", "o/m", "refs/pr/1"), undefined);
});

Deno.test("CachedFile: a cache folder that cannot be written only costs the caching", async () => {
  await using f = await fixture();
  await Deno.writeTextFile(join(f.dir, "ranges"), "not a folder"); // every mkdir below fails
  const r = await f.file.read(0, 100, f.fetchGap);
  assertBytes(r.bytes, DATA.subarray(0, 100), "uncached");
  assert(f.cache.writeErrors > 0);
});

Deno.test("two processes reading the same ranges through one cache both get the right bytes", async () => {
  const weights = patternBytes(2_000_000, 9);
  const repo = await makeRepoDir({ "config.json": "{}", "model.safetensors": weights });
  const cache = await Deno.makeTempDir({ prefix: "gqa-concurrent-" });
  const hub = await startMockHub({ repos: { "test/tiny": { dir: repo } }, chunkSize: 16384 });
  const ranges: [number, number][] = [];
  for (let i = 0; i < 24; i++) {
    const b = (i * 77_777) % 1_900_000;
    ranges.push([b, b + 10_000 + ((i * 31_337) % 90_000)]);
  }
  const script = join(cache, "child.ts");
  await Deno.writeTextFile(
    script,
    `import { openSource } from ${
      JSON.stringify(new URL("../model/source/mod.ts", import.meta.url).href)
    };
import { createHash } from "node:crypto";
const [endpoint, cacheDir, rangesJson] = Deno.args;
const src = await openSource({ model: "test/tiny", endpoint, cacheDir, token: "", hfCacheDir: false,
  retry: { baseDelayMs: 1, maxDelayMs: 5 } });
const out = [];
for (const [b, e] of JSON.parse(rangesJson)) {
  out.push(createHash("sha256").update(await src.read("model.safetensors", b, e)).digest("hex"));
}
console.log(JSON.stringify(out));
`,
  );
  try {
    const config = new URL("../deno.json", import.meta.url).pathname;
    const run = (order: [number, number][]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--config", config, script, hub.endpoint, cache, JSON.stringify(order)],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const reversed = [...ranges].reverse();
    const [a, b] = await Promise.all([run(ranges), run(reversed)]);
    for (const r of [a, b]) {
      assert(r.success, new TextDecoder().decode(r.stderr));
    }
    const want = ranges.map(([s, e]) =>
      createHash("sha256").update(weights.subarray(s, e)).digest("hex")
    );
    assertEquals(JSON.parse(new TextDecoder().decode(a.stdout)), want);
    assertEquals(JSON.parse(new TextDecoder().decode(b.stdout)).reverse(), want);
    // The cache they left is whole: every entry verifies.
    const rc = new RangeCache({ dir: cache });
    const f = rc.file({
      host: new URL(hub.endpoint).host,
      repo: "test/tiny",
      commit: MOCK_COMMIT,
      file: "model.safetensors",
    });
    const entries = await f.entries();
    assert(entries.length >= ranges.length / 2);
    for (const e of entries) {
      const bytes = await Deno.readFile(join(f.dir, e.name));
      assertEquals(sha256Hex(bytes), e.sha256);
      assertBytes(bytes, weights.subarray(e.begin, e.end), e.name);
    }
    assertEquals([...Deno.readDirSync(f.dir)].filter((d) => d.name.startsWith(".tmp-")), []);
  } finally {
    await hub.close();
    await Deno.remove(cache, { recursive: true });
    await Deno.remove(repo, { recursive: true });
  }
});
