/**
 * The README's quick start and login notes match the project: it starts from `git clone`
 * and `cd`, its install lines name every package CI installs and work as root and with
 * sudo, its picture says which flag draws it, and "Logging in" names every token source.
 */
import { ok as assert } from "node:assert/strict";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const README = Deno.readTextFileSync(`${ROOT}/README.md`);

Deno.test("README quick start: git clone and cd first, then CI's packages, root or sudo", async () => {
  const quick = README.slice(README.indexOf("## Quick start"), README.indexOf("## The real model"));
  const clone = quick.indexOf("git clone"),
    cd = quick.indexOf("\ncd "),
    demo = quick.indexOf("deno task demo");
  assert(clone >= 0 && cd > clone && demo > cd, "git clone, cd, then the demo");
  const ci = Deno.readTextFileSync(`${ROOT}/.ci/run`);
  const pkgs = /^pkgs="([^"]+)"/m.exec(ci)![1].split(/\s+/);
  const apt = /^\$SUDO apt-get install -y (.+)$/m.exec(quick);
  assert(apt, "no `$SUDO apt-get install -y` line");
  for (const p of pkgs) assert(apt[1].split(/\s+/).includes(p), `the README does not install ${p}`);
  // The SUDO line: empty as root (where sudo may be missing), "sudo" for anyone else.
  const line = /^SUDO=.*$/m.exec(quick)![0];
  const { stdout } = await new Deno.Command("bash", {
    args: ["-c", `${line}; printf '[%s]' "$SUDO"`],
    stdout: "piped",
  }).output();
  const want = Deno.uid() === 0 ? "[]" : "[sudo]";
  assert(new TextDecoder().decode(stdout) === want, new TextDecoder().decode(stdout));
});

Deno.test("README: the picture names the flag that draws it; Logging in names every token source", () => {
  assert(/`deno task demo --show qk`/.test(README), "the picture's command");
  const login = README.slice(README.indexOf("### Logging in"));
  for (
    const w of ["hf auth login", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME"]
  ) {
    assert(login.includes(w), `Logging in lacks ${w}`);
  }
});
