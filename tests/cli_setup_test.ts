/**
 * The viz CLI meeting real setups: every bad argument refused (exit 2) before the first
 * weight byte leaves the (mock) Hub, a checkpoint without tokenizer.json run with
 * --token-ids from a folder, a weights-only Hugging Face cache offline and the Hub online,
 * and on a terminal (a pseudo-terminal, `script`) every status line starting a line of its own.
 * @module
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { makeTinyModel } from "../scripts/make_tiny_model.ts";
import { headerLength } from "../model/safetensors.ts";
import { gpuTest, withEnv } from "./_helpers.ts";
import { cli } from "./_cli.ts";
import { makeHfCacheDir, MOCK_REPO, startMockHub } from "./mock_hub.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** The terminal's "erase to the end of the line" (ESC [ K), which the progress bar uses. */
const ERASE_LINE = String.fromCharCode(27) + "[K";

/** The files of the tiny model's folder, by name. */
async function modelFiles(dir: string): Promise<Record<string, Uint8Array>> {
  const files: Record<string, Uint8Array> = {};
  for (const e of Deno.readDirSync(dir)) {
    if (e.isFile) files[e.name] = await Deno.readFile(join(dir, e.name));
  }
  return files;
}

/** Where each shard's weights begin (8 + its header length): bytes past it are weights. */
function weightStarts(files: Record<string, Uint8Array>): Map<string, number> {
  const starts = new Map<string, number>();
  for (const [name, bytes] of Object.entries(files)) {
    if (!name.endsWith(".safetensors")) continue;
    starts.set(
      name,
      8 + headerLength(bytes.subarray(0, 8), { file: name, fileSize: bytes.length }),
    );
  }
  return starts;
}

