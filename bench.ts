// Copyright the coordinator authors. MIT license.
/**
 * Benchmark behind `deno task bench`: how many GitHub requests, how much wall time and how
 * much memory (peak RSS) a coordinator run over many repositories costs.
 *
 * It starts the fake GitHub and Jenkins of fakes.ts on 127.0.0.1 with a fixed latency on
 * every request, adds R repositories (`bench/repo-001` …) of I issues each, where every
 * Nth issue carries `status-02:awaiting-planning` (a few others are pull requests, one in
 * BUSY_EVERY carries a bot-busy label), and runs `coordinator run --all --json` several
 * times against one KV file: cold (empty KV: full reads, every pickup dispatched), then,
 * where something was dispatched, after-dispatch (the label moves changed each first
 * page), then idle (nothing changed: every repository should answer `304 Not Modified`).
 *
 * Each run is a separate `deno run` of this file with `--child`, which imports `main()` from
 * coordinator.ts and runs it against the fakes' URLs: the fakes hold every issue of every
 * repository, and in the same process they would count towards the coordinator's memory.
 * The child runs as `deno task start` runs the coordinator: a plain `deno run`, no V8 flags.
 * (History: until issue 15 the start task, and so the child, ran with
 * `--v8-flags=--no-opt,--no-maglev`, V8's optimizing compilers off. That kept the 500-repository
 * idle run at 61-63 MB instead of 70-72 MB; it was dropped because Deno refuses a V8 flag it does
 * not know, Deno Deploy takes no flags, and no user should have to carry one.)
 * The child reports wall time around `main()` and its peak RSS: VmHWM of /proc/self/status
 * (Linux), which Deno lets a program read only with --allow-all, so the child gets -A.
 * `getrusage`'s maxrss will not do: Linux carries it over from the spawning process, whose
 * pages the child shares until its exec, so it would report the fakes' memory.
 *
 * Scenarios (`--scenario a,b`; default all):
 * - small: 50 × 10 issues, none eligible, 5 ms: cold, then 3 idle runs (the yardstick).
 * - large: 50 × 1,000 issues, none eligible, 5 ms: cold, then 3 idle runs.
 * - dispatch: 50 × 200 issues, 2 eligible each, 30 ms: cold, after-dispatch, idle, then
 *   `status --all` (from KV alone: it must list every active job with 0 GitHub and 0 Jenkins
 *   requests).
 * - fleet: 500 × 20 issues, none eligible, 100 ms: cold, idle (about a minute).
 * `--repos`, `--issues`, `--latency` and `--pickup-every` instead run one custom scenario
 * (runs as in dispatch, then `status --all`).
 *
 * For each run it prints wall time, GitHub requests, requests that cost rate limit, 304s
 * (counted by the fake, cross-checked with the run summary), Jenkins builds, peak RSS and
 * the exit code, then PASS/FAIL lines for the targets (idle: at most one GitHub request
 * per repository, all 304, no builds; cold: one build per pickup, at most two probes plus
 * the pages per repository besides each dispatch's read and label writes; no issue built
 * twice; the memory and wall-time targets of issue 10). Exit code 1 when a target fails, 2 for
 * bad flags.
 *
 * Before a scenario's runs one unmeasured child prints `--version`, so that the measured runs
 * find the coordinator compiled in Deno's code cache, as every cron run but the first after an
 * update does (a run that compiles it starts about 9 MB higher: Deno writes the cache then).
 * The children's code cache is their own, in a DENO_DIR whose downloads are linked from this
 * process's: other Deno processes on the machine must not evict or lock it mid-benchmark.
 *
 * GitHub write pacing is switched off (`github_write_interval_ms = 0`) so that the numbers
 * show requests and latency, not the one-second pause between label writes.
 *
 * ```sh
 * deno task bench
 * deno task bench --scenario large --json
 * deno task bench --repos 3 --issues 20 --latency 5 --pickup-every 4
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { defaultDeps, type Deps, type Internals, main, WORKFLOWS } from "./coordinator.ts";
// Types only: the child process must not load the fakes (see setUp()).
import type { FakeGitHub, FakeIssueInit, FakeJenkins, WorldRepo } from "./fakes.ts";

type RunSummary = Internals["RunSummary"];

/** fakes.ts, which only the parent loads (see setUp()). */
type Fakes = typeof import("./fakes.ts");

