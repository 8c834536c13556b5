// Contender: Node 20 + undici Pool, the same shape as the plain loops.
// One reader cuts the file into batches of raw lines, N workers POST JSON arrays of them on one
// undici Pool of N connections. No token manager, no retries, no checkpoint.
// Usage: node node_undici.mjs URL DATA WORKERS BATCH TOKEN   (undici found through NODE_PATH)
import { createReadStream } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH || ".", "noop.js"));
const { Pool } = require("undici");

const [url, data, workersArg, batchArg, token] = process.argv.slice(2);
const workers = Number(workersArg);
const batch = Number(batchArg);
const target = new URL(url);
const pool = new Pool(target.origin, { connections: workers, pipelining: 1 });
const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
const OPEN = Buffer.from("[");
const COMMA = Buffer.from(",");
const CLOSE = Buffer.from("]");

const queue = [];
const waiters = [];
let done = false;
let spaceWaiter = null;
const limit = workers * 2;

function put(item) {
  if (waiters.length) waiters.shift()(item);
  else queue.push(item);
}
async function get() {
  if (queue.length) {
    const item = queue.shift();
    if (spaceWaiter && queue.length < limit) { const w = spaceWaiter; spaceWaiter = null; w(); }
    return item;
  }
  if (done) return null;
  return new Promise((resolve) => waiters.push(resolve));
}

async function reader() {
  let rem = Buffer.alloc(0);
  let pending = [];
  for await (const chunk of createReadStream(data, { highWaterMark: 1 << 20 })) {
    let buf = rem.length ? Buffer.concat([rem, chunk]) : chunk;
    let start = 0;
    let nl;
    while ((nl = buf.indexOf(10, start)) !== -1) {
      if (nl > start) pending.push(buf.subarray(start, nl));
      start = nl + 1;
      if (pending.length === batch) {
        put(pending);
        pending = [];
        if (queue.length >= limit) await new Promise((r) => { spaceWaiter = r; });
      }
    }
    rem = Buffer.from(buf.subarray(start));
  }
  if (rem.length) pending.push(rem);
  if (pending.length) put(pending);
  done = true;
  for (let i = 0; i < workers; i++) put(null);
}

const result = { records: 0, requests: 0, errors: 0, duration_s: 0, cpu_s: 0,
  auth_requests: null, loop: "node", extra: { node: process.version } };

async function worker() {
  for (;;) {
    const lines = await get();
    if (lines === null) return;
    const parts = [OPEN];
    for (let i = 0; i < lines.length; i++) {
      if (i) parts.push(COMMA);
      parts.push(lines[i]);
    }
    parts.push(CLOSE);
    const { statusCode, body } = await pool.request({
      path: target.pathname, method: "POST", headers, body: Buffer.concat(parts),
    });
    await body.arrayBuffer();
    if (statusCode !== 200) result.errors += 1;
    else result.records += lines.length;
    result.requests += 1;
  }
}

const cpu0 = process.cpuUsage();
const t0 = process.hrtime.bigint();
await Promise.all([reader(), ...Array.from({ length: workers }, worker)]);
result.duration_s = Number(process.hrtime.bigint() - t0) / 1e9;
const cpu = process.cpuUsage(cpu0);
result.cpu_s = (cpu.user + cpu.system) / 1e6;
await pool.close();
console.log(JSON.stringify(result));
