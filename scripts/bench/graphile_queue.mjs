// The queue-alone reference: graphile-worker 0.17.3 draining N no-op jobs from the
// same PostgreSQL, with the batching settings of its own performance page
// (concurrentJobs 24, maxPoolSize 25, localQueue of 500, completions and failures
// batched with delay 0) and its perf test's 4 worker processes.
//
//   node graphile_queue.mjs DATABASE_URL N [PROCESSES]
//
// The jobs are added first (add_jobs, 10,000 at a time) with run_at a few seconds
// ahead, so that every worker process is started and polling before the first job
// is due; the clock runs from the first task any process starts to the moment the
// jobs table is empty (polled every 10 ms), which is what our queue alone measures
// too (claims and acknowledgements, no connection setup). Prints one line:
//   graphile-worker: N jobs in S s = R jobs/s
// Needs graphile-worker in NODE_PATH or a node_modules beside the working directory
// (scripts/bench-load installs it into $OUT/graphile).
import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(process.cwd() + "/");
const { run, runMigrations } = require("graphile-worker");
const { Pool } = require("pg");

const [url, nArg, procArg] = process.argv.slice(2);
const N = Number(nArg);
const PROCESSES = Number(procArg ?? 4);
// Long enough for the adding and for every process to start (node starts in ~0.5 s).
const LEAD_MS = 5000 + N / 20;

const preset = {
  worker: {
    connectionString: url,
    concurrentJobs: 24,
    maxPoolSize: 25,
    pollInterval: 100,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
  },
};

if (process.env.GW_CHILD) {
  // A worker process: report the first task's start, run until told to stop.
  let first = 0;
  const runner = await run({
    preset,
    noHandleSignals: true,
    logger: undefined,
    taskList: {
      noop: async () => {
        if (!first) {
          first = Date.now();
          process.send({ first });
        }
      },
    },
  });
  process.send({ ready: true });
  process.on("message", async (m) => {
    if (m === "stop") {
      await runner.stop();
      process.exit(0);
    }
  });
} else {
  if (!url || !(N > 0)) {
    console.error("usage: node graphile_queue.mjs DATABASE_URL N [PROCESSES]");
    process.exit(2);
  }
  await runMigrations({ preset });
  const pool = new Pool({ connectionString: url, max: 2 });
  const runAt = new Date(Date.now() + LEAD_MS).toISOString();
  for (let added = 0; added < N; added += 10000) {
    const k = Math.min(10000, N - added);
    await pool.query(
      `select count(*) from graphile_worker.add_jobs(
         array(select ('noop', '{}'::json, null, $2::timestamptz, null, null, null, null)::graphile_worker.job_spec
               from generate_series(1, $1)))`,
      [k, runAt],
    );
  }
  const self = fileURLToPath(import.meta.url);
  const children = [];
  let first = Infinity;
  let ready = 0;
  for (let i = 0; i < PROCESSES; i++) {
    const child = fork(self, process.argv.slice(2), {
      env: { ...process.env, GW_CHILD: "1", GRAPHILE_LOGGER_DEBUG: "" },
      stdio: ["ignore", "ignore", "inherit", "ipc"],
    });
    child.on("message", (m) => {
      if (m.first) first = Math.min(first, m.first);
      if (m.ready) ready += 1;
    });
    children.push(child);
  }
  const deadline = Date.now() + 600_000;
  let end = 0;
  for (;;) {
    if (Date.now() > deadline) {
      console.error("graphile-worker: not drained within 600 s");
      process.exitCode = 1;
      break;
    }
    if (first !== Infinity) {
      const { rows } = await pool.query("select count(*)::int as n from graphile_worker._private_jobs");
      if (rows[0].n === 0) {
        end = Date.now();
        break;
      }
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  if (ready < PROCESSES) console.error(`graphile-worker: only ${ready} of ${PROCESSES} processes were ready`);
  for (const c of children) c.send("stop");
  await Promise.all(children.map((c) => new Promise((r) => c.on("exit", r))));
  await pool.end();
  if (end) {
    const secs = (end - first) / 1000;
    console.log(`graphile-worker: ${N} jobs in ${secs.toFixed(2)}s = ${Math.round(N / secs)} jobs/s (${PROCESSES} processes x 24)`);
  }
}