const PLAN = WORKFLOWS.find((spec) => spec.workflow === "create-plan")!;
const PICKUP = PLAN.pickup;
const BUSY = PLAN.busy;
/** A label that is not a pickup: such issues are cached but never dispatched. */
const OTHER_BUSY = WORKFLOWS.find((spec) => spec.workflow === "implement")!.busy;
const ORDINARY_LABELS = ["bug", "enhancement", "documentation", "question"];
/** One issue in PR_EVERY is a pull request: `/issues` lists those too. */
const PR_EVERY = 50;
const PR_OFFSET = 7;
/** One issue in UNLABELED_EVERY has no label at all. */
const UNLABELED_EVERY = 9;
/** One issue in BUSY_EVERY has a job running (OTHER_BUSY). */
const BUSY_EVERY = 250;
/**
 * Issue n was last updated (I - n + 1) hours ago. The fake's default puts issues one second
 * apart, all inside the coordinator's 5-minute `since` overlap, which makes an incremental
 * read follow every page; real repositories are not that busy.
 */
const UPDATE_SPACING_MS = 60 * 60_000;
const OWNER = "bench";
const JOB_PATH = "Coder/executor";
const WRITE_INTERVAL_MS = 0;
const MB = 1024 * 1024;
/** Targets: issue 10's, with the idle run's of issue 15 (70 MB then, with V8 flags; see above). */
const IDLE_RSS_MB = 75;
const COLD_RSS_MB = 100;
const IDLE_WALL_RATIO = 1.5;
/** Coordinator log lines shown for a failed run; the rest is INFO noise. */
const MAX_LOG_LINES = 40;
const EXIT_OK = 0;
const EXIT_FAIL = 1;
const EXIT_USAGE = 2;
const CHILD_FLAG = "--child";
const SELF = new URL(import.meta.url).pathname;
const USAGE = "Usage: deno task bench [--scenario small,large,dispatch,fleet] [--json]\n" +
  "       deno task bench [--repos R] [--issues I] [--latency MS] [--pickup-every N] [--json]";

type RunKind = "cold" | "after-dispatch" | "idle";

/** One world and the runs made in it. */
interface Scenario {
  name: string;
  repos: number;
  issues: number;
  latencyMs: number;
  /** Every Nth issue carries the pickup label; 0: none does. */
  pickupEvery: number;
  runs: RunKind[];
  /** Peak-RSS targets (issue 10), in MB. */
  rssMb?: { idle?: number; cold?: number };
  /** After the runs, time `status --all`, which reads KV alone. */
  status?: boolean;
}

const SCENARIOS: readonly Scenario[] = [
  {
    name: "small",
    repos: 50,
    issues: 10,
    latencyMs: 5,
    pickupEvery: 0,
    runs: ["cold", "idle", "idle", "idle"],
  },
  {
    name: "large",
    repos: 50,
    issues: 1000,
    latencyMs: 5,
    pickupEvery: 0,
    runs: ["cold", "idle", "idle", "idle"],
    rssMb: { idle: IDLE_RSS_MB, cold: COLD_RSS_MB },
  },
  {
    name: "dispatch",
    repos: 50,
    issues: 200,
    latencyMs: 30,
    pickupEvery: 100,
    runs: ["cold", "after-dispatch", "idle"],
    status: true,
  },
  {
    name: "fleet",
    repos: 500,
    issues: 20,
    latencyMs: 100,
    pickupEvery: 0,
    runs: ["cold", "idle"],
    rssMb: { idle: IDLE_RSS_MB },
  },
];

/** What the command line asked for. */
interface Options {
  scenarios: Scenario[];
  json: boolean;
}

/** The fakes, the config and KV files, and what was put into them. */
interface Bench {
  scenario: Scenario;
  fakes: Fakes;
  gh: FakeGitHub;
  jenkins: FakeJenkins;
  dir: string;
  /** The children's DENO_DIR (see childDenoDir()). */
  denoDir: string;
  configPath: string;
  kvPath: string;
  repos: string[];
  /** Issue numbers carrying the pickup label, the same in every repository. */
  pickupNumbers: number[];
  /** Issue numbers carrying OTHER_BUSY (a job nobody here dispatched), in every repository. */
  busyNumbers: number[];
  pullRequests: number;
}

type GitHubCounts = Omit<RunSummary["github"], "rateLimitRemaining">;

/** What the child process reports about its one coordinator run. */
interface ChildReport {
  exitCode: number;
  wallMs: number;
  sleptMs: number;
  /** Peak resident set size of the child process (VmHWM); null where there is no /proc. */
  peakRssBytes: number | null;
  /** Resident set size before `main()` started: the runtime and the loaded modules. */
  startRssBytes: number;
  stdout: string;
}

