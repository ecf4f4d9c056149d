// Copyright the coordinator authors. MIT license.
/**
 * Label-driven dispatcher for coding-agent jobs: reads GitHub issues, starts Jenkins jobs.
 *
 * People move a GitHub issue through status labels. Every few minutes this program
 * looks at the configured repositories, picks the issues whose label says "a bot
 * should take this now", starts the matching Jenkins job for each (create-plan,
 * implement, create-pr) and moves the label to the matching "bot is busy" status.
 * It is a drop-in replacement for `mcp-coder coordinator run`: same config keys,
 * labels and Jenkins job parameters.
 *
 * The issues that carry a workflow label are cached in Deno KV. An idle run costs one
 * conditional request per repository, answered `304 Not Modified`, which GitHub does not
 * count against the rate limit. Every dispatch is claimed in KV before Jenkins is called,
 * so a pickup is dispatched exactly once, across crashes and overlapping runs.
 *
 * ```sh
 * deno run --allow-net --allow-env --allow-read --allow-write coordinator.ts run --all
 * deno run ... coordinator.ts run --repo mcp_coder --dry-run
 * deno run ... coordinator.ts --help
 * ```
 *
 * Permissions: `--allow-net` (GitHub, Jenkins, a remote KV), `--allow-env` (the
 * variables below), `--allow-read` and `--allow-write` (the config file and the KV
 * file). The `deno.json` next to this file enables the unstable `kv` and `cron` APIs.
 *
 * Environment variables:
 * - `GITHUB_TOKEN`, `GITHUB_API_URL`: override `[github] token` / `api_url`.
 * - `JENKINS_URL`, `JENKINS_USER`, `JENKINS_TOKEN`: override the `[jenkins]` section.
 * - `COORDINATOR_CONFIG`: config file path; `COORDINATOR_CONFIG_TOML`: the config itself.
 * - `COORDINATOR_KV`: KV path or URL (`DENO_KV_ACCESS_TOKEN` authenticates a remote KV).
 * - `COORDINATOR_SCHEDULE`: cron schedule on Deno Deploy (default every 5 minutes).
 *
 * Exit codes: 0 success (also nothing to do), 1 failure (config, GitHub, Jenkins), 2 usage.
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Imports
// ---------------------------------------------------------------------------

import { Octokit } from "@octokit/rest";
import { parse as parseToml, TomlError } from "smol-toml";
import { parseArgs } from "node:util";

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------

/** Version reported by `--version` and in the GitHub User-Agent. */
export const VERSION = "0.1.0";

/** A workflow the coordinator can start, keyed by the label that asks for it. */
export interface WorkflowSpec {
  /** The label a person sets to ask a bot for this step. */
  pickup: string;
  /** The mcp-coder command the Jenkins job runs. */
  workflow: "create-plan" | "implement" | "create-pr";
  /** `main` for planning; `linked` uses the branch linked to the issue. */
  branch: "main" | "linked";
  /** The label that says the bot is working on it. */
  busy: string;
  /** Label the executor's watchdog sets when the job dies (mcp_coder #719). */
  failed: string;
}

/** Pickup workflows, closest to done first: this is the dispatch order. */
export const WORKFLOWS: readonly WorkflowSpec[] = [
  {
    pickup: "status-08:ready-pr",
    workflow: "create-pr",
    branch: "linked",
    busy: "status-09:pr-creating",
    failed: "status-09f:pr-creating-failed",
  },
  {
    pickup: "status-05:plan-ready",
    workflow: "implement",
    branch: "linked",
    busy: "status-06:implementing",
    failed: "status-06f:implementing-failed",
  },
  {
    pickup: "status-02:awaiting-planning",
    workflow: "create-plan",
    branch: "main",
    busy: "status-03:planning",
    failed: "status-03f:planning-failed",
  },
];

/** Issues with one of these labels are never picked up. */
export const IGNORE_LABELS: readonly string[] = ["Overview"];

/** Log levels accepted by `--log-level` and passed on to `mcp-coder --log-level`. */
export const LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"] as const;

/** Every KV key starts with this; the number is the key layout's version (see CACHE_SCHEMA). */
export const KV_PREFIX: readonly ["coordinator", number] = ["coordinator", 1];

/**
 * Version of the issue cache, kept in each repository's meta record. A cache written by
 * another version is rebuilt with a full read; dispatch records are not part of it and stay.
 * 2: only issues with a label of the workflow table are cached.
 */
export const CACHE_SCHEMA = 2;

/** Jenkins parameter that carries a unique id per dispatch. */
export const REQUEST_ID_PARAM = "COORDINATOR_REQUEST_ID";

const DEFAULT_API_URL = "https://api.github.com";
const DEFAULT_SCHEDULE = "*/5 * * * *";
const DEFAULT_CACHE_REFRESH_MINUTES = 1440;
const DEFAULT_TIMEOUT_SECONDS = 30;
const DEFAULT_WRITE_INTERVAL_MS = 1000;
const DEFAULT_MAX_PARALLEL_REPOS = 4;
/** GitHub's issue index lags a few minutes behind writes; re-read that much. */
const SINCE_OVERLAP_MS = 5 * 60_000;
/** An issue skipped for its linked branches is asked again after this, or when it changes. */
const BRANCH_RECHECK_MS = 15 * 60_000;
/** A run lease lives this long unless renewed; a dead holder blocks at most this. */
const LEASE_TTL_MS = 30_000;
const LEASE_RENEW_MS = 10_000;
/** Wait as GitHub asks on a secondary rate limit only when it is this short. */
const MAX_RETRY_AFTER_MS = 60_000;
const GITHUB_ATTEMPTS = 3;
const RETRY_BASE_MS = 250;
const KV_LOCK_ATTEMPTS = 40;
/** Deno KV allows 1000 mutations per atomic commit; stay well below. */
const KV_BATCH = 200;
const PAGE_SIZE = 100;
const PLACEHOLDER_MARK = "REPLACE_ME";

const EXIT_OK = 0;
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/** The command line is wrong: exit code 2. */
export class UsageError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UsageError";
  }
}

/** The config file is missing, unreadable or invalid. */
export class ConfigError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConfigError";
  }
}

/** Why a GitHub request failed, so callers can decide how far to stop. */
export type GitHubFailure =
  | "auth"
  | "rate-limit"
  | "secondary-limit"
  | "not-found"
  | "graphql"
  | "other";

/** A GitHub request failed after its retries. */
export class GitHubError extends Error {
  kind: GitHubFailure;
  status: number;
  constructor(
    message: string,
    options: ErrorOptions & { kind?: GitHubFailure; status?: number } = {},
  ) {
    super(message, options);
    this.name = "GitHubError";
    this.kind = options.kind ?? "other";
    this.status = options.status ?? 0;
  }
}

/** Triggering or querying Jenkins failed. `queued` says whether a build may exist. */
export class JenkinsError extends Error {
  queued: "no" | "unknown";
  constructor(message: string, options: ErrorOptions & { queued?: "no" | "unknown" } = {}) {
    super(message, options);
    this.name = "JenkinsError";
    this.queued = options.queued ?? "no";
  }
}

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/** The operating system of the Jenkins executor: decides the job script's dialect. */
export type ExecutorOs = "linux" | "windows";

/** One `[coordinator.repos.NAME]` section, validated. */
export interface RepoConfig {
  name: string;
  repoUrl: string;
  /** `host/owner/name`, lower case: the repository's identity in KV. */
  id: string;
  owner: string;
  repo: string;
  executorJobPath: string;
  githubCredentialsId: string;
  executorOs: ExecutorOs;
}

/** The whole validated config, with environment overrides applied. */
export interface Config {
  /** Where the config came from, for messages. */
  source: string;
  github: { token: string; apiUrl: string };
  jenkins: { serverUrl: string; username: string; apiToken: string };
  coordinator: {
    cacheRefreshMinutes: number;
    requestTimeoutMs: number;
    githubWriteIntervalMs: number;
    maxParallelRepos: number;
  };
  repos: RepoConfig[];
  warnings: string[];
}

/** What the coordinator keeps of a GitHub issue. Pull requests are not kept. */
export interface Issue {
  number: number;
  title: string;
  state: "open" | "closed";
  labels: string[];
  pullRequest: boolean;
  createdAt: string;
  updatedAt: string;
  url: string;
}

/** Per-repository cache bookkeeping stored in KV. */
export interface RepoMeta {
  /** CACHE_SCHEMA of the run that wrote it; absent in caches older than version 2. */
  schema?: number;
  /** ETag of the probe URL (newest-updated first), sent as `If-None-Match`. */
  etag: string | null;
  /** Which token the ETag belongs to (a hash, never the token). */
  tokenId: string;
  /** Newest `updated_at` seen: the data cursor for incremental reads. */
  cursor: string | null;
  /** When the last full read finished (epoch ms). */
  fullAt: number;
}

/** Where a dispatch stands; see `dispatchIssue()`. */
export type DispatchState = "triggering" | "queued" | "done" | "released";

/** The KV record that makes one pickup cycle dispatch exactly once. */
export interface DispatchRecord {
  state: DispatchState;
  pickup: string;
  busy: string;
  workflow: string;
  jobPath: string;
  params: Record<string, string>;
  requestId: string;
  runId: string;
  claimedAt: number;
  updatedAt: number;
  queueUrl?: string;
  buildUrl?: string;
}

/** Parsed command line of `run`. */
export interface RunOptions {
  all: boolean;
  repo?: string;
  config?: string;
  kv?: string;
  dryRun: boolean;
  forceRefresh: boolean;
  keepGoing: boolean;
  logLevel: typeof LOG_LEVELS[number];
  json: boolean;
}

/** One dispatched (or, in a dry run, dispatchable) issue in the run summary. */
export interface DispatchReport {
  issue: number;
  title: string;
  workflow: string;
  branch: string;
  from: string;
  to: string;
  queueUrl: string | null;
  buildUrl: string | null;
  requestId: string | null;
  /** `reconciled`: an earlier run queued the build; this run finished the label move. */
  note?: "reconciled" | "dry-run";
}

/** What happened in one repository. */
export interface RepoReport {
  name: string;
  repository: string;
  /** How the issue list was read: full, incremental, not-modified (304) or direct. */
  read: "full" | "incremental" | "not-modified" | "direct" | "none";
  eligible: number;
  dispatched: DispatchReport[];
  skipped: { issue: number; reason: string }[];
  error: string | null;
}

/** The machine-readable result of a run (`--json`). */
export interface RunSummary {
  ok: boolean;
  dryRun: boolean;
  exitCode: number;
  startedAt: string;
  durationMs: number;
  repos: RepoReport[];
  github: { requests: number; notModified: number; costed: number };
  jenkins: { builds: number };
  /** Why the run did nothing, e.g. another run holds the lease. */
  note: string | null;
}

// ---------------------------------------------------------------------------
// Dependencies
// ---------------------------------------------------------------------------

/** Everything that touches the outside world. Built once at the entry point. */
export interface Deps {
  env(name: string): string | undefined;
  fetch: typeof fetch;
  /** Epoch milliseconds. */
  now(): number;
  sleep(ms: number): Promise<void>;
  openKv(path?: string): Promise<Deno.Kv>;
  readTextFile(path: string): Promise<string>;
  /** Writes a new file atomically, creating parent directories. */
  writeNewFile(path: string, text: string): Promise<void>;
  /** Permission bits of a file, or null where the platform has none. */
  fileMode(path: string): Promise<number | null>;
  mkdirFor(path: string): Promise<void>;
  stdout(text: string): void;
  stderr(text: string): void;
  randomId(): string;
  /** Aborted on SIGINT/SIGTERM: the run stops after the current step. */
  stop: AbortSignal;
}

/** The real world, as seen from a Deno process. */
export function defaultDeps(stop: AbortSignal = new AbortController().signal): Deps {
  const encoder = new TextEncoder();
  return {
    env: (name) => Deno.env.get(name) || undefined,
    fetch: (input, init) => fetch(input, init),
    now: () => Date.now(),
    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
    openKv: (path) => Deno.openKv(path),
    readTextFile: (path) => Deno.readTextFile(path),
    async writeNewFile(path, text) {
      await Deno.mkdir(dirname(path), { recursive: true });
      const temp = `${path}.${crypto.randomUUID()}.tmp`;
      await Deno.writeTextFile(temp, text, { mode: 0o600, createNew: true });
      await Deno.rename(temp, path);
    },
    async fileMode(path) {
      if (Deno.build.os === "windows") return null;
      return (await Deno.stat(path)).mode;
    },
    mkdirFor: (path) => Deno.mkdir(dirname(path), { recursive: true }),
    stdout: (text) => Deno.stdout.writeSync(encoder.encode(text)),
    stderr: (text) => Deno.stderr.writeSync(encoder.encode(text)),
    randomId: () => crypto.randomUUID(),
    stop,
  };
}

/** Leveled logging to stderr with every known secret masked. */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** Replaces every secret in `text` with `***`. */
export function redact(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length >= 4) out = out.replaceAll(secret, "***");
  }
  return out;
}

/** A logger writing `LEVEL message` lines at or above `level`. */
export function createLogger(
  write: (text: string) => void,
  options: { level: typeof LOG_LEVELS[number]; secrets: string[] },
): Logger {
  const threshold = LOG_LEVELS.indexOf(options.level);
  const emit = (level: typeof LOG_LEVELS[number]) => (message: string) => {
    if (LOG_LEVELS.indexOf(level) < threshold) return;
    write(`${level.padEnd(7)} ${redact(message, options.secrets)}\n`);
  };
  return { debug: emit("DEBUG"), info: emit("INFO"), warn: emit("WARNING"), error: emit("ERROR") };
}

