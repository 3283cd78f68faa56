/**
 * Model sources other than the network: a local folder, the Hugging Face cache (read with
 * no request to the Hub), openSource's choice and its input checks, and the progress bar.
 * @module
 */
import assert from "node:assert/strict";
import { gqaError } from "./_helpers.ts";
import { LocalSource } from "../model/source/local.ts";
import { checkFileName, isRepoId, openSource, repoFolderName } from "../model/source/mod.ts";
import { hfHubCacheDir } from "../model/source/hf_cache.ts";
import { defaultRangeCacheDir } from "../model/source/range_cache.ts";
import {
  formatBytes,
  formatDuration,
  Progress,
  type ProgressInfo,
  progressLine,
  progressWanted,
} from "../model/source/progress.ts";
import {
  makeHfCacheDir,
  makeRepoDir,
  MOCK_COMMIT,
  patternBytes,
  startMockHub,
} from "./mock_hub.ts";

const assertEquals = (a: unknown, b: unknown, msg?: string) => assert.deepStrictEqual(a, b, msg);

function assertBytes(actual: Uint8Array, expected: Uint8Array, what: string) {
  assertEquals(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) throw new Error(`${what}: byte ${i} differs`);
  }
}

const SHARD1 = patternBytes(200_000, 1);
const SHARD2 = patternBytes(150_001, 2);
const CONFIG = '{"architectures":["LlamaForCausalLM"]}';

