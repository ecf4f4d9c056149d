// Copyright the coordinator authors. MIT license.
/**
 * Benchmark behind `deno task bench`: how many GitHub requests, and how much wall time,
 * a coordinator run over many repositories costs.
 *
 * It starts the fake GitHub and Jenkins of fakes.ts on 127.0.0.1 with a fixed latency on
 * every request, adds R repositories (`bench/repo-001` …) of I issues each, where every
 * Nth issue carries `status-02:awaiting-planning` (a few others are pull requests), and
 * runs `coordinator run --all --json` three times against one KV file:
 *
 * 1. cold: empty KV; reads every repository in full and dispatches every pickup.
 * 2. after-dispatch: the label moves changed each repository's first page, so that page
 *    is read again once per repository.
 * 3. idle: nothing changed; every repository should answer `304 Not Modified`.
 *
 * For each run it prints wall time (around `main()`), GitHub requests, requests that cost
 * rate limit, 304s (counted by the fake, cross-checked with the run summary), Jenkins builds
 * started and the exit code, then `status --all --json` on the KV the runs left (wall time,
 * active jobs listed), then PASS/FAIL lines for the targets (idle run: at most one GitHub
 * request per repository, none costed, no builds; cold run: one build per pickup; no issue
 * built twice; status: no request at all). Exit code 1 when a target fails, 2 for bad flags.
 *
 * GitHub write pacing is switched off (`github_write_interval_ms = 0`) so that the numbers
 * show requests and latency, not the one-second pause between label writes.
 *
 * ```sh
 * deno task bench
 * deno run --allow-net=127.0.0.1 --allow-env --allow-read --allow-write bench.ts \
 *   --repos 3 --issues 20 --latency 5 --pickup-every 4 --json
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { defaultDeps, type Deps, main, type RunSummary } from "./coordinator.ts";
import { FakeGitHub, type FakeIssueInit, FakeJenkins } from "./fakes.ts";

const PICKUP = "status-02:awaiting-planning";
const BUSY = "status-03:planning";
const ORDINARY_LABELS = ["bug", "enhancement", "documentation", "question"];
/** One issue in PR_EVERY is a pull request: `/issues` lists those too. */
const PR_EVERY = 50;
const PR_OFFSET = 7;
/** One issue in UNLABELED_EVERY has no label at all. */
const UNLABELED_EVERY = 9;
/**
 * Issue n was last updated (I - n + 1) hours ago. The fake's default puts issues one second
 * apart, all inside the coordinator's 5-minute `since` overlap, which makes an incremental
 * read follow every page; real repositories are not that busy.
 */
const UPDATE_SPACING_MS = 60 * 60_000;
const OWNER = "bench";
const JOB_PATH = "Coder/executor";
const WRITE_INTERVAL_MS = 0;
const RUN_NAMES = ["cold", "after-dispatch", "idle"] as const;
/** Coordinator log lines shown for a failed run; the rest is INFO noise. */
const MAX_LOG_LINES = 40;
const EXIT_OK = 0;
const EXIT_FAIL = 1;
const EXIT_USAGE = 2;
const USAGE = "Usage: deno task bench [--repos R] [--issues I] [--latency MS] " +
  "[--pickup-every N] [--json]";

/** What the command line asked for. */
interface Options {
  repos: number;
  issues: number;
  latencyMs: number;
  pickupEvery: number;
  json: boolean;
}

/** The fakes, the config and KV files, and what was put into them. */
interface Bench {
  gh: FakeGitHub;
  jenkins: FakeJenkins;
  dir: string;
  configPath: string;
  kvPath: string;
  repos: string[];
  /** Issue numbers carrying the pickup label, the same in every repository. */
  pickupNumbers: number[];
  pullRequests: number;
}

type GitHubCounts = RunSummary["github"];

/** One coordinator run as measured from outside. */
interface RunResult {
  name: string;
  exitCode: number;
  wallMs: number;
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
  ok: boolean;
  text: string;
}

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      repos: { type: "string", default: "50" },
      issues: { type: "string", default: "200" },
      latency: { type: "string", default: "20" },
      "pickup-every": { type: "string", default: "20" },
      json: { type: "boolean", default: false },
    },
  });
  return {
    repos: integer(values.repos, "--repos", 1),
    issues: integer(values.issues, "--issues", 1),
    latencyMs: integer(values.latency, "--latency", 0),
    pickupEvery: integer(values["pickup-every"], "--pickup-every", 1),
    json: values.json,
  };
}