function dirname(path: string): string {
  const index = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
  return index <= 0 ? (index === 0 ? "/" : ".") : path.slice(0, index);
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Runs `fn` over `items` with at most `limit` at a time, keeping the order. */
async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await fn(items[index]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** SHA-256 hex prefix: identifies a token in KV without storing it. */
async function fingerprint(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest).slice(0, 8), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/** Written when no config file exists; every REPLACE_ME must be filled in. */
export const CONFIG_TEMPLATE =
  `# Coordinator configuration (compatible with mcp_coder's config.toml).
# Fill in every value marked REPLACE_ME, then run the coordinator again.
# Environment variables win over this file: GITHUB_TOKEN, GITHUB_API_URL,
# JENKINS_URL, JENKINS_USER, JENKINS_TOKEN. Keep this file private (chmod 600):
# it holds tokens.

[github]
# Token that can read issues and edit labels in every repository below.
token = "REPLACE_ME"
# GitHub Enterprise Server: api_url = "https://github.example.com/api/v3"
# api_url = "https://api.github.com"

[jenkins]
server_url = "https://jenkins.REPLACE_ME.example"
username = "REPLACE_ME"
api_token = "REPLACE_ME"

[coordinator]
# Re-read all open issues of a repository after this many minutes (default 1440).
cache_refresh_minutes = 1440
# Bound on every GitHub and Jenkins request (default 30).
# request_timeout_seconds = 30
# Pause between GitHub writes, as GitHub asks of integrations (default 1000).
# github_write_interval_ms = 1000
# Repositories read at the same time (default 4).
# max_parallel_repos = 4

# One section per repository; the part after "repos." is what --repo takes.
[coordinator.repos.my_repo]
repo_url = "https://github.com/REPLACE_ME/my_repo.git"
# Jenkins job that runs the mcp-coder executor; folders separated by "/".
executor_job_path = "Coder/executor"
# Jenkins credentials id the job uses to clone the repository.
github_credentials_id = "github-pat"
# "linux" (shell script) or "windows" (batch script), case-insensitive.
executor_os = "linux"

# [coordinator.repos.another_repo]
# repo_url = "https://github.com/your-org/another_repo.git"
# executor_job_path = "Coder/executor-windows"
# github_credentials_id = "github-pat"
# executor_os = "windows"
`;

type FieldType = "string" | "integer" | "number" | "boolean" | "string[]" | "table";

const SCHEMA: Record<string, Record<string, FieldType>> = {
  github: { token: "string", api_url: "string", test_repo_url: "string" },
  jenkins: {
    server_url: "string",
    username: "string",
    api_token: "string",
    test_job: "string",
    test_job_coordination: "string",
  },
  coordinator: {
    cache_refresh_minutes: "integer",
    request_timeout_seconds: "number",
    github_write_interval_ms: "integer",
    max_parallel_repos: "integer",
    repos: "table",
  },
  repo: {
    repo_url: "string",
    executor_job_path: "string",
    executor_test_path: "string",
    github_credentials_id: "string",
    executor_os: "string",
    // Read by mcp_coder's executors, not by the coordinator; accepted so one file serves both.
    update_issue_labels: "boolean",
    post_issue_comments: "boolean",
    auto_review_plan: "boolean",
    auto_review_implementation: "boolean",
    setup_commands_linux: "string[]",
    setup_commands_windows: "string[]",
  },
};

/** Sections of mcp_coder's config.toml that other mcp-coder commands read. */
const FOREIGN_SECTIONS = new Set(["llm", "mcp", "vscodeclaude"]);

const CREDENTIALS = [
  ["github", "token", "GITHUB_TOKEN"],
  ["jenkins", "server_url", "JENKINS_URL"],
  ["jenkins", "username", "JENKINS_USER"],
  ["jenkins", "api_token", "JENKINS_TOKEN"],
] as const;

type Table = Record<string, unknown>;

function isTable(value: unknown): value is Table {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    !(value instanceof Date);
}

function typeName(value: unknown): string {
  if (Array.isArray(value)) return "array";
  if (value instanceof Date) return "date";
  if (isTable(value)) return "table";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "float";
  return typeof value;
}

function hasType(value: unknown, type: FieldType): boolean {
  switch (type) {
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "string[]":
      return Array.isArray(value) && value.every((item) => typeof item === "string");
    case "table":
      return isTable(value);
    case "string":
      return typeof value === "string";
    case "boolean":
      return typeof value === "boolean";
  }
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost);
    }
    previous = current;
  }
  return previous[b.length];
}

function suggestion(key: string, known: string[]): string {
  const best = known
    .map((name) => ({ name, distance: editDistance(key.toLowerCase(), name) }))
    .sort((a, b) => a.distance - b.distance)[0];
  return best && best.distance <= Math.max(2, Math.floor(key.length / 3))
    ? ` (did you mean "${best.name}"?)`
    : ` (known keys: ${known.join(", ")})`;
}

/** Checks keys and types of one table; appends problems to `problems`. */
function checkTable(
  table: Table,
  section: string,
  options: { schema: Record<string, FieldType>; overridden?: string[] },
): string[] {
  const { schema, overridden = [] } = options;
  const problems: string[] = [];
  for (const [key, value] of Object.entries(table)) {
    const type = schema[key];
    if (!type) {
      problems.push(`[${section}] unknown key "${key}"${suggestion(key, Object.keys(schema))}`);
    } else if (!hasType(value, type)) {
      const shown = typeof value === "string" ? ` "${value}"` : "";
      problems.push(
        `[${section}] ${key} must be ${
          type === "string[]"
            ? "an array of strings"
            : type === "integer"
            ? "an integer"
            : `a ${type}`
        }, got ${typeName(value)}${shown}`,
      );
    } else if (
      typeof value === "string" && value.includes(PLACEHOLDER_MARK) && !overridden.includes(key)
    ) {
      problems.push(`[${section}] ${key} still holds the template placeholder "${value}"`);
    }
  }
  return problems;
}

/** `owner`/`repo` of a GitHub repository URL (https, ssh or scp-like), or null. */
export function parseRepoUrl(url: string): { host: string; owner: string; repo: string } | null {
  const scp = /^[\w.-]+@([\w.-]+):([\w.-]+)\/([\w.-]+?)(?:\.git)?\/?$/.exec(url);
  if (scp) return { host: scp[1].toLowerCase(), owner: scp[2], repo: scp[3] };
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  if (!["https:", "http:", "ssh:", "git:"].includes(parsed.protocol)) return null;
  const parts = parsed.pathname.replace(/\/+$/, "").split("/").filter(Boolean);
  if (parts.length !== 2) return null;
  const repo = parts[1].replace(/\.git$/, "");
  if (!/^[\w.-]+$/.test(parts[0]) || !/^[\w.-]+$/.test(repo)) return null;
  return { host: parsed.hostname.toLowerCase(), owner: parts[0], repo };
}

/** Hosts a repo_url may name: github.com, and the host of a GitHub Enterprise api_url. */
function githubHosts(apiUrl: string): Set<string> {
  const hosts = new Set(["github.com", "www.github.com"]);
  try {
    const host = new URL(apiUrl).hostname.toLowerCase();
    hosts.add(host);
    if (host.startsWith("api.")) hosts.add(host.slice(4));
  } catch {
    // An invalid api_url is reported on its own.
  }
  return hosts;
}

function validateRepo(name: string, table: Table, apiUrl: string): RepoConfig | string[] {
  const section = `coordinator.repos.${name}`;
  const problems = checkTable(table, section, { schema: SCHEMA.repo });
  const jobPath = table.executor_job_path ?? table.executor_test_path;
  const missing = ["repo_url", "executor_job_path", "github_credentials_id"].filter((key) => {
    const value = key === "executor_job_path" ? jobPath : table[key];
    return value === undefined || value === "";
  });
  if (missing.length > 0) {
    problems.push(
      `[${section}] missing required field${missing.length > 1 ? "s" : ""}: ${missing.join(", ")}`,
    );
  }
  const os = typeof table.executor_os === "string" ? table.executor_os.toLowerCase() : "linux";
  if (os !== "linux" && os !== "windows") {
    problems.push(
      `[${section}] executor_os must be "linux" or "windows" (case-insensitive), got "${table.executor_os}"`,
    );
  }
  const url = typeof table.repo_url === "string" ? table.repo_url : "";
  const where = url ? parseRepoUrl(url) : null;
  if (url && !url.includes(PLACEHOLDER_MARK)) {
    if (!where) {
      problems.push(
        `[${section}] repo_url "${url}" is not a repository URL (expected https://github.com/OWNER/REPO.git)`,
      );
    } else if (!githubHosts(apiUrl).has(where.host)) {
      problems.push(
        `[${section}] repo_url "${url}" is not on GitHub (host ${where.host}); for GitHub Enterprise set [github] api_url = "https://${where.host}/api/v3"`,
      );
    }
  }
  if (problems.length > 0 || !where) return problems;
  return {
    name,
    repoUrl: url,
    id: `${where.host}/${where.owner}/${where.repo}`.toLowerCase(),
    owner: where.owner,
    repo: where.repo,
    executorJobPath: String(jobPath).replace(/^\/+|\/+$/g, ""),
    githubCredentialsId: String(table.github_credentials_id),
    executorOs: os as ExecutorOs,
  };
}

function parseTomlText(text: string, source: string): Table {
  try {
    return parseToml(text) as Table;
  } catch (error) {
    if (error instanceof TomlError) {
      const reason = error.message.split("\n")[0].replace(/^Invalid TOML document: /, "");
      throw new ConfigError(
        `${source}:${error.line}:${error.column}: invalid TOML: ${reason}`,
        { cause: error },
      );
    }
    throw new ConfigError(`${source}: invalid TOML: ${errorMessage(error)}`, { cause: error });
  }
}

function checkUrl(value: string, label: string): string | null {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return `${label} must be an http(s) URL, got "${value}"`;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return `${label} must be an http(s) URL, got "${value}"`;
  }
  // Credentials in a URL end up in every message that shows it.
  if (url.username || url.password) {
    return `${label} must not contain a user name or password: use the username and token keys`;
  }
  return null;
}

/** The smallest value each [coordinator] tuning key takes, and how to say so. */
const TUNING_MINIMUM: Record<string, [number, string]> = {
  cache_refresh_minutes: [1, "at least 1"],
  max_parallel_repos: [1, "at least 1"],
  request_timeout_seconds: [Number.MIN_VALUE, "positive"],
  github_write_interval_ms: [0, "0 or more"],
};

function checkTuning(table: Table): string[] {
  return Object.entries(TUNING_MINIMUM).flatMap(([key, [minimum, words]]) => {
    const value = table[key];
    return typeof value === "number" && value < minimum
      ? [`[coordinator] ${key} must be ${words}, got ${value}`]
      : [];
  });
}

function checkTopLevel(doc: Table): string[] {
  const problems: string[] = [];
  for (const [key, value] of Object.entries(doc)) {
    if (FOREIGN_SECTIONS.has(key)) continue;
    if (!SCHEMA[key] || key === "repo") {
      const what = isTable(value) ? `section [${key}]` : `key "${key}"`;
      problems.push(
        `unknown top-level ${what}${suggestion(key, ["github", "jenkins", "coordinator"])}`,
      );
    } else if (!isTable(value)) problems.push(`"${key}" must be a section ([${key}])`);
  }
  return problems;
}

function settings(table: Table): Config["coordinator"] {
  const number = (key: string, fallback: number) => {
    const value = table[key];
    return typeof value === "number" ? value : fallback;
  };
  return {
    cacheRefreshMinutes: number("cache_refresh_minutes", DEFAULT_CACHE_REFRESH_MINUTES),
    requestTimeoutMs: number("request_timeout_seconds", DEFAULT_TIMEOUT_SECONDS) * 1000,
    githubWriteIntervalMs: number("github_write_interval_ms", DEFAULT_WRITE_INTERVAL_MS),
    maxParallelRepos: number("max_parallel_repos", DEFAULT_MAX_PARALLEL_REPOS),
  };
}

/**
 * Parses and validates a config, applying environment overrides.
 * Throws one ConfigError listing every problem, each naming section and field.
 */
export function parseConfig(
  text: string,
  options: {
    source: string;
    env: (name: string) => string | undefined;
    /** Check the credentials a run needs too (Jenkins is not needed by a dry run). */
    credentials?: { jenkins: boolean };
  },
): Config {
  const { source, env } = options;
  const doc = parseTomlText(text, source);
  const problems = checkTopLevel(doc);
  const section = (name: string): Table => (isTable(doc[name]) ? doc[name] as Table : {});
  const github = section("github");
  const jenkins = section("jenkins");
  const coordinator = section("coordinator");
  const overridden = (name: string) =>
    CREDENTIALS.filter(([section, , envName]) => section === name && env(envName))
      .map(([, key]) => key as string);
  problems.push(...checkTable(github, "github", {
    schema: SCHEMA.github,
    overridden: [...overridden("github"), ...(env("GITHUB_API_URL") ? ["api_url"] : [])],
  }));
  problems.push(
    ...checkTable(jenkins, "jenkins", {
      schema: SCHEMA.jenkins,
      overridden: overridden("jenkins"),
    }),
  );
  problems.push(...checkTable(coordinator, "coordinator", { schema: SCHEMA.coordinator }));
  problems.push(...checkTuning(coordinator));
  const pick = (table: Table, key: string, envName: string) =>
    env(envName) ?? (typeof table[key] === "string" ? table[key] as string : "");
  const apiUrl = (env("GITHUB_API_URL") ?? (github.api_url as string | undefined) ??
    DEFAULT_API_URL).replace(/\/+$/, "");
  const apiProblem = checkUrl(apiUrl, "[github] api_url");
  if (apiProblem) problems.push(apiProblem);
  const repos: RepoConfig[] = [];
  const repoTables = isTable(coordinator.repos) ? coordinator.repos : {};
  for (const [name, table] of Object.entries(repoTables)) {
    if (!isTable(table)) {
      problems.push(
        `[coordinator.repos] "${name}" must be a section ([coordinator.repos.${name}])`,
      );
      continue;
    }
    const repo = validateRepo(name, table, apiUrl);
    if (Array.isArray(repo)) problems.push(...repo);
    else repos.push(repo);
  }
  const config: Config = {
    source,
    github: { token: pick(github, "token", "GITHUB_TOKEN"), apiUrl },
    jenkins: {
      serverUrl: pick(jenkins, "server_url", "JENKINS_URL").replace(/\/+$/, ""),
      username: pick(jenkins, "username", "JENKINS_USER"),
      apiToken: pick(jenkins, "api_token", "JENKINS_TOKEN"),
    },
    coordinator: settings(coordinator),
    repos,
    warnings: [],
  };
  if (options.credentials) problems.push(...credentialProblems(config, options.credentials));
  if (problems.length > 0) {
    throw new ConfigError(problems.map((problem) => `${source}: ${problem}`).join("\n"));
  }
  return config;
}

