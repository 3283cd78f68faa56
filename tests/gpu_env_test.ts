/**
 * requestGpu() and the environment it runs in: a machine without a login session (no
 * XDG_RUNTIME_DIR) must not get the GL driver probe's "XDG_RUNTIME_DIR is invalid"
 * warnings in the middle of a run.
 */
import { ok as assert } from "node:assert/strict";
import { join } from "node:path";

Deno.test("requestGpu() without XDG_RUNTIME_DIR prints no driver warning and makes a private folder", async () => {
  const tmp = await Deno.makeTempDir();
  const env: Record<string, string> = { ...Deno.env.toObject(), TMPDIR: tmp };
  delete env.XDG_RUNTIME_DIR;
  const gpuTs = new URL("../kernels/gpu.ts", import.meta.url).href;
  const code = `const { requestGpu } = await import(${JSON.stringify(gpuTs)});
    const gpu = await requestGpu();
    console.log(gpu ? "adapter" : "none", Deno.env.get("XDG_RUNTIME_DIR"));
    gpu?.destroy();`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout),
    stderr = new TextDecoder().decode(out.stderr);
  assert(out.success, stderr);
  assert(!stderr.includes("XDG_RUNTIME_DIR"), stderr);
  const dir = join(tmp, `gqa-viz-runtime-${Deno.uid()}`);
  assert(stdout.trim().endsWith(dir), stdout);
  const st = await Deno.stat(dir);
  assert(st.isDirectory && ((st.mode ?? 0) & 0o777) === 0o700, `mode ${st.mode?.toString(8)}`);
  await Deno.remove(tmp, { recursive: true });
});
