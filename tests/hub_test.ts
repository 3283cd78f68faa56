/**
 * HubSource against the mock Hub (tests/mock_hub.ts): exact bytes, the range cache,
 * offline mode, auth and not-found errors, retries, resumes, misbehaving bodies, a server
 * that ignores Range, and the token never leaving the Hub's origin.
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gqaError } from "./_helpers.ts";
import { openSource, type OpenSourceOptions } from "../model/source/mod.ts";
import {
  makeRepoDir,
  MOCK_COMMIT,
  MOCK_TOKEN,
  type MockHub,
  type MockHubOptions,
  patternBytes,
  startMockHub,
} from "./mock_hub.ts";

const FAST = { baseDelayMs: 1, maxDelayMs: 4, attempts: 4 };
const CONFIG = JSON.stringify({ architectures: ["LlamaForCausalLM"], hidden_size: 64 });
const WEIGHTS = patternBytes(3_000_000, 11); // bigger than hubFetch's 1 MiB buffering threshold

interface Setup {
  hub: MockHub;
  cache: string;
  open(extra?: Partial<OpenSourceOptions>): ReturnType<typeof openSource>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** A mock Hub serving "test/tiny" (config.json + model.safetensors) and a fresh cache folder. */
async function setup(
  o: Partial<MockHubOptions> & { gated?: boolean; files?: Record<string, Uint8Array | string> } =
    {},
): Promise<Setup> {
  const dir = await makeRepoDir({ "config.json": CONFIG, "model.safetensors": WEIGHTS });
  const hub = await startMockHub({
    repos: { "test/tiny": { dir, gated: o.gated, files: o.files } },
    ...o,
  });
  const cache = await Deno.makeTempDir({ prefix: "gqa-hub-test-" });
  return {
    hub,
    cache,
    open: (extra = {}) =>
      openSource({
        model: "test/tiny",
        endpoint: hub.endpoint,
        cacheDir: cache,
        token: "",
        offline: false,
        hfCacheDir: false,
        retry: FAST,
        ...extra,
      }),
    async [Symbol.asyncDispose]() {
      await hub.close();
      await Deno.remove(cache, { recursive: true });
      await Deno.remove(dir, { recursive: true });
    },
  };
}

function assertBytes(actual: Uint8Array, expected: Uint8Array, what: string) {
  assertEquals(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) throw new Error(`${what}: byte ${i} differs`);
  }
}

const assertEquals = (a: unknown, b: unknown, msg?: string) => assert.deepStrictEqual(a, b, msg);

Deno.test("HubSource reads exact byte ranges and resolves main to the commit sha", async () => {
  await using s = await setup();
  const src = await s.open();
  assertEquals(src.revision, MOCK_COMMIT);
  assertEquals(await src.readText("config.json"), CONFIG);
  assertEquals(await src.size("model.safetensors"), WEIGHTS.length);
  assert(await src.exists("model.safetensors"));
  assert(!(await src.exists("model.safetensors.index.json")));
  for (const [b, e] of [[0, 8], [8, 1000], [123_457, 2_999_999], [2_999_999, 3_000_000]]) {
    assertBytes(await src.read("model.safetensors", b, e), WEIGHTS.subarray(b, e), `[${b},${e})`);
  }
  assertEquals((await src.read("model.safetensors", 5, 5)).length, 0);
  // Reads after the first use the commit, not the branch, so a moving branch cannot mix versions.
  const reads = s.hub.stats.log.filter((l) => l.path.endsWith("model.safetensors"));
  assert(reads.length > 0 && reads.every((l) => l.path.includes(`/resolve/${MOCK_COMMIT}/`)));
  await gqaError(src.read("model.safetensors", 0, WEIGHTS.length + 1));
  await gqaError(src.read("../secrets", 0, 1));
});

Deno.test("HubSource: a second run reading the same ranges fetches no bytes of them", async () => {
  await using s = await setup();
  const a = await s.open();
  const first = await a.read("model.safetensors", 1000, 2_000_000);
  await a.readText("config.json");
  s.hub.resetStats();
  const b = await s.open();
  assertBytes(await b.read("model.safetensors", 1000, 2_000_000), first, "second run");
  assertBytes(await b.read("model.safetensors", 5000, 6000), WEIGHTS.subarray(5000, 6000), "sub");
  assertEquals(await b.readText("config.json"), CONFIG);
  assertEquals(s.hub.bytesFor("model.safetensors"), 0);
  assert(b.stats.bytesFetched <= 1, `fetched ${b.stats.bytesFetched} (only the 1-byte probe)`);
  assertEquals(b.stats.bytesFromCache, 2_000_000 - 1000 + 1000 + CONFIG.length);
});

