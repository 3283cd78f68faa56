/**
 * Tests for model/tokenizer.ts against Meta Llama 3's real tokenizer.json (a gzipped
 * fixture, see testdata/llama3/README.md) and against small hand-written tokenizer.json
 * files. Expected ids are Python outputs published elsewhere (noted beside each case),
 * not outputs of this code.
 * @module
 */
import assert from "node:assert/strict";
import { loadTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import { GqaError } from "../errors.ts";

const assertEquals = (a: unknown, b: unknown, msg?: string) => assert.deepEqual(a, b, msg);

/** The GqaError `fn` throws (fails when it throws nothing or something else). */
function thrown(fn: () => unknown): GqaError {
  try {
    fn();
  } catch (e) {
    if (e instanceof GqaError) return e;
    throw new Error(`expected a GqaError, got ${e}`);
  }
  throw new Error("expected a GqaError, but nothing was thrown");
}

/** The GqaError the promise of `fn` rejects with. */
async function rejected(fn: () => Promise<unknown>): Promise<GqaError> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof GqaError) return e;
    throw new Error(`expected a GqaError, got ${e}`);
  }
  throw new Error("expected a GqaError, but the promise resolved");
}

const FIXTURE = new URL("../testdata/llama3/tokenizer.json.gz", import.meta.url);
const FIXTURE_SHA256 = "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78";
const BOS = 128000;