/** One coordinator run as measured from outside. */
interface RunResult {
  name: string;
  kind: RunKind;
  exitCode: number;
  wallMs: number;
  peakRssBytes: number | null;
  startRssBytes: number | null;
  /** As the fake GitHub counted them. */
  github: GitHubCounts;
  /** As the coordinator's summary reported them; null without a parseable summary. */
  summaryGithub: GitHubCounts | null;
  builds: number;
  summaryBuilds: number | null;
  /** Every request Jenkins received: triggers plus queue look-ups. */
  jenkinsRequests: number;
  /** Total time the coordinator asked to sleep (retries, pacing). */
  sleptMs: number;
  /** How many repositories were read which way: full, incremental, not-modified, ... */
  reads: Record<string, number>;
  repoErrors: string[];
  stderr: string;
}

interface Check {
  /** null: could not be measured here (SKIP), which fails nothing. */
  ok: boolean | null;
  text: string;
}

/** `status --all` as measured from outside. */
interface StatusResult {
  exitCode: number;
  wallMs: number;
  peakRssBytes: number | null;
  githubRequests: number;
  jenkinsRequests: number;
  /** Active jobs its JSON lists, over all repositories; null without parseable JSON. */
  active: number | null;
  stderr: string;
}

/** A scenario's world and runs, and how they fared. */
interface Outcome {
  bench: Bench;
  runs: RunResult[];
  status: StatusResult | null;
  checks: Check[];
}

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      scenario: { type: "string" },
      repos: { type: "string" },
      issues: { type: "string" },
      latency: { type: "string" },
      "pickup-every": { type: "string" },
      json: { type: "boolean", default: false },
    },
  });
  const custom = [values.repos, values.issues, values.latency, values["pickup-every"]]
    .some((value) => value !== undefined);
  if (custom && values.scenario !== undefined) {
    throw new Error("--scenario and --repos/--issues/--latency/--pickup-every do not mix");
  }
  if (custom) {
    const scenario: Scenario = {
      name: "custom",
      repos: integer(values.repos ?? "50", "--repos", 1),
      issues: integer(values.issues ?? "200", "--issues", 1),
      latencyMs: integer(values.latency ?? "20", "--latency", 0),
      pickupEvery: integer(values["pickup-every"] ?? "20", "--pickup-every", 0),
      runs: ["cold", "after-dispatch", "idle"],
      status: true,
    };
    return { scenarios: [scenario], json: values.json };
  }
  const names = values.scenario?.split(",").map((name) => name.trim()) ??
    SCENARIOS.map((scenario) => scenario.name);
  const scenarios = names.map((name) => {
    const found = SCENARIOS.find((scenario) => scenario.name === name);
    if (!found) {
      throw new Error(
        `unknown scenario "${name}"; known: ${SCENARIOS.map((s) => s.name).join(", ")}`,
      );
    }
    return found;
  });
  return { scenarios, json: values.json };
}

function integer(text: string, flag: string, min: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text.trim()) || value < min) {
    throw new Error(`${flag} must be a whole number >= ${min}, got "${text}"`);
  }
  return value;
}

/** The issues of one repository; every repository gets the same set. */
function repoIssues(scenario: Scenario): FakeIssueInit[] {
  const issues: FakeIssueInit[] = [];
  // Whole seconds, as GitHub's timestamps are.
  const now = Math.floor(Date.now() / 1000) * 1000;
  for (let number = 1; number <= scenario.issues; number++) {
    const updatedAt = new Date(now - (scenario.issues - number + 1) * UPDATE_SPACING_MS)
      .toISOString();
    const pickup = scenario.pickupEvery > 0 && number % scenario.pickupEvery === 0;
    const ordinary = ORDINARY_LABELS[number % ORDINARY_LABELS.length];
    const labels = pickup
      ? [PICKUP, ordinary]
      : number % BUSY_EVERY === 0
      ? [OTHER_BUSY, ordinary]
      : number % UNLABELED_EVERY === 0
      ? []
      : [ordinary];
    issues.push({
      number,
      title: `Bench issue ${number}`,
      createdAt: updatedAt,
      updatedAt,
      labels,
      // A pickup stays an issue: a pull request with a pickup label is never dispatched.
      pullRequest: !pickup && number % PR_EVERY === PR_OFFSET,
    });
  }
  return issues;
}

