/**
 * The project's one error type. Every failure a user can meet (a bad file, a missing
 * token, a layer out of range, a server fault) is a {@linkcode GqaError} whose message is
 * one paragraph: what was wrong, where, and what to do. The CLI prints the message alone,
 * without a stack trace; anything that is not a GqaError is a bug.
 *
 * It sits at the root and imports nothing, so every layer of the house (kernels/,
 * model/, viz/, scripts/) can throw it while dependencies still point one way. The
 * alternative, kernels throwing their own error type that model/ wraps, would give two
 * error types for one user-facing kind of failure (a bad shape or option is "bad-input"
 * whether kernels/ or model/ notices it) and a wrapping step at every call from model/
 * into kernels/; a leaf module costs nothing and keeps one `instanceof GqaError` test
 * for the CLI.
 * @module
 */

/** What kind of failure, for callers and tests that branch on it. */
export type GqaErrorCode =
  | "bad-file" // a safetensors header, index or config that is malformed or inconsistent
  | "bad-config" // config.json fields missing, inconsistent or unsupported
  | "unsupported" // an architecture or feature we do not implement
  | "not-found" // a repo, revision or file that does not exist (404, missing local file)
  | "auth" // 401/403: no token, a wrong token, or a gated model whose licence is not accepted
  | "network" // retries exhausted, server misbehaving, offline mode with nothing cached
  | "bad-input" // a CLI argument or API option out of range
  | "no-adapter" // no WebGPU adapter
  | "non-finite" // NaN or Inf appeared in an activation
  | "output"; // an output path that cannot be written

/** A failure explained for the user. `message` is the whole explanation. */
export class GqaError extends Error {
  override name = "GqaError";
  constructor(readonly code: GqaErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
  }
}