/** Problems with the credentials a run needs, naming the env var that supplies each. */
function credentialProblems(config: Config, options: { jenkins: boolean }): string[] {
  const values: Record<string, string> = {
    "github.token": config.github.token,
    "jenkins.server_url": config.jenkins.serverUrl,
    "jenkins.username": config.jenkins.username,
    "jenkins.api_token": config.jenkins.apiToken,
  };
  const missing = CREDENTIALS
    .filter(([section]) => section === "github" || options.jenkins)
    .filter(([section, key]) => !values[`${section}.${key}`])
    .map(([section, key, envName]) => `[${section}] ${key} (or set ${envName})`);
  const problems = missing.length > 0 ? [`missing credentials: ${missing.join(", ")}`] : [];
  if (options.jenkins && config.jenkins.serverUrl) {
    const problem = checkUrl(config.jenkins.serverUrl, "[jenkins] server_url (JENKINS_URL)");
    if (problem) problems.push(problem);
  }
  return problems;
}

/** Picks the repositories of this run: all, or the one `--repo` names. */
export function selectRepos(
  config: Config,
  options: { all: boolean; repo?: string },
): RepoConfig[] {
  if (config.repos.length === 0) {
    throw new ConfigError(
      `${config.source}: no repositories configured: add a [coordinator.repos.NAME] section`,
    );
  }
  if (options.all) return config.repos;
  const repo = config.repos.find((candidate) => candidate.name === options.repo);
  if (!repo) {
    throw new ConfigError(
      `Repository "${options.repo}" is not in ${config.source}; configured: ${
        config.repos.map((candidate) => candidate.name).join(", ")
      }`,
    );
  }
  return [repo];
}

/** The config path: --config, $COORDINATOR_CONFIG, then the XDG location. */
export function configPath(flag: string | undefined, env: Deps["env"]): string {
  if (flag) return flag;
  const fromEnv = env("COORDINATOR_CONFIG");
  if (fromEnv) return fromEnv;
  const base = env("XDG_CONFIG_HOME") ?? (env("HOME") ? `${env("HOME")}/.config` : undefined);
  if (!base) throw new ConfigError("Cannot locate the config file: pass --config PATH or set HOME");
  return `${base}/coordinator/config.toml`;
}

/** The KV location: --kv, $COORDINATOR_KV, the deployment's own KV, then the XDG state dir. */
export function kvPath(flag: string | undefined, env: Deps["env"]): string | undefined {
  if (flag) return flag;
  const fromEnv = env("COORDINATOR_KV");
  if (fromEnv) return fromEnv;
  if (env("DENO_DEPLOYMENT_ID")) return undefined;
  const base = env("XDG_STATE_HOME") ??
    (env("HOME") ? `${env("HOME")}/.local/state` : undefined);
  if (!base) throw new ConfigError("Cannot locate the KV store: pass --kv PATH or set HOME");
  return `${base}/coordinator/kv.sqlite3`;
}

/**
 * Loads the config: `$COORDINATOR_CONFIG_TOML` if set (Deno Deploy has no files),
 * else the file. Returns null after creating a missing file from the template.
 */