function integer(text: string, flag: string, min: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text.trim()) || value < min) {
    throw new Error(`${flag} must be a whole number >= ${min}, got "${text}"`);
  }
  return value;
}

/** The issues of one repository; every repository gets the same set. */
function repoIssues(options: Options): FakeIssueInit[] {
  const issues: FakeIssueInit[] = [];
  // Whole seconds, as GitHub's timestamps are.
  const now = Math.floor(Date.now() / 1000) * 1000;
  for (let number = 1; number <= options.issues; number++) {
    const updatedAt = new Date(now - (options.issues - number + 1) * UPDATE_SPACING_MS)
      .toISOString();
    const pickup = number % options.pickupEvery === 0;
    const ordinary = ORDINARY_LABELS[number % ORDINARY_LABELS.length];
    issues.push({
      number,
      title: `Bench issue ${number}`,
      createdAt: updatedAt,
      updatedAt,
      labels: pickup ? [PICKUP, ordinary] : number % UNLABELED_EVERY === 0 ? [] : [ordinary],
      // A pickup stays an issue: a pull request with a pickup label is never dispatched.
      pullRequest: !pickup && number % PR_EVERY === PR_OFFSET,
    });
  }
  return issues;
}

async function setUp(options: Options): Promise<Bench> {
  const gh = await FakeGitHub.start({ latencyMs: options.latencyMs });
  const jenkins = await FakeJenkins.start({ latencyMs: options.latencyMs });
  const dir = await Deno.makeTempDir({ prefix: "coordinator-bench-" });
  jenkins.addJob(JOB_PATH);
  const issues = repoIssues(options);
  const width = Math.max(3, String(options.repos).length);
  const repos: string[] = [];
  const sections: string[] = [];
  for (let i = 1; i <= options.repos; i++) {
    const id = String(i).padStart(width, "0");
    const fullName = `${OWNER}/repo-${id}`;
    gh.addRepo(fullName, issues);
    repos.push(fullName);
    sections.push(`
[coordinator.repos.repo_${id}]
repo_url = "https://github.com/${fullName}.git"
executor_job_path = "${JOB_PATH}"
github_credentials_id = "github-pat"
executor_os = "linux"
`);
  }
  const configPath = `${dir}/config.toml`;
  await Deno.writeTextFile(
    configPath,
    `[github]
token = "${gh.token}"
api_url = "${gh.url}"

[jenkins]
server_url = "${jenkins.url}"
username = "${jenkins.user}"
api_token = "${jenkins.token}"

[coordinator]
github_write_interval_ms = ${WRITE_INTERVAL_MS}
${sections.join("")}`,
    { mode: 0o600 },
  );
  return {
    gh,
    jenkins,
    dir,
    configPath,
    kvPath: `${dir}/kv.sqlite3`,
    repos,
    pickupNumbers: issues.filter((issue) => issue.labels?.includes(PICKUP))
      .map((issue) => issue.number),
    pullRequests: issues.filter((issue) => issue.pullRequest).length * options.repos,
  };
}

async function tearDown(bench: Bench): Promise<void> {
  await bench.gh.close();
  await bench.jenkins.close();
  await Deno.remove(bench.dir, { recursive: true }).catch(() => {});
}