Deno.test("HubSource: a wider read fetches only the bytes not cached", async () => {
  await using s = await setup();
  await (await s.open()).read("model.safetensors", 1_000_000, 2_000_000);
  s.hub.resetStats();
  const b = await s.open();
  assertBytes(
    await b.read("model.safetensors", 500_000, 2_500_000),
    WEIGHTS.subarray(500_000, 2_500_000),
    "wider",
  );
  assertEquals(s.hub.bytesFor("model.safetensors"), 1_000_000);
  const ranges = s.hub.stats.log.filter((l) => l.path.endsWith("model.safetensors") && l.range)
    .map((l) => l.range).sort();
  assertEquals(ranges, ["bytes=2000000-2499999", "bytes=500000-999999"]);
});

Deno.test("HubSource: HF_HUB_OFFLINE serves a warm cache with no request, and fails clearly when cold", async () => {
  await using s = await setup();
  const online = await s.open();
  await online.readText("config.json");
  await online.read("model.safetensors", 0, 100_000);
  s.hub.resetStats();

  const off = await s.open({ offline: true });
  assertEquals(off.revision, MOCK_COMMIT);
  assertEquals(await off.readText("config.json"), CONFIG);
  assertBytes(await off.read("model.safetensors", 10, 90_000), WEIGHTS.subarray(10, 90_000), "off");
  const uncached = await gqaError(off.read("model.safetensors", 0, 200_000));
  assertEquals(uncached.code, "network");
  assert(uncached.message.includes("HF_HUB_OFFLINE"));
  assertEquals(s.hub.stats.requests, 0);

  const cold = await Deno.makeTempDir();
  try {
    const e = await gqaError(s.open({ offline: true, cacheDir: cold }));
    assertEquals(e.code, "network");
    assert(e.message.includes("HF_HUB_OFFLINE") && e.message.includes("test/tiny"), e.message);
    assertEquals(s.hub.stats.requests, 0);
  } finally {
    await Deno.remove(cold, { recursive: true });
  }
});

Deno.test("HubSource: a token with a newline inside is refused without being echoed; one at the end is trimmed", async () => {
  await using s = await setup({ gated: true });
  const e = await gqaError(s.open({ token: "hf_Secret\nPart" }));
  assertEquals(e.code, "auth");
  assert(!e.message.includes("Secret") && !e.message.includes("Part"), e.message);
  assertEquals(s.hub.stats.requests, 0);
  const src = await s.open({ token: MOCK_TOKEN + "\n" });
  assertEquals(await src.readText("config.json"), CONFIG);
});

Deno.test("HubSource: the right token reads a gated repo and is written nowhere in the cache", async () => {
  await using s = await setup({ gated: true });
  const src = await s.open({ token: MOCK_TOKEN });
  assertEquals(await src.readText("config.json"), CONFIG);
  await src.read("model.safetensors", 0, 1_500_000);
  assert(s.hub.stats.hubAuthorizationSeen > 0);
  const needle = new TextEncoder().encode(MOCK_TOKEN.slice(3)); // also catches it without "hf_"
  let files = 0;
  const walk = async (dir: string): Promise<void> => {
    for await (const d of Deno.readDir(dir)) {
      const p = join(dir, d.name);
      assert(!d.name.includes(MOCK_TOKEN.slice(3)), `token in a file name: ${p}`);
      if (d.isDirectory) await walk(p);
      else {
        files++;
        const bytes = await Deno.readFile(p);
        assert(indexOf(bytes, needle) < 0, `token found in ${p}`);
      }
    }
  };
  await walk(s.cache);
  assert(files >= 5, `only ${files} cache files`);
});

function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

