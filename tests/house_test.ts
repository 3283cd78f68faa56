/**
 * The rules of the house, checked on every .ts file of the project (testdata/ and
 * node_modules/ excepted), so that the code keeps reading top-down:
 *
 * 1. No import cycles (type-only imports count: a cycle of types is still a knot to read).
 * 2. Dependencies point one way: kernels/ imports nothing from model/, viz/, scripts/ or
 *    tests/; model/ nothing from viz/ or scripts/; viz/ nothing from scripts/.
 * 3. In model/source/, base.ts imports no sibling, and no file but mod.ts imports the
 *    factory open.ts (the implementations sit under it, never beside it).
 * 4. No function or method is longer than {@linkcode MAX_FUNCTION_LINES} lines, counted
 *    from the line of its first token to the line of its last, as the TypeScript parser
 *    sees them.
 *
 * Each checker is a plain function, tested first on small made-up inputs (so a checker
 * that cannot fail would show), then run on the project.
 * @module
 */
import ts from "typescript";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { deepStrictEqual as assertEquals } from "node:assert/strict";

/** The longest function or method the house allows, in lines. */
const MAX_FUNCTION_LINES = 120;

/**
 * Exceptions to the length rule, as "path name" (e.g. "viz/grid_svg.ts renderGqaGrid").
 * Empty, and meant to stay so: a long function is split into named steps instead.
 */
const LENGTH_ALLOW_LIST: readonly string[] = [];

/** Who may not import whom: a file under `from` may not import a file under any of `not`. */
const LAYERS: { from: string; not: string[] }[] = [
  { from: "kernels/", not: ["model/", "viz/", "scripts/", "tests/"] },
  { from: "model/", not: ["viz/", "scripts/"] },
  { from: "viz/", not: ["scripts/"] },
];

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));

/** Every project .ts file, as a path relative to the root with "/" separators. */
async function projectFiles(dir = ROOT): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(".") || e.name === "testdata" || e.name === "node_modules") continue;
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...await projectFiles(p));
    else if (e.isFile && e.name.endsWith(".ts")) out.push(relative(ROOT, p).replaceAll("\\", "/"));
  }
  return out.sort();
}

function parse(path: string, text: string): ts.SourceFile {
  return ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true);
}

/**
 * The project files `path` imports or re-exports (relative specifiers only; npm:, node:
 * and bare names are outside the house), as root-relative paths.
 * @example
 * ```ts
 * localImports("model/a.ts", 'import { x } from "./b.ts";'); // ["model/b.ts"]
 * ```
 */
export function localImports(path: string, text: string): string[] {
  const out = new Set<string>();
  const add = (spec: ts.Expression | undefined) => {
    if (!spec || !ts.isStringLiteralLike(spec) || !spec.text.startsWith(".")) return;
    out.add(join(dirname(path), spec.text).replaceAll("\\", "/"));
  };
  const visit = (n: ts.Node) => {
    if (ts.isImportDeclaration(n) || ts.isExportDeclaration(n)) add(n.moduleSpecifier);
    else if (ts.isCallExpression(n) && n.expression.kind === ts.SyntaxKind.ImportKeyword) {
      add(n.arguments[0]);
    }
    ts.forEachChild(n, visit);
  };
  visit(parse(path, text));
  return [...out].sort();
}

/**
 * One import cycle of `graph` (file → files it imports), as [a, b, …, a], or undefined.
 * @example
 * ```ts
 * findCycle(new Map([["a", ["b"]], ["b", ["a"]]])); // ["a", "b", "a"]
 * ```
 */
export function findCycle(graph: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (f: string): string[] | undefined => {
    if (state.get(f) === "done") return undefined;
    if (state.get(f) === "open") return [...stack.slice(stack.indexOf(f)), f];
    state.set(f, "open");
    stack.push(f);
    for (const g of graph.get(f) ?? []) {
      const c = visit(g);
      if (c) return c;
    }
    stack.pop();
    state.set(f, "done");
    return undefined;
  };
  for (const f of [...graph.keys()].sort()) {
    const c = visit(f);
    if (c) return c;
  }
  return undefined;
}

/** Imports that break {@linkcode LAYERS} or the model/source/ rules, as "a -> b" lines. */
export function wrongWayImports(graph: Map<string, string[]>): string[] {
  const bad: string[] = [];
  for (const [f, deps] of graph) {
    for (const d of deps) {
      const layer = LAYERS.find((l) => f.startsWith(l.from));
      if (layer?.not.some((n) => d.startsWith(n))) bad.push(`${f} -> ${d}`);
      if (f === "model/source/base.ts" && d.startsWith("model/source/")) {
        bad.push(`${f} -> ${d} (base.ts imports no sibling)`);
      }
      if (
        f.startsWith("model/source/") && f !== "model/source/mod.ts" &&
        d === "model/source/open.ts"
      ) {
        bad.push(`${f} -> ${d} (only mod.ts imports the factory)`);
      }
    }
  }
  return bad.sort();
}

