/**
 * Text → token ids, exactly as the Python `transformers` tokenizer does it, from a model's
 * `tokenizer.json` (the Hugging Face `tokenizers` format).
 *
 * The work is done by `npm:@huggingface/tokenizers` (tokenizers.js), which implements the
 * same pipeline as the Rust library behind `transformers`:
 *
 * ```
 * text ─► added tokens split out ("<|begin_of_text|>" stays one token)
 *      ─► normalizer (none for Llama 3)
 *      ─► pre-tokenizer (Llama 3: a regex split into words, then ByteLevel: every byte
 *         becomes one printable character, space → "Ġ", newline → "Ċ")
 *      ─► model (BPE: apply the merges, lowest rank first)
 *      ─► post-processor (Llama 3: TemplateProcessing "<|begin_of_text|> $A", which is
 *         where the BOS token 128000 comes from)
 * ```
 *
 * So `encode("Hello world")` on Meta-Llama-3-8B gives `[128000, 9906, 1917]`, the same as
 * `AutoTokenizer.from_pretrained("meta-llama/Meta-Llama-3-8B")("Hello world").input_ids`.
 * The BOS token comes from the file's post-processor and nothing else, as in Python: the
 * first Llama 3 release of `tokenizer.json` had a ByteLevel-only post-processor, and with
 * that file Python (and this module) adds no BOS.
 *
 * `tokenText(id)` is the readable text of one token: the ByteLevel decoder maps the
 * printable characters back to bytes and decodes them as UTF-8 ("Ġworld" → " world").
 * A token that holds only part of a multi-byte character decodes to "\uFFFD", as
 * `tokenizer.decode([id])` does in Python. No clean-up of spaces is applied, so the text
 * is exactly the token's bytes.
 * @module
 */
import type { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { GqaError } from "../errors.ts";

/** A loaded tokenizer. */
export interface Tokenizer {
  /** Token ids of `text`, special tokens of the post-processor (BOS for Llama 3) included. */
  encode(text: string): number[];
  /** The readable text of one token (`" world"` for Llama 3's 1917). */
  tokenText(id: number): string;
  /** The text of a sequence of ids; special tokens are kept, spaces are not cleaned up. */
  decode(ids: number[]): string;
  /** One more than the largest token id (128256 for Llama 3). */
  readonly vocabSize: number;
}

/** The tokenizer models tokenizers.js implements. */
const MODEL_TYPES = ["BPE", "WordPiece", "Unigram"];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function badFile(where: string, what: string, cause?: unknown): GqaError {
  return new GqaError(
    "bad-file",
    `${where}: ${what}. The file must be a tokenizer.json in the Hugging Face "tokenizers" ` +
      "format (as saved by tokenizer.save() or PreTrainedTokenizerFast.save_pretrained()). " +
      "Download it again, or pass --token-ids to skip tokenizing.",
    cause === undefined ? undefined : { cause },
  );
}

/**
 * Parses a `tokenizer.json` and returns a tokenizer that reproduces the Python one.
 * Throws {@linkcode GqaError} "bad-file" when the text is not a usable tokenizer.json.
 * @param json the text of `tokenizer.json`
 * @param a.where where the file came from, for error messages (default "tokenizer.json")
 * @example
 * const tok = await loadTokenizer(await src.readText("tokenizer.json"));
 * tok.encode("Hello world"); // [128000, 9906, 1917] for Llama 3
 * tok.tokenText(1917); // " world"
 */
export async function loadTokenizer(
  json: string,
  a: { where?: string } = {},
): Promise<Tokenizer> {
  const where = a.where ?? "tokenizer.json";
  let root: unknown;
  try {
    root = JSON.parse(json);
  } catch (e) {
    const why = e instanceof Error ? e.message.slice(0, 160) : "unknown error";
    throw badFile(where, `not valid JSON (${why})`, e);
  }
  if (!isObject(root)) throw badFile(where, "the top level is not a JSON object");
  const model = root.model;
  if (!isObject(model)) throw badFile(where, `there is no "model" object`);
  if (model.type !== undefined && !MODEL_TYPES.includes(model.type as string)) {
    throw badFile(
      where,
      `the model type is ${JSON.stringify(model.type)?.slice(0, 40)}, not one of ` +
        MODEL_TYPES.join(", "),
    );
  }
  const entries = Array.isArray(model.vocab)
    ? model.vocab.length
    : isObject(model.vocab)
    ? Object.keys(model.vocab).length
    : 0;
  if (entries === 0) throw badFile(where, "the model's vocabulary is missing or empty");
  if (root.added_tokens !== undefined && !Array.isArray(root.added_tokens)) {
    throw badFile(where, `"added_tokens" is not an array`);
  }
  // Files written by the Rust library always carry these keys (null when unused);
  // tokenizers.js insists on them, so fill in what a hand-written file may leave out.
  const spec: Record<string, unknown> = { added_tokens: [], ...root };
  for (const k of ["normalizer", "pre_tokenizer", "post_processor", "decoder"]) spec[k] ??= null;

  // Loaded on first use, so runs that pass --token-ids never load the library.
  const { Tokenizer: HfTokenizerClass } = await import("@huggingface/tokenizers");
  let hf: HfTokenizer;
  try {
    hf = new HfTokenizerClass(spec, {});
  } catch (e) {
    const why = e instanceof Error ? e.message.slice(0, 200) : String(e).slice(0, 200);
    throw badFile(where, `it could not be loaded (${why})`, e);
  }
  const vocab = hf.model?.vocab;
  if (!Array.isArray(vocab) || vocab.length === 0) throw badFile(where, "the vocabulary is empty");
  const vocabSize = vocab.length;

  const checkId = (id: number): void => {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize || vocab[id] === undefined) {
      throw new GqaError(
        "bad-input",
        `token id ${id} is not in the vocabulary of ${where} (ids 0 to ${vocabSize - 1}). ` +
          "Check the --token-ids you passed against the model's tokenizer.",
      );
    }
  };

  return {
    vocabSize,
    encode(text: string): number[] {
      let ids: number[];
      try {
        ids = hf.encode(text).ids;
      } catch (e) {
        const why = e instanceof Error ? e.message.slice(0, 200) : String(e).slice(0, 200);
        throw badFile(where, `encoding the prompt failed (${why})`, e);
      }
      const i = ids.findIndex((id) => !Number.isInteger(id));
      if (i >= 0) {
        throw badFile(
          where,
          `the prompt's token ${i} has no id (the vocabulary has no entry for a piece of the ` +
            "text, and no unk_token is set)",
        );
      }
      return ids;
    },
    tokenText(id: number): string {
      checkId(id);
      return hf.decode([id], { clean_up_tokenization_spaces: false });
    },
    decode(ids: number[]): string {
      if (ids.length === 0) return "";
      ids.forEach(checkId);
      return hf.decode(ids, { clean_up_tokenization_spaces: false });
    },
  };
}