async function setUp(scenario: Scenario): Promise<Bench> {
  // Loaded here, by the parent only: in the child the module alone would add about 4 MB of RSS.
  const fakes: Fakes = await import("./fakes.ts");
  const { FakeGitHub, FakeJenkins, fakesConfig } = fakes;
  const gh = await FakeGitHub.start({ latencyMs: scenario.latencyMs });
  const jenkins = await FakeJenkins.start({ latencyMs: scenario.latencyMs });
  const dir = await Deno.makeTempDir({ prefix: "coordinator-bench-" });
  const denoDir = await childDenoDir(dir);
  jenkins.addJob(JOB_PATH);
  const issues = repoIssues(scenario);
  const width = Math.max(3, String(scenario.repos).length);
  const repos: WorldRepo[] = Array.from({ length: scenario.repos }, (_, i) => {
    const id = String(i + 1).padStart(width, "0");
    return { name: `repo_${id}`, fullName: `${OWNER}/repo-${id}`, jobPath: JOB_PATH };
  });
  for (const repo of repos) gh.addRepo(repo.fullName, issues);
  const configPath = `${dir}/config.toml`;
  const config = fakesConfig({ gh, jenkins }, repos, { writeIntervalMs: WRITE_INTERVAL_MS });
  await Deno.writeTextFile(configPath, config, { mode: 0o600 });
  const numbers = (label: string) =>
    issues.filter((issue) => !issue.pullRequest && issue.labels?.includes(label))
      .map((issue) => issue.number);
  return {
    scenario,
    fakes,
    gh,
    jenkins,
    dir,
    denoDir,
    configPath,
    kvPath: `${dir}/kv.sqlite3`,
    repos: repos.map((repo) => repo.fullName),
    pickupNumbers: numbers(PICKUP),
    busyNumbers: numbers(OTHER_BUSY),
    pullRequests: issues.filter((issue) => issue.pullRequest).length * scenario.repos,
  };
}

/**
 * A DENO_DIR for the children in `dir`: the downloads (`npm`, `remote`) and emitted code (`gen`)
 * linked from this process's, the V8 code cache of its own. In the shared cache other Deno
 * processes on the machine sometimes held or rewrote the entries, and a child that finds none
 * compiles and writes them: it starts about 9 MB higher (the 500-repository idle run peaked at
 * 77-78 MB instead of 69-72 MB). The unmeasured first run of a scenario fills it.
 */
async function childDenoDir(dir: string): Promise<string> {
  const info = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json"],
    stdout: "piped",
    stderr: "null",
  }).output();
  const shared: string = JSON.parse(new TextDecoder().decode(info.stdout)).denoDir;
  const own = `${dir}/deno`;
  await Deno.mkdir(own);
  for (const name of ["npm", "remote", "gen"]) {
    const exists = await Deno.stat(`${shared}/${name}`).then(() => true, () => false);
    if (exists) await Deno.symlink(`${shared}/${name}`, `${own}/${name}`);
  }
  return own;
}

async function tearDown(bench: Bench): Promise<void> {
  await bench.gh.close();
  await bench.jenkins.close();
  await Deno.remove(bench.dir, { recursive: true }).catch(() => {});
}

/** Runs one coordinator command (`args`) in a child process; null report when it had none. */
async function runChildProcess(
  bench: Bench,
  args: string[],
): Promise<{ report: ChildReport | null; code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      // Only for /proc/self/status; the coordinator needs --allow-net=127.0.0.1, --allow-env,
      // --allow-read and --allow-write here.
      "--allow-all",
      "--unstable-kv",
      "--unstable-cron",
      SELF,
      CHILD_FLAG,
      bench.dir,
      ...args,
    ],
    cwd: new URL(".", import.meta.url).pathname,
    clearEnv: true,
    env: { ...bench.fakes.childEnv(), DENO_DIR: bench.denoDir },
    stdout: "piped",
    stderr: "piped",
  });
  const output = await child.output();
  const stdout = new TextDecoder().decode(output.stdout);
  const stderr = new TextDecoder().decode(output.stderr);
  let report: ChildReport | null = null;
  try {
    report = JSON.parse(stdout.trim().split("\n").at(-1) ?? "") as ChildReport;
  } catch {
    // the caller reports a missing summary
  }
  return { report, code: output.code, stdout, stderr };
}

