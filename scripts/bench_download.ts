/**
 * Benchmark: download layer 1 of the Llama-3-8B-shaped checkpoint (make_8b_shaped.ts)
 * through a mock Hub whose CDN caps every connection at 10 MB/s, as real CDNs do, and
 * compare with one connection's rate.
 *
 * ```
 * deno run -A scripts/bench_download.ts [DIR] [--rate 10] [--layer 1] [--connections 16] [--capture]
 * ```
 *
 * Every tensor of the layer is asked for at once (as the forward pass streams a layer),
 * through one HubSource, with the range cache off so every byte crosses the network. Rows:
 * - one connection: a 40 MB read with `connections: 1` (what a single request can get);
 * - one request per tensor (pieces as large as the largest tensor): how reads went before
 *   the pool, each 117 MB MLP matrix on its own connection;
 * - the pool: 8 MiB pieces through `--connections` requests (default 16);
 * - with `--capture`, a whole capture of layer 5 through the same Hub, end to end.
 * Not a test: it takes about a minute, and the numbers depend on the machine.
 * @module
 */
import { parseArgs } from "node:util";
import { openSource } from "../model/source/mod.ts";
import { parseConfigText } from "../model/config.ts";
import { loadTensorIndex } from "../model/tensors.ts";
import { planCapture } from "../model/plan.ts";
import { startMockHub } from "../tests/mock_hub.ts";
import { make8bShaped } from "./make_8b_shaped.ts";
import { captureLayer } from "../model/capture.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    rate: { type: "string", default: "10" },
    layer: { type: "string", default: "1" },
    connections: { type: "string", default: "16" },
    capture: { type: "boolean" },
  },
});
const dir = positionals[0] ?? "/tmp/llama3-8b-shaped";
const layer = Number(values.layer);
const rate = Number(values.rate) * 1e6; // bytes per second per connection
await make8bShaped(dir, Math.max(6, layer + 2));

const REPO = "bench/llama3-8b-shaped";
await using hub = await startMockHub({
  repos: { [REPO]: { dir } },
  redirect: /\.safetensors$/, // large files go through the CDN, as on the Hub
  bytesPerSecond: rate,
  chunkSize: 256 << 10,
});
const open = (o: { connections: number; pieceBytes?: number }) =>
  openSource({
    model: REPO,
    endpoint: hub.endpoint,
    token: "",
    offline: false,
    hfCacheDir: false,
    rangeCache: false,
    progress: false,
    ...o,
  });

// The plan: layer `layer`'s tensors (a full layer: the capture of layer+1 reads it whole).
const src0 = await open({ connections: 1 });
const config = parseConfigText(await src0.readText("config.json"), { where: REPO });
const tensors = await loadTensorIndex(src0);
const plan = planCapture({ config, tensors, layer: layer + 1, tokenIds: [128000] });
const reads = plan.layers[layer];
const bytes = reads.reduce((n, r) => n + r.end - r.begin, 0);

/** Reads every tensor of the layer at once; returns seconds and requests made. */
async function layerDownload(o: { connections: number; pieceBytes?: number }) {
  const src = await open(o);
  await src.size(reads[0].file); // resolve the file first, as a run does for the headers
  const before = src.stats.requests;
  const t0 = performance.now();
  await Promise.all(reads.map((r) => src.read(r.file, r.begin, r.end)));
  return { seconds: (performance.now() - t0) / 1000, requests: src.stats.requests - before };
}

const rows: string[] = [];
const row = (what: string, conns: string, n: number, s: number, base: number) =>
  rows.push(
    `| ${what.padEnd(36)} | ${conns.padStart(11)} | ${(n / 1e6).toFixed(0).padStart(6)} | ${
      s.toFixed(1).padStart(6)
    } | ${(n / 1e6 / s).toFixed(1).padStart(6)} | ${(n / s / base).toFixed(1).padStart(5)}× |`,
  );

// 1. One connection's rate.
const one = 40_000_000;
{
  const src = await open({ connections: 1 });
  await src.size(reads[0].file);
  const t0 = performance.now();
  await src.read(reads[0].file, reads[0].begin, reads[0].begin + one);
  const s = (performance.now() - t0) / 1000;
  const base = one / s;
  row("one connection (40 MB read)", "1", one, s, base);

  // 2. One request per tensor (the old behaviour), then 3. the pool.
  const largest = Math.max(...reads.map((r) => r.end - r.begin));
  const old = await layerDownload({ connections: reads.length, pieceBytes: largest });
  row(
    `one request per tensor (${reads.length} tensors)`,
    `${reads.length}`,
    bytes,
    old.seconds,
    base,
  );
  const conns = Number(values.connections);
  const pool = await layerDownload({ connections: conns });
  row(`pool: 8 MiB pieces (${pool.requests} requests)`, `${conns}`, bytes, pool.seconds, base);
}

// 4. With --capture: a whole capture of layer 5 through the same Hub (no cache): the forward
//    pass streams each layer while the previous one computes, so the pool stays busy.
if (values.capture) {
  const t0 = performance.now();
  const cap = await captureLayer({
    model: REPO,
    layer: 5,
    tokenIds: [128000, 791, 4062, 14198, 39935, 35308, 927, 279],
    progress: false,
    source: { endpoint: hub.endpoint, token: "", hfCacheDir: false, rangeCache: false },
  });
  const s = (performance.now() - t0) / 1000;
  const n = cap.report.plan.bytes;
  rows.push("");
  rows.push(
    `capture of layer 5 through the same Hub: ${(n / 1e9).toFixed(2)} GB in ${s.toFixed(1)} s ` +
      `(${(n / 1e6 / s).toFixed(0)} MB/s end to end, ${cap.report.requests} requests)`,
  );
}

const load = Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
console.log(
  [
    `layer ${layer} of ${dir} (${
      (bytes / 1e6).toFixed(0)
    } MB) through a mock Hub + CDN capped at ` +
    `${values.rate} MB/s per connection; load average ${load}`,
    "",
    "| reads                                | connections |     MB |      s |   MB/s |   rate |",
    "| ------------------------------------ | ----------- | ------ | ------ | ------ | ------ |",
    ...rows,
    "",
    "(rate: × one connection's measured rate)",
  ].join("\n"),
);