/** Runs `coordinator run --all --json` once, with output captured and counters reset. */
async function runOnce(bench: Bench, name: string): Promise<RunResult> {
  bench.gh.resetCounters();
  const buildsBefore = bench.jenkins.builds.length;
  const jenkinsBefore = bench.jenkins.requests.length;
  const base = defaultDeps();
  const captured = { stdout: "", stderr: "", sleptMs: 0 };
  const deps: Deps = {
    ...base,
    // Only HOME: a GITHUB_TOKEN or JENKINS_URL of the caller must not redirect the run.
    env: (key) => key === "HOME" ? bench.dir : undefined,
    stdout: (text) => void (captured.stdout += text),
    stderr: (text) => void (captured.stderr += text),
    sleep: (ms) => {
      captured.sleptMs += Math.max(0, ms);
      return base.sleep(ms);
    },
  };
  const args = ["run", "--all", "--config", bench.configPath, "--kv", bench.kvPath, "--json"];
  const started = performance.now();
  const exitCode = await main(args, deps);
  const wallMs = performance.now() - started;
  const github = { ...bench.gh.counters };
  let summary: RunSummary | null = null;
  try {
    summary = JSON.parse(captured.stdout) as RunSummary;
  } catch {
    // reported below as a missing summary
  }
  const reads: Record<string, number> = {};
  for (const repo of summary?.repos ?? []) reads[repo.read] = (reads[repo.read] ?? 0) + 1;
  const repoErrors = (summary?.repos ?? []).flatMap((repo) =>
    repo.error ? [`${repo.repository}: ${repo.error}`] : []
  );
  if (!summary) repoErrors.push(`no JSON summary on stdout: ${captured.stdout.slice(0, 200)}`);
  return {
    name,
    exitCode,
    wallMs,
    github: { requests: github.requests, notModified: github.notModified, costed: github.costed },
    summaryGithub: summary ? { ...summary.github } : null,
    builds: bench.jenkins.builds.length - buildsBefore,
    summaryBuilds: summary?.jenkins.builds ?? null,
    jenkinsRequests: bench.jenkins.requests.length - jenkinsBefore,
    sleptMs: captured.sleptMs,
    reads,
    repoErrors,
    stderr: captured.stderr,
  };
}

/** "REPO_URL #issue" of a build, from the `--issue N` of its create-plan command. */
function buildKey(build: FakeJenkins["builds"][number]): string {
  const command = build.params.COMMAND ?? "";
  const issue = /--issue (\d+)/.exec(command)?.[1];
  return `${build.params.REPO_URL} ${issue ? `#${issue}` : command}`;
}

function evaluate(bench: Bench, runs: RunResult[], options: Options): Check[] {
  const byName = new Map(runs.map((run) => [run.name, run]));
  const cold = byName.get("cold")!;
  const idle = byName.get("idle")!;
  const pickups = bench.pickupNumbers.length * options.repos;
  const checks: Check[] = [
    {
      ok: idle.github.requests <= options.repos,
      text: `idle run: ${idle.github.requests} GitHub requests <= ${options.repos} (one per repo)`,
    },
    {
      ok: idle.github.costed === 0,
      text: `idle run: ${idle.github.costed} requests cost rate limit (target 0)`,
    },
    { ok: idle.builds === 0, text: `idle run: ${idle.builds} Jenkins builds (target 0)` },
    {
      ok: cold.builds === pickups,
      text: `cold run: ${cold.builds} Jenkins builds for ${pickups} pickups`,
    },
  ];
  const seen = new Map<string, number>();
  for (const build of bench.jenkins.builds) {
    const key = buildKey(build);
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
  checks.push({
    ok: moved === pickups,
    text: `${moved} of ${pickups} pickups moved from ${PICKUP} to ${BUSY}`,
  });
  return checks;
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
    String(run.exitCode),
  ]);
  const widths = header.map((title, i) =>
    Math.max(title.length, ...rows.map((row) => row[i].length))
  );
  const line = (cells: string[]) =>
    cells.map((cell, i) => i === 0 ? cell.padEnd(widths[i]) : cell.padStart(widths[i])).join("  ");
  const reads = runs.map((run) => `  ${run.name}: ${formatReads(run.reads)}`);
  const slept = runs.map((run) => `${run.name} ${run.sleptMs} ms`).join(", ");
  return [
    line(header),
    ...rows.map(line),
    "",
    "Repository reads:",
    ...reads,
    `Sleeps the coordinator asked for (retries, write pacing): ${slept}`,
  ].join("\n");
}