/** Runs `coordinator run --all --json` once in a child process, with counters reset. */
async function runOnce(bench: Bench, kind: RunKind, name: string): Promise<RunResult> {
  bench.gh.resetCounters();
  const buildsBefore = bench.jenkins.builds.length;
  const jenkinsBefore = bench.jenkins.requests.length;
  const args = ["run", "--all", "--config", bench.configPath, "--kv", bench.kvPath, "--json"];
  const { report, code, stdout, stderr } = await runChildProcess(bench, args);
  const github = { ...bench.gh.counters };
  let summary: RunSummary | null = null;
  try {
    summary = JSON.parse(report?.stdout ?? "") as RunSummary;
  } catch {
    // reported below as a missing summary
  }
  const reads: Record<string, number> = {};
  for (const repo of summary?.repos ?? []) reads[repo.read] = (reads[repo.read] ?? 0) + 1;
  const repoErrors = (summary?.repos ?? []).flatMap((repo) =>
    repo.error ? [`${repo.repository}: ${repo.error}`] : []
  );
  if (!summary) repoErrors.push(`no JSON summary from the child: ${stdout.slice(0, 200)}`);
  return {
    name,
    kind,
    exitCode: report?.exitCode ?? code,
    wallMs: report?.wallMs ?? NaN,
    peakRssBytes: report?.peakRssBytes ?? null,
    startRssBytes: report?.startRssBytes ?? null,
    github: { requests: github.requests, notModified: github.notModified, costed: github.costed },
    summaryGithub: summary ? { ...summary.github } : null,
    builds: bench.jenkins.builds.length - buildsBefore,
    summaryBuilds: summary?.jenkins.builds ?? null,
    jenkinsRequests: bench.jenkins.requests.length - jenkinsBefore,
    sleptMs: report?.sleptMs ?? 0,
    reads,
    repoErrors,
    stderr,
  };
}

/** Runs `coordinator status --all --json` once in a child process, with counters reset. */
async function runStatus(bench: Bench): Promise<StatusResult> {
  bench.gh.resetCounters();
  const jenkinsBefore = bench.jenkins.requests.length;
  const args = ["status", "--all", "--config", bench.configPath, "--kv", bench.kvPath, "--json"];
  const { report, code, stderr } = await runChildProcess(bench, args);
  let active: number | null = null;
  try {
    const json = JSON.parse(report?.stdout ?? "") as { repos: { active: unknown[] }[] };
    active = json.repos.reduce((sum, repo) => sum + repo.active.length, 0);
  } catch {
    // reported by statusChecks() as no active jobs listed
  }
  return {
    exitCode: report?.exitCode ?? code,
    wallMs: report?.wallMs ?? NaN,
    peakRssBytes: report?.peakRssBytes ?? null,
    githubRequests: bench.gh.counters.requests,
    jenkinsRequests: bench.jenkins.requests.length - jenkinsBefore,
    active,
    stderr,
  };
}

/** This process's peak resident set size (VmHWM), or null where /proc is not there. */
function peakRss(): number | null {
  try {
    const kib = /^VmHWM:\s*(\d+) kB$/m.exec(Deno.readTextFileSync("/proc/self/status"))?.[1];
    return kib ? Number(kib) * 1024 : null;
  } catch {
    return null;
  }
}

/**
 * The child side: one `main()` run, its stderr passed through, its stdout (the JSON summary)
 * and measurements printed as one JSON line at the end.
 */
async function runChild(home: string, args: string[]): Promise<number> {
  const base = defaultDeps();
  const captured = { stdout: "", sleptMs: 0 };
  const deps: Deps = {
    ...base,
    // Only HOME: a GITHUB_TOKEN or JENKINS_URL of the caller must not redirect the run.
    env: (key) => key === "HOME" ? home : undefined,
    stdout: (text) => void (captured.stdout += text),
    sleep: (ms) => {
      captured.sleptMs += Math.max(0, ms);
      return base.sleep(ms);
    },
  };
  const startRssBytes = Deno.memoryUsage().rss;
  const started = performance.now();
  const exitCode = await main(args, deps);
  const wallMs = performance.now() - started;
  const report: ChildReport = {
    exitCode,
    wallMs,
    sleptMs: captured.sleptMs,
    peakRssBytes: peakRss(),
    startRssBytes,
    stdout: captured.stdout,
  };
  console.log(JSON.stringify(report));
  return EXIT_OK;
}

