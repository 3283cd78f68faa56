/**
 * Byte sources: where a checkpoint's bytes come from. The rest of model/ imports this
 * folder through this file only.
 *
 * - {@linkcode openSource} (open.ts) picks the source from `--model` and the environment.
 * - {@linkcode ByteSource} (base.ts) is all the layers above ever see:
 *   `read(file, begin, end)`, `size`, `exists`, `readText`, plus counters.
 * - The sources: {@linkcode LocalSource} (local.ts, a folder) and {@linkcode HubSource}
 *   (hub.ts, a Hub repo read through the Hugging Face cache (hf_cache.ts), this tool's
 *   range cache (range_cache.ts), then the network (hub_fetch.ts, retry.ts)); token.ts
 *   finds the token (`findToken`, huggingface_hub's order) and keeps it out of errors.
 * - progress.ts draws the progress bar every source feeds.
 *
 * Imports point down only: open.ts → the implementations → base.ts → ../../errors.ts.
 * base.ts imports no sibling, and no implementation imports open.ts (tests/house_test.ts
 * checks both).
 * @module
 */
export {
  type ByteSource,
  checkFileName,
  checkRange,
  COMMIT_RE,
  decodeText,
  env,
  envFlag,
  expandHome,
  hfHomeDir,
  isRepoId,
  offlineFromEnv,
  readFileRange,
  repoFolderName,
  type SourceStats,
} from "./base.ts";
export { DEFAULT_ENDPOINT, openSource, type OpenSourceOptions } from "./open.ts";
export { LocalSource, type LocalSourceOptions } from "./local.ts";
export { HubSource, type HubSourceOptions } from "./hub.ts";
export { type HttpFailure, HubError, hubFetch, type HubFetchOptions } from "./hub_fetch.ts";
export { DEFAULT_RETRY, RetryBudget, type RetryOptions, serverWaitMs } from "./retry.ts";
export { cleanToken, findToken, type FoundToken, redactToken } from "./token.ts";
export { HfCacheRepo, hfHubCacheDir } from "./hf_cache.ts";
export { defaultRangeCacheDir, RangeCache } from "./range_cache.ts";
export {
  formatBytes,
  formatDuration,
  Progress,
  type ProgressInfo,
  progressLine,
  progressWanted,
} from "./progress.ts";