/** The post-processor of Meta-Llama-3-8B's tokenizer.json on the Hub today. */
const HUB_POST_PROCESSOR = {
  type: "Sequence",
  processors: [
    { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
    {
      type: "TemplateProcessing",
      single: [
        { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
      ],
      pair: [
        { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<|begin_of_text|>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: {
        "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [BOS], tokens: ["<|begin_of_text|>"] },
      },
    },
  ],
};

let fixtureText: Promise<string> | undefined;
function llama3Json(): Promise<string> {
  fixtureText ??= (async () => {
    const file = await Deno.open(FIXTURE);
    const stream = file.readable.pipeThrough(new DecompressionStream("gzip"));
    const bytes = new Uint8Array(await new Response(stream).arrayBuffer());
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    assertEquals(hex, FIXTURE_SHA256, "the Llama 3 fixture is not the file the README names");
    return new TextDecoder().decode(bytes);
  })();
  return fixtureText;
}

let hubTok: Promise<Tokenizer> | undefined;
/** Llama 3's tokenizer with the Hub's current post-processor (adds BOS). */
function llama3(): Promise<Tokenizer> {
  hubTok ??= llama3Json().then((text) => {
    const j = JSON.parse(text);
    j.post_processor = HUB_POST_PROCESSOR;
    return loadTokenizer(JSON.stringify(j));
  });
  return hubTok;
}

// Python ids: `AutoTokenizer.from_pretrained("meta-llama/Meta-Llama-3-8B")(text).input_ids`
// (Llama 3, 3.1 and 3.2 share this tokenizer).
const CASES: [string, number[], string][] = [
  ["Hello world", [BOS, 9906, 1917], "transformers, Llama-3.1-8B-Instruct"],
  ["hi, how are you today?", [BOS, 6151, 11, 1268, 527, 499, 3432, 30], "transformers#30947"],
  ["The capital of France is", [BOS, 791, 6864, 315, 9822, 374], "common Llama 3 prompt"],
  ["This is a test sentence.", [BOS, 2028, 374, 264, 1296, 11914, 13], "meta-llama/llama3 tests"],
  ["Hello, world!", [BOS, 9906, 11, 1917, 0], "meta-llama/llama3 tokenizer ports"],
  [
    "The quick brown fox jumps over the lazy dog.",
    [BOS, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13],
    "llama.cpp llama-tokenize reference",
  ],
  ["  spaces  ", [BOS, 220, 12908, 256], "whitespace runs: \\s+(?!\\S) keeps the last space"],
  ["🦙Ꙋ", [BOS, 9468, 99, 247, 166, 247, 232], "byte-level UTF-8 (llama3-tokenizer-js tests)"],
  [
    "def fibonacci(n):\n    if n <= 1:\n        return n\n    else:\n        return fibonacci(n-1) + fibonacci(n-2)",
    [
      BOS,
      755,
      76798,
      1471,
      997,
      262,
      422,
      308,
      2717,
      220,
      16,
      512,
      286,
      471,
      308,
      198,
      262,
      775,
      512,
      286,
      471,
      76798,
      1471,
      12,
      16,
      8,
      489,
      76798,
      1471,
      12,
      17,
      8,
    ],
    "newlines, indentation, digits",
  ],
  [
    // An added token written in the text is one token; Python then adds BOS in front of it
    // too, which is why chat templates are encoded with add_special_tokens=False.
    "<|begin_of_text|>hello how's it going?",
    [BOS, BOS, 15339, 1268, 596, 433, 2133, 30],
    "llama.cpp reference ids after its BOS, plus Python's own BOS",
  ],
];

for (const [text, ids, source] of CASES) {
  Deno.test(`encode() reproduces Python's Llama 3 ids for ${JSON.stringify(text).slice(0, 40)}`, async () => {
    const tok = await llama3();
    assertEquals(tok.encode(text), ids, `expected ids from ${source}`);
  });
}

Deno.test("encode() adds no BOS when the file's post-processor has no template (first Llama 3 release)", async () => {
  const tok = await loadTokenizer(await llama3Json());
  assertEquals(tok.encode("Hello world"), [9906, 1917]);
  assertEquals(tok.encode("<|begin_of_text|>Hello world"), [BOS, 9906, 1917]);
});

Deno.test("encode() of the empty prompt is BOS alone", async () => {
  assertEquals((await llama3()).encode(""), [BOS]);
});

Deno.test("tokenText() gives the readable text of one Llama 3 token", async () => {
  const tok = await llama3();
  assertEquals(tok.tokenText(1917), " world"); // "Ġworld"
  assertEquals(tok.tokenText(9906), "Hello");
  assertEquals(tok.tokenText(BOS), "<|begin_of_text|>");
  assertEquals(tok.tokenText(198), "\n"); // "Ċ"
  assertEquals(tok.tokenText(220), " ");
  assertEquals(tok.tokenText(262), "   "); // three spaces
  assertEquals(tok.tokenText(13), "."); // no clean-up of spaces either way
  assertEquals(tok.tokenText(662), " ."); // " ." is kept, not cleaned up to "."
  assertEquals(tok.tokenText(9468), "\uFFFD"); // the first bytes of 🦙 alone
  assertEquals(tok.vocabSize, 128256);
});

Deno.test("decode() inverts encode() for ASCII and UTF-8 text, BOS kept", async () => {
  const tok = await llama3();
  for (const s of ["Hello world", "  two  spaces\n\nand lines\t", "émigré 日本語 🦙 Ꙋ", "x=1+2;"]) {
    assertEquals(tok.decode(tok.encode(s)), "<|begin_of_text|>" + s);
  }
});

Deno.test("tokenText() and decode() refuse ids outside the vocabulary with a bad-input error", async () => {
  const tok = await llama3();
  for (const id of [-1, 128256, 1.5, NaN]) {
    const e = thrown(() => tok.tokenText(id));
    assertEquals(e.code, "bad-input");
    assert(e.message.includes("0 to 128255"), e.message);
  }
  assertEquals(thrown(() => tok.decode([1, 999999])).code, "bad-input");
});

/** A minimal byte-level BPE tokenizer.json: bytes "a", "b", "Ġ", merge "a b", BOS = 4. */
function tinyJson(over: Record<string, unknown> = {}): string {
  return JSON.stringify({
    version: "1.0",
    added_tokens: [{ id: 4, content: "<s>", special: true, normalized: false }],
    pre_tokenizer: {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [],
      special_tokens: { "<s>": { id: "<s>", ids: [4], tokens: ["<s>"] } },
    },
    decoder: { type: "ByteLevel" },
    model: { type: "BPE", vocab: { a: 0, b: 1, "Ġ": 2, ab: 3 }, merges: [["a", "b"]] },
    ...over,
  });
}

Deno.test("loadTokenizer() applies a bare TemplateProcessing post-processor and fills missing keys", async () => {
  const tok = await loadTokenizer(tinyJson()); // no "normalizer" key at all
  assertEquals(tok.encode("ab a"), [4, 3, 2, 0]);
  assertEquals(tok.tokenText(3), "ab");
  assertEquals(tok.vocabSize, 5);
});

Deno.test("encode() reports a template token missing from the vocabulary as bad-file, not as undefined ids", async () => {
  const template = { SpecialToken: { id: "<missing>", type_id: 0 } };
  const tok = await loadTokenizer(tinyJson({
    post_processor: {
      type: "TemplateProcessing",
      single: [template, { Sequence: { id: "A", type_id: 0 } }],
    },
  }));
  const e = thrown(() => tok.encode("ab"));
  assertEquals(e.code, "bad-file");
  assert.ok(e.message.includes("token 0 has no id"), e.message);
});

Deno.test("loadTokenizer() rejects malformed tokenizer.json with bad-file errors naming the file", async () => {
  const bad: [string, string][] = [
    ["{not json", "not valid JSON"],
    ["[1, 2]", "not a JSON object"],
    ["null", "not a JSON object"],
    ["{}", `no "model"`],
    [tinyJson({ model: "BPE" }), `no "model"`],
    [tinyJson({ added_tokens: {} }), `"added_tokens" is not an array`],
    [tinyJson({ model: { type: "Nonsense", vocab: { a: 0 } } }), `model type is "Nonsense"`],
    [tinyJson({ post_processor: { type: "Nonsense" } }), "could not be loaded"],
    [tinyJson({ model: { type: "BPE", vocab: {}, merges: [] } }), "vocabulary is missing or empty"],
    [tinyJson({ model: { type: "BPE", merges: [] } }), "vocabulary is missing or empty"],
    [tinyJson({ model: { type: "BPE", vocab: { a: 0 } } }), "could not be loaded"], // no merges
  ];
  for (const [text, why] of bad) {
    const e = await rejected(() => loadTokenizer(text, { where: "x/tokenizer.json" }));
    assertEquals(e.code, "bad-file", text);
    assert(e.message.startsWith("x/tokenizer.json: "), e.message);
    assert(e.message.includes(why), `${text}: ${e.message}`);
  }
});