/**
 * Functions and methods of `text` longer than `max` lines, as "path name lines".
 * @example
 * ```ts
 * longFunctions("a.ts", "function f() {\n}\n", 1); // ["a.ts f 2"]
 * ```
 */
export function longFunctions(path: string, text: string, max: number): string[] {
  const src = parse(path, text);
  const out: string[] = [];
  const visit = (n: ts.Node) => {
    if (ts.isFunctionLike(n) && (n as { body?: ts.Node }).body) {
      const first = src.getLineAndCharacterOfPosition(n.getStart()).line;
      const last = src.getLineAndCharacterOfPosition(n.getEnd()).line;
      const lines = last - first + 1;
      const name = (n as { name?: ts.Node }).name?.getText(src) ?? "<anonymous>";
      if (lines > max) out.push(`${path} ${name} ${lines}`);
    }
    ts.forEachChild(n, visit);
  };
  visit(src);
  return out;
}

async function projectGraph(): Promise<Map<string, string[]>> {
  const graph = new Map<string, string[]>();
  for (const f of await projectFiles()) {
    graph.set(f, localImports(f, await Deno.readTextFile(join(ROOT, f))));
  }
  return graph;
}

// --- the checkers, on made-up inputs ------------------------------------------------------

Deno.test("localImports: finds imports, re-exports and dynamic imports, resolved from the file's folder", () => {
  const text = `import { a } from "./a.ts";
import type { B } from "../kernels/b.ts";
export { c } from "./source/c.ts";
import ts from "typescript";
import { join } from "node:path";
const d = await import("./d.ts");`;
  assertEquals(localImports("model/x.ts", text), [
    "kernels/b.ts",
    "model/a.ts",
    "model/d.ts",
    "model/source/c.ts",
  ]);
});

Deno.test("findCycle: reports a three-file cycle and passes a diamond", () => {
  const cyclic = new Map([["a", ["b"]], ["b", ["c"]], ["c", ["a"]], ["d", ["a"]]]);
  assertEquals(findCycle(cyclic), ["a", "b", "c", "a"]);
  const diamond = new Map([["a", ["b", "c"]], ["b", ["d"]], ["c", ["d"]], ["d", []]]);
  assertEquals(findCycle(diamond), undefined);
});

Deno.test("wrongWayImports: flags upward imports and the model/source/ rules, passes downward ones", () => {
  const graph = new Map([
    ["kernels/matmul.ts", ["model/errors.ts", "errors.ts"]],
    ["model/plan.ts", ["viz/grid_svg.ts", "kernels/gpu.ts"]],
    ["viz/grid_svg.ts", ["scripts/viz.ts", "model/config.ts"]],
    ["model/source/base.ts", ["model/source/hub.ts"]],
    ["model/source/hub.ts", ["model/source/open.ts", "model/source/base.ts"]],
    ["model/source/mod.ts", ["model/source/open.ts"]],
  ]);
  assertEquals(wrongWayImports(graph), [
    "kernels/matmul.ts -> model/errors.ts",
    "model/plan.ts -> viz/grid_svg.ts",
    "model/source/base.ts -> model/source/hub.ts (base.ts imports no sibling)",
    "model/source/hub.ts -> model/source/open.ts (only mod.ts imports the factory)",
    "viz/grid_svg.ts -> scripts/viz.ts",
  ]);
});

Deno.test("longFunctions: measures functions, methods and arrows by their first and last lines", () => {
  const body = (n: number) => Array.from({ length: n }, (_, i) => `  x += ${i};`).join("\n");
  const text = `function short() {\n${body(3)}\n}
class C {\n  long() {\n${body(10)}\n  }\n}
const arrow = () => {\n${body(10)}\n};`;
  assertEquals(longFunctions("t.ts", text, 10), ["t.ts long 12", "t.ts <anonymous> 12"]);
  assertEquals(longFunctions("t.ts", text, 12), []);
});

// --- the project ----------------------------------------------------------------------------

Deno.test("house: the project has no import cycles", async () => {
  assertEquals(findCycle(await projectGraph()), undefined);
});

Deno.test("house: imports point one way (kernels <- model <- viz <- scripts), model/source/ from base.ts up", async () => {
  assertEquals(wrongWayImports(await projectGraph()), []);
});

Deno.test(`house: no function or method is longer than ${MAX_FUNCTION_LINES} lines`, async () => {
  const long: string[] = [];
  for (const f of await projectFiles()) {
    long.push(...longFunctions(f, await Deno.readTextFile(join(ROOT, f)), MAX_FUNCTION_LINES));
  }
  const allowed = (l: string) => LENGTH_ALLOW_LIST.some((a) => l.startsWith(`${a} `));
  assertEquals(long.filter((l) => !allowed(l)), []);
});
