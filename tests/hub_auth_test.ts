/**
 * First contact with real setups, against the mock Hub: where the token comes from (as
 * `huggingface_hub` looks for it), the precise message of every Hub error kind
 * (`X-Error-Code` + `X-Error-Message`), the token in no message or stack whatever fails,
 * the waits a rate-limited server asks for, branch resolution online and offline, and the
 * environment's offline flags and `~` paths.
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { GqaError } from "../errors.ts";
import { gqaError, withEnv } from "./_helpers.ts";
import {
  expandHome,
  findToken,
  hfHomeDir,
  HubError,
  hubFetch,
  offlineFromEnv,
  openSource,
  type OpenSourceOptions,
  Progress,
  serverWaitMs,
} from "../model/source/mod.ts";
import { hfHubCacheDir } from "../model/source/hf_cache.ts";
import { defaultRangeCacheDir } from "../model/source/range_cache.ts";
import {
  makeHfCacheDir,
  makeRepoDir,
  MOCK_COMMIT,
  MOCK_REPO,
  MOCK_TOKEN,
  type MockHub,
  type MockRepo,
  startMockHub,
} from "./mock_hub.ts";

const assertEquals = (a: unknown, b: unknown, msg?: string) => assert.deepStrictEqual(a, b, msg);
const FAST = { baseDelayMs: 1, maxDelayMs: 4, attempts: 3 };
const CONFIG = JSON.stringify({ architectures: ["LlamaForCausalLM"], hidden_size: 64 });
const OTHER = "fedcba9876543210fedcba9876543210fedcba98";
const TOKEN_VARS = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME"];

/** A mock Hub serving `repos` (each with config.json), a temp folder, and an opener. */
async function hubWith(repos: Record<string, MockRepo>) {
  const dir = await makeRepoDir({ "config.json": CONFIG });
  const all = Object.fromEntries(Object.entries(repos).map(([k, r]) => [k, { dir, ...r }]));
  const hub = await startMockHub({ repos: all });
  const tmp = await Deno.makeTempDir({ prefix: "gqa-auth-test-" });
  return {
    hub,
    tmp,
    open: (extra: Partial<OpenSourceOptions> = {}) =>
      openSource({
        model: MOCK_REPO,
        endpoint: hub.endpoint,
        cacheDir: join(tmp, "cache"),
        hfCacheDir: false,
        offline: false,
        retry: FAST,
        token: "",
        ...extra,
      }),
    async [Symbol.asyncDispose]() {
      await hub.close();
      await Deno.remove(tmp, { recursive: true });
      await Deno.remove(dir, { recursive: true });
    },
  };
}

// --- where the token comes from ---------------------------------------------------------

