/**
 * notebooks/gqa_keys.ipynb cannot rot: its code cells, in order, are written into one script
 * beside the notebook (so its relative imports resolve as in the kernel, whose working folder
 * is the notebook's) and run with `deno run`. `Deno.jupyter` exists only under `deno
 * jupyter`, so its one call, `Deno.jupyter.display(bundle, { raw: true })`, is pointed at a
 * stand-in that records the bundle; the test checks an 8 × 4 grid was displayed.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import { gpuTest } from "./_helpers.ts";

const NOTEBOOK = fileURLToPath(new URL("../notebooks/gqa_keys.ipynb", import.meta.url));

interface Cell {
  cell_type: string;
  source: string[] | string;
}

/** The notebook's code cells joined in order, `Deno.jupyter.display` replaced by a recorder. */
export function notebookScript(nb: { cells: Cell[] }, record: string): string {
  const code = nb.cells.filter((c) => c.cell_type === "code")
    .map((c) => (Array.isArray(c.source) ? c.source.join("") : c.source)).join("\n\n");
  return `const __shown: unknown[] = [];
const __jupyter = { display: (bundle: unknown, _opts?: unknown) => { __shown.push(bundle); } };
${code.replaceAll("Deno.jupyter.", "__jupyter.")}
Deno.writeTextFileSync(${JSON.stringify(record)}, JSON.stringify(__shown));
`;
}

Deno.test("gqa_keys.ipynb is a Deno-kernel notebook whose first code cell holds the one MODEL line", async () => {
  const nb = JSON.parse(await Deno.readTextFile(NOTEBOOK));
  assertEquals(nb.metadata.kernelspec.name, "deno");
  const first = nb.cells.find((c: Cell) => c.cell_type === "code");
  const src = first.source.join("");
  assertEquals((src.match(/^const MODEL = /gm) ?? []).length, 1);
  assert(src.includes("meta-llama/Meta-Llama-3-8B"), "says what to change it to");
});

gpuTest(
  "gqa_keys.ipynb runs its code cells in order on the tiny model and displays the 8 × 4 grid",
  async () => {
    const nb = JSON.parse(await Deno.readTextFile(NOTEBOOK));
    const dir = fileURLToPath(new URL("../notebooks/", import.meta.url));
    const tag = crypto.randomUUID().slice(0, 8);
    const script = join(dir, `.notebook_test_${tag}.ts`);
    const record = await Deno.makeTempFile({ suffix: ".json" });
    await Deno.writeTextFile(script, notebookScript(nb, record));
    try {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const out = new TextDecoder().decode(r.stdout), err = new TextDecoder().decode(r.stderr);
      assertEquals(r.code, 0, err);
      assert(out.includes("4 query heads share each KV head"), out);
      const shown = JSON.parse(await Deno.readTextFile(record)) as Record<string, string>[];
      assertEquals(shown.length, 1);
      const svg = shown[0]["image/svg+xml"];
      assert(svg.startsWith("<?xml"), "an SVG document");
      assertEquals((svg.match(/<g class="cell" id="cell-g\d-h\d+"/g) ?? []).length, 32);
      assert(svg.includes("layer 2"), "layer L of the notebook");
    } finally {
      await Deno.remove(script).catch(() => {});
      await Deno.remove(record).catch(() => {});
    }
  },
);
