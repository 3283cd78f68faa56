/**
 * The viz CLI (scripts/viz.ts) end to end on the tiny model: the SVG it writes, the tensor
 * file, and every error path a user can meet, each as one paragraph and a non-zero exit.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { join } from "node:path";
import { defaultOutName } from "../scripts/viz.ts";
import { makeTinyModel } from "../scripts/make_tiny_model.ts";
import { headerLength, parseHeader } from "../model/safetensors.ts";
import { gpuTest, withEnv } from "./_helpers.ts";
import { cli } from "./_cli.ts";
import { MOCK_REPO, MOCK_TOKEN, startMockHub } from "./mock_hub.ts";

/** Asserts a one-paragraph error: one line, starting "error:", no stack trace. */
function assertCleanError(r: { code: number; err: string }, code: number, pattern: RegExp) {
  assertEquals(r.code, code, r.err);
  const lines = r.err.trim().split("\n").filter((l) => l.startsWith("error:"));
  assertEquals(lines.length, 1, r.err);
  assert(pattern.test(lines[0]), lines[0]);
  assert(!/\n\s+at /.test(r.err), "stack trace printed");
}

Deno.test("viz --help lists the options and two examples, exit 0", async () => {
  const r = await cli(["--help"]);
  assertEquals(r.code, 0);
  for (
    const o of [
      "--layer",
      "--model",
      "--revision",
      "--prompt",
      "--token-ids",
      "--token",
      "--dims",
      "--rope",
      "--show",
      "--out",
      "--save-tensors",
      "--quiet",
    ]
  ) {
    assert(r.out.includes(o), o);
  }
  assertEquals((r.out.match(/deno task viz/g) ?? []).length >= 3, true);
});

for (
  const [args, pattern] of [
    [[], /--layer is required/],
    [["--layer", "x"], /--layer must be a whole number/],
    [["--layer", "1", "--dims", "0"], /--dims must be a whole number ≥ 1/],
    [["--layer", "1", "--rope", "mid"], /--rope must be "pre" or "post"/],
    [["--layer", "1", "--show", "v"], /--show must be "k" or "qk"/],
    [["--layer", "1", "--token-ids", "1,a"], /"a" is not a token id/],
    [["--layer", "1", "--bogus"], /Unknown option '--bogus'\. Run with --help/],
    [["--layr", "1"], /Unknown option '--layr'\. Did you mean --layer\?/],
    [["--layer", "1", "--save", "x"], /Did you mean --save-tensors\?/],
    [["--layer", "1", "--dims", "9-3"], /--dims 9-3: the range must run upwards/],
    [["--layer", "1", "--dims", "4-x"], /--dims must be a whole number ≥ 1, got "4-x"/],
    [["--layer", "1", "--prompt", "x", "--token-ids", "1"], /either --prompt or --token-ids/],
    [["--layer", "-1"], /--layer must be a whole number ≥ 0, got -1\./],
    [["--layer=-1"], /--layer must be a whole number ≥ 0, got -1\./],
    [["--layer", "1", "--token", "-2"], /--token must be a whole number ≥ 0, got -2\./],
    [["--layer", "1", "--dims", "-3"], /--dims must be a whole number ≥ 1, got -3\./],
    [["--layer", "1", "--layer"], /argument missing/],
  ] as [string[], RegExp][]
) {
  Deno.test(`viz ${args.join(" ") || "(no args)"} is refused with a clear message, exit 2`, async () => {
    assertCleanError(await cli(args), 2, pattern);
  });
}

gpuTest(
  "viz --dims A-B draws dims A..B and refuses a start past the head",
  async () => {
    const { dir } = await makeTinyModel(); // HD = 16
    const tmp = await Deno.makeTempDir();
    const svgPath = join(tmp, "window.svg");
    const base = ["--model", dir, "--layer", "1", "--token-ids", "1,2,3", "--quiet"];
    const r = await cli([...base, "--dims", "10-13", "--out", svgPath]);
    assertEquals(r.code, 0, r.err);
    const svg = await Deno.readTextFile(svgPath);
    assertEquals((svg.match(/<rect [^>]*class="k"/g) ?? []).length, 32 * 4);
    assert(svg.includes("dims 10–13 of 16"), "the subtitle names the window");
    const past = await cli([...base, "--dims", "16-20", "--out", join(tmp, "past.svg")]);
    assertCleanError(
      past,
      2,
      /--dims 16-20 starts past the head: HD = 16, so the dims are 0 to 15/,
    );
    await Deno.remove(tmp, { recursive: true });
  },
);

Deno.test("viz without a WebGPU adapter explains how to get one", async () => {
  const r = await cli(["--layer", "0", "--model", "/nonexistent"], {
    gpu: () => Promise.resolve(null),
  });
  assertCleanError(r, 1, /No WebGPU adapter.*mesa-vulkan-drivers/);
});

Deno.test("defaultOutName() follows the notebook's {model}_layer_{L}_gqa_keys pattern", () => {
  assertEquals(
    defaultOutName("meta-llama/Meta-Llama-3-8B", 5),
    "Meta-Llama-3-8B_layer_5_gqa_keys.svg",
  );
  assertEquals(defaultOutName("./models/tiny-llama/", 2), "tiny-llama_layer_2_gqa_keys.svg");
});