Deno.test("viz refuses every bad argument with exit 2 before the first weight byte is fetched", async () => {
  const { dir } = await makeTinyModel();
  const files = await modelFiles(dir);
  const starts = weightStarts(files);
  const tmp = await Deno.makeTempDir({ prefix: "gqa-bad-input-" });
  await using hub = await startMockHub({ repos: { [MOCK_REPO]: { dir } } });
  const ro = join(tmp, "read-only");
  await Deno.mkdir(ro);
  await Deno.chmod(ro, 0o555);
  const env = {
    HF_ENDPOINT: hub.endpoint,
    HF_HOME: join(tmp, "hf"),
    HF_TOKEN: undefined,
    HF_TOKEN_PATH: undefined,
    HF_HUB_OFFLINE: undefined,
    GQA_VIZ_CACHE: join(tmp, "cache"),
  };
  const svg = join(tmp, "ok.svg");
  const base = ["--model", MOCK_REPO, "--quiet"];
  const cases: [string[], RegExp][] = [
    [["--layer", "9", "--out", svg], /--layer 9 is out of range.*valid range is 0 to 3/],
    [["--layer", "-1", "--out", svg], /--layer must be a whole number ≥ 0, got -1/],
    [
      ["--layer", "1", "--token-ids", "1,2,3", "--token", "3", "--out", svg],
      /--token 3 is out of range.*0 to 2/,
    ],
    [
      ["--layer", "1", "--prompt", "Hi", "--token", "99", "--out", svg],
      /--token 99 is out of range: the prompt has \d+ tokens/,
    ],
    [["--layer", "1", "--token-ids", "1,999999", "--out", svg], /outside the model's vocabulary/],
    [["--layer", "1", "--dims", "0", "--out", svg], /--dims must be a whole number ≥ 1/],
    [["--layer", "1", "--dims", "16-19", "--out", svg], /--dims 16-19 starts past the head/],
    [["--layer", "1", "--show", "v", "--out", svg], /--show must be "k" or "qk"/],
    [["--layer", "1", "--rope", "mid", "--out", svg], /--rope must be "pre" or "post"/],
    [["--layer", "1", "--out", join(tmp, "missing", "x.svg")], /folder .*missing does not exist/],
    [["--layer", "1", "--out", tmp], /it is a directory/],
    [
      ["--layer", "1", "--out", svg, "--save-tensors", join(tmp, "nope", "t.st")],
      /--save-tensors .*does not exist/,
    ],
    [
      ["--layer", "1", "--out", svg, "--save-tensors", "/sys/gqa-test.safetensors"],
      /--save-tensors .*not writable/,
    ],
    [["--layer", "1", "--out", svg, "--save-tensors", tmp], /--save-tensors .*it is a directory/],
  ];
  if (Deno.uid() !== 0) {
    // root writes anywhere, so the read-only folder refuses only other users (the /sys case covers root).
    cases.push([["--layer", "1", "--out", join(ro, "x.svg")], /--out .*not writable/]);
  }
  try {
    for (const [args, pattern] of cases) {
      hub.resetStats();
      const r = await withEnv(env, () => cli([...base, ...args]));
      assertEquals(r.code, 2, `${args.join(" ")}: ${r.err}`);
      assert(pattern.test(r.err), `${args.join(" ")}: ${r.err}`);
      assert(r.err.startsWith("error: ") && !/\n\s+at /.test(r.err), r.err);
      for (const [shard, start] of starts) {
        // The byte counter: header bytes, plus one byte per size probe (`Range: bytes=0-0`).
        const probes = hub.stats.log.filter((l) =>
          l.path.endsWith(shard) && l.range === "bytes=0-0"
        );
        const served = hub.bytesFor(shard);
        assert(
          served <= start + probes.length,
          `${args.join(" ")}: ${served} bytes of ${shard} (weights start at ${start})`,
        );
      }
      const weightRanges = hub.stats.log.filter((l) => {
        const m = /^bytes=(\d+)-(\d+)$/.exec(l.range ?? "");
        const shard = l.path.split("/").pop()!;
        return starts.has(shard) && (!m || Number(m[2]) >= starts.get(shard)!);
      });
      assertEquals(weightRanges, [], args.join(" "));
    }
  } finally {
    await Deno.chmod(ro, 0o755);
    await Deno.remove(tmp, { recursive: true });
  }
});

gpuTest(
  "viz --token-ids works without tokenizer.json: a folder, a weights-only HF cache offline, the Hub",
  async () => {
    const { dir } = await makeTinyModel();
    const { "tokenizer.json": _, "tokenizer_config.json": __, ...weights } = await modelFiles(dir);
    assert(Object.keys(weights).includes("config.json"));
    const tmp = await Deno.makeTempDir({ prefix: "gqa-weights-only-" });
    const folder = join(tmp, "folder");
    await Deno.mkdir(folder);
    for (const [name, bytes] of Object.entries(weights)) {
      await Deno.writeFile(join(folder, name), bytes);
    }
    const hf = await makeHfCacheDir(weights, { dir: join(tmp, "hf-hub") });
    await using hub = await startMockHub({ repos: { [MOCK_REPO]: { files: weights } } });
    const env = {
      HF_HOME: join(tmp, "hf-home"),
      HF_HUB_CACHE: hf,
      HF_ENDPOINT: hub.endpoint,
      HF_TOKEN: undefined,
      HF_TOKEN_PATH: undefined,
      GQA_VIZ_CACHE: join(tmp, "cache"),
    };
    const args = ["--layer", "2", "--token-ids", "752,1,2", "--quiet"];
    try {
      const local = await withEnv(
        env,
        () => cli(["--model", folder, ...args, "--out", join(tmp, "a.svg")]),
      );
      assertEquals(local.code, 0, local.err);
      const offline = await withEnv(
        { ...env, HF_HUB_OFFLINE: "1" },
        () => cli(["--model", MOCK_REPO, ...args, "--out", join(tmp, "b.svg")]),
      );
      assertEquals(offline.code, 0, offline.err);
      assertEquals(hub.stats.requests, 0);
      const online = await withEnv(
        { ...env, HF_HUB_OFFLINE: undefined, HF_HUB_CACHE: join(tmp, "empty-hub") },
        () => cli(["--model", MOCK_REPO, ...args, "--out", join(tmp, "c.svg")]),
      );
      assertEquals(online.code, 0, online.err);
      assert(hub.stats.requests > 0);
      assert(hub.stats.log.every((l) => !l.path.includes("tokenizer")), "asked for the tokenizer");
      const svgs = await Promise.all(
        ["a", "b", "c"].map((n) => Deno.readTextFile(join(tmp, `${n}.svg`))),
      );
      assertEquals(svgs[2], svgs[1]); // the same repo, commit and tokens: the same picture
      assert(svgs[0].includes("<svg") && svgs[0].includes("&quot;#752&quot;"));
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
);

gpuTest(
  "on a terminal, every status line starts its own line and the bar names the layer",
  async () => {
    const script = "/usr/bin/script";
    try {
      await Deno.stat(script);
    } catch {
      console.log("skipped: util-linux `script` is not installed");
      return;
    }
    const { dir } = await makeTinyModel();
    const tmp = await Deno.makeTempDir({ prefix: "gqa-pty-" });
    try {
      const cmd = [
        Deno.execPath(),
        "run",
        "-A",
        join(ROOT, "scripts", "viz.ts"),
        "--model",
        dir,
        "--layer",
        "2",
        "--out",
        join(tmp, "x.svg"),
      ].map((a) => `'${a}'`).join(" ");
      const { code, stdout } = await new Deno.Command(script, {
        args: ["-qfec", cmd, "/dev/null"],
        env: { NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const raw = new TextDecoder().decode(stdout);
      assertEquals(code, 0, raw);
      const lines = raw.split(/\r?\n/);
      // Each status line: before its text, only carriage returns and "erase line" on that line.
      for (const text of [/layer 2 of [^\r\n]*: reading /, /layer 2 of [^\r\n]*tokens; read /]) {
        const line = lines.find((l) => text.test(l));
        assert(line !== undefined, `no ${text} in ${JSON.stringify(raw)}`);
        const before = line.slice(0, line.search(text));
        // A bar drawn earlier on the line is fine once taken back ("\r", then erased): a
        // terminal shows what follows the last carriage return.
        const shown = before.split(ERASE_LINE).join("");
        assert(before === "" || shown.endsWith("\r"), `glued: ${JSON.stringify(before)}`);
      }
      assert(
        /\rlayer [0-2]\/2 {2}reading {2}/.test(raw),
        `the bar names no layer: ${JSON.stringify(raw)}`,
      );
      assert(/s per layer \(3 layers\)/.test(raw), raw);
      assert(/wrote .*x\.svg/.test(raw));
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
);