/** The coordinator's warnings and errors of a failed run, for the person reading the report. */
function failedRunLog(run: RunResult): string {
  const lines = run.stderr.split("\n").filter((l) => l !== "" && !/^(INFO|DEBUG)\b/.test(l));
  const shown = lines.slice(-MAX_LOG_LINES);
  const more = lines.length > shown.length ? ` (last ${shown.length} of ${lines.length})` : "";
  return [
    `--- coordinator stderr of the ${run.name} run, exit ${run.exitCode}${more} ---`,
    ...shown,
    ...run.repoErrors.slice(0, MAX_LOG_LINES).map((error) => `summary error: ${error}`),
    "---",
  ].join("\n");
}

/** `status --all --json` on the KV the runs left: wall time, requests, active jobs listed. */
async function statusOnce(bench: Bench) {
  bench.gh.resetCounters();
  const jenkinsBefore = bench.jenkins.requests.length;
  let stdout = "";
  const deps: Deps = {
    ...defaultDeps(),
    env: (key) => key === "HOME" ? bench.dir : undefined,
    stdout: (text) => void (stdout += text),
    stderr: () => {},
  };
  const args = ["status", "--all", "--config", bench.configPath, "--kv", bench.kvPath, "--json"];
  const started = performance.now();
  const exitCode = await main(args, deps);
  const wallMs = Math.round(performance.now() - started);
  const repos = exitCode === EXIT_OK ? JSON.parse(stdout).repos as { active: unknown[] }[] : [];
  return {
    exitCode,
    wallMs,
    githubRequests: bench.gh.counters.requests,
    jenkinsRequests: bench.jenkins.requests.length - jenkinsBefore,
    active: repos.reduce((sum, repo) => sum + repo.active.length, 0),
  };
}

async function bench(options: Options): Promise<number> {
  const setup = await setUp(options);
  try {
    const runs: RunResult[] = [];
    for (const name of RUN_NAMES) runs.push(await runOnce(setup, name));
    const status = await statusOnce(setup);
    const checks = evaluate(setup, runs, options);
    checks.push({
      ok: status.exitCode === EXIT_OK && status.githubRequests + status.jenkinsRequests === 0,
      text: `status --all: exit ${status.exitCode}, ${status.githubRequests} GitHub and ` +
        `${status.jenkinsRequests} Jenkins requests (target 0)`,
    });
    const ok = checks.every((check) => check.ok);
    for (const run of runs) {
      if (run.exitCode !== EXIT_OK) console.error(failedRunLog(run));
    }
    const pickups = setup.pickupNumbers.length * options.repos;
    if (options.json) {
      console.log(JSON.stringify(
        {
          repos: options.repos,
          issuesPerRepo: options.issues,
          latencyMs: options.latencyMs,
          pickupEvery: options.pickupEvery,
          pickups,
          pullRequests: setup.pullRequests,
          githubWriteIntervalMs: WRITE_INTERVAL_MS,
          runs: runs.map(({ stderr: _stderr, ...run }) => ({
            ...run,
            wallMs: Math.round(run.wallMs),
          })),
          status,
          checks,
          ok,
        },
        null,
        2,
      ));
    } else {
      console.log(
        `Coordinator benchmark: ${options.repos} repos × ${options.issues} issues ` +
          `(${pickups} pickups with ${PICKUP}, ${setup.pullRequests} pull requests), ` +
          `${options.latencyMs} ms latency per request on fake GitHub and Jenkins`,
      );
      console.log(
        `Config: github_write_interval_ms = ${WRITE_INTERVAL_MS} (GitHub write pacing off), ` +
          "other [coordinator] settings at their defaults\n",
      );
      console.log(formatTable(runs));
      console.log(
        `status --all (from KV): ${status.wallMs} ms, ${status.active} active jobs listed`,
      );
      console.log("");
      for (const check of checks) console.log(`${check.ok ? "PASS" : "FAIL"} ${check.text}`);
    }
    return ok ? EXIT_OK : EXIT_FAIL;
  } finally {
    await tearDown(setup);
  }
}

if (import.meta.main) {
  let options: Options;
  try {
    options = parseOptions(Deno.args);
  } catch (error) {
    console.error(`Error: ${error instanceof Error ? error.message : error}\n${USAGE}`);
    Deno.exit(EXIT_USAGE);
  }
  Deno.exitCode = await bench(options);
}