export async function loadConfig(
  deps: Deps,
  options: { path?: string; credentials?: { jenkins: boolean } },
): Promise<Config | null> {
  const { credentials } = options;
  const inline = options.path ? undefined : deps.env("COORDINATOR_CONFIG_TOML");
  if (inline) {
    return parseConfig(inline, { source: "$COORDINATOR_CONFIG_TOML", env: deps.env, credentials });
  }
  const path = configPath(options.path, deps.env);
  let text: string;
  try {
    text = await deps.readTextFile(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new ConfigError(`Cannot read config file ${path}: ${errorMessage(error)}`, {
        cause: error,
      });
    }
    try {
      await deps.writeNewFile(path, CONFIG_TEMPLATE);
    } catch (writeError) {
      throw new ConfigError(`Cannot create config file ${path}: ${errorMessage(writeError)}`, {
        cause: writeError,
      });
    }
    return null;
  }
  const config = parseConfig(text, { source: path, env: deps.env, credentials });
  const mode = await deps.fileMode(path).catch(() => null);
  if (mode !== null && (mode & 0o044) !== 0 && /token\s*=\s*["'][^"']/.test(text)) {
    config.warnings.push(
      `${path} holds a token and is readable by other users: run chmod 600 ${path}`,
    );
  }
  return config;
}

// ---------------------------------------------------------------------------
// KV cache
// ---------------------------------------------------------------------------

/** Why an issue could not be dispatched for its branches, so idle runs need not ask again. */
interface BranchMemo {
  updatedAt: string;
  checkedAt: number;
  branches: string[];
}

/** A lease that keeps overlapping runs apart; `expiresAt` is renewed while the run lives. */
interface Lease {
  runId: string;
  expiresAt: number;
  startedAt: number;
}

/**
 * Whether the cache keeps an issue: open, not a pull request, and carrying a pickup, busy or
 * failure label of WORKFLOWS. Only those can ever be dispatched or block a dispatch, so idle
 * runs cost what the candidates cost, not what the repositories hold.
 */
function cacheable(issue: Issue): boolean {
  return issue.state === "open" && !issue.pullRequest &&
    WORKFLOWS.some((spec) =>
      issue.labels.includes(spec.pickup) || issue.labels.includes(spec.busy) ||
      issue.labels.includes(spec.failed)
    );
}

function isIssue(value: unknown): value is Issue {
  const issue = value as Issue;
  return isTable(value) && Number.isInteger(issue.number) && typeof issue.title === "string" &&
    (issue.state === "open" || issue.state === "closed") && Array.isArray(issue.labels) &&
    issue.labels.every((label) => typeof label === "string") &&
    typeof issue.updatedAt === "string" && typeof issue.createdAt === "string";
}

function isMeta(value: unknown): value is RepoMeta {
  const meta = value as RepoMeta;
  return isTable(value) && typeof meta.tokenId === "string" && typeof meta.fullAt === "number" &&
    (meta.etag === null || typeof meta.etag === "string") &&
    (meta.cursor === null || typeof meta.cursor === "string");
}

function isRecord(value: unknown): value is DispatchRecord {
  const record = value as DispatchRecord;
  return isTable(value) &&
    ["triggering", "queued", "done", "released"].includes(record.state) &&
    typeof record.pickup === "string" && typeof record.requestId === "string" &&
    typeof record.runId === "string" && isTable(record.params);
}

function isLockError(error: unknown): boolean {
  return error instanceof Error && /database is locked/i.test(error.message);
}

/** Runs a KV operation, retrying SQLite lock contention with jittered backoff. */
async function retryLocked<T>(deps: Deps, operation: () => Promise<T>): Promise<T> {
  for (let attempt = 1;; attempt++) {
    try {
      return await operation();
    } catch (error) {
      if (!isLockError(error) || attempt >= KV_LOCK_ATTEMPTS) throw error;
      await deps.sleep(5 + Math.random() * Math.min(200, 10 * 2 ** attempt));
    }
  }
}

/**
 * The coordinator's state in Deno KV: the issue cache, dispatch records and leases.
 * Every operation retries SQLite's "database is locked" with jittered backoff, which
 * several processes sharing one KV file hit under contention.
 */
export class Store {
  #kv: Deno.Kv;
  #deps: Deps;

  constructor(kv: Deno.Kv, deps: Deps) {
    this.#kv = kv;
    this.#deps = deps;
  }

  /** Runs a KV operation, retrying lock contention. */
  retry<T>(operation: () => Promise<T>): Promise<T> {
    return retryLocked(this.#deps, operation);
  }

  /**
   * Cached issues and bookkeeping of a repository; `corrupt` when anything was unreadable.
   * Issues of a cache without a current meta record are not read: it is rebuilt anyway.
   */
  async loadRepo(
    repo: RepoConfig,
  ): Promise<{ meta: RepoMeta | null; issues: Map<number, Issue>; corrupt: boolean }> {
    const metaEntry = await this.retry(() => this.#kv.get(repoKey(repo, "meta")));
    const meta = isMeta(metaEntry.value) ? metaEntry.value : null;
    const issues = new Map<number, Issue>();
    let corrupt = metaEntry.value !== null && !meta;
    if (meta?.schema !== CACHE_SCHEMA) return { meta, issues, corrupt };
    await this.retry(async () => {
      issues.clear();
      for await (const entry of this.#kv.list({ prefix: repoKey(repo, "issue") })) {
        if (isIssue(entry.value) && entry.key.at(-1) === entry.value.number) {
          issues.set(entry.value.number, entry.value);
        } else corrupt = true;
      }
    });
    return { meta, issues, corrupt };
  }

  /**
   * Writes issues, then the meta record. The meta goes last so a crash in between
   * leaves the old cursor in place and the next run simply reads the same changes.
   */
  async saveRepo(
    repo: RepoConfig,
    changes: { upsert: Issue[]; remove: number[]; meta: RepoMeta; clear?: boolean },
  ): Promise<void> {
    const remove = new Set(changes.remove);
    if (changes.clear) {
      for await (const entry of this.#kv.list({ prefix: repoKey(repo, "issue") })) {
        const number = entry.key.at(-1);
        if (!changes.upsert.some((issue) => issue.number === number)) {
          remove.add(number as number);
        }
      }
    }
    const mutations: Deno.KvMutation[] = [
      ...changes.upsert.map((issue): Deno.KvMutation => ({
        type: "set",
        key: repoKey(repo, "issue", issue.number),
        value: issue,
      })),
      ...[...remove].map((number): Deno.KvMutation => ({
        type: "delete",
        key: repoKey(repo, "issue", number),
      })),
    ];
    for (let start = 0; start < mutations.length; start += KV_BATCH) {
      const batch = mutations.slice(start, start + KV_BATCH);
      await this.retry(() => this.#kv.atomic().mutate(...batch).commit());
    }
    await this.retry(() => this.#kv.set(repoKey(repo, "meta"), changes.meta));
  }

  /**
   * Stores one issue as now seen (after a dispatch moved its labels, or a fresh read);
   * drops it when the cache does not keep it (closed, or no workflow label left).
   */
  async putIssue(repo: RepoConfig, issue: Issue): Promise<void> {
    const key = repoKey(repo, "issue", issue.number);
    if (!cacheable(issue)) {
      await this.retry(() => this.#kv.delete(key));
    } else await this.retry(() => this.#kv.set(key, issue));
  }

  /** The linked branches last seen on an issue that could not be dispatched for them. */
  async getBranches(repo: RepoConfig, number: number): Promise<BranchMemo | null> {
    const entry = await this.retry(() =>
      this.#kv.get<BranchMemo>(repoKey(repo, "branches", number))
    );
    const memo = entry.value;
    return isTable(memo) && Array.isArray(memo.branches) && typeof memo.checkedAt === "number"
      ? memo
      : null;
  }

  async putBranches(repo: RepoConfig, number: number, memo: BranchMemo): Promise<void> {
    await this.retry(() =>
      this.#kv.set(repoKey(repo, "branches", number), memo, { expireIn: BRANCH_RECHECK_MS })
    );
  }

  /** The dispatch record of an issue, with its versionstamp for check-and-set. */
  async getRecord(
    repo: RepoConfig,
    number: number,
  ): Promise<{ value: DispatchRecord | null; versionstamp: string | null }> {
    const entry = await this.retry(() => this.#kv.get(repoKey(repo, "dispatch", number)));
    return { value: isRecord(entry.value) ? entry.value : null, versionstamp: entry.versionstamp };
  }

  /**
   * Replaces a dispatch record only if nobody changed it since `versionstamp` was read.
   * Returns the new versionstamp, or null when another run got there first.
   */
  async swapRecord(
    repo: RepoConfig,
    number: number,
    change: { versionstamp: string | null; value: DispatchRecord },
  ): Promise<string | null> {
    const key = repoKey(repo, "dispatch", number);
    const pending = repoKey(repo, "pending", number);
    const unfinished = change.value.state === "triggering" || change.value.state === "queued";
    const result = await this.retry(() => {
      const op = this.#kv.atomic().check({ key, versionstamp: change.versionstamp })
        .set(key, change.value);
      // An index of unfinished dispatches, so a run can find them without reading them all.
      return (unfinished ? op.set(pending, number) : op.delete(pending)).commit();
    });
    return result.ok ? result.versionstamp : null;
  }

  /** Issue numbers whose dispatch is unfinished (triggering or queued). */
  async pending(repo: RepoConfig): Promise<number[]> {
    return await this.retry(async () => {
      const numbers: number[] = [];
      for await (const entry of this.#kv.list({ prefix: repoKey(repo, "pending") })) {
        if (typeof entry.key.at(-1) === "number") numbers.push(entry.key.at(-1) as number);
      }
      return numbers;
    });
  }

  /** Drops a pending marker whose record has gone. */
  async dropPending(repo: RepoConfig, number: number): Promise<void> {
    await this.retry(() => this.#kv.delete(repoKey(repo, "pending", number)));
  }

  /**
   * Takes the named lease unless a live run holds it. Returns the holder when refused.
   * A holder that stopped renewing loses the lease after LEASE_TTL_MS.
   */
  async acquireLease(name: string, runId: string): Promise<Lease | null> {
    const key = [...KV_PREFIX, "lease", name];
    return await this.retry(async () => {
      const current = await this.#kv.get<Lease>(key);
      const held = current.value;
      if (held && held.runId !== runId && held.expiresAt > this.#deps.now()) return held;
      if (await this.#putLease(current, runId)) return null;
      return (await this.#kv.get<Lease>(key)).value ?? { runId: "?", expiresAt: 0, startedAt: 0 };
    });
  }

  /** Extends a lease this run holds; false when it was lost. */
  async renewLease(name: string, runId: string): Promise<boolean> {
    const key = [...KV_PREFIX, "lease", name];
    return await this.retry(async () => {
      const current = await this.#kv.get<Lease>(key);
      if (current.value && current.value.runId !== runId) return false;
      return await this.#putLease(current, runId);
    });
  }

  /** Writes `runId`'s lease over `current` (check-and-set); a renewal keeps its start. */
  async #putLease(current: Deno.KvEntryMaybe<Lease>, runId: string): Promise<boolean> {
    const now = this.#deps.now();
    const startedAt = current.value?.runId === runId ? current.value.startedAt : now;
    const lease: Lease = { runId, expiresAt: now + LEASE_TTL_MS, startedAt };
    const result = await this.#kv.atomic().check(current).set(current.key, lease, {
      expireIn: LEASE_TTL_MS * 4,
    }).commit();
    return result.ok;
  }

  /** Gives a lease back, if this run still holds it. */
  async releaseLease(name: string, runId: string): Promise<void> {
    const key = [...KV_PREFIX, "lease", name];
    await this.retry(async () => {
      const current = await this.#kv.get<Lease>(key);
      if (current.value?.runId !== runId) return;
      await this.#kv.atomic().check(current).delete(key).commit();
    });
  }

  /** Whether the run that wrote a claim is still alive (its lease is being renewed). */
  async runAlive(runId: string): Promise<boolean> {
    const entry = await this.retry(() =>
      this.#kv.get<Lease>([...KV_PREFIX, "lease", `run:${runId}`])
    );
    return entry.value !== null && entry.value.expiresAt > this.#deps.now();
  }
}

function repoKey(repo: RepoConfig, ...rest: (string | number)[]): Deno.KvKey {
  return [...KV_PREFIX, "repo", repo.id, ...rest];
}

// ---------------------------------------------------------------------------
// GitHub
// ---------------------------------------------------------------------------

const LINKED_BRANCHES_QUERY = `query($owner: String!, $repo: String!, $number: Int!) {
  repository(owner: $owner, name: $repo) {
    issue(number: $number) { linkedBranches(first: 25) { totalCount nodes { ref { name } } } }
  }
}`;

const SILENT_LOG = { debug() {}, info() {}, warn() {}, error() {} };

/** Request counts of one run: `costed` are the ones GitHub counts against the rate limit. */
export interface GitHubStats {
  requests: number;
  notModified: number;
  costed: number;
}

/** A page of issues from GitHub, and the link to the next one. */
interface IssuePage {
  issues: Issue[];
  next: string | null;
  etag: string | null;
}

/** Converts one REST issue object; null when fields the coordinator needs are missing. */
export function toIssue(raw: unknown): Issue | null {
  if (!isTable(raw)) return null;
  const { number, title, state, labels, created_at, updated_at, html_url } = raw;
  if (!Number.isInteger(number) || (state !== "open" && state !== "closed")) return null;
  if (typeof updated_at !== "string" || !Array.isArray(labels)) return null;
  const names = labels.map((label) =>
    typeof label === "string" ? label : isTable(label) ? label.name : null
  );
  if (names.some((name) => typeof name !== "string")) return null;
  return {
    number: number as number,
    title: typeof title === "string" ? title : "",
    state,
    labels: names as string[],
    pullRequest: isTable(raw.pull_request),
    createdAt: typeof created_at === "string" ? created_at : updated_at,
    updatedAt: updated_at,
    url: typeof html_url === "string" ? html_url : "",
  };
}

/** Label names of a labels response, or null when it is not one. */
function labelNames(data: unknown): string[] | null {
  if (!Array.isArray(data)) return null;
  const names = data.map((label) => isTable(label) ? label.name : undefined);
  return names.every((name) => typeof name === "string") ? names as string[] : null;
}

function nextLink(link: string | undefined | null): string | null {
  return link?.match(/<([^<>]+)>;\s*rel="next"/)?.[1] ?? null;
}

function header(headers: Record<string, unknown>, name: string): string | undefined {
  const value = headers[name];
  return typeof value === "string" ? value : typeof value === "number" ? String(value) : undefined;
}

/** Formats an epoch-seconds reset time as "HH:MM UTC (in N min)". */
function resetTime(reset: string | undefined, now: number): string {
  const at = Number(reset) * 1000;
  if (!Number.isFinite(at) || at <= 0) return "an unknown time";
  const minutes = Math.max(0, Math.ceil((at - now) / 60_000));
  return `${new Date(at).toISOString().slice(11, 16)} UTC (in ${minutes} min)`;
}

/**
 * GitHub REST and GraphQL through Octokit, with a fetch underneath that adds
 * timeouts, retries of 5xx and network errors, short rate-limit waits and write pacing.
 */
export class GitHub {
  /** Counted per run, for the summary and the benchmark. */
  readonly stats: GitHubStats = { requests: 0, notModified: 0, costed: 0 };
  #octokit: Octokit;
  #deps: Deps;
  #log: Logger;
  #timeoutMs: number;
  #writeIntervalMs: number;
  #lastWrite = -Infinity;
  #exhausted: GitHubError | null = null;

  constructor(config: Config, deps: Deps, log: Logger) {
    this.#deps = deps;
    this.#log = log;
    this.#timeoutMs = config.coordinator.requestTimeoutMs;
    this.#writeIntervalMs = config.coordinator.githubWriteIntervalMs;
    this.#octokit = new Octokit({
      auth: config.github.token,
      baseUrl: config.github.apiUrl,
      userAgent: `coordinator/${VERSION}`,
      log: SILENT_LOG,
      request: { fetch: (input: string, init: RequestInit) => this.#fetch(input, init) },
    });
  }

  /**
   * First page of all issues, most recently updated first. The URL never changes, so
   * `If-None-Match` makes an idle run cost one uncounted 304. Null means unchanged.
   */
  async probe(repo: RepoConfig, etag: string | null): Promise<IssuePage | null> {
    try {
      const response = await this.#unparsed()("GET /repos/{owner}/{repo}/issues", {
        owner: repo.owner,
        repo: repo.repo,
        state: "all",
        sort: "updated",
        direction: "desc",
        per_page: PAGE_SIZE,
        headers: etag ? { "if-none-match": etag } : {},
      });
      return await this.#page(response, repo);
    } catch (error) {
      if ((error as { status?: number }).status === 304) return null;
      throw this.#failure(error, `read issues of ${repo.owner}/${repo.repo}`);
    }
  }

  /**
   * The issues of `first` (a probe), then of each following page, requested only when the
   * caller asks for it: a `break` stops before the next request. The links are followed
   * exactly as GitHub gave them; the probe's `If-None-Match` is not sent with them.
   */
  async *pages(repo: RepoConfig, first: IssuePage): AsyncGenerator<Issue[]> {
    yield first.issues;
    if (!first.next) return;
    try {
      for await (const response of this.#list({ url: first.next })) {
        yield (await this.#page(response, repo)).issues;
      }
    } catch (error) {
      throw this.#failure(error, `read issues of ${repo.owner}/${repo.repo}`);
    }
  }

  /**
   * The open issues (not pull requests) that `keep` accepts, read 100 per page; each page
   * is dropped once filtered, so a large repository is never held in memory at once.
   */
  async listOpen(repo: RepoConfig, keep: (issue: Issue) => boolean): Promise<Issue[]> {
    const kept: Issue[] = [];
    try {
      const pages = this.#list({
        url: "/repos/{owner}/{repo}/issues",
        owner: repo.owner,
        repo: repo.repo,
        state: "open",
        per_page: PAGE_SIZE,
      });
      for await (const response of pages) {
        for (const issue of (await this.#page(response, repo)).issues) {
          if (!issue.pullRequest && issue.state === "open" && keep(issue)) kept.push(issue);
        }
      }
    } catch (error) {
      throw this.#failure(error, `read open issues of ${repo.owner}/${repo.repo}`);
    }
    return kept;
  }

  /** One issue as GitHub has it now. */
  async getIssue(repo: RepoConfig, number: number): Promise<Issue> {
    try {
      const response = await this.#octokit.request(
        "GET /repos/{owner}/{repo}/issues/{issue_number}",
        { owner: repo.owner, repo: repo.repo, issue_number: number },
      );
      const issue = toIssue(response.data);
      if (!issue) throw new Error("the response lacks number, state, labels or updated_at");
      return issue;
    } catch (error) {
      throw this.#failure(error, `read issue #${number} of ${repo.owner}/${repo.repo}`);
    }
  }

  /** Names of the branches linked to an issue (GitHub's "Development" sidebar). */
  async linkedBranches(repo: RepoConfig, number: number): Promise<string[]> {
    type Result = {
      repository: {
        issue: { linkedBranches: { nodes: ({ ref: { name: string } | null } | null)[] } } | null;
      } | null;
    };
    try {
      const data = await this.#octokit.graphql<Result>(LINKED_BRANCHES_QUERY, {
        owner: repo.owner,
        repo: repo.repo,
        number,
      });
      const nodes = data?.repository?.issue?.linkedBranches?.nodes;
      if (!Array.isArray(nodes)) throw new Error("the response has no linkedBranches");
      return nodes.flatMap((node) => typeof node?.ref?.name === "string" ? [node.ref.name] : []);
    } catch (error) {
      throw this.#failure(error, `read linked branches of issue #${number}`);
    }
  }

  /** Adds one label, keeping all others (never replaces the set: people may be editing). */
  async addLabel(repo: RepoConfig, number: number, label: string): Promise<void> {
    await this.#paceWrite();
    let labels: unknown;
    try {
      const response = await this.#octokit.request(
        "POST /repos/{owner}/{repo}/issues/{issue_number}/labels",
        { owner: repo.owner, repo: repo.repo, issue_number: number, labels: [label] },
      );
      labels = response.data;
    } catch (error) {
      throw this.#failure(error, `add label "${label}" to issue #${number}`);
    }
    // Exactly-once rests on label moves GitHub confirmed, so check the answer says so.
    if (!labelNames(labels)?.includes(label)) {
      throw new GitHubError(
        `Cannot add label "${label}" to issue #${number}: GitHub's answer does not list it`,
      );
    }
  }

  /** Removes one label; a label already gone is fine. */
  async removeLabel(repo: RepoConfig, number: number, label: string): Promise<void> {
    await this.#paceWrite();
    let labels: unknown;
    try {
      const response = await this.#octokit.request(
        "DELETE /repos/{owner}/{repo}/issues/{issue_number}/labels/{name}",
        { owner: repo.owner, repo: repo.repo, issue_number: number, name: label },
      );
      labels = response.data;
    } catch (error) {
      if ((error as { status?: number }).status === 404) return;
      throw this.#failure(error, `remove label "${label}" from issue #${number}`);
    }
    const remaining = labelNames(labels);
    if (!remaining || remaining.includes(label)) {
      throw new GitHubError(
        `Cannot remove label "${label}" from issue #${number}: GitHub's answer still lists it`,
      );
    }
  }

  /**
   * Octokit's request, leaving the body of a 2xx unparsed for #page(). Octokit parses with a
   * reviver that keeps big integers exact and makes a string of every value's source text:
   * for pages of 100 issues that made a full read take about half as much memory again.
   */
  #unparsed() {
    return this.#octokit.request.defaults({ request: { parseSuccessResponseBody: false } });
  }

  /** Octokit's paginate.iterator over an issue list, from `parameters.url` on, bodies unparsed. */
  #list(parameters: { url: string } & Record<string, unknown>) {
    // Given a request method, iterator() takes endpoint options (its `url` and parameters),
    // though its type asks for a route string there.
    return this.#octokit.paginate.iterator(this.#unparsed(), parameters as unknown as string);
  }

  /** The issues of a page of the issue list, its body parsed here (see #unparsed()). */
  async #page(
    response: { data: unknown; headers: Record<string, unknown> },
    repo: RepoConfig,
  ): Promise<IssuePage> {
    let data = response.data;
    if (data instanceof ReadableStream) {
      const text = await new Response(data).text();
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!Array.isArray(data)) {
      throw new Error(`expected a JSON array of issues, got ${typeName(data)}`);
    }
    const issues: Issue[] = [];
    for (const raw of data) {
      const issue = toIssue(raw);
      if (issue) issues.push(issue);
      else {
        this.#log.warn(
          `${repo.owner}/${repo.repo}: skipped an issue GitHub returned without number, state, labels or updated_at`,
        );
      }
    }
    return {
      issues,
      next: nextLink(header(response.headers, "link")),
      etag: header(response.headers, "etag") ?? null,
    };
  }

  async #paceWrite(): Promise<void> {
    const wait = this.#lastWrite + this.#writeIntervalMs - this.#deps.now();
    if (wait > 0) await this.#deps.sleep(wait);
    this.#lastWrite = this.#deps.now();
  }

  /** Turns whatever Octokit threw into a GitHubError that says what to do. */
  #failure(error: unknown, what: string): GitHubError {
    const cause = (error as { cause?: unknown }).cause;
    if (error instanceof GitHubError) return error;
    if (cause instanceof GitHubError) return cause;
    const graphql = (error as { errors?: { type?: string; message?: string }[] }).errors;
    if (Array.isArray(graphql) && graphql.length > 0) return this.#graphqlFailure(error, what);
    const status = (error as { status?: number }).status ?? 0;
    const response = (error as { response?: { headers?: Record<string, unknown>; url?: string } })
      .response;
    const headers = response?.headers ?? {};
    const where = response?.url ? ` at ${response.url}` : "";
    const reason = errorMessage(error).split(" - ")[0];
    const message = `Cannot ${what}: `;
    if (status === 401) {
      return new GitHubError(
        `${message}GitHub rejected the token (401 ${reason})${where}: check [github] token or GITHUB_TOKEN`,
        { cause: error, kind: "auth", status },
      );
    }
    if ((status === 403 || status === 429) && header(headers, "x-ratelimit-remaining") === "0") {
      return new GitHubError(
        `${message}GitHub rate limit exhausted for this token; it resets at ${
          resetTime(header(headers, "x-ratelimit-reset"), this.#deps.now())
        }`,
        { cause: error, kind: "rate-limit", status },
      );
    }
    if (status === 403 || status === 429) {
      const secondary = /secondary rate limit|abuse/i.test(reason) || status === 429;
      return new GitHubError(
        secondary
          ? `${message}GitHub secondary rate limit (${status}); this repository is retried next run`
          : `${message}GitHub denied access (403 ${reason})${where}: the token needs the "issues" scope on this repository`,
        { cause: error, kind: secondary ? "secondary-limit" : "auth", status },
      );
    }
    if (status === 404) {
      return new GitHubError(
        `${message}not found on GitHub (404)${where}: check repo_url and that the token can see the repository`,
        { cause: error, kind: "not-found", status },
      );
    }
    const shown = status ? `GitHub answered ${status} ${reason}` : reason;
    return new GitHubError(`${message}${shown}${where}`, { cause: error, status });
  }

  /** GraphQL reports errors in a 200 answer; a spent rate limit is one of them. */
  #graphqlFailure(error: unknown, what: string): GitHubError {
    const { errors, headers = {} } = error as {
      errors: { type?: string; message?: string }[];
      headers?: Record<string, unknown>;
    };
    const text = errors.map((item) => item.message ?? item.type ?? "error").join("; ");
    if (errors.some((item) => item.type === "RATE_LIMITED")) {
      this.#exhausted = new GitHubError(
        `Cannot ${what}: GitHub GraphQL rate limit exhausted; it resets at ${
          resetTime(header(headers, "x-ratelimit-reset"), this.#deps.now())
        }. Stopping this run`,
        { cause: error, kind: "rate-limit" },
      );
      return this.#exhausted;
    }
    return new GitHubError(`Cannot ${what}: GitHub GraphQL says: ${text}`, {
      cause: error,
      kind: "graphql",
    });
  }

  async #fetch(input: string, init: RequestInit): Promise<Response> {
    if (this.#exhausted) throw this.#exhausted;
    for (let attempt = 1;; attempt++) {
      const last = attempt >= GITHUB_ATTEMPTS;
      let response: Response;
      try {
        response = await this.#deps.fetch(input, {
          ...init,
          signal: AbortSignal.timeout(this.#timeoutMs),
        });
      } catch (error) {
        const timedOut = error instanceof DOMException && error.name === "TimeoutError";
        const reason = timedOut
          ? `no answer within ${this.#timeoutMs / 1000} s`
          : errorMessage((error as { cause?: unknown }).cause ?? error);
        if (last) {
          throw new GitHubError(
            `Cannot reach GitHub (${reason}): ${init.method ?? "GET"} ${input}`,
            {
              cause: error,
            },
          );
        }
        this.#log.debug(`GitHub request failed (${reason}), retrying: ${input}`);
        await this.#backoff(attempt);
        continue;
      }
      this.stats.requests++;
      if (response.status === 304) this.stats.notModified++;
      else this.stats.costed++;
      const wait = this.#retryWait(response);
      if (wait === null || last) return response;
      this.#log.debug(`GitHub answered ${response.status}, retrying in ${wait} ms: ${input}`);
      await response.body?.cancel();
      await this.#deps.sleep(wait);
    }
  }

  /** How long to wait before retrying a response, or null to hand it to the caller. */
  #retryWait(response: Response): number | null {
    const { status, headers } = response;
    if (status >= 500) return RETRY_BASE_MS * 2 + Math.random() * RETRY_BASE_MS;
    if (status !== 403 && status !== 429) return null;
    if (headers.get("x-ratelimit-remaining") === "0") {
      this.#exhausted = new GitHubError(
        `GitHub rate limit exhausted for this token; it resets at ${
          resetTime(headers.get("x-ratelimit-reset") ?? undefined, this.#deps.now())
        }. Stopping this run`,
        { kind: "rate-limit", status },
      );
      return null;
    }
    const retryAfter = Number(headers.get("retry-after"));
    if (Number.isFinite(retryAfter) && headers.has("retry-after")) {
      return retryAfter * 1000 <= MAX_RETRY_AFTER_MS ? retryAfter * 1000 : null;
    }
    return null;
  }

  async #backoff(attempt: number): Promise<void> {
    await this.#deps.sleep(RETRY_BASE_MS * 2 ** (attempt - 1) + Math.random() * RETRY_BASE_MS);
  }
}