Deno.test("findToken: HF_TOKEN, then HUGGING_FACE_HUB_TOKEN, then HF_TOKEN_PATH, then $HF_HOME/token", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const named = join(tmp, "named-token"), home = join(tmp, "hf");
    await Deno.writeTextFile(named, "hf_fromPathFile\n");
    await Deno.mkdir(home);
    await Deno.writeTextFile(join(home, "token"), "  hf_fromHomeFile\r\n");
    const all: Record<string, string> = {
      HF_TOKEN: "hf_fromEnv",
      HUGGING_FACE_HUB_TOKEN: "hf_fromOldEnv",
      HF_TOKEN_PATH: named,
      HF_HOME: home,
      HOME: tmp,
    };
    const without = (...drop: string[]) => (k: string) => drop.includes(k) ? undefined : all[k];
    assertEquals(findToken(without()).token, "hf_fromEnv");
    assert(/HF_TOKEN environment variable/.test(findToken(without()).source));
    assertEquals(findToken(without("HF_TOKEN")).token, "hf_fromOldEnv");
    // An empty variable counts as unset, as in Python (`os.environ.get(...) or ...`).
    const empty = (k: string) => k === "HF_TOKEN" ? "" : without("HUGGING_FACE_HUB_TOKEN")(k);
    assertEquals(findToken(empty).token, "hf_fromPathFile"); // the trailing newline stripped
    assert(/HF_TOKEN_PATH/.test(findToken(empty).source), findToken(empty).source);
    const fromHome = findToken(without("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"));
    assertEquals(fromHome.token, "hf_fromHomeFile");
    assertEquals(fromHome.source, "the token saved by `hf auth login` in ~/hf/token");
    // HF_HOME defaults to ${XDG_CACHE_HOME:-~/.cache}/huggingface.
    await Deno.mkdir(join(tmp, ".cache", "huggingface"), { recursive: true });
    await Deno.writeTextFile(join(tmp, ".cache", "huggingface", "token"), "hf_default\n");
    const bare = (k: string) => k === "HOME" ? tmp : undefined;
    assertEquals(findToken(bare).token, "hf_default");
    assertEquals(findToken(bare).source.endsWith("in ~/.cache/huggingface/token"), true);
    // A missing file is no token (not an error), and the source says where we looked.
    const missing = findToken((k) => ({ HF_TOKEN_PATH: join(tmp, "nope"), HOME: tmp })[k]);
    assertEquals(missing.token, undefined);
    assert(missing.source.includes("no token file at ~/nope"), missing.source);
    // "~" in HF_TOKEN_PATH is the home folder.
    assertEquals(
      findToken((k) => ({ HF_TOKEN_PATH: "~/named-token", HOME: tmp })[k]).token,
      "hf_fromPathFile",
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("openSource finds each token source, names it in a status line, and the Hub accepts it", async () => {
  await using s = await hubWith({ [MOCK_REPO]: { gated: true } });
  const file = join(s.tmp, "token-file"), home = join(s.tmp, "hf");
  await Deno.writeTextFile(file, MOCK_TOKEN + "\n");
  await Deno.mkdir(home);
  await Deno.writeTextFile(join(home, "token"), MOCK_TOKEN + "\n");
  const none = Object.fromEntries(TOKEN_VARS.map((k) => [k, undefined]));
  const cases: [Record<string, string>, RegExp][] = [
    [{ HF_TOKEN: MOCK_TOKEN }, /^using the token in the HF_TOKEN environment variable$/],
    [{ HUGGING_FACE_HUB_TOKEN: MOCK_TOKEN }, /^using the token in the HUGGING_FACE_HUB_TOKEN/],
    [
      { HF_TOKEN_PATH: file, HF_HOME: join(s.tmp, "empty") },
      /^using the token in the file HF_TOKEN_PATH names/,
    ],
    [{ HF_HOME: home }, /^using the token saved by `hf auth login` in .*hf\/token$/],
  ];
  for (const [vars, pattern] of cases) {
    const lines: string[] = [];
    const src = await withEnv(
      { ...none, ...vars },
      () => s.open({ token: undefined, log: (l) => lines.push(l) }),
    );
    assertEquals(await src.readText("config.json"), CONFIG);
    assertEquals(lines.length, 1, JSON.stringify(vars));
    assert(pattern.test(lines[0]), lines[0]);
    assert(!lines[0].includes(MOCK_TOKEN));
  }
  // Precedence against the Hub: a wrong HF_TOKEN wins over a right token file, and is named.
  const wrong = "hf_WrongButFirst0123456789abcdef";
  const e = await withEnv(
    { ...none, HF_TOKEN: wrong, HF_HOME: home },
    () => gqaError(s.open({ token: undefined })),
  );
  assert(/rejected the token in the HF_TOKEN environment variable/.test(e.message), e.message);
  assert(!e.message.includes(wrong));
  // No token anywhere: the 401 says where we looked.
  const e2 = await withEnv(
    { ...none, HF_HOME: join(s.tmp, "nowhere") },
    () => gqaError(s.open({ token: undefined })),
  );
  assert(/no token file at/.test(e2.message) && /hf auth login/.test(e2.message), e2.message);
});

// --- the Hub's errors, one by one -------------------------------------------------------

Deno.test("the mock answers a wrong token with 401 Invalid credentials, as the real Hub does", async () => {
  await using s = await hubWith({ [MOCK_REPO]: {} }); // even a public repo
  const e = await gqaError(s.open({ token: "hf_NotAKnownToken0123456789abcd" }));
  assertEquals(s.hub.stats.log[0].status, 401);
  assert(e instanceof HubError);
  assertEquals(e.status, 401);
  assertEquals(e.hubMessage, "Invalid credentials in Authorization header");
});

Deno.test("each Hub error kind gets its own message naming repo, file and revision", async () => {
  await using s = await hubWith({
    [MOCK_REPO]: { gated: true },
    "test/none": { gated: true, access: "none" },
    "test/pending": { gated: true, access: "pending" },
    "test/private": { private: true },
    "test/public": {},
  });
  const names = (e: GqaError, repo: string, rev = "main") => {
    for (const want of [repo, "config.json", `"${rev}"`]) {
      assert(e.message.includes(want), `lacks ${want}: ${e.message}`);
    }
  };
  const cases: {
    what: string;
    o: Partial<OpenSourceOptions>;
    code: string;
    status: number;
    hub: string;
    want: RegExp[];
  }[] = [
    {
      what: "gated, no token",
      o: {},
      code: "auth",
      status: 401,
      hub: "GatedRepo",
      want: [/gated/, /hf auth login/, /HF_TOKEN/, /accept the licence at http.*test\/tiny/],
    },
    {
      what: "token rejected",
      o: { token: "hf_BadToken0123456789abcdefghij" },
      code: "auth",
      status: 401,
      hub: "",
      want: [/rejected the token passed as an option/, /Invalid credentials/, /new read token/],
    },
    {
      what: "licence not accepted",
      o: { model: "test/none", token: MOCK_TOKEN },
      code: "auth",
      status: 403,
      hub: "GatedRepo",
      want: [/accepted the token/, /licence/, /not in the authorized list/, /same account/],
    },
    {
      what: "licence pending",
      o: { model: "test/pending", token: MOCK_TOKEN },
      code: "auth",
      status: 403,
      hub: "GatedRepo",
      want: [/pending review/, /awaiting a review/],
    },
    {
      what: "repo not found, no token",
      o: { model: "test/nope" },
      code: "not-found",
      status: 401,
      hub: "RepoNotFound",
      want: [/repo test\/nope was not found/, /spelling of --model/, /private/],
    },
    {
      what: "private repo, no token",
      o: { model: "test/private" },
      code: "not-found",
      status: 401,
      hub: "RepoNotFound",
      want: [/repo test\/private was not found/, /private repo/],
    },
    {
      what: "repo not found, with a token",
      o: { model: "test/nope", token: MOCK_TOKEN },
      code: "not-found",
      status: 404,
      hub: "RepoNotFound",
      want: [/repo test\/nope was not found/, /spelling/],
    },
    {
      what: "revision not found",
      o: { model: "test/public", revision: "v9" },
      code: "not-found",
      status: 404,
      hub: "RevisionNotFound",
      want: [/revision "v9" does not exist in test\/public/, /--revision/],
    },
  ];
  for (const c of cases) {
    s.hub.resetStats();
    const e = await gqaError(s.open(c.o));
    assertEquals(e.code, c.code, `${c.what}: ${e.message}`);
    assertEquals(s.hub.stats.log[0].status, c.status, c.what);
    assert(e instanceof HubError && (e.hubCode ?? "") === c.hub, `${c.what}: ${e}`);
    names(e, c.o.model ?? MOCK_REPO, c.o.revision);
    for (const w of c.want) assert(w.test(e.message), `${c.what}: no ${w} in ${e.message}`);
  }
  // A file that does not exist (EntryNotFound) at a revision that does.
  const src = await s.open({ model: "test/public" });
  const e = await gqaError(src.read("model-00001-of-00002.safetensors", 0, 8));
  assertEquals(e.code, "not-found");
  assert(/model-00001-of-00002\.safetensors does not exist in test\/public/.test(e.message));
});

// --- the token in no message and no stack -------------------------------------------------

Deno.test("with a token set, 401, 403, 404, 410, exhausted 429s and a rejecting fetch never show it", async () => {
  await using s = await hubWith({ [MOCK_REPO]: {} });
  const T = MOCK_TOKEN;
  // Each fault echoes the token in X-Error-Message, so a message that quoted the Hub would leak it.
  const echo = `token ${T} was seen`;
  for (const status of [401, 403, 404, 410, 429]) {
    s.hub.clearFaults();
    s.hub.addFault({
      fault: { kind: "status", status, errorMessage: echo },
      times: Infinity,
      file: "config.json",
    });
    const e = await gqaError(s.open({ token: T }));
    assert(e.message.length > 0 && !e.message.includes(T), `${status}: ${e.message}`);
    assert(!String(e.stack).includes(T), `${status}: stack`);
    if (status === 401 || status === 403) assert(e.message.includes("hf_***"), e.message);
    if (status === 429) assert(/rate limited/.test(e.message), e.message);
    for (let c = e.cause; c instanceof Error; c = c.cause) assert(!String(c.stack).includes(T));
  }
  s.hub.clearFaults();
  // A fetch that rejects with the Authorization header in its message.
  const rejecting: typeof fetch = (_input, init) =>
    Promise.reject(
      new TypeError(`invalid header: ${new Headers(init?.headers).get("authorization")}`),
    );
  const e = await gqaError(s.open({ token: T, fetch: rejecting }));
  assert(/connection failed/.test(e.message), e.message);
  assert(!e.message.includes(T) && !String(e.stack).includes(T), e.message);
  for (let c = e.cause; c instanceof Error; c = c.cause) {
    assert(!c.message.includes(T) && !String(c.stack).includes(T), "cause");
  }
  // The exported hubFetch's own default error, and its rejecting fetch, redact too.
  s.hub.addFault({ fault: { kind: "status", status: 410, errorMessage: echo } });
  const f = hubFetch({ endpoint: s.hub.endpoint, token: T, retry: FAST });
  const e2 = await gqaError(f(`${s.hub.endpoint}/${MOCK_REPO}/resolve/main/config.json`));
  assert(/410/.test(e2.message) && !e2.message.includes(T) && !String(e2.stack).includes(T));
  const f2 = hubFetch({ endpoint: s.hub.endpoint, token: T, retry: FAST, fetch: rejecting });
  const e3 = await gqaError(f2(`${s.hub.endpoint}/${MOCK_REPO}/resolve/main/config.json`));
  assert(!e3.message.includes(T) && !String(e3.stack).includes(T), e3.message);
});

// --- rate limits ----------------------------------------------------------------------------

Deno.test("serverWaitMs reads Retry-After in seconds and as a date, and RateLimit's t=", () => {
  const now = Date.parse("Wed, 21 Oct 2026 07:28:00 GMT");
  assertEquals(serverWaitMs(new Headers({ "retry-after": "7" }), now), 7000);
  assertEquals(
    serverWaitMs(new Headers({ "retry-after": "Wed, 21 Oct 2026 07:28:30 GMT" }), now),
    30_000,
  );
  assertEquals(
    serverWaitMs(new Headers({ "retry-after": "Wed, 21 Oct 2026 07:27:00 GMT" }), now),
    0,
  );
  assertEquals(serverWaitMs(new Headers({ ratelimit: '"api";r=0;t=55' }), now), 55_000);
  assertEquals(serverWaitMs(new Headers({ ratelimit: '"api";r=0;t=5', "retry-after": "9" })), 9000);
  assertEquals(serverWaitMs(new Headers({})), undefined);
  assertEquals(serverWaitMs(new Headers({ "retry-after": "soon" })), undefined);
});

/** hubFetch against one fault, with a recording sleep; returns the waits. */
async function waitsFor(hub: MockHub, fault: Parameters<MockHub["addFault"]>[0]["fault"]) {
  hub.clearFaults();
  hub.addFault({ fault, file: "config.json" });
  const waits: string[] = [];
  const slept: number[] = [];
  const f = hubFetch({
    endpoint: hub.endpoint,
    retry: { baseDelayMs: 1, maxDelayMs: 4, attempts: 3 },
    sleep: (ms) => {
      slept.push(ms);
      return Promise.resolve();
    },
    onWait: (ms, why) => waits.push(`${why} ${Math.round(ms)}`),
  });
  const res = await f(`${hub.endpoint}/${MOCK_REPO}/resolve/main/config.json`);
  assertEquals(await res.text(), CONFIG);
  return { slept, waits };
}

Deno.test("a 429 waits what Retry-After (seconds or date) or RateLimit t= asks, beyond the backoff cap", async () => {
  await using s = await hubWith({ [MOCK_REPO]: {} });
  const a = await waitsFor(s.hub, { kind: "status", status: 429, retryAfter: 7 });
  assertEquals(a.slept.length, 1);
  assert(a.slept[0] >= 7000 && a.slept[0] < 7100, `${a.slept}`);
  assertEquals(a.waits, ["rate limited by the Hub 7000"]);
  const date = new Date(Date.now() + 40_000).toUTCString();
  const b = await waitsFor(s.hub, { kind: "status", status: 429, retryAfter: date });
  assert(b.slept[0] >= 38_000 && b.slept[0] <= 40_000, `${b.slept}`);
  const c = await waitsFor(s.hub, { kind: "status", status: 429, rateLimit: '"api";r=0;t=120' });
  assert(c.slept[0] >= 120_000 && c.slept[0] < 120_100, `${c.slept}`);
  // More than 5 minutes: not sat out, but reported at once as a rate limit.
  s.hub.addFault({ fault: { kind: "status", status: 429, retryAfter: 900 }, file: "config.json" });
  const slept: number[] = [];
  const f = hubFetch({
    endpoint: s.hub.endpoint,
    sleep: (ms) => (slept.push(ms), Promise.resolve()),
  });
  const e = await gqaError(f(`${s.hub.endpoint}/${MOCK_REPO}/resolve/main/config.json`));
  assert(/rate limited/.test(e.message) && /900 s/.test(e.message), e.message);
  assertEquals(slept, []);
});

Deno.test("after a 429 with Retry-After: 1 the client does not retry before the second has passed", async () => {
  await using s = await hubWith({ [MOCK_REPO]: {} });
  s.hub.addFault({ fault: { kind: "status", status: 429, retryAfter: 1 }, file: "config.json" });
  const times: number[] = [];
  const timed: typeof fetch = (input, init) => {
    times.push(performance.now());
    return fetch(input, init);
  };
  const src = await s.open({ fetch: timed, retry: { baseDelayMs: 1, maxDelayMs: 4, attempts: 3 } });
  assertEquals(await src.readText("config.json"), CONFIG);
  assertEquals(s.hub.stats.log[0].status, 429);
  assert(times[1] - times[0] >= 990, `retried after ${times[1] - times[0]} ms`);
});

Deno.test("Progress shows a wait on the bar until the next byte arrives", () => {
  const out: string[] = [];
  let t = 0;
  const p = new Progress({
    show: true,
    write: (x) => out.push(x),
    now: () => (t += 200),
    label: "layer 1/3",
  });
  p.add(100, "network");
  p.waiting(30_000, "rate limited by the Hub");
  assert(
    out.at(-1)!.includes("layer 1/3  downloading") &&
      out.at(-1)!.includes("rate limited by the Hub, waiting 30s"),
    out.at(-1),
  );
  p.setLabel("layer 2/3");
  assert(out.at(-1)!.includes("layer 2/3  downloading"), out.at(-1));
  p.add(10, "network");
  assert(!out.at(-1)!.includes("waiting"), out.at(-1));
});

// --- revisions and the environment ---------------------------------------------------------

Deno.test("online, a branch is asked of the Hub (not the cache's refs/); offline, refs/ is used", async () => {
  await using s = await hubWith({ [MOCK_REPO]: { commit: OTHER } }); // main has moved to OTHER
  const hf = await makeHfCacheDir({ "config.json": '{"old":true}' }); // refs/main → MOCK_COMMIT
  try {
    const online = await s.open({ hfCacheDir: hf });
    assertEquals(online.revision, OTHER);
    assertEquals(await online.readText("config.json"), CONFIG);
    const offline = await s.open({ hfCacheDir: hf, offline: true });
    assertEquals(offline.revision, MOCK_COMMIT);
    assertEquals(await offline.readText("config.json"), '{"old":true}');
    // Online but the Hub unreachable: the cache's record stands in, as in Python.
    await s.hub.close();
    const unreachable = await s.open({ hfCacheDir: hf, cacheDir: join(s.tmp, "cold") });
    assertEquals(unreachable.revision, MOCK_COMMIT);
    assertEquals(await unreachable.readText("config.json"), '{"old":true}');
  } finally {
    await Deno.remove(hf, { recursive: true });
  }
});

Deno.test("TRANSFORMERS_OFFLINE counts like HF_HUB_OFFLINE; ~ expands in HF_HOME, HF_HUB_CACHE, GQA_VIZ_CACHE", async () => {
  const env = (m: Record<string, string>) => (k: string) => m[k];
  assertEquals(offlineFromEnv(env({ TRANSFORMERS_OFFLINE: "1" })), true);
  assertEquals(offlineFromEnv(env({ HF_HUB_OFFLINE: "yes" })), true);
  assertEquals(offlineFromEnv(env({ HF_HUB_OFFLINE: "0", TRANSFORMERS_OFFLINE: "1" })), false);
  assertEquals(offlineFromEnv(env({})), false);
  assertEquals(expandHome("~", env({ HOME: "/u" })), "/u");
  assertEquals(expandHome("~user/x", env({ HOME: "/u" })), "~user/x");
  assertEquals(hfHomeDir(env({ HF_HOME: "~/hf", HOME: "/u" })), "/u/hf");
  assertEquals(hfHomeDir(env({ XDG_CACHE_HOME: "~/xdg", HOME: "/u" })), "/u/xdg/huggingface");
  assertEquals(hfHubCacheDir(env({ HF_HOME: "~/hf", HOME: "/u" })), "/u/hf/hub");
  assertEquals(hfHubCacheDir(env({ HF_HUB_CACHE: "~/hub", HOME: "/u" })), "/u/hub");
  assertEquals(defaultRangeCacheDir(env({ GQA_VIZ_CACHE: "~/g", HOME: "/u" })), "/u/g");
  // And openSource obeys TRANSFORMERS_OFFLINE: no request to the Hub.
  await using s = await hubWith({ [MOCK_REPO]: {} });
  const e = await withEnv(
    { HF_HUB_OFFLINE: undefined, TRANSFORMERS_OFFLINE: "1" },
    () => gqaError(s.open({ offline: undefined })),
  );
  assert(/HF_HUB_OFFLINE/.test(e.message), e.message);
  assertEquals(s.hub.stats.requests, 0);
  assertEquals(MOCK_COMMIT.length, 40);
});
