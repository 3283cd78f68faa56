/**
 * The download pool (model/source/pool.ts) and HubSource's pieces through it, against the
 * mock Hub: pieces assembled exactly, each piece retried on its own and cached on its own,
 * one resolve per file with its CDN redirect reused until it expires (403/410), the token
 * never at the CDN, and never more requests in flight than the pool has slots.
 * @module
 */
import assert from "node:assert/strict";
import { DownloadPool, splitRange } from "../model/source/pool.ts";
import { openSource, type OpenSourceOptions } from "../model/source/mod.ts";
import {
  makeRepoDir,
  MOCK_TOKEN,
  type MockHubOptions,
  patternBytes,
  startMockHub,
} from "./mock_hub.ts";

const FAST = { baseDelayMs: 1, maxDelayMs: 4, attempts: 4 };
const WEIGHTS = patternBytes(3_000_000, 7);
const PIECE = 100_000;

/** A mock Hub serving "test/pool" and a fresh range-cache folder; disposed at the end. */
async function setup(o: Partial<MockHubOptions> & { gated?: boolean } = {}) {
  const dir = await makeRepoDir({ "config.json": "{}", "model.safetensors": WEIGHTS });
  const hub = await startMockHub({ repos: { "test/pool": { dir, gated: o.gated } }, ...o });
  const cache = await Deno.makeTempDir({ prefix: "gqa-pool-test-" });
  return {
    hub,
    cache,
    open: (extra: Partial<OpenSourceOptions> = {}) =>
      openSource({
        model: "test/pool",
        endpoint: hub.endpoint,
        cacheDir: cache,
        token: o.gated ? MOCK_TOKEN : "",
        offline: false,
        hfCacheDir: false,
        retry: FAST,
        pieceBytes: PIECE,
        ...extra,
      }),
    /** Log entries of body requests (not size probes) for the weights file. */
    reads: (server: "hub" | "cdn") =>
      hub.stats.log.filter((l) =>
        l.server === server && l.path.endsWith("model.safetensors") && l.range !== "bytes=0-0"
      ),
    async [Symbol.asyncDispose]() {
      await hub.close();
      await Deno.remove(cache, { recursive: true });
      await Deno.remove(dir, { recursive: true });
    },
  };
}

function assertBytes(actual: Uint8Array, expected: Uint8Array) {
  assert.equal(actual.length, expected.length, "length");
  const bad = actual.findIndex((b, i) => b !== expected[i]);
  assert.equal(bad, -1, `byte ${bad} differs`);
}

Deno.test("splitRange() cuts [begin, end) into pieces counted from begin, the last shorter", () => {
  assert.deepEqual(splitRange(100, 250, 64), [[100, 164], [164, 228], [228, 250]]);
  assert.deepEqual(splitRange(0, 128, 64), [[0, 64], [64, 128]]);
  assert.deepEqual(splitRange(5, 5, 64), []);
});

Deno.test("DownloadPool.run() keeps at most `size` calls running, in order, freeing slots on failure", async () => {
  const pool = new DownloadPool(3);
  let running = 0, most = 0;
  const started: number[] = [];
  const job = (i: number) =>
    pool.run(async () => {
      started.push(i);
      running++;
      most = Math.max(most, running);
      await new Promise((r) => setTimeout(r, 5 + (i % 3)));
      running--;
      if (i === 4) throw new Error("boom");
      return i;
    });
  const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => job(i)));
  assert.equal(most, 3);
  assert.equal(pool.peak, 3);
  assert.deepEqual(started, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(results.filter((r) => r.status === "rejected").length, 1);
  assert.equal(await pool.run(() => Promise.resolve("free")), "free"); // no slot leaked
  assert.throws(() => new DownloadPool(0), RangeError);
});

Deno.test("HubSource: a large read arrives in pieces, assembled exactly, one request per piece", async () => {
  await using s = await setup();
  const src = await s.open({ rangeCache: false });
  const [b, e] = [12_345, 2_987_654];
  const into = new Uint8Array(e - b).fill(0xee);
  const got = await src.read("model.safetensors", b, e, into);
  assert.equal(got, into, "written into the caller's buffer");
  assertBytes(got, WEIGHTS.subarray(b, e));
  const ranges = s.reads("hub").map((l) => l.range).sort();
  const want = splitRange(b, e, PIECE).map(([pb, pe]) => `bytes=${pb}-${pe - 1}`).sort();
  assert.deepEqual(ranges, want);
});