// ---------------------------------------------------------------------------
// Jenkins
// ---------------------------------------------------------------------------

/** What to do about a Jenkins answer, by status: the part of the message after the URL. */
const JENKINS_ADVICE: Record<number, string> = {
  401: "Jenkins rejected the user name or API token: check [jenkins] username and api_token " +
    "(JENKINS_USER, JENKINS_TOKEN)",
  403: "the Jenkins user may not build this job: grant it Job/Build, or use an API token " +
    "instead of a password",
  404: "no such job: check executor_job_path (folders separated by /)",
  405: "that URL is not a buildable job: check executor_job_path",
  409: "the job is disabled or not buildable: enable it in Jenkins",
  400: "Jenkins refused the parameters: the job must define the string parameters REPO_URL, " +
    "BRANCH_NAME, COMMAND and GITHUB_CREDENTIALS_ID",
};

interface Crumb {
  field: string;
  value: string;
  cookie: string;
}

/** A Jenkins build or queue item, as far as matching a dispatch needs it. */
interface JenkinsWork {
  url?: string;
  timestamp?: number;
  inQueueSince?: number;
  actions?: ({ parameters?: { name?: string; value?: unknown }[] } | null)[];
}

function workParams(work: JenkinsWork): Record<string, string> {
  const params: Record<string, string> = {};
  for (const action of work.actions ?? []) {
    for (const param of action?.parameters ?? []) {
      if (typeof param.name === "string") params[param.name] = String(param.value ?? "");
    }
  }
  return params;
}

/** Whether a Jenkins build or queue item is the one a dispatch record triggered. */
export function matchesDispatch(work: JenkinsWork, record: DispatchRecord): boolean {
  const params = workParams(work);
  if (params[REQUEST_ID_PARAM]) return params[REQUEST_ID_PARAM] === record.requestId;
  // Jobs drop parameters they do not define; then the same script after the claim matches.
  const since = work.timestamp ?? work.inQueueSince ?? 0;
  return ["REPO_URL", "BRANCH_NAME", "COMMAND"].every((name) =>
    params[name] === record.params[name]
  ) && since >= record.claimedAt - 60_000;
}

/** Jenkins remote access: trigger a parameterized build, find it again, read its URL. */
export class Jenkins {
  /** Builds queued by this run. */
  builds = 0;
  #deps: Deps;
  #server: string;
  #auth: string;
  #user: string;
  #timeoutMs: number;
  #crumb: Crumb | null = null;

  constructor(config: Config, deps: Deps) {
    this.#deps = deps;
    this.#server = config.jenkins.serverUrl;
    this.#user = config.jenkins.username;
    this.#auth = "Basic " + btoa(`${config.jenkins.username}:${config.jenkins.apiToken}`);
    this.#timeoutMs = config.coordinator.requestTimeoutMs;
  }

  /** `{server}/job/A/job/B` for the job path `A/B`, each segment URL-encoded. */
  jobUrl(jobPath: string): string {
    const segments = jobPath.split("/").filter(Boolean).map(encodeURIComponent);
    return `${this.#server}/job/${segments.join("/job/")}`;
  }