function mb(bytes: number | null): string {
  return bytes === null ? "n/a" : (bytes / MB).toFixed(0);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Idle runs: at most one request per repository, all 304, no builds. */
function idleChecks(scenario: Scenario, runs: RunResult[]): Check[] {
  return runs.flatMap((run) => [
    {
      ok: run.github.requests <= scenario.repos && run.github.notModified === run.github.requests,
      text: `${run.name}: ${run.github.requests} GitHub requests, ${run.github.notModified} ` +
        `of them 304 (target: at most ${scenario.repos}, one per repository, all 304)`,
    },
    {
      ok: run.github.costed === 0 && run.builds === 0,
      text: `${run.name}: ${run.github.costed} requests cost rate limit, ${run.builds} builds ` +
        "(target 0 and 0)",
    },
  ]);
}

/** Cold run: one build per pickup, and no more reading than two probes plus the pages. */
function coldChecks(bench: Bench, cold: RunResult): Check[] {
  const { scenario } = bench;
  const pickups = bench.pickupNumbers.length * scenario.repos;
  const pages = Math.max(1, Math.ceil(scenario.issues / 100));
  // Per repository two probes around the pages; per dispatch the issue read again before the
  // claim and two label writes.
  const bound = scenario.repos * (2 + pages) + 3 * pickups;
  return [
    {
      ok: cold.builds === pickups,
      text: `cold: ${cold.builds} Jenkins builds for ${pickups} pickups`,
    },
    {
      ok: cold.github.requests <= bound,
      text: `cold: ${cold.github.requests} GitHub requests <= ${bound} ` +
        `(${scenario.repos} × (2 probes + ${pages} pages) + a read and 2 label writes per pickup)`,
    },
  ];
}

/** Exit codes, doubled builds, summaries against the fakes' counts, labels moved. */
function consistencyChecks(bench: Bench, runs: RunResult[]): Check[] {
  const checks: Check[] = [];
  const seen = new Map<string, number>();
  for (const build of bench.jenkins.builds) {
    const key = `${build.params.REPO_URL} #${bench.fakes.issueOfBuild(build)}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
  }
  const twice = [...seen].filter(([, count]) => count > 1).map(([key, count]) =>
    `${key} ×${count}`
  );
  checks.push({
    ok: twice.length === 0,
    text: twice.length === 0
      ? `no issue built twice (${bench.jenkins.builds.length} builds, ${seen.size} issues)`
      : `issues built more than once: ${twice.slice(0, 5).join(", ")}${
        twice.length > 5 ? `, … (${twice.length} in all)` : ""
      }`,
  });
  const failed = runs.filter((run) => run.exitCode !== EXIT_OK);
  checks.push({
    ok: failed.length === 0,
    text: failed.length === 0
      ? "every run exited 0"
      : `runs with a non-zero exit: ${failed.map((r) => `${r.name} (${r.exitCode})`).join(", ")}`,
  });
  const mismatches = runs.flatMap((run) => {
    const s = run.summaryGithub;
    const ours = `${run.github.requests}/${run.github.costed}/${run.github.notModified}`;
    if (!s) return [`${run.name}: no summary`];
    const theirs = `${s.requests}/${s.costed}/${s.notModified}`;
    const builds = run.summaryBuilds === run.builds
      ? []
      : [`${run.name}: summary says ${run.summaryBuilds} builds, Jenkins saw ${run.builds}`];
    return ours === theirs ? builds : [
      `${run.name}: fake counted ${ours}, summary says ${theirs} (requests/costed/304)`,
      ...builds,
    ];
  });
  checks.push({
    ok: mismatches.length === 0,
    text: mismatches.length === 0
      ? "run summaries match what the fakes counted (GitHub requests, costed, 304s, builds)"
      : `summary differs from the fakes: ${mismatches.join("; ")}`,
  });
  let moved = 0;
  for (const repo of bench.repos) {
    for (const number of bench.pickupNumbers) {
      const labels = bench.gh.getIssue(repo, number).labels;
      if (labels.includes(BUSY) && !labels.includes(PICKUP)) moved++;
    }
  }
  const pickups = bench.pickupNumbers.length * bench.scenario.repos;
  checks.push({
    ok: moved === pickups,
    text: `${moved} of ${pickups} pickups moved from ${PICKUP} to ${BUSY}`,
  });
  return checks;
}

/** `status --all`: from KV alone (no request anywhere), every active job listed. */
function statusChecks(bench: Bench, status: StatusResult): Check[] {
  const active = (bench.pickupNumbers.length + bench.busyNumbers.length) * bench.scenario.repos;
  return [
    {
      ok: status.exitCode === EXIT_OK && status.githubRequests === 0 &&
        status.jenkinsRequests === 0,
      text: `status --all: ${status.githubRequests} GitHub and ${status.jenkinsRequests} ` +
        `Jenkins requests, exit ${status.exitCode} (target 0 and 0, exit 0: KV alone)`,
    },
    {
      ok: status.active === active,
      text: `status --all: ${status.active ?? "no JSON, no"} active jobs listed of ${active} ` +
        "(every dispatched pickup and busy issue)",
    },
  ];
}

/** A peak-RSS target; not measurable where getrusage reports nothing. */
function rssCheck(run: RunResult, limitMb: number): Check {
  if (run.peakRssBytes === null) {
    return { ok: null, text: `${run.name}: peak RSS not measured (no /proc/self/status)` };
  }
  return {
    ok: run.peakRssBytes < limitMb * MB,
    text: `${run.name}: peak RSS ${mb(run.peakRssBytes)} MB < ${limitMb} MB`,
  };
}

/** The scenario's peak-RSS targets, for the runs they apply to. */
function memoryChecks(scenario: Scenario, runs: RunResult[]): Check[] {
  return runs.flatMap((run) => {
    const limit = run.kind === "cold"
      ? scenario.rssMb?.cold
      : run.kind === "idle"
      ? scenario.rssMb?.idle
      : undefined;
    return limit === undefined ? [] : [rssCheck(run, limit)];
  });
}

function evaluate(bench: Bench, runs: RunResult[]): Check[] {
  const cold = runs.find((run) => run.kind === "cold")!;
  return [
    ...idleChecks(bench.scenario, runs.filter((run) => run.kind === "idle")),
    ...coldChecks(bench, cold),
    ...consistencyChecks(bench, runs),
    ...memoryChecks(bench.scenario, runs),
  ];
}

/** Median idle wall of `large` within IDLE_WALL_RATIO of `small`'s, when both ran. */
function ratioCheck(outcomes: Outcome[]): Check[] {
  const idleWall = (name: string) => {
    const outcome = outcomes.find((o) => o.bench.scenario.name === name);
    const idle = outcome?.runs.filter((run) => run.kind === "idle") ?? [];
    return idle.length ? median(idle.map((run) => run.wallMs)) : null;
  };
  const small = idleWall("small");
  const large = idleWall("large");
  if (small === null || large === null) return [];
  return [{
    ok: large <= small * IDLE_WALL_RATIO,
    text: `idle wall time, median of the idle runs: large ${large.toFixed(0)} ms vs small ` +
      `${small.toFixed(0)} ms, ${(large / small).toFixed(2)}× (target <= ${IDLE_WALL_RATIO}×)`,
  }];
}

function formatReads(reads: Record<string, number>): string {
  return Object.entries(reads).map(([kind, count]) => `${count} ${kind}`).join(", ") || "-";
}

function formatTable(runs: RunResult[]): string {
  const header = [
    "run",
    "wall ms",
    "GH requests",
    "costed",
    "304s",
    "builds",
    "Jenkins req",
    "peak RSS MB",
    "exit",
  ];
  const rows = runs.map((run) => [
    run.name,
    run.wallMs.toFixed(0),
    String(run.github.requests),
    String(run.github.costed),
    String(run.github.notModified),
    String(run.builds),
    String(run.jenkinsRequests),
    mb(run.peakRssBytes),
    String(run.exitCode),
  ]);
  const widths = header.map((title, i) =>
    Math.max(title.length, ...rows.map((row) => row[i].length))
  );
  const line = (cells: string[]) =>
    cells.map((cell, i) => i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i])).join("  ");
  const reads = runs.map((run) => `${run.name} ${formatReads(run.reads)}`).join("; ");
  const start = runs.map((run) => `${run.name} ${mb(run.startRssBytes)}`).join(", ");
  return [
    line(header),
    ...rows.map(line),
    `Repository reads: ${reads}`,
    `RSS before main() (runtime and modules), MB: ${start}`,
  ].join("\n");
}

/** The coordinator's warnings and errors of a failed run, for the person reading the report. */
function failedRunLog(
  run: Pick<RunResult, "name" | "exitCode" | "stderr" | "repoErrors">,
): string {
  const lines = run.stderr.split("\n").filter((l) =>
    l !== "" && !/^(\S+Z )?(INFO|DEBUG)\b/.test(l)
  );
  const shown = lines.slice(-MAX_LOG_LINES);
  const more = lines.length > shown.length ? ` (last ${shown.length} of ${lines.length})` : "";
  return [
    `--- coordinator stderr of the ${run.name} run, exit ${run.exitCode}${more} ---`,
    ...shown,
    ...run.repoErrors.slice(0, MAX_LOG_LINES).map((error) => `summary error: ${error}`),
    "---",
  ].join("\n");
}

/** Sets up one scenario's world, makes its runs, and tears it down. */
async function runScenario(scenario: Scenario): Promise<Outcome> {
  const bench = await setUp(scenario);
  try {
    // Every cron run but the first after an update finds its compiled code in Deno's code cache;
    // one that does not starts about 9 MB higher. Measure the usual case: one unmeasured
    // `--version` fills the children's cache (childDenoDir()) first.
    await runChildProcess(bench, ["--version"]);
    const runs: RunResult[] = [];
    for (const [index, kind] of scenario.runs.entries()) {
      const repeat = scenario.runs.slice(0, index).filter((k) => k === kind).length;
      runs.push(await runOnce(bench, kind, repeat ? `${kind} #${repeat + 1}` : kind));
    }
    const status = scenario.status ? await runStatus(bench) : null;
    for (const run of runs) {
      if (run.exitCode !== EXIT_OK) console.error(failedRunLog(run));
    }
    if (status && status.exitCode !== EXIT_OK) {
      console.error(failedRunLog({ ...status, name: "status --all", repoErrors: [] }));
    }
    const checks = [...evaluate(bench, runs), ...(status ? statusChecks(bench, status) : [])];
    return { bench, runs, status, checks };
  } finally {
    await tearDown(bench);
  }
}

