/**
 * The numbered tutorial scripts each run alone on the tiny model and print what they
 * promise (the README links them in order, so a broken step is a broken tutorial).
 */
import { ok as assert } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { gpuTest } from "./_helpers.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

async function runScript(name: string, cwd: string): Promise<string> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}/scripts/${name}`],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(stdout), err = new TextDecoder().decode(stderr);
  assert(code === 0, `${name} exited ${code}:\n${out}\n${err}`);
  return out;
}

const STEPS: [string, RegExp[]][] = [
  ["01_config.ts", [/H {2}= 32/, /KV = 8/, /KV head 7 ← query heads 28, 29, 30, 31/, /4× more/]],
  ["02_read_tensor.ts", [
    /k_proj\.weight: BF16 \[128,256\]/,
    /read 512 bytes for it, not the 65536/,
  ]],
  ["03_matmul.ts", [/relative L2 error: \d\.\d\de-([6-9]|1\d)/]],
  ["04_decoder_layer.ts", [/relative L2 error: \d\.\d\de-([6-9]|1\d)/]],
  ["05_capture_and_draw.ts", [/query head 1 reads KV head 0/, /wrote step5_layer_2\.svg/]],
];

for (const [name, patterns] of STEPS) {
  gpuTest(`scripts/${name} runs alone and prints what it shows`, async () => {
    const cwd = await Deno.makeTempDir();
    try {
      const out = await runScript(name, cwd);
      for (const p of patterns) assert(p.test(out), `${name}: no ${p} in:\n${out}`);
    } finally {
      await Deno.remove(cwd, { recursive: true });
    }
  });
}