  /**
   * Queues a build with parameters sent as a form body. Returns the queue item URL.
   * A 303 means the same request already waits in the queue: no new build.
   * Throws JenkinsError; `queued: "unknown"` when the build may exist anyway.
   */
  async trigger(
    jobPath: string,
    params: Record<string, string>,
  ): Promise<{ queueUrl: string | null; existing: boolean }> {
    const url = `${this.jobUrl(jobPath)}/buildWithParameters`;
    const what = `Cannot trigger Jenkins job "${jobPath}"`;
    const body = new URLSearchParams(params).toString();
    const post = () =>
      this.#send(url, {
        method: "POST",
        body,
        headers: { "content-type": "application/x-www-form-urlencoded" },
      }, what);
    let response = await post();
    let text = response.status === 201 ? "" : await response.text().catch(() => "");
    if (response.status === 403 && /No valid crumb/i.test(text) && !this.#crumb) {
      await this.#fetchCrumb(what);
      response = await post();
      text = response.status === 201 ? "" : await response.text().catch(() => "");
    }
    const location = response.headers.get("location");
    if (response.status === 201 || response.status === 303) {
      if (response.status === 201) this.builds++;
      return { queueUrl: location, existing: response.status === 303 };
    }
    const status = `${response.status} ${response.statusText || "error"}`.trim();
    let advice = JENKINS_ADVICE[response.status] ?? "";
    if (/not parameterized/i.test(text)) advice = JENKINS_ADVICE[400];
    if (response.status === 403 && /No valid crumb/i.test(text)) {
      advice = "Jenkins rejected the CSRF crumb: use an API token, not a password, in api_token";
    }
    const permission = response.headers.get("x-required-permission");
    if (permission) advice += ` (needs ${permission})`;
    if (response.status === 302) advice = "Jenkins did not queue the build (redirected to the job)";
    if (response.status >= 500 && !advice) advice = "Jenkins failed; see its system log";
    // A server error that Jenkins did not write itself (no X-Jenkins header) comes from a
    // proxy, which may have given up while Jenkins queued the build behind it.
    const queued = response.status >= 500 && !response.headers.get("x-jenkins") ? "unknown" : "no";
    throw new JenkinsError(`${what}: ${status} at ${url}${advice ? `: ${advice}` : ""}`, {
      queued,
    });
  }

  /** The build URL once the queue item has left the queue; null if not yet (never throws). */
  async buildUrl(queueUrl: string | null): Promise<string | null> {
    if (!queueUrl) return null;
    try {
      const response = await this.#send(`${queueUrl.replace(/\/?$/, "/")}api/json`, {}, "");
      if (!response.ok) {
        await response.body?.cancel();
        return null;
      }
      const item = await response.json();
      return typeof item?.executable?.url === "string" ? item.executable.url : null;
    } catch {
      return null;
    }
  }

  /**
   * Looks for the build a dispatch record triggered, in the queue and the job's recent
   * builds. Returns its URL (null if none); throws JenkinsError if Jenkins cannot be asked.
   */
  async find(record: DispatchRecord): Promise<{ url: string } | null> {
    const what = `Cannot look for the build of request ${record.requestId} in Jenkins`;
    const params = "actions[parameters[name,value]]";
    const queue = await this.#json<{ items?: JenkinsWork[] }>(
      `${this.#server}/queue/api/json?tree=items[url,inQueueSince,${params}]`,
      what,
    );
    const item = queue.items?.find((work) => matchesDispatch(work, record));
    if (item) return { url: new URL(item.url ?? "", `${this.#server}/`).href };
    const job = await this.#json<{ builds?: JenkinsWork[] }>(
      `${this.jobUrl(record.jobPath)}/api/json?tree=builds[url,timestamp,${params}]{0,100}`,
      what,
    );
    const build = job.builds?.find((work) => matchesDispatch(work, record));
    return build ? { url: build.url ?? this.jobUrl(record.jobPath) } : null;
  }

  async #json<T>(url: string, what: string): Promise<T> {
    const response = await this.#send(url, {}, what);
    if (!response.ok) {
      await response.body?.cancel();
      throw new JenkinsError(`${what}: ${response.status} ${response.statusText} at ${url}`, {
        queued: "unknown",
      });
    }
    try {
      return await response.json() as T;
    } catch (error) {
      throw new JenkinsError(`${what}: malformed JSON at ${url}`, {
        cause: error,
        queued: "unknown",
      });
    }
  }

  async #fetchCrumb(what: string): Promise<void> {
    const url = `${this.#server}/crumbIssuer/api/json`;
    const response = await this.#send(url, {}, what);
    if (!response.ok) {
      await response.body?.cancel();
      throw new JenkinsError(
        `${what}: Jenkins asked for a CSRF crumb but ${url} answered ${response.status}`,
      );
    }
    const data = await response.json().catch(() => null);
    if (typeof data?.crumb !== "string" || typeof data?.crumbRequestField !== "string") {
      throw new JenkinsError(`${what}: malformed crumb at ${url}`);
    }
    // Crumbs are bound to the web session since Jenkins 2.176.2: keep its cookie.
    const cookie = response.headers.getSetCookie().map((line) => line.split(";")[0]).join("; ");
    this.#crumb = { field: data.crumbRequestField, value: data.crumb, cookie };
  }

  async #send(url: string, init: RequestInit, what: string): Promise<Response> {
    const headers = new Headers(init.headers);
    // A pooled connection that drops makes the runtime resend the request by itself,
    // which for a trigger could queue a second build: never reuse Jenkins connections.
    headers.set("connection", "close");
    // Credentials go only to the configured server, never to a host a Location names.
    if (new URL(url).origin === new URL(this.#server).origin) {
      headers.set("authorization", this.#auth);
      if (this.#crumb) {
        headers.set(this.#crumb.field, this.#crumb.value);
        if (this.#crumb.cookie) headers.set("cookie", this.#crumb.cookie);
      }
    }
    const method = init.method ?? "GET";
    try {
      return await this.#deps.fetch(url, {
        ...init,
        headers,
        redirect: "manual",
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (error) {
      const timedOut = error instanceof DOMException && error.name === "TimeoutError";
      const detail = errorMessage((error as { cause?: unknown }).cause ?? error);
      // Connect errors (refused, DNS, TLS handshake) happen before the request is sent.
      const unsent = /\(Connect\)|connection refused|dns error|certificate/i.test(detail);
      const reason = timedOut
        ? `no answer within ${this.#timeoutMs / 1000} s from ${url}`
        : unsent
        ? `cannot connect to ${this.#server} (${
          detail.replace(/^.*client error \(Connect\): /, "")
        })`
        : `${method} ${url} failed (${detail})`;
      const hint = method === "POST" && !unsent
        ? "; the build may have been queued: the next run checks Jenkins before retrying"
        : unsent
        ? `; is Jenkins running at [jenkins] server_url, and may user "${this.#user}" reach it?`
        : "";
      throw new JenkinsError(`${what || "Jenkins request failed"}: ${reason}${hint}`, {
        cause: error,
        queued: method === "POST" && !unsent ? "unknown" : "no",
      });
    }
  }
}

// ---------------------------------------------------------------------------
// Coordinator core
// ---------------------------------------------------------------------------

/** Whether an issue can be dispatched now, and if not, why. */
export type Verdict =
  | { kind: "eligible"; spec: WorkflowSpec }
  | { kind: "skip"; reason: string }
  | { kind: "ignore" };

/** The pickup workflows whose label an issue carries. */
export function pickupsOf(issue: Issue): WorkflowSpec[] {
  return WORKFLOWS.filter((spec) => issue.labels.includes(spec.pickup));
}

/**
 * Eligibility: open, not a pull request, exactly one pickup label, no ignored label and
 * no bot-busy label. Issues without a pickup label are not candidates at all.
 */
export function assess(issue: Issue): Verdict {
  const pickups = pickupsOf(issue);
  if (issue.pullRequest || issue.state !== "open" || pickups.length === 0) {
    return { kind: "ignore" };
  }
  if (pickups.length > 1) {
    return {
      kind: "skip",
      reason: `has ${pickups.length} pickup labels (${
        pickups.map((spec) => spec.pickup).join(", ")
      }): keep exactly one`,
    };
  }
  const ignored = issue.labels.find((label) => IGNORE_LABELS.includes(label));
  if (ignored) return { kind: "skip", reason: `has the "${ignored}" label` };
  const busy = WORKFLOWS.find((spec) => issue.labels.includes(spec.busy));
  if (busy) {
    return {
      kind: "skip",
      reason:
        `also has the bot-busy label "${busy.busy}": a job may be running; remove one of the two`,
    };
  }
  return { kind: "eligible", spec: pickups[0] };
}

/** Issues with a pickup label, closest to done first, then newest first as GitHub lists them. */
export function orderCandidates(issues: readonly Issue[]): Issue[] {
  const rank = (issue: Issue) => {
    const index = WORKFLOWS.findIndex((spec) => issue.labels.includes(spec.pickup));
    return index === -1 ? WORKFLOWS.length : index;
  };
  return issues
    .filter((issue) => assess(issue).kind !== "ignore")
    .sort((a, b) =>
      rank(a) - rank(b) || b.createdAt.localeCompare(a.createdAt) || b.number - a.number
    );
}

/** Quotes a branch name for sh only when it needs it, so plain names read as before. */
function shellWord(text: string): string {
  return /^[\w./@+-]+$/.test(text) ? text : `'${text.replaceAll("'", `'\\''`)}'`;
}

/**
 * The script the Jenkins executor job runs (its COMMAND parameter): sh for linux,
 * batch for windows, as mcp_coder's executors expect. After the mcp-coder command a
 * watchdog line moves a still-busy label to the failure label (mcp_coder #719).
 */
export function jobScript(
  spec: WorkflowSpec,
  options: { os: ExecutorOs; logLevel: string; issue: number; branch: string },
): string {
  const planning = spec.workflow === "create-plan";
  const target = planning ? ` ${options.issue}` : "";
  const issueFlag = planning ? ` --issue ${options.issue}` : "";
  if (options.os === "windows") {
    const project = String.raw`%WORKSPACE%\repo`;
    return [
      "@echo ON",
      "",
      "echo current WORKSPACE directory===================================",
      "cd %WORKSPACE%",
      "",
      "echo switch to python execution environment =====================",
      "cd %VENV_BASE_DIR%",
      "",
      "echo python environment ================================",
      `if "%VENV_BASE_DIR%"=="" (`,
      "    echo ERROR: VENV_BASE_DIR environment variable not set",
      "    exit /b 1",
      ")",
      "",
      `if "%VIRTUAL_ENV%"=="" (`,
      String.raw`    %VENV_BASE_DIR%\.venv\Scripts\activate.bat`,
      ")",
      "",
      "set DISABLE_AUTOUPDATER=1",
      "set MCP_TIMEOUT=30000",
      "",
      "echo Install type stubs in project environment ====================",
      `uv sync --project ${project} --extra types`,
      "",
      "echo command execution  =====================================",
      `mcp-coder --log-level ${options.logLevel} ${spec.workflow}${target} --project-dir ${project} --mcp-config .mcp.json`,
      "set RC=%ERRORLEVEL%",
      "echo RC=%RC%",
      "",
      `mcp-coder gh-tool set-status ${spec.failed} --from-status ${spec.busy}${issueFlag} --project-dir ${project} --force`,
      "",
      "echo archive after execution =======================================",
      String.raw`dir .mcp-coder\create_plan_sessions`,
      "dir logs",
      "exit /b %RC%",
      "",
    ].join("\n");
  }
  return [
    `git checkout ${shellWord(options.branch)}`,
    "git pull",
    "export DISABLE_AUTOUPDATER=1",
    "export MCP_TIMEOUT=30000",
    "which mcp-coder && mcp-coder --version",
    "which claude && claude --version",
    "uv sync --extra types",
    `mcp-coder --log-level ${options.logLevel} ${spec.workflow}${target} --project-dir /workspace/repo --mcp-config .mcp.json`,
    "RC=$?",
    "echo RC=$RC",
    "",
    `mcp-coder gh-tool set-status ${spec.failed} --from-status ${spec.busy}${issueFlag} --project-dir /workspace/repo --force || true`,
    `echo "archive after execution ======================================="`,
    "ls -la .mcp-coder/create_plan_sessions",
    "ls -la logs",
    "exit $RC",
    "",
  ].join("\n");
}

/** The Jenkins parameters of one dispatch: mcp_coder's four plus a unique request id. */
export function jobParams(
  repo: RepoConfig,
  options: { branch: string; command: string; requestId: string },
): Record<string, string> {
  return {
    REPO_URL: repo.repoUrl,
    BRANCH_NAME: options.branch,
    COMMAND: options.command,
    GITHUB_CREDENTIALS_ID: repo.githubCredentialsId,
    [REQUEST_ID_PARAM]: options.requestId,
  };
}

/** Everything one run shares. */
export interface RunContext {
  deps: Deps;
  config: Config;
  log: Logger;
  store: Store;
  github: GitHub;
  jenkins: Jenkins;
  options: RunOptions;
  runId: string;
  /** Identifies the GitHub token in KV (a hash prefix). */
  tokenId: string;
}

type RepoRead = { issues: Issue[]; read: RepoReport["read"] };

function newest(issues: readonly Issue[], start: string | null): string | null {
  return issues.reduce<string | null>(
    (max, issue) => (max === null || issue.updatedAt > max ? issue.updatedAt : max),
    start,
  );
}

/**
 * The open issues of a repository that the cache keeps (see `cacheable()`), from the KV
 * cache kept current with as few GitHub requests as possible. GitHub errors propagate and
 * leave the cache untouched.
 */
export async function readIssues(ctx: RunContext, repo: RepoConfig): Promise<RepoRead> {
  const { store, github, deps, options } = ctx;
  let cached: Awaited<ReturnType<Store["loadRepo"]>>;
  try {
    cached = await store.loadRepo(repo);
  } catch (error) {
    ctx.log.warn(
      `${repo.name}: cache unreadable (${errorMessage(error)}); reading GitHub directly`,
    );
    return { issues: await github.listOpen(repo, cacheable), read: "direct" };
  }
  const { meta, issues } = cached;
  const stale = !meta || meta.schema !== CACHE_SCHEMA || meta.cursor === null ||
    cached.corrupt || meta.tokenId !== ctx.tokenId ||
    deps.now() - meta.fullAt > ctx.config.coordinator.cacheRefreshMinutes * 60_000;
  if (options.forceRefresh || stale) {
    if (cached.corrupt) ctx.log.warn(`${repo.name}: cache entries unreadable; rebuilding`);
    else if (meta && meta.schema !== CACHE_SCHEMA) {
      ctx.log.info(`${repo.name}: cache written by another version; rebuilding`);
    }
    return await readAll(ctx, repo);
  }
  return await readChanges(ctx, repo, { meta, issues });
}

/** Full read: every open issue, page by page, keeping only what the cache keeps. */
async function readAll(ctx: RunContext, repo: RepoConfig): Promise<RepoRead> {
  const { github } = ctx;
  const before = (await github.probe(repo, null))?.issues ?? [];
  let open = await github.listOpen(repo, cacheable);
  const after = await github.probe(repo, null);
  // Closing an issue while we page shifts later pages up by one and hides an issue
  // from the listing: if that happened, read again.
  const seen = new Set(before.map((issue) => `${issue.number}@${issue.updatedAt}`));
  const shifted = (after?.issues ?? []).some((issue) =>
    issue.state === "closed" && !seen.has(`${issue.number}@${issue.updatedAt}`)
  );
  if (shifted) open = await github.listOpen(repo, cacheable);
  const fresh: RepoMeta = {
    schema: CACHE_SCHEMA,
    etag: after?.etag ?? null,
    tokenId: ctx.tokenId,
    // The next incremental read starts from before this one, so it sees what changed during it.
    cursor: newest(before, null) ?? new Date(0).toISOString(),
    fullAt: ctx.deps.now(),
  };
  await saveQuietly(ctx, repo, { upsert: open, remove: [], meta: fresh, clear: true });
  return { issues: open, read: "full" };
}

/**
 * Incremental read: one conditional request (304: nothing changed), else the issues
 * updated since the cursor, newest first, page by page until a page ends before it.
 * An issue that gains a workflow label is added; one that loses them all, or is closed,
 * is dropped.
 */
async function readChanges(
  ctx: RunContext,
  repo: RepoConfig,
  cached: { meta: RepoMeta; issues: Map<number, Issue> },
): Promise<RepoRead> {
  const { meta, issues } = cached;
  const first = await ctx.github.probe(repo, meta.etag);
  if (!first) return { issues: [...issues.values()], read: "not-modified" };
  const threshold = Date.parse(meta.cursor!) - SINCE_OVERLAP_MS;
  const upsert: Issue[] = [];
  const remove: number[] = [];
  // An issue listed twice (pages shift while we read) counts as first seen: its newest state.
  const seen = new Set<number>();
  let cursor = meta.cursor;
  for await (const page of ctx.github.pages(repo, first)) {
    for (const issue of page) {
      if (seen.has(issue.number)) continue;
      seen.add(issue.number);
      if (cacheable(issue)) {
        issues.set(issue.number, issue);
        upsert.push(issue);
      } else if (issues.delete(issue.number)) remove.push(issue.number);
    }
    cursor = newest(page, cursor);
    if (!(Date.parse(page.at(-1)?.updatedAt ?? "") >= threshold)) break;
  }
  const fresh: RepoMeta = { ...meta, etag: first.etag, cursor };
  await saveQuietly(ctx, repo, { upsert, remove, meta: fresh });
  return { issues: [...issues.values()], read: "incremental" };
}

async function saveQuietly(
  ctx: RunContext,
  repo: RepoConfig,
  changes: Parameters<Store["saveRepo"]>[1],
): Promise<void> {
  if (ctx.options.dryRun) return;
  try {
    await ctx.store.saveRepo(repo, changes);
  } catch (error) {
    ctx.log.warn(`${repo.name}: cannot update the cache (${errorMessage(error)}); continuing`);
  }
}

/** What happened to one candidate issue. */
type Outcome =
  | { kind: "dispatched"; report: DispatchReport }
  | { kind: "skipped"; reason: string }
  | { kind: "quiet"; reason: string }
  | { kind: "claimable"; versionstamp: string | null };

type RecordEntry = { record: DispatchRecord; versionstamp: string | null };

/** The branch a workflow runs on, or why there is none to use. */
async function branchFor(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; spec: WorkflowSpec },
): Promise<{ branch: string } | { skip: string }> {
  const { issue, spec } = options;
  if (spec.branch === "main") return { branch: "main" };
  // Re-asking GitHub every few minutes for an issue nobody touched would make idle runs
  // cost rate limit; a branch linked meanwhile is seen within BRANCH_RECHECK_MS.
  const memo = await ctx.store.getBranches(repo, issue.number).catch(() => null);
  const fresh = memo && memo.updatedAt === issue.updatedAt &&
    ctx.deps.now() - memo.checkedAt < BRANCH_RECHECK_MS;
  const branches = fresh ? memo.branches : await ctx.github.linkedBranches(repo, issue.number);
  if (branches.length !== 1 && !fresh && !ctx.options.dryRun) {
    const record = { updatedAt: issue.updatedAt, checkedAt: ctx.deps.now(), branches };
    await ctx.store.putBranches(repo, issue.number, record).catch(() => {});
  }
  if (branches.length === 0) {
    return { skip: "no linked branch: link one under Development on the issue" };
  }
  if (branches.length > 1) {
    return {
      skip: `${branches.length} linked branches (${branches.join(", ")}): keep exactly one`,
    };
  }
  return { branch: branches[0] };
}

function reportOf(issue: Issue, record: DispatchRecord, note?: DispatchReport["note"]) {
  return {
    issue: issue.number,
    title: issue.title,
    workflow: record.workflow,
    branch: record.params.BRANCH_NAME ?? "",
    from: record.pickup,
    to: record.busy,
    queueUrl: record.queueUrl ?? null,
    buildUrl: record.buildUrl ?? null,
    requestId: record.requestId || null,
    ...(note ? { note } : {}),
  } satisfies DispatchReport;
}

/**
 * Moves the labels of a queued dispatch (busy label on, then pickup label off) and
 * marks the record done. Safe to repeat: a second run finishing it changes nothing.
 */
async function finishDispatch(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; entry: RecordEntry; note?: DispatchReport["note"] },
): Promise<DispatchReport> {
  const { issue, entry: { record, versionstamp } } = options;
  try {
    await ctx.github.addLabel(repo, issue.number, record.busy);
    await ctx.github.removeLabel(repo, issue.number, record.pickup);
  } catch (error) {
    const where = record.queueUrl ? ` (${record.queueUrl})` : "";
    throw new GitHubError(
      `the Jenkins build is queued${where} but the labels were not moved; the next run moves them: ${
        errorMessage(error)
      }`,
      { cause: error, kind: error instanceof GitHubError ? error.kind : "other" },
    );
  }
  const done: DispatchRecord = { ...record, state: "done", updatedAt: ctx.deps.now() };
  await ctx.store.swapRecord(repo, issue.number, { versionstamp, value: done });
  const labels = issue.labels.filter((label) => label !== record.pickup);
  try {
    await ctx.store.putIssue(repo, { ...issue, labels: [...new Set([...labels, record.busy])] });
  } catch (error) {
    ctx.log.warn(
      `${repo.name}: cannot update cached labels of #${issue.number}: ${errorMessage(error)}`,
    );
  }
  return reportOf(issue, done, options.note);
}

/**
 * Picks up a dispatch an earlier run left unfinished: a queued build whose labels did
 * not move, or a trigger whose outcome is unknown (timeout, crash), which is looked up
 * in Jenkins before anything is triggered again.
 */
async function resumeDispatch(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; entry: RecordEntry },
): Promise<Outcome> {
  const { issue, entry: { record, versionstamp } } = options;
  const { store, jenkins, deps } = ctx;
  if (record.runId !== ctx.runId && await store.runAlive(record.runId)) {
    return { kind: "skipped", reason: "another coordinator run is dispatching it right now" };
  }
  if (ctx.options.dryRun) {
    return {
      kind: "skipped",
      reason: record.state === "queued"
        ? `an earlier run queued ${record.workflow}; a real run moves the labels`
        : "an earlier trigger's outcome is unknown; a real run checks Jenkins first",
    };
  }
  let entry: RecordEntry = options.entry;
  if (record.state === "triggering") {
    const found = await jenkins.find(record);
    const state = found ? "queued" : "released";
    const next: DispatchRecord = {
      ...record,
      state,
      queueUrl: found?.url ?? record.queueUrl,
      updatedAt: deps.now(),
    };
    const stamp = await store.swapRecord(repo, issue.number, { versionstamp, value: next });
    if (!stamp) return { kind: "skipped", reason: "another coordinator run is finishing it" };
    if (!found) {
      ctx.log.info(
        `${repo.name}: #${issue.number}: the earlier trigger never reached Jenkins; retrying`,
      );
      return { kind: "claimable", versionstamp: stamp };
    }
    entry = { record: next, versionstamp: stamp };
  }
  ctx.log.info(`${repo.name}: #${issue.number}: finishing the label move of an earlier dispatch`);
  return {
    kind: "dispatched",
    report: await finishDispatch(ctx, repo, { issue, entry, note: "reconciled" }),
  };
}

/**
 * Dispatches one candidate issue exactly once per pickup cycle:
 * claim in KV (check-and-set), trigger Jenkins, record "queued", move the labels,
 * record "done". Each step is recorded first, so any crash resumes safely.
 */
export async function dispatchIssue(
  ctx: RunContext,
  repo: RepoConfig,
  candidate: Issue,
): Promise<Outcome> {
  const { store, github, options } = ctx;
  let issue = candidate;
  const found = await store.getRecord(repo, issue.number);
  let versionstamp = found.versionstamp;
  const previous = found.value;
  if (
    previous && (previous.state === "triggering" || previous.state === "queued") &&
    issue.labels.includes(previous.pickup)
  ) {
    const outcome = await resumeDispatch(ctx, repo, {
      issue,
      entry: { record: previous, versionstamp },
    });
    if (outcome.kind !== "claimable") return outcome;
    versionstamp = outcome.versionstamp;
  }
  if (previous?.state === "done" && issue.labels.includes(previous.pickup)) {
    // Either a person put the label back (a new cycle) or the cached labels are stale.
    issue = await github.getIssue(repo, issue.number);
    if (!options.dryRun) await store.putIssue(repo, issue).catch(() => {});
    if (!issue.labels.includes(previous.pickup)) {
      return { kind: "quiet", reason: "dispatched earlier; the cached labels were stale" };
    }
  }
  const verdict = assess(issue);
  if (verdict.kind !== "eligible") {
    return {
      kind: "skipped",
      reason: verdict.kind === "skip" ? verdict.reason : "not a candidate",
    };
  }
  const spec = verdict.spec;
  const branch = await branchFor(ctx, repo, { issue, spec });
  if ("skip" in branch) return { kind: "skipped", reason: branch.skip };
  const claim = newClaim(ctx, repo, { issue, spec, branch: branch.branch });
  if (options.dryRun) return { kind: "dispatched", report: reportOf(issue, claim, "dry-run") };
  return await claimAndTrigger(ctx, repo, { issue, claim, versionstamp });
}

/** The dispatch record a claim writes: everything needed to trigger or find the build later. */
function newClaim(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; spec: WorkflowSpec; branch: string },
): DispatchRecord {
  const { issue, spec, branch } = options;
  const requestId = ctx.options.dryRun ? "" : ctx.deps.randomId();
  const command = jobScript(spec, {
    os: repo.executorOs,
    logLevel: ctx.options.logLevel,
    issue: issue.number,
    branch,
  });
  return {
    state: "triggering",
    pickup: spec.pickup,
    busy: spec.busy,
    workflow: spec.workflow,
    jobPath: repo.executorJobPath,
    params: jobParams(repo, { branch, command, requestId }),
    requestId,
    runId: ctx.runId,
    claimedAt: ctx.deps.now(),
    updatedAt: ctx.deps.now(),
  };
}

/**
 * Claims the issue (check-and-set against the record read earlier), triggers Jenkins and
 * records the outcome: released when Jenkins surely did not queue it, queued when it did.
 */
async function claimAndTrigger(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; claim: DispatchRecord; versionstamp: string | null },
): Promise<Outcome> {
  const { store, deps } = ctx;
  const { issue, claim } = options;
  const claimed = await store.swapRecord(repo, issue.number, {
    versionstamp: options.versionstamp,
    value: claim,
  });
  if (!claimed) return { kind: "skipped", reason: "claimed by another coordinator run" };
  let queue: { queueUrl: string | null; existing: boolean };
  try {
    queue = await ctx.jenkins.trigger(repo.executorJobPath, claim.params);
  } catch (error) {
    if (error instanceof JenkinsError && error.queued === "no") {
      const released: DispatchRecord = { ...claim, state: "released", updatedAt: deps.now() };
      await store.swapRecord(repo, issue.number, { versionstamp: claimed, value: released });
    }
    throw error;
  }
  const queued: DispatchRecord = {
    ...claim,
    state: "queued",
    queueUrl: queue.queueUrl ?? undefined,
    updatedAt: deps.now(),
  };
  const stamp = await store.swapRecord(repo, issue.number, {
    versionstamp: claimed,
    value: queued,
  });
  const buildUrl = await ctx.jenkins.buildUrl(queue.queueUrl);
  if (buildUrl) queued.buildUrl = buildUrl;
  const report = await finishDispatch(ctx, repo, {
    issue,
    entry: { record: queued, versionstamp: stamp },
  });
  return { kind: "dispatched", report };
}

