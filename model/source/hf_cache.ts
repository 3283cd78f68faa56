/**
 * Reading the Hugging Face cache that the Python client (`huggingface_hub`,
 * `huggingface-cli download`, `from_pretrained`) fills, so a model already downloaded by
 * the notebook is read from disk and never downloaded again.
 *
 * Location: `HF_HUB_CACHE`, else `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
 * else `~/.cache/huggingface/hub`. Layout (we only read it):
 *
 * ```
 * models--{owner}--{name}/
 *   refs/{revision}              the commit sha a branch or tag pointed to (text)
 *   snapshots/{sha}/{file}       the file (usually a symlink into blobs/)
 *   blobs/{etag}                 the contents; "*.incomplete" while downloading
 *   .no_exist/{sha}/{file}       an empty marker: the file does not exist at that commit
 * ```
 * @module
 */
import { join } from "node:path";
import { COMMIT_RE, env, expandHome, hfHomeDir, type HfSnapshots, repoFolderName } from "./base.ts";

/**
 * The hub cache folder from the environment, as `huggingface_hub` computes it:
 * `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else `HF_HOME/hub`, with `~`
 * expanded (undefined when no home is known).
 */
export function hfHubCacheDir(
  getenv: (name: string) => string | undefined = env,
): string | undefined {
  const hub = getenv("HF_HUB_CACHE") || getenv("HUGGINGFACE_HUB_CACHE");
  if (hub) return expandHome(hub, getenv);
  const home = hfHomeDir(getenv);
  return home ? join(home, "hub") : undefined;
}

/** One repo's folder in the Hugging Face cache. */
export class HfCacheRepo implements HfSnapshots {
  /** The hub cache folder. */
  readonly cacheDir: string;
  /** `{cache}/models--owner--name`. */
  readonly dir: string;

  constructor(a: { cacheDir: string; repo: string }) {
    this.cacheDir = a.cacheDir;
    this.dir = join(a.cacheDir, repoFolderName(a.repo));
  }

  /** The commit a revision names: the sha itself, or what `refs/{revision}` holds. */
  async resolve(revision: string): Promise<string | undefined> {
    if (COMMIT_RE.test(revision)) {
      return (await isDir(join(this.dir, "snapshots", revision))) ? revision : undefined;
    }
    if (revision.split("/").some((s) => s === "" || s === "." || s === "..")) return undefined;
    try {
      const sha = (await Deno.readTextFile(join(this.dir, "refs", revision))).trim();
      return COMMIT_RE.test(sha) ? sha : undefined;
    } catch {
      return undefined;
    }
  }

  /** The snapshot path of a file at a commit. */
  path(commit: string, file: string): string {
    return join(this.dir, "snapshots", commit, file);
  }

  /** The file's size when the snapshot has it (a complete file), else undefined. */
  async size(commit: string, file: string): Promise<number | undefined> {
    try {
      const st = await Deno.stat(this.path(commit, file)); // follows the symlink into blobs/
      return st.isFile ? st.size : undefined;
    } catch {
      return undefined;
    }
  }

  /** True when the Python client recorded that the file does not exist at that commit. */
  async knownMissing(commit: string, file: string): Promise<boolean> {
    try {
      return (await Deno.stat(join(this.dir, ".no_exist", commit, file))).isFile;
    } catch {
      return false;
    }
  }
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}