gpuTest("viz on the tiny model writes an 8 × 4 grid SVG and the five tensors", async () => {
  const { dir } = await makeTinyModel();
  const tmp = await Deno.makeTempDir();
  const svgPath = join(tmp, "grid.svg"), stPath = join(tmp, "t.safetensors");
  const r = await cli([
    "--model",
    dir,
    "--layer",
    "2",
    "--prompt",
    "Hello world",
    "--dims",
    "12",
    "--out",
    svgPath,
    "--save-tensors",
    stPath,
    "--quiet",
  ]);
  assertEquals(r.code, 0, r.err);
  assert(r.out.includes(`wrote ${svgPath}`));
  const svg = await Deno.readTextFile(svgPath);
  assertEquals((svg.match(/<rect [^>]*class="k"/g) ?? []).length, 32 * 12);
  for (let g = 0; g < 8; g++) assert(svg.includes(`KV head ${g}<`), `KV head ${g}`);
  for (let h = 0; h < 32; h++) {
    assert(svg.includes(`id="cell-g${Math.floor(h / 4)}-h${h}"`), `Q head ${h}`);
  }

  const bytes = await Deno.readFile(stPath);
  const n = headerLength(bytes.subarray(0, 8), { file: stPath, fileSize: bytes.byteLength });
  const h = parseHeader(bytes.subarray(8, 8 + n), { file: stPath, fileSize: bytes.byteLength });
  const T = JSON.parse(h.metadata.token_ids).length;
  assertEquals(h.metadata.layer, "2");
  assertEquals(h.metadata.layers, "[2]");
  assertEquals(h.metadata.model, dir);
  const shapes = Object.fromEntries([...h.tensors].map(([k, t]) => [k, [t.dtype, ...t.shape]]));
  assertEquals(shapes, {
    "model.layers.2.self_attn.k_proj": ["F32", T, 128],
    "model.layers.2.self_attn.q_proj": ["F32", T, 512],
    "model.layers.2.self_attn.v_proj": ["F32", T, 128],
    "model.layers.2.self_attn.k_rope": ["F32", T, 128],
    "model.layers.2.self_attn.attn_weights": ["F32", 32, T, T],
  });
  await Deno.remove(tmp, { recursive: true });
});

gpuTest("viz: a layer out of range gives the valid range", async () => {
  const { dir } = await makeTinyModel();
  assertCleanError(
    await cli(["--model", dir, "--layer", "9", "--quiet"]),
    2,
    /valid range is 0 to 3/,
  );
});

gpuTest("viz: --token past the prompt gives the valid positions", async () => {
  const { dir } = await makeTinyModel();
  const tmp = await Deno.makeTempDir();
  const r = await cli([
    "--model",
    dir,
    "--layer",
    "0",
    "--token-ids",
    "1,2,3",
    "--token",
    "3",
    "--out",
    join(tmp, "x.svg"),
    "--quiet",
  ]);
  assertCleanError(r, 2, /0 to 2/);
  await Deno.remove(tmp, { recursive: true });
});

gpuTest(
  "viz: a gated model without HF_TOKEN explains the token and the licence; the token never leaks",
  async () => {
    const { dir } = await makeTinyModel();
    const tmp = await Deno.makeTempDir();
    await using hub = await startMockHub({ repos: { [MOCK_REPO]: { dir, gated: true } } });
    const env = {
      HF_ENDPOINT: hub.endpoint,
      HF_HOME: join(tmp, "hf"),
      GQA_VIZ_CACHE: join(tmp, "cache"),
    };
    const out = join(tmp, "g.svg"), st = join(tmp, "g.safetensors");
    const args = [
      "--model",
      MOCK_REPO,
      "--layer",
      "1",
      "--prompt",
      "Hi",
      "--out",
      out,
      "--save-tensors",
      st,
    ];
    const r = await withEnv({ ...env, HF_TOKEN: "" }, () => cli(args));
    assertCleanError(r, 1, /HF_TOKEN/);
    assert(/hf auth login/.test(r.err), r.err);
    assert(/licen[cs]e/i.test(r.err), r.err);
    const wrong = "hf_notTheRightToken0123456789abcd";
    const r2 = await withEnv({ ...env, HF_TOKEN: wrong }, () => cli(args));
    assertCleanError(r2, 1, /HF_TOKEN/);
    assert(!r2.err.includes(wrong), "wrong token printed");
    // With the right token it works, and the token appears nowhere: output, SVG, tensors, cache.
    const r3 = await withEnv({ ...env, HF_TOKEN: MOCK_TOKEN }, () => cli(args));
    assertEquals(r3.code, 0, r3.err);
    assert(!(r3.out + r3.err).includes(MOCK_TOKEN));
    const files: string[] = [];
    const walk = (d: string) => {
      for (const e of Deno.readDirSync(d)) {
        const p = join(d, e.name);
        if (e.isDirectory) walk(p);
        else files.push(p);
      }
    };
    walk(tmp);
    assert(files.some((f) => f.endsWith(".bin")), "the range cache was written");
    for (const f of files) {
      const b = await Deno.readFile(f);
      const hay = new TextDecoder("latin1").decode(b);
      assert(!hay.includes(MOCK_TOKEN), `token found in ${f}`);
    }
    await Deno.remove(tmp, { recursive: true });
  },
);