function emptyReport(repo: RepoConfig): RepoReport {
  return {
    name: repo.name,
    repository: `${repo.owner}/${repo.repo}`,
    read: "none",
    eligible: 0,
    dispatched: [],
    skipped: [],
    error: null,
  };
}

/**
 * Closes unfinished dispatch records (left by a dead run) whose pickup label is gone from
 * the issue: that pickup cycle is over. Without this, putting the label back later would
 * be taken for the old, unfinished cycle and only move labels instead of starting a job.
 */
async function closeFinishedCycles(
  ctx: RunContext,
  repo: RepoConfig,
  issues: readonly Issue[],
): Promise<void> {
  const open = new Map(issues.map((issue) => [issue.number, issue]));
  for (const number of await ctx.store.pending(repo)) {
    const { value: record, versionstamp } = await ctx.store.getRecord(repo, number);
    if (!record || record.state === "done" || record.state === "released") {
      await ctx.store.dropPending(repo, number);
      continue;
    }
    if (open.get(number)?.labels.includes(record.pickup)) continue;
    if (record.runId !== ctx.runId && await ctx.store.runAlive(record.runId)) continue;
    const done: DispatchRecord = { ...record, state: "done", updatedAt: ctx.deps.now() };
    if (await ctx.store.swapRecord(repo, number, { versionstamp, value: done })) {
      ctx.log.info(
        `${repo.name}: #${number}: "${record.pickup}" is gone from the issue; its ${record.state} dispatch is closed`,
      );
    }
  }
}

/** Dispatches a repository's candidates in order; returns why the whole run must stop, if so. */
async function dispatchRepo(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issues: Issue[]; report: RepoReport },
): Promise<string | null> {
  const { report } = options;
  if (!ctx.options.dryRun) {
    await closeFinishedCycles(ctx, repo, options.issues).catch((error) =>
      ctx.log.warn(`${repo.name}: cannot check unfinished dispatches: ${errorMessage(error)}`)
    );
  }
  const candidates = orderCandidates(options.issues);
  report.eligible = candidates.filter((issue) => assess(issue).kind === "eligible").length;
  ctx.log.info(`${repo.name}: ${report.eligible} eligible issue(s) (${report.read} read)`);
  for (const issue of candidates) {
    if (ctx.deps.stop.aborted) {
      report.error = "interrupted by a signal before all issues were processed";
      return "interrupted by a signal";
    }
    try {
      const outcome = await dispatchIssue(ctx, repo, issue);
      if (outcome.kind === "dispatched") {
        report.dispatched.push(outcome.report);
        const verb = outcome.report.note === "dry-run" ? "would dispatch" : "dispatched";
        ctx.log.info(`${repo.name}: ${verb} ${outcome.report.workflow} for #${issue.number}`);
      } else if (outcome.kind === "skipped") {
        report.skipped.push({ issue: issue.number, reason: outcome.reason });
        ctx.log.info(`${repo.name}: skipped #${issue.number}: ${outcome.reason}`);
      } else {ctx.log.debug(
          `${repo.name}: #${issue.number}: ${"reason" in outcome ? outcome.reason : ""}`,
        );}
    } catch (error) {
      if (
        error instanceof GitHubError && (error.kind === "graphql" || error.kind === "not-found")
      ) {
        // About this issue only (e.g. a GHES without linkedBranches): the others go on.
        report.skipped.push({ issue: issue.number, reason: error.message });
        ctx.log.warn(`${repo.name}: skipped #${issue.number}: ${error.message}`);
        continue;
      }
      report.error = `Failed to process issue #${issue.number}: ${errorMessage(error)}`;
      ctx.log.error(`${repo.name}: ${report.error}`);
      if (error instanceof GitHubError && error.kind === "rate-limit") {
        return "the GitHub rate limit is exhausted";
      }
      if (error instanceof JenkinsError && !ctx.options.keepGoing) {
        return "a dispatch failed (fail-fast; --keep-going continues with other repositories)";
      }
      return null;
    }
  }
  return null;
}

/**
 * One coordinator run over `repos`: reads run concurrently (bounded), dispatches run
 * one at a time in config order. Never throws for GitHub or Jenkins failures: they
 * end up in the summary, with exit code 1.
 */