Deno.test("HubSource: 429 and 503 are retried with backoff, then the read succeeds", async () => {
  await using s = await setup({
    faults: [
      { fault: { kind: "status", status: 429, retryAfter: 0 }, file: "model.safetensors" },
      { fault: { kind: "status", status: 503 }, file: "model.safetensors" },
      { fault: { kind: "status", status: 500 }, file: "config.json" },
    ],
  });
  const src = await s.open();
  assertEquals(await src.readText("config.json"), CONFIG);
  assertBytes(await src.read("model.safetensors", 7, 70_007), WEIGHTS.subarray(7, 70_007), "r");
  const statuses = s.hub.stats.log.map((l) => l.status);
  assert(statuses.includes(429) && statuses.includes(503) && statuses.includes(500), `${statuses}`);
});

Deno.test("HubSource: a server failing every time ends in one clear network error", async () => {
  await using s = await setup();
  const src = await s.open();
  s.hub.addFault({ fault: { kind: "status", status: 503 }, times: Infinity });
  s.hub.resetStats();
  const e = await gqaError(src.read("model.safetensors", 0, 10));
  assertEquals(e.code, "network");
  assert(/HTTP 503, 4 times in a row, and gave up/.test(e.message), e.message);
  assertEquals(s.hub.stats.requests, FAST.attempts); // the probe, then three retries
});

Deno.test("HubSource: a connection reset mid-body is resumed from the byte reached", async () => {
  await using s = await setup({
    faults: [{ fault: { kind: "reset", after: 400_000 }, file: "model.safetensors", times: 2 }],
  });
  const src = await s.open();
  assertBytes(
    await src.read("model.safetensors", 100, 2_000_100),
    WEIGHTS.subarray(100, 2_000_100),
    "resumed",
  );
  const served = s.hub.bytesFor("model.safetensors");
  assert(served <= 2_000_000 + 1 + 2 * 65536, `served ${served}: resumed, not restarted`);
  const ranges = s.hub.stats.log.filter((l) => l.path.endsWith("model.safetensors")).map((l) =>
    l.range
  );
  assertEquals(ranges, [
    "bytes=0-0",
    "bytes=100-2000099",
    "bytes=400100-2000099",
    "bytes=800100-2000099",
  ]);
});

Deno.test("HubSource: a body shorter than its Content-Range is resumed; a longer one is cut to the asked bytes", async () => {
  await using s = await setup({
    faults: [
      { fault: { kind: "short", missing: 12_345 }, file: "model.safetensors" },
      { fault: { kind: "long", extra: 50_000 }, file: "model.safetensors" },
    ],
  });
  const src = await s.open();
  assertBytes(
    await src.read("model.safetensors", 0, 1_800_000),
    WEIGHTS.subarray(0, 1_800_000),
    "short",
  );
  assertBytes(
    await src.read("model.safetensors", 2_000_000, 2_100_000),
    WEIGHTS.subarray(2_000_000, 2_100_000),
    "long (buffered)",
  );
  s.hub.addFault({ fault: { kind: "long", extra: 300_000 }, file: "model.safetensors" });
  assertBytes(
    await src.read("model.safetensors", 1_800_000, 2_000_000),
    WEIGHTS.subarray(1_800_000, 2_000_000),
    "long",
  );
  s.hub.addFault({ fault: { kind: "long", extra: 300_000 }, file: "model.safetensors" });
  assertBytes(
    await src.read("model.safetensors", 2_100_000, 3_000_000),
    WEIGHTS.subarray(2_100_000, 3_000_000),
    "long at the end of the file",
  );
  const notes = s.hub.stats.log.map((l) => l.fault).filter(Boolean);
  assertEquals(notes, ["short by 12345", "long by 50000", "long by 300000", "long by 300000"]);
});

Deno.test("HubSource: a server that ignores Range is read only up to the asked bytes", async () => {
  const huge = patternBytes(64 << 20, 3);
  await using s = await setup({ files: { "big.safetensors": huge } });
  const src = await s.open();
  s.hub.addFault({ fault: { kind: "ignore-range" }, file: "big.safetensors", times: 3 });
  assertBytes(await src.read("big.safetensors", 1000, 3000), huge.subarray(1000, 3000), "small");
  assertBytes(
    await src.read("big.safetensors", 4_000_000, 6_000_000),
    huge.subarray(4_000_000, 6_000_000),
    "streamed",
  );
  const served = s.hub.bytesFor("big.safetensors");
  assert(served < 24 << 20, `server sent ${served} of ${huge.length} bytes before being cancelled`);
  assert(s.hub.stats.log.some((l) => l.fault === "ignored Range"));
});