Deno.test("LocalSource reads exactly the asked byte ranges of each shard", async () => {
  const dir = await makeRepoDir({
    "config.json": CONFIG,
    "model-00001-of-00002.safetensors": SHARD1,
    "model-00002-of-00002.safetensors": SHARD2,
    "model.safetensors.index.json": "{}",
  });
  try {
    const src = await openSource({ model: dir });
    assert(src instanceof LocalSource);
    assertEquals(src.name, dir);
    assertEquals(src.revision, "local");
    assertEquals(await src.readText("config.json"), CONFIG);
    assertEquals(await src.size("model-00002-of-00002.safetensors"), SHARD2.length);
    assert(await src.exists("model.safetensors.index.json"));
    assert(!(await src.exists("model.safetensors")));
    const before = src.stats.bytesFetched;
    for (const [b, e] of [[0, 8], [1, 149_999], [150_000, 150_001]]) {
      assertBytes(
        await src.read("model-00002-of-00002.safetensors", b, e),
        SHARD2.subarray(b, e),
        "s2",
      );
    }
    assertBytes(
      await src.read("model-00001-of-00002.safetensors", 7, 8),
      SHARD1.subarray(7, 8),
      "s1",
    );
    assertEquals(src.stats.bytesFetched - before, 8 + 149_998 + 1 + 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("LocalSource refuses missing files, ranges past the end, paths leaving the folder and bad UTF-8", async () => {
  const dir = await makeRepoDir({
    "a.bin": new Uint8Array(10),
    "bad.json": new Uint8Array([0xff, 0xfe]),
  });
  try {
    const src = new LocalSource({ dir });
    const missing = await gqaError(src.read("model.safetensors", 0, 1));
    assertEquals(missing.code, "not-found");
    assert(missing.message.includes("model.safetensors") && missing.message.includes(dir));
    const past = await gqaError(src.read("a.bin", 5, 11));
    assertEquals(past.code, "bad-file");
    assert(past.message.includes("only 10 bytes"), past.message);
    assertEquals((await gqaError(src.read("a.bin", 6, 5))).code, "bad-input");
    assertEquals((await gqaError(src.read("a.bin", -1, 5))).code, "bad-input");
    for (const evil of ["../a.bin", "/etc/passwd", "x/../../a.bin", "", "a\\b", "C:/x"]) {
      assertEquals((await gqaError(src.read(evil, 0, 1))).code, "bad-file", evil);
    }
    assertEquals((await gqaError(src.readText("bad.json"))).code, "bad-file");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openSource: a folder, a repo id, or a clear bad-input error", async () => {
  for (const ok of ["meta-llama/Meta-Llama-3-8B", "gpt2", "a_b/c.d-e", "Qwen/Qwen2.5-0.5B"]) {
    assert(isRepoId(ok), ok);
  }
  for (const bad of ["a/b/c", "./x", "/abs", "a--b/c", "a/b..c", "-a/b", "a/b-", "", "a b/c"]) {
    assert(!isRepoId(bad), bad);
  }
  const e = await gqaError(openSource({ model: "./no/such/folder", hfCacheDir: false }));
  assertEquals(e.code, "bad-input");
  assert(e.message.includes("neither a folder") && e.message.includes("owner/name"), e.message);
  const file = await Deno.makeTempFile();
  try {
    assertEquals((await gqaError(openSource({ model: file }))).code, "bad-input");
  } finally {
    await Deno.remove(file);
  }
  assertEquals((await gqaError(openSource({ model: "" }))).code, "bad-input");
  assertEquals(
    (await gqaError(openSource({ model: "a/b", endpoint: "ftp://x", hfCacheDir: false }))).code,
    "bad-input",
  );
  assertEquals((await gqaError(() => checkFileName("a/./b", "here"))).code, "bad-file");
});

Deno.test("hfHubCacheDir and defaultRangeCacheDir follow HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, HOME", () => {
  const env = (m: Record<string, string>) => (k: string) => m[k];
  assertEquals(hfHubCacheDir(env({ HF_HUB_CACHE: "/c", HF_HOME: "/h", HOME: "/u" })), "/c");
  assertEquals(hfHubCacheDir(env({ HF_HOME: "/h", HOME: "/u" })), "/h/hub");
  assertEquals(hfHubCacheDir(env({ XDG_CACHE_HOME: "/x", HOME: "/u" })), "/x/huggingface/hub");
  assertEquals(hfHubCacheDir(env({ HOME: "/u" })), "/u/.cache/huggingface/hub");
  assertEquals(hfHubCacheDir(env({})), undefined);
  assertEquals(defaultRangeCacheDir(env({ GQA_VIZ_CACHE: "/g", HOME: "/u" })), "/g");
  assertEquals(defaultRangeCacheDir(env({ HOME: "/u" })), "/u/.cache/gqa-viz");
  assertEquals(repoFolderName("meta-llama/Meta-Llama-3-8B"), "models--meta-llama--Meta-Llama-3-8B");
});

function makeHfCache(files: Record<string, Uint8Array | string>, missing: string[] = []) {
  return makeHfCacheDir(files, { missing });
}

Deno.test("HubSource reads a model from the Hugging Face cache without any request", async () => {
  const hf = await makeHfCache(
    { "config.json": CONFIG, "model.safetensors": SHARD1 },
    ["model.safetensors.index.json"],
  );
  const repoDir = await makeRepoDir({
    "config.json": CONFIG,
    "model.safetensors": SHARD1,
    "tokenizer.json": '{"tok":1}',
  });
  const cache = await Deno.makeTempDir();
  const hub = await startMockHub({ repos: { "test/tiny": { dir: repoDir } } });
  try {
    const open = (offline: boolean) =>
      openSource({
        model: "test/tiny",
        endpoint: hub.endpoint,
        hfCacheDir: hf,
        cacheDir: cache,
        token: "",
        offline,
      });
    for (const offline of [false, true]) {
      const src = await open(offline);
      assertEquals(src.revision, MOCK_COMMIT);
      assertEquals(await src.readText("config.json"), CONFIG);
      assertBytes(
        await src.read("model.safetensors", 3, 190_003),
        SHARD1.subarray(3, 190_003),
        "hf",
      );
      assert(!(await src.exists("model.safetensors.index.json"))); // from .no_exist
      const fromDisk = src.stats.bytesFetched - (src.stats.bytesDownloaded ?? 0);
      assertEquals(fromDisk, CONFIG.length + 190_000);
      // Online, the branch is asked of the Hub (one size probe), as huggingface_hub does;
      // offline, refs/main is trusted. The files themselves come from the cache either way.
      assertEquals(hub.stats.requests, offline ? 0 : 1, `offline=${offline}`);
      if (!offline) assertEquals(hub.stats.log[0].range, "bytes=0-0");
      hub.resetStats();
    }
    // A file the snapshot lacks comes from the Hub, and only that file.
    const src = await open(false);
    hub.resetStats(); // the branch's probe
    assertEquals(await src.readText("tokenizer.json"), '{"tok":1}');
    assert(hub.stats.requests > 0);
    assert(hub.stats.log.every((l) => l.path.endsWith("/tokenizer.json")), "only tokenizer.json");
  } finally {
    await hub.close();
    for (const d of [hf, repoDir, cache]) await Deno.remove(d, { recursive: true });
  }
});

Deno.test("progressLine shows percent, bytes, rate and ETA; formatBytes/formatDuration", () => {
  const line = progressLine(
    { bytes: 1.02e9, total: 2.19e9, elapsedMs: 12_000, rate: 85.3e6, etaMs: 14_000 },
    { width: 10 },
  );
  assertEquals(line, "reading  █████░░░░░   46%  1.02 GB / 2.19 GB  85.3 MB/s  ETA 14s");
  assertEquals(progressLine({ bytes: 512, elapsedMs: 0, rate: 0 }), "reading  512 B");
  assertEquals(formatBytes(16.06e9), "16.1 GB");
  assertEquals(formatBytes(999), "999 B");
  assertEquals(formatDuration(185_000), "3m05s");
  assertEquals(formatDuration(3_720_000), "1h02m");
  assertEquals(progressWanted({ quiet: true }), false);
});

Deno.test("Progress draws only when shown, at most every minIntervalMs, and erases itself", () => {
  let t = 0;
  const out: string[] = [];
  const seen: ProgressInfo[] = [];
  const p = new Progress({
    show: true,
    total: 1000,
    now: () => t,
    write: (s) => out.push(s),
    onProgress: (i) => seen.push(i),
    minIntervalMs: 100,
  });
  p.add(100); // t=0: drawn
  t = 50;
  p.add(100); // too soon
  t = 1000;
  p.add(300); // drawn: 500 B in 1 s → ETA 1 s
  assertEquals(out.length, 2);
  assert(out[1].startsWith("\r") && out[1].includes("50%") && out[1].includes("ETA 1s"), out[1]);
  assertEquals(seen.length, 3);
  assertEquals(seen[2].bytes, 500);
  p.finish();
  assertEquals(out.at(-1), "\r\x1b[K");

  const hidden: string[] = [];
  const q = new Progress({ show: false, write: (s) => hidden.push(s) });
  q.add(10);
  q.finish();
  assertEquals(hidden, []);
});

Deno.test("openSource reports progress through onProgress with the expected total", async () => {
  const dir = await makeRepoDir({ "a.bin": SHARD1 });
  try {
    const seen: ProgressInfo[] = [];
    const src = await openSource({ model: dir, onProgress: (p) => seen.push(p) });
    src.expectBytes?.(150_000);
    await src.read("a.bin", 0, 100_000);
    await src.read("a.bin", 100_000, 150_000);
    src.close?.();
    assertEquals(seen.map((s) => s.bytes), [100_000, 150_000]);
    assertEquals(seen[1].total, 150_000);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
