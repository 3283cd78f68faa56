/**
 * model/'s name for the project's error type, which lives at the root
 * (`errors.ts`) so that kernels/ can throw it without importing from model/.
 * This file only re-exports it, for the modules that import it from here.
 * @module
 */
export { GqaError, type GqaErrorCode } from "../errors.ts";
