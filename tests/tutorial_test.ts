/**
 * The numbered tutorial scripts each run alone on the tiny model, accept the options their
 * headers document, print what they promise, refuse bad arguments the way viz does (one
 * `error:` paragraph, exit 2, no stack trace), and leave `git status` as they found it
 * (their output goes to the gitignored out/ folder, and they say where).
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { gpuTest } from "./_helpers.ts";
import { makeTinyModel } from "../scripts/make_tiny_model.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

async function runScript(name: string, args: string[], cwd: string) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "scripts", name), ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, out: new TextDecoder().decode(stdout), err: new TextDecoder().decode(stderr) };
}

/** `git status --porcelain` of the repository (untracked files included). */
async function gitStatus(): Promise<string> {
  const { stdout } = await new Deno.Command("git", {
    args: ["status", "--porcelain", "--untracked-files=all"],
    cwd: ROOT,
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(stdout);
}

const STEPS: [string, string[], RegExp[]][] = [
  ["01_config.ts", [], [
    /H {2}= 32/,
    /KV = 8/,
    /KV head 7 ← query heads 28, 29, 30, 31/,
    /4× more/,
  ]],
  ["02_read_tensor.ts", [], [
    /k_proj\.weight: BF16 \[128,256\]/,
    /read 512 bytes for it, not the 65536/,
  ]],
  ["03_matmul.ts", [], [/relative L2 error: \d\.\d\de-([6-9]|1\d)/]],
  ["04_decoder_layer.ts", [], [/relative L2 error: \d\.\d\de-([6-9]|1\d)/]],
  ["05_capture_and_draw.ts", [], [
    /query head 1 reads KV head 0/,
    /wrote \S*out\/step5_layer_2\.svg/,
  ]],
  ["05_capture_and_draw.ts", ["--layer", "1", "--token-ids", "752,9,10"], [
    /tokens: "#752" "#9" "#10"/,
    /wrote \S*out\/step5_layer_1\.svg/,
  ]],
];

for (const [name, args, patterns] of STEPS) {
  gpuTest(
    `scripts/${name} ${args.join(" ")} runs alone, prints what it shows, leaves git status clean`,
    async () => {
      const { dir } = await makeTinyModel(); // generated before the status is taken
      const cwd = await Deno.makeTempDir();
      const before = await gitStatus();
      try {
        const r = await runScript(name, ["--model", dir, ...args], cwd);
        assertEquals(r.code, 0, `${name} exited ${r.code}:\n${r.out}\n${r.err}`);
        for (const p of patterns) assert(p.test(r.out), `${name}: no ${p} in:\n${r.out}`);
        assertEquals(await gitStatus(), before, "the run changed git status");
        assertEquals([...Deno.readDirSync(cwd)], [], "the run wrote into the working folder");
      } finally {
        await Deno.remove(cwd, { recursive: true });
      }
    },
  );
}

Deno.test("the tutorial scripts refuse bad arguments like viz: one error paragraph, exit 2", async () => {
  const { dir } = await makeTinyModel();
  const cases: [string, string[], RegExp][] = [
    ["01_config.ts", ["--layer", "2"], /Unknown option '--layer'/],
    ["02_read_tensor.ts", ["--bogus"], /Unknown option '--bogus'/],
    ["05_capture_and_draw.ts", ["--layer", "-1"], /--layer must be a whole number ≥ 0, got -1/],
    ["05_capture_and_draw.ts", ["--layer", "x"], /--layer must be a whole number ≥ 0, got "x"/],
    ["05_capture_and_draw.ts", ["--token-ids", "1,a"], /"a" is not a token id/],
    ["05_capture_and_draw.ts", ["--model", dir, "--layer", "9"], /valid range is 0 to 3/],
  ];
  const before = await gitStatus();
  for (const [name, args, pattern] of cases) {
    const r = await runScript(name, args, ROOT);
    assertEquals(r.code, 2, `${name} ${args.join(" ")}: ${r.err}`);
    const lines = r.err.trim().split("\n");
    assertEquals(lines.length, 1, r.err);
    assert(lines[0].startsWith("error: ") && pattern.test(lines[0]), lines[0]);
    assert(!/\n\s+at /.test(r.err), "stack trace printed");
  }
  const help = await runScript("05_capture_and_draw.ts", ["--help"], ROOT);
  assertEquals(help.code, 0);
  for (const o of ["--model", "--layer", "--token-ids"]) assert(help.out.includes(o), o);
  assertEquals(await gitStatus(), before);
});
