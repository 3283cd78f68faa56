import assert from "node:assert/strict";
import { canMapFiles, mapFileRange } from "../model/source/mmap.ts";
import { readFileRange } from "../model/source/base.ts";
import { freshSeed, Rng } from "./_helpers.ts";

Deno.test("mapFileRange() maps exactly the bytes read() gives, at any offset; release() unmaps once", async () => {
  assert.equal(canMapFiles(), true, "this suite runs on Linux with --allow-all (FFI granted)");
  const seed = freshSeed(), rng = new Rng(seed);
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/f.bin`;
    const data = new Uint8Array(3 * 4096 + 123).map(() => rng.int(256));
    await Deno.writeFile(path, data);
    for (let i = 0; i < 50; i++) {
      const begin = rng.int(data.length), end = begin + 1 + rng.int(data.length - begin);
      const m = mapFileRange(path, begin, end);
      assert(m, "mapped");
      assert.deepEqual(
        m.bytes,
        await readFileRange(path, begin, end),
        `seed ${seed} [${begin}, ${end})`,
      );
      m.release();
      m.release(); // a second release does nothing (a second munmap could unmap a reused range)
    }
    assert.equal(mapFileRange(path, 5, 5), null, "an empty range is not mapped");
    assert.equal(mapFileRange(`${dir}/missing.bin`, 0, 1), null, "a missing file gives null");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mapFileRange() gives null for bytes not in the page cache, so they are read instead", async () => {
  const dir = await Deno.makeTempDir();
  const libc = Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
    posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"], result: "i32" },
  });
  try {
    const path = `${dir}/cold.bin`;
    const data = new Uint8Array(64 * 4096).fill(7);
    using f = await Deno.open(path, { write: true, create: true });
    await f.write(data);
    await f.sync(); // clean pages can be dropped from the cache
    const fd = libc.symbols.open(new TextEncoder().encode(path + "\0"), 0);
    assert.equal(libc.symbols.posix_fadvise(fd, 0n, 0n, 4 /* POSIX_FADV_DONTNEED */), 0);
    libc.symbols.close(fd);
    assert.equal(mapFileRange(path, 0, data.length), null, "dropped pages are not mapped");
    await readFileRange(path, 0, data.length); // reading brings them back
    const m = mapFileRange(path, 0, data.length);
    assert(m, "cached again: mapped");
    assert.deepEqual(m.bytes, data);
    m.release();
  } finally {
    libc.close();
    await Deno.remove(dir, { recursive: true });
  }
});