Deno.test("HubSource: a server that compresses whenever allowed still gives exact bytes", async () => {
  // fetch decodes gzip itself but leaves Content-Length counting encoded bytes; a client
  // trusting it would cut or misjudge the body. (Ours asks for ranges, which are never compressed.)
  await using s = await setup({
    faults: [
      { fault: { kind: "gzip" }, file: "config.json", times: Infinity },
      { fault: { kind: "gzip" }, file: "model.safetensors", times: Infinity },
    ],
  });
  const src = await s.open();
  assertEquals(await src.readText("config.json"), CONFIG);
  assertBytes(await src.read("model.safetensors", 10, 5000), WEIGHTS.subarray(10, 5000), "small");
  assertBytes(await src.read("model.safetensors", 0, 3_000_000), WEIGHTS, "whole file");
});

Deno.test("HubSource: a redirect to another origin drops the token, and the download succeeds", async () => {
  await using s = await setup({ gated: true, redirect: /\.safetensors$/ });
  const src = await s.open({ token: MOCK_TOKEN });
  assertBytes(
    await src.read("model.safetensors", 0, 1_500_000),
    WEIGHTS.subarray(0, 1_500_000),
    "r",
  );
  assertBytes(await src.read("model.safetensors", 9, 99), WEIGHTS.subarray(9, 99), "small");
  assert(s.hub.stats.cdnRequests >= 2, "the CDN served the file");
  assertEquals(s.hub.stats.cdnAuthorizationSeen, 0);
  assert(s.hub.stats.hubAuthorizationSeen >= 2, "the Hub itself got the token");
  // An error at the CDN is the CDN's, not a token problem, and its signed URL is not shown.
  // (Twice: the first 403 only says the remembered URL expired, and the file is resolved again.)
  s.hub.addFault({
    fault: { kind: "status", status: 403 },
    file: "model.safetensors",
    server: "cdn",
    times: 2,
  });
  const e = await gqaError(src.read("model.safetensors", 2_000_000, 2_000_100));
  assertEquals(e.code, "network");
  assert(e.message.includes(new URL(s.hub.cdnOrigin).host) && !e.message.includes("Signature"));
});

Deno.test("HubSource: a stalled body is abandoned after timeoutMs and resumed", async () => {
  await using s = await setup({
    faults: [{ fault: { kind: "stall", after: 200_000, ms: 20_000 }, file: "model.safetensors" }],
  });
  const src = await s.open({ retry: { ...FAST, timeoutMs: 150 } });
  const t = performance.now();
  assertBytes(
    await src.read("model.safetensors", 0, 1_500_000),
    WEIGHTS.subarray(0, 1_500_000),
    "s",
  );
  assert(performance.now() - t < 5000);
  const ranges = s.hub.stats.log.filter((l) => l.path.endsWith("model.safetensors")).map((l) =>
    l.range
  );
  assertEquals(ranges.slice(-1), ["bytes=200000-1499999"]);
});

Deno.test("openSource honours HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE", async () => {
  await using s = await setup({ gated: true });
  const saved = ["HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_TOKEN_PATH"].map((
    k,
  ) => [k, Deno.env.get(k)]);
  try {
    Deno.env.set("HF_TOKEN_PATH", join(s.cache, "no-token-file"));
    Deno.env.set("HF_ENDPOINT", s.hub.endpoint + "/");
    Deno.env.set("HF_TOKEN", MOCK_TOKEN);
    Deno.env.delete("HF_HUB_OFFLINE");
    const base = { model: "test/tiny", cacheDir: s.cache, hfCacheDir: false as const, retry: FAST };
    const src = await openSource(base);
    assertEquals(await src.readText("config.json"), CONFIG);
    Deno.env.set("HF_HUB_OFFLINE", "1");
    s.hub.resetStats();
    const off = await openSource(base);
    assertEquals(await off.readText("config.json"), CONFIG);
    assertEquals(s.hub.stats.requests, 0);
    Deno.env.delete("HF_HUB_OFFLINE");
    Deno.env.delete("HF_TOKEN");
    assertEquals((await gqaError(openSource(base))).code, "auth");
  } finally {
    for (const [k, v] of saved) v === undefined ? Deno.env.delete(k!) : Deno.env.set(k!, v);
  }
});
