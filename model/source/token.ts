/**
 * The Hugging Face token: where it comes from, how it is cleaned, and how it is kept out
 * of every message. It is never printed, logged or stored; only hub_fetch.ts puts it in a
 * header, and only for the Hub's origin.
 *
 * Where it comes from ({@linkcode findToken}), in `huggingface_hub`'s order:
 *
 * 1. `HF_TOKEN`, then `HUGGING_FACE_HUB_TOKEN` (an empty one counts as unset);
 * 2. the file `HF_TOKEN_PATH` names, else `$HF_HOME/token` (`HF_HOME` defaults to
 *    `${XDG_CACHE_HOME:-~/.cache}/huggingface`): the file `hf auth login` writes.
 *
 * What leaves a byte source as an error passes through {@linkcode redactToken} first.
 * @module
 */
import { GqaError } from "../../errors.ts";
import { env, expandHome, hfHomeDir, tildePath } from "./base.ts";

/** A token and where it was found. */
export interface FoundToken {
  /** The cleaned token, or undefined when none was found. */
  token?: string;
  /**
   * Which token it is, as a noun phrase for messages ("the token in the HF_TOKEN environment
   * variable", "the token saved by `hf auth login` in ~/.cache/huggingface/token"); when
   * none was found, where we looked.
   */
  source: string;
}

/**
 * The token as it will be sent: surrounding whitespace (a trailing newline from a file or a
 * paste) removed; anything else but visible ASCII is refused, without echoing it (an
 * invalid header value would otherwise end up, whole, in fetch's error message).
 * @example
 * ```ts
 * cleanToken("hf_abc\n"); // "hf_abc"
 * cleanToken("  "); // undefined
 * ```
 */
export function cleanToken(
  token: string | undefined,
  source = "the token in HF_TOKEN",
): string | undefined {
  const t = token?.trim();
  if (!t) return undefined;
  if (!/^[\x21-\x7e]+$/.test(t)) {
    throw new GqaError(
      "auth",
      `${source[0].toUpperCase()}${
        source.slice(1)
      } contains spaces, control or non-ASCII characters, so it cannot be a Hugging Face token (those look like hf_ followed by letters and digits). Copy it again from https://huggingface.co/settings/tokens and run \`hf auth login\` (or \`export HF_TOKEN=hf_...\`).`,
    );
  }
  return t;
}

/**
 * Finds the token as `huggingface_hub` does (see the module doc). A token file that does
 * not exist or cannot be read means no token, as in Python; `source` then says where we
 * looked. Reads the file only when the environment has no token.
 * @example
 * ```ts
 * const { token, source } = findToken();
 * console.error(token ? `using ${source}` : "no token");
 * ```
 */
export function findToken(getenv: (name: string) => string | undefined = env): FoundToken {
  for (const name of ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]) {
    const where = `the token in the ${name} environment variable`;
    const token = cleanToken(getenv(name), where);
    if (token) return { token, source: where };
  }
  const named = getenv("HF_TOKEN_PATH");
  const home = hfHomeDir(getenv);
  const path = named ? expandHome(named, getenv) : home ? `${home}/token` : undefined;
  if (!path) return { source: "HF_TOKEN, HUGGING_FACE_HUB_TOKEN (both unset)" };
  const shown = tildePath(path, getenv);
  const where = named
    ? `the token in the file HF_TOKEN_PATH names (${shown})`
    : `the token saved by \`hf auth login\` in ${shown}`;
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    return {
      source:
        `HF_TOKEN and HUGGING_FACE_HUB_TOKEN are unset and there is no token file at ${shown}`,
    };
  }
  const token = cleanToken(text, where);
  return token
    ? { token, source: where }
    : { source: `HF_TOKEN and HUGGING_FACE_HUB_TOKEN are unset and ${shown} is empty` };
}

/**
 * Removes `token` from an error before it leaves a byte source: from its message and stack
 * and those of its causes (a `fetch` that rejects may quote a header). Returns the same
 * error, changed in place; anything that is not an Error passes through (a string is
 * redacted). The one place redaction happens: the sources' boundaries call it.
 * @example
 * ```ts
 * try { await src.read(f, 0, 8); } catch (e) { throw redactToken(e, token); }
 * ```
 */
export function redactToken<T>(e: T, token: string | undefined): T {
  if (!token) return e;
  const clean = (s: string) => s.split(token).join("hf_***");
  if (typeof e === "string") return clean(e) as T;
  let x: unknown = e;
  for (let depth = 0; depth < 8 && x instanceof Error; depth++) {
    const err: Error = x;
    if (err.message.includes(token)) err.message = clean(err.message);
    if (err.stack?.includes(token)) err.stack = clean(err.stack);
    if (typeof err.cause === "string") err.cause = clean(err.cause);
    x = err.cause;
  }
  return e;
}
