/**
 * The Hugging Face token as it will be sent. It is never printed, logged or stored; only
 * hub_fetch.ts puts it in a header, and only for the Hub's origin.
 *
 * This is the place for token discovery (where the Python client looks for one) when the
 * factory needs more than `--token` and `HF_TOKEN`.
 * @module
 */
import { GqaError } from "../../errors.ts";

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
export function cleanToken(token: string | undefined): string | undefined {
  const t = token?.trim();
  if (!t) return undefined;
  if (!/^[\x21-\x7e]+$/.test(t)) {
    throw new GqaError(
      "auth",
      `HF_TOKEN (or --token) contains spaces, control or non-ASCII characters, so it cannot be a Hugging Face token (those look like hf_ followed by letters and digits). Copy it again from https://huggingface.co/settings/tokens and run \`export HF_TOKEN=hf_...\`.`,
    );
  }
  return t;
}