function describe(bench: Bench): string {
  const { scenario } = bench;
  const pickups = bench.pickupNumbers.length * scenario.repos;
  return `${scenario.name}: ${scenario.repos} repos × ${scenario.issues} issues ` +
    `(${pickups} pickups with ${PICKUP}, ${bench.pullRequests} pull requests), ` +
    `${scenario.latencyMs} ms latency per request`;
}

function formatStatus(status: StatusResult): string {
  return `status --all (from KV): ${status.wallMs.toFixed(0)} ms wall, ` +
    `${status.githubRequests} GitHub requests, ${status.jenkinsRequests} Jenkins requests, ` +
    `${status.active ?? "?"} active jobs listed, peak RSS ${mb(status.peakRssBytes)} MB, ` +
    `exit ${status.exitCode}`;
}

function formatCheck(check: Check): string {
  return `${check.ok === null ? "SKIP" : check.ok ? "PASS" : "FAIL"} ${check.text}`;
}

function printReport(outcomes: Outcome[], overall: Check[]): void {
  console.log(
    `Coordinator benchmark; config: github_write_interval_ms = ${WRITE_INTERVAL_MS} ` +
      "(GitHub write pacing off), other [coordinator] settings at their defaults",
  );
  console.log("Each run: deno run, as deno task start runs the coordinator (no V8 flags)");
  for (const outcome of outcomes) {
    console.log(`\n${describe(outcome.bench)}`);
    console.log(formatTable(outcome.runs));
    if (outcome.status) console.log(formatStatus(outcome.status));
    for (const check of outcome.checks) console.log(formatCheck(check));
  }
  if (overall.length) console.log("");
  for (const check of overall) console.log(formatCheck(check));
}