Deno.test("HubSource: a piece whose connection breaks is resumed on its own", async () => {
  await using s = await setup({
    faults: [{ fault: { kind: "reset", after: 1000 }, file: "model.safetensors" }],
  });
  const src = await s.open({ rangeCache: false });
  assertBytes(await src.read("model.safetensors", 0, 1_000_000), WEIGHTS.subarray(0, 1_000_000));
  const reads = s.reads("hub");
  assert.equal(reads.length, 10 + 1, "ten pieces and one resume");
  const start = (l: { range: string | null }) => Number(/^bytes=(\d+)-/.exec(l.range ?? "")?.[1]);
  const resumed = reads.filter((l) => start(l) % PIECE !== 0);
  assert.equal(resumed.length, 1, `one request starts mid-piece: ${resumed.map((l) => l.range)}`);
  assert.match(resumed[0].range!, /^bytes=\d*1000-\d*99999$/, "from the byte after the break");
});

Deno.test("HubSource: each piece lands in the range cache as its own entry, and is read back from it", async () => {
  await using s = await setup();
  const src = await s.open();
  assertBytes(await src.read("model.safetensors", 0, 450_000), WEIGHTS.subarray(0, 450_000));
  const entries: string[] = [];
  for await (const e of walk(s.cache)) if (e.endsWith(".bin")) entries.push(e);
  const pieces = entries.filter((n) => /\/\d+-\d+-[0-9a-f]{64}\.bin$/.test(n));
  assert.equal(pieces.length, 5, `one entry per piece: ${entries.join(", ")}`);
  s.hub.resetStats();
  const again = await s.open();
  assertBytes(await again.read("model.safetensors", 0, 450_000), WEIGHTS.subarray(0, 450_000));
  assert.equal(s.reads("hub").length + s.reads("cdn").length, 0, "no body request the second time");
});

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) yield* walk(p);
    else yield p;
  }
}

for (const status of [403, 410]) {
  Deno.test(`HubSource: a file is resolved once and its CDN URL reused, until the CDN says ${status}`, async () => {
    await using s = await setup({ redirect: /\.safetensors$/ });
    const src = await s.open({ rangeCache: false });
    assertBytes(await src.read("model.safetensors", 0, 1_000_000), WEIGHTS.subarray(0, 1_000_000));
    const resolves = () =>
      s.hub.stats.log.filter((l) => l.server === "hub" && l.path.endsWith("model.safetensors"));
    assert.equal(resolves().length, 1, "one resolve (the size probe) for ten pieces");
    assert.equal(s.reads("cdn").length, 10);
    s.hub.addFault({ fault: { kind: "status", status }, file: "model.safetensors", server: "cdn" });
    assertBytes(await src.read("model.safetensors", 5, 99_999), WEIGHTS.subarray(5, 99_999));
    assert.equal(resolves().length, 2, "resolved again after the expired URL");
    assertBytes(await src.read("model.safetensors", 7, 9), WEIGHTS.subarray(7, 9));
    assert.equal(resolves().length, 2, "and the fresh URL is reused");
  });
}

Deno.test("HubSource: the token reaches the Hub, never the CDN, through pieces and re-resolves", async () => {
  await using s = await setup({ gated: true, redirect: /\.safetensors$/ });
  const src = await s.open({ rangeCache: false });
  assertBytes(await src.read("model.safetensors", 0, 700_000), WEIGHTS.subarray(0, 700_000));
  s.hub.addFault({
    fault: { kind: "status", status: 403 },
    file: "model.safetensors",
    server: "cdn",
  });
  assertBytes(await src.read("model.safetensors", 0, 300_000), WEIGHTS.subarray(0, 300_000));
  assert.equal(s.reads("cdn").length, 7 + 1 + 3, "7 pieces, the expired one, 3 pieces");
  assert(s.hub.stats.log.some((l) => l.server === "cdn" && l.status === 403));
  assert.equal(s.hub.stats.cdnAuthorizationSeen, 0);
  assert(s.hub.stats.hubAuthorizationSeen >= 2, "the Hub itself got the token");
});

Deno.test("HubSource: every read of a source shares one pool of `connections` requests", async () => {
  // 20 KB/s per body: each 20 KB piece takes ~1 s unless its neighbours run beside it.
  await using s = await setup({ bytesPerSecond: 200_000 });
  const src = await s.open({ rangeCache: false, connections: 4, pieceBytes: 20_000 });
  const t0 = performance.now();
  await Promise.all([
    src.read("model.safetensors", 0, 80_000),
    src.read("model.safetensors", 100_000, 180_000),
    src.read("model.safetensors", 200_000, 240_000),
  ]);
  const seconds = (performance.now() - t0) / 1000;
  assert.equal(s.hub.stats.maxBodiesInFlight, 4, "four at once, never more");
  assert.equal(s.reads("hub").length, 10);
  assert(seconds < 0.1 * 10 * 0.9, `10 pieces of 0.1 s in ${seconds.toFixed(2)} s: side by side`);
});