export async function runCoordinator(
  ctx: RunContext,
  repos: readonly RepoConfig[],
): Promise<RunSummary> {
  const started = ctx.deps.now();
  const reports = repos.map(emptyReport);
  const reads = await mapLimit(
    repos,
    ctx.config.coordinator.maxParallelRepos,
    (repo) =>
      readIssues(ctx, repo).catch((error: unknown) =>
        error instanceof Error ? error : new Error(String(error))
      ),
  );
  let stop: string | null = null;
  for (const [index, repo] of repos.entries()) {
    const report = reports[index];
    const read = reads[index];
    if (stop === null && ctx.deps.stop.aborted) stop = "interrupted by a signal";
    if (stop) {
      report.error ??= `not processed: ${stop}`;
      continue;
    }
    if (read instanceof Error) {
      report.error = errorMessage(read);
      ctx.log.error(`${repo.name}: ${report.error}`);
      if (read instanceof GitHubError && read.kind === "rate-limit") {
        stop = "the GitHub rate limit is exhausted";
      }
      continue;
    }
    report.read = read.read;
    stop = await dispatchRepo(ctx, repo, { issues: read.issues, report });
  }
  const failed = reports.some((report) => report.error !== null);
  return {
    ok: !failed,
    dryRun: ctx.options.dryRun,
    exitCode: failed ? EXIT_FAILURE : EXIT_OK,
    startedAt: new Date(started).toISOString(),
    durationMs: ctx.deps.now() - started,
    repos: reports,
    github: { ...ctx.github.stats },
    jenkins: { builds: ctx.jenkins.builds },
    note: null,
  };
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

const USAGE = "Usage: coordinator.ts run (--all | --repo NAME) [options]   (--help for more)";

/** `--help` text. */
export const HELP = `coordinator ${VERSION}: start Jenkins jobs for GitHub issues by status label.

Usage:
  deno task start run (--all | --repo NAME) [options]
  deno run --allow-net --allow-env --allow-read --allow-write coordinator.ts run ...

Options:
  --all              process every repository in the config
  --repo NAME        process the repository of [coordinator.repos.NAME]
  --config PATH      config file (default: $COORDINATOR_CONFIG, else
                     $XDG_CONFIG_HOME/coordinator/config.toml, else ~/.config/coordinator/config.toml)
  --kv PATH|URL      Deno KV store: a file, a remote KV URL or :memory: (default: $COORDINATOR_KV,
                     else $XDG_STATE_HOME/coordinator/kv.sqlite3, else ~/.local/state/coordinator/)
  --dry-run          show what would be dispatched and why the rest is skipped; write nothing
  --force-refresh    re-read all open issues instead of only what changed
  --keep-going       after a Jenkins failure, go on with the other repositories
  --log-level LEVEL  DEBUG, INFO, WARNING or ERROR (default INFO); also passed to mcp-coder
  --json             print one JSON run summary on stdout (logs stay on stderr)
  -h, --help         show this help
  --version          show the version

Exit codes: 0 success (also nothing to do), 1 failure, 2 usage error.
`;

type Cli = { command: "help" | "version" } | ({ command: "run" } & RunOptions);

/** Parses the command line; throws UsageError for anything it does not understand. */
export function parseCli(args: string[]): Cli {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        all: { type: "boolean", default: false },
        repo: { type: "string" },
        config: { type: "string" },
        kv: { type: "string" },
        "dry-run": { type: "boolean", default: false },
        "force-refresh": { type: "boolean", default: false },
        "keep-going": { type: "boolean", default: false },
        "log-level": { type: "string", default: "INFO" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
        version: { type: "boolean", default: false },
      },
    });
  } catch (error) {
    throw new UsageError(errorMessage(error).split(". ")[0].replace(/\.$/, ""), { cause: error });
  }
  const { values, positionals } = parsed;
  if (values.help) return { command: "help" };
  if (values.version) return { command: "version" };
  const [command, ...extra] = positionals;
  if (command !== "run") {
    throw new UsageError(command ? `Unknown command "${command}"` : "Missing command: run");
  }
  if (extra.length > 0) throw new UsageError(`Unexpected argument "${extra[0]}"`);
  if (values.all === (values.repo !== undefined)) {
    throw new UsageError(
      values.all ? "Use --all or --repo NAME, not both" : "Missing --all or --repo NAME",
    );
  }
  if (values.repo === "") throw new UsageError("--repo needs a repository name");
  const logLevel = values["log-level"].toUpperCase();
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    throw new UsageError(
      `--log-level must be one of ${LOG_LEVELS.join(", ")}, got "${values["log-level"]}"`,
    );
  }
  return {
    command: "run",
    all: values.all,
    repo: values.repo,
    config: values.config,
    kv: values.kv,
    dryRun: values["dry-run"],
    forceRefresh: values["force-refresh"],
    keepGoing: values["keep-going"],
    logLevel: logLevel as RunOptions["logLevel"],
    json: values.json,
  };
}

/** The human-readable run report printed on stdout. */
export function formatSummary(summary: RunSummary): string {
  const lines: string[] = [];
  if (summary.note) lines.push(summary.note);
  for (const repo of summary.repos) {
    lines.push(`${repo.repository} (${repo.name}): ${repo.eligible} eligible, ${repo.read} read`);
    for (const item of repo.dispatched) {
      const verb = item.note === "dry-run"
        ? "would dispatch"
        : item.note === "reconciled"
        ? "finished earlier dispatch of"
        : "dispatched";
      const where = item.buildUrl ?? item.queueUrl;
      lines.push(
        `  ${verb} ${item.workflow} for #${item.issue} on ${item.branch}: ${item.from} -> ${item.to}${
          where ? ` (${where})` : ""
        }`,
      );
    }
    for (const item of repo.skipped) lines.push(`  skipped #${item.issue}: ${item.reason}`);
    if (repo.error) lines.push(`  error: ${repo.error}`);
  }
  const count = (pick: (repo: RepoReport) => number) =>
    summary.repos.reduce((sum, repo) => sum + pick(repo), 0);
  const dispatched = count((repo) => repo.dispatched.length);
  const errors = summary.repos.filter((repo) => repo.error).length;
  lines.push(
    `${summary.dryRun ? "Dry run: would dispatch" : "Dispatched"} ${dispatched}, skipped ${
      count((repo) => repo.skipped.length)
    }, ${errors} repositor${
      errors === 1 ? "y" : "ies"
    } with errors; GitHub: ${summary.github.requests} requests, ${summary.github.notModified} not modified`,
  );
  return lines.join("\n") + "\n";
}

/**
 * Opens the KV store. Real runs refuse to go on without it: the claims in it are what
 * keeps a pickup from being dispatched twice. A dry run falls back to memory.
 */
async function openStore(
  deps: Deps,
  options: { path?: string; log: Logger; dryRun: boolean },
): Promise<Deno.Kv> {
  const { path, log } = options;
  const file = path && path !== ":memory:" && !/^https?:\/\//.test(path);
  try {
    if (file && options.dryRun) {
      // A dry run writes nothing, not even an empty KV file where none exists yet.
      const exists = await deps.fileMode(path).then(() => true, () => false);
      if (!exists) return await deps.openKv(":memory:");
    } else if (file) await deps.mkdirFor(path);
    return await retryLocked(deps, () => deps.openKv(path));
  } catch (error) {
    const reason = `Cannot open the KV store ${path ?? "(default)"}: ${errorMessage(error)}`;
    if (!options.dryRun) {
      throw new ConfigError(
        `${reason}; it records every dispatch so that none is started twice: fix the path or ` +
          "its permissions, or pass --kv",
        { cause: error },
      );
    }
    log.warn(`${reason}; the dry run goes on without the cache`);
    return await deps.openKv(":memory:");
  }
}

/** Keeps this run's leases alive until the returned function is called. */
function keepLeases(store: Store, options: { names: string[]; runId: string; log: Logger }) {
  const timer = setInterval(() => {
    for (const name of options.names) {
      store.renewLease(name, options.runId).then((held) => {
        if (!held) options.log.warn(`Lost the run lease "${name}"; another run may have started`);
      }, (error) => options.log.warn(`Cannot renew the run lease: ${errorMessage(error)}`));
    }
  }, LEASE_RENEW_MS);
  return async () => {
    clearInterval(timer);
    for (const name of options.names) {
      await store.releaseLease(name, options.runId).catch(() => {});
    }
  };
}

function emptySummary(options: RunOptions, note: string, deps: Deps): RunSummary {
  return {
    ok: true,
    dryRun: options.dryRun,
    exitCode: EXIT_OK,
    startedAt: new Date(deps.now()).toISOString(),
    durationMs: 0,
    repos: [],
    github: { requests: 0, notModified: 0, costed: 0 },
    jenkins: { builds: 0 },
    note,
  };
}

/**
 * Takes this run's leases: its own (claims are alive while it is renewed) and, for
 * `--all`, the overlap guard. Returns the holder's start when another run --all is live.
 */
async function startLeases(
  store: Store,
  options: { all: boolean; runId: string; log: Logger },
): Promise<{ busySince: string } | { release: () => Promise<void> }> {
  const { runId } = options;
  const names = [`run:${runId}`];
  if (options.all) {
    const holder = await store.acquireLease("run-all", runId);
    if (holder) return { busySince: new Date(holder.startedAt).toISOString() };
    names.push("run-all");
  }
  await store.acquireLease(`run:${runId}`, runId);
  return { release: keepLeases(store, { names, runId, log: options.log }) };
}

/** The `--json` answer of a run that could not start. */
function failureJson(message: string): string {
  return JSON.stringify({ ok: false, exitCode: EXIT_FAILURE, error: message }) + "\n";
}

async function runCommand(
  options: RunOptions,
  deps: Deps,
  secrets: string[],
): Promise<number> {
  const log = createLogger(deps.stderr, { level: options.logLevel, secrets });
  const print = (summary: RunSummary) => {
    const text = options.json ? JSON.stringify(summary, null, 2) + "\n" : formatSummary(summary);
    deps.stdout(redact(text, secrets));
  };
  const config = await loadConfig(deps, {
    path: options.config,
    credentials: { jenkins: !options.dryRun },
  });
  if (!config) {
    const message = `Created config file ${configPath(options.config, deps.env)}\n` +
      "Please update it with your Jenkins and repository information, then run again.";
    deps.stdout(options.json ? failureJson(message) : `${message}\n`);
    return EXIT_FAILURE;
  }
  secrets.push(config.github.token, config.jenkins.apiToken);
  for (const warning of config.warnings) log.warn(warning);
  const repos = selectRepos(config, options);
  const kv = await openStore(deps, {
    path: kvPath(options.kv, deps.env),
    log,
    dryRun: options.dryRun,
  });
  const store = new Store(kv, deps);
  const runId = deps.randomId();
  let release = async () => {};
  try {
    if (!options.dryRun) {
      const leases = await startLeases(store, { all: options.all, runId, log });
      if ("busySince" in leases) {
        const note = `another run is in progress (started ${leases.busySince})`;
        log.info(`Not starting: ${note}`);
        print(emptySummary(options, note, deps));
        return EXIT_OK;
      }
      release = leases.release;
    }
    const ctx: RunContext = {
      deps,
      config,
      log,
      store,
      github: new GitHub(config, deps, log),
      jenkins: new Jenkins(config, deps),
      options,
      runId,
      tokenId: await fingerprint(`${config.github.apiUrl} ${config.github.token}`),
    };
    const summary = await runCoordinator(ctx, repos);
    print(summary);
    return summary.exitCode;
  } finally {
    await release();
    kv.close();
  }
}

/**
 * Runs the CLI and returns the exit code: 0 success, 1 failure, 2 usage.
 * Errors become one line on stderr, never a stack trace, and never show a token.
 */
export async function main(args: string[], deps: Deps): Promise<number> {
  const secrets: string[] = [];
  let json = false;
  try {
    secrets.push(
      ...[deps.env("GITHUB_TOKEN"), deps.env("JENKINS_TOKEN")].filter((s): s is string => !!s),
    );
    const cli = parseCli(args);
    if (cli.command !== "run") {
      deps.stdout(cli.command === "help" ? HELP : `coordinator ${VERSION}\n`);
      return EXIT_OK;
    }
    json = cli.json;
    return await runCommand(cli, deps, secrets);
  } catch (error) {
    if (error instanceof UsageError) {
      deps.stderr(`Error: ${error.message}\n${USAGE}\n`);
      return EXIT_USAGE;
    }
    const known = error instanceof ConfigError || error instanceof GitHubError ||
      error instanceof JenkinsError;
    let message = redact(errorMessage(error), secrets);
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      message = `missing permission (${message.split(",")[0]}): run with --allow-net ` +
        "--allow-env --allow-read --allow-write";
    } else if (!known) message = `unexpected failure: ${message}`;
    deps.stderr(`Error: ${message}\n`);
    if (json) deps.stdout(failureJson(message));
    return EXIT_FAILURE;
  }
}

// ---------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------

function isDeploy(): boolean {
  try {
    // Ask first, so a CLI run without --allow-env is not prompted at import time.
    const state = Deno.permissions.querySync?.({ name: "env", variable: "DENO_DEPLOYMENT_ID" })
      .state ?? "granted";
    return state === "granted" && !!Deno.env.get("DENO_DEPLOYMENT_ID");
  } catch {
    return false;
  }
}

/** The Deno Deploy cron schedule: `$COORDINATOR_SCHEDULE`, in UTC, default every 5 minutes. */
export function deploySchedule(): string {
  return Deno.env.get("COORDINATOR_SCHEDULE") || DEFAULT_SCHEDULE;
}

/** One `run --all` as a Deno Deploy cron job: output goes to the deployment's log. */
export async function deployRun(): Promise<void> {
  const deps: Deps = {
    ...defaultDeps(),
    stdout: (text) => console.log(text.trimEnd()),
    stderr: (text) => console.error(text.trimEnd()),
  };
  const code = await main(["run", "--all"], deps);
  if (code !== EXIT_OK) console.error(`coordinator run --all exited with ${code}`);
}

// Deno Deploy picks up crons registered at the top level while the entry module loads.
// Imported by another entry module, this file registers nothing: that module does.
if (import.meta.main && isDeploy() && typeof Deno.cron === "function") {
  Deno.cron("coordinator run --all", deploySchedule(), deployRun);
} else if (import.meta.main) {
  const stop = new AbortController();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  const onSignal = () => {
    if (stop.signal.aborted) Deno.exit(EXIT_FAILURE);
    stop.abort();
    console.error("Stopping after the current step (signal again to exit at once)");
  };
  for (const signal of signals) Deno.addSignalListener(signal, onSignal);
  Deno.exitCode = await main(Deno.args, defaultDeps(stop.signal));
  for (const signal of signals) Deno.removeSignalListener(signal, onSignal);
}