function jsonReport(outcomes: Outcome[], overall: Check[], ok: boolean): string {
  const scenarios = outcomes.map(({ bench, runs, status, checks }) => ({
    ...bench.scenario,
    pickups: bench.pickupNumbers.length * bench.scenario.repos,
    pullRequests: bench.pullRequests,
    runs: runs.map(({ stderr: _stderr, ...run }) => ({ ...run, wallMs: Math.round(run.wallMs) })),
    status: status && { ...status, stderr: undefined, wallMs: Math.round(status.wallMs) },
    checks,
  }));
  return JSON.stringify(
    {
      githubWriteIntervalMs: WRITE_INTERVAL_MS,
      scenarios,
      checks: overall,
      ok,
    },
    null,
    2,
  );
}

async function bench(options: Options): Promise<number> {
  const outcomes: Outcome[] = [];
  for (const scenario of options.scenarios) {
    outcomes.push(await runScenario(scenario));
  }
  const overall = ratioCheck(outcomes);
  const ok = [...outcomes.flatMap((outcome) => outcome.checks), ...overall]
    .every((check) => check.ok !== false);
  if (options.json) console.log(jsonReport(outcomes, overall, ok));
  else printReport(outcomes, overall);
  return ok ? EXIT_OK : EXIT_FAIL;
}

if (import.meta.main) {
  if (Deno.args[0] === CHILD_FLAG) {
    Deno.exitCode = await runChild(Deno.args[1], Deno.args.slice(2));
  } else {
    let options: Options;
    try {
      options = parseOptions(Deno.args);
    } catch (error) {
      console.error(`Error: ${error instanceof Error ? error.message : error}\n${USAGE}`);
      Deno.exit(EXIT_USAGE);
    }
    Deno.exitCode = await bench(options);
  }
}
