#!/usr/bin/env -S deno run --allow-net --allow-env --allow-read --allow-write --unstable-kv --unstable-cron
// Copyright the coordinator authors. MIT license.
/**
 * Label-driven dispatcher for coding-agent jobs: reads GitHub issues, starts Jenkins jobs.
 *
 * People move a GitHub issue through status labels. Every few minutes this program
 * looks at the configured repositories, picks the issues whose label says "a bot
 * should take this now", starts the matching Jenkins job for each (create-pr,
 * review-implementation, implement, review-plan, create-plan) and moves the label to
 * the matching "bot is busy" status. It is a drop-in replacement for
 * `mcp-coder coordinator`: same config file, labels, Jenkins job parameters and scripts.
 *
 * The issues that carry a workflow label are cached in Deno KV. An idle run costs one
 * conditional request per repository, answered `304 Not Modified`, which GitHub does not
 * count against the rate limit. Every dispatch is claimed in KV before Jenkins is called,
 * so a pickup is dispatched exactly once, across crashes and overlapping runs.
 *
 * The coordinator also owns a job until it ends: an issue left at a bot-busy label past that
 * label's stale timeout is checked in Jenkins and moved to the failure label when its build
 * failed, was cancelled or is gone; with `max_retries`, a build that died of the infrastructure
 * (never built, cancelled, gone, its agent lost) is started again first, after a backoff, once
 * per attempt. Optional caps bound the active jobs, optional comments tell the issue what
 * happened, and `status` shows active jobs and skips from KV alone.
 *
 * ```sh
 * deno run --allow-net --allow-env --allow-read --allow-write --unstable-kv --unstable-cron \
 *   coordinator.ts run --all                     # or: deno task start run --all, ./coordinator.ts
 * deno run ... coordinator.ts run --repo mcp_coder --dry-run
 * deno run ... coordinator.ts test --repo mcp_coder --branch-name main
 * deno run ... coordinator.ts check            # read-only preflight of the whole setup
 * deno run ... coordinator.ts labels --all     # create mcp_coder's workflow labels
 * deno run ... coordinator.ts status --all
 * deno run ... coordinator.ts --help
 * ```
 *
 * What one `run` does (`runCommand()`, then `runCoordinator()`):
 * 1. Reads the config file, applies the environment overrides, validates it once.
 * 2. Opens KV and takes its leases: its own (its claims are alive while it renews it) and,
 *    with `--all`, the one that keeps overlapping runs apart.
 * 3. Reads each repository's issues through the cache, several at a time: one conditional
 *    request (304 when nothing changed), else the changes since the cursor, else a full read.
 * 4. Per repository, in config order (under a cap over all, from the one whose turn it is):
 *    closes unfinished dispatches whose pickup label went, checks issues stuck at a bot-busy
 *    label in Jenkins (a failed build: the failure label).
 * 5. Then, for each eligible issue, closest to done first: checks the caps, its gates (GitHub's
 *    "blocked by"; with `trigger_min_role`, who set its label) and its branch,
 *    reads the issue again, claims it in KV, triggers the Jenkins job and moves its label
 *    from pickup to busy; a dispatch an earlier run left unfinished is looked up in Jenkins
 *    before anything else.
 * 6. Records, for `status`, when it went through each repository (one KV entry for all)
 *    and each skip list that changed; gives its leases back, and reports: `main()` words
 *    the report (text or `--json`) and chooses the exit code.
 *
 * Where everything is: the file reads top-down, in chapters. Each starts with a banner
 * `// # Name` (search for it), sections within one with `// ## Name: …`; in each the entry
 * function comes first and its helpers below.
 * - `# Main`: `main()`, the one entry of the CLI: runs a command, words what it did and picks
 *   the exit code (`present()`); the bootstrap every command shares (`setUp()`: config, KV,
 *   clients); Deno Deploy's cron run (`deployRun()`); the command line (`parseCli()`).
 * - The `run` command, top-down:
 *   - `# Run`: `runCommand()`, the run loop (`runCoordinator()`), a run's context and the
 *     dry-run seam (`runContext()`), its leases, and what a run reports (`formatSummary()`).
 *   - `# Reading issues`: the issue cache kept current with as few requests as possible.
 *   - `# Which issues`: eligibility (`assess()`), the dispatch order, and the gates
 *     (`gateHold()`: GitHub's "blocked by", the verified trigger).
 *   - `# Dispatching`: each pickup exactly once (`dispatchIssue()`); the `Dispatcher`, whose
 *     methods are the steps a real run takes (a dry run's `DryRunDispatcher` overrides them).
 *   - `# Dispatch records`: the record that makes a dispatch happen once, its protocol
 *     (`DISPATCH_TRANSITIONS`, `DispatchEntry`) and the store's part that keeps them.
 *   - `# Stuck jobs and gone issues`, `# Caps`, `# Comments`.
 * - The other commands, each with its logic and its output: `# Check`, `# Labels`, `# Test`,
 *   `# Status`.
 * - The services: `# Dependencies` (`Deps`: everything that touches the outside; logging),
 *   `# Config`, `# KV store` (`Store` and its parts: the issue cache, the gates' memos),
 *   `# Run log and leases` (the store's parts for `status`, the caps' turns and overlapping
 *   runs; dispatch records have a chapter of their own), `# GitHub` and `# GitHub transport`,
 *   `# Jenkins`.
 * - The data: `# Workflows and labels`, `# Constants`, `# Job scripts`, `# Config schema` (the
 *   keys a config file may hold), `# Config template`,
 *   `# Help and the command table` (`COMMANDS`, `FLAGS`); `# For the tests and the doubles`
 *   (`_internals`: what they reach besides the exports); and last `# Program start`, the lines
 *   that run the CLI when this file is the program.
 *
 * Permissions: `--allow-net` (GitHub, Jenkins, a remote KV), `--allow-env` (the
 * variables below), `--allow-read` and `--allow-write` (the config file and the KV
 * file); `--unstable-kv` and `--unstable-cron` switch on Deno KV and `Deno.cron`. Those are
 * the shebang's flags, and all a run needs: the file runs alone, copied anywhere or by URL
 * (its npm dependencies are pinned in the imports below; no `deno.json` needed). Deno 2.9
 * and Deno 2.5, the version Deno Deploy runs, are both supported and tested.
 *
 * Environment variables:
 * - `GITHUB_TOKEN`, `GITHUB_API_URL`: override `[github] token` / `api_url`.
 * - `JENKINS_URL`, `JENKINS_USER`, `JENKINS_TOKEN`: override the `[jenkins]` section.
 * - `COORDINATOR_CONFIG`: config file path; `COORDINATOR_CONFIG_TOML`: the config itself.
 * - `COORDINATOR_KV`: KV path or URL (`DENO_KV_ACCESS_TOKEN` authenticates a remote KV;
 *   on Deno Deploy, which reserves `DENO_` names, `COORDINATOR_KV_ACCESS_TOKEN`).
 * - `COORDINATOR_SCHEDULE`: cron schedule on Deno Deploy (default every 5 minutes).
 * - `COORDINATOR_TIMELINES`: Deno Deploy timelines besides `production` that dispatch.
 *
 * On Deno Deploy the entry module is `deploy.ts`, which registers the cron; run as a
 * program, this file registers none.
 *
 * Output: stdout carries what a command was asked for (with `--json`, one JSON object on one
 * line: docs/json.md), stderr the log; each log line, and each line of `run`'s report, starts with
 * an ISO-8601 UTC timestamp and a level, so `>> log 2>&1` reads as one log, each event in it once.
 *
 * Exit codes: 0 success (also nothing to do), 1 failure (config, GitHub, Jenkins; for `check`,
 * a failed check), 2 usage, 130 stopped by a signal (Ctrl-C, SIGTERM).
 *
 * @module
 */

// ---------------------------------------------------------------------------
// # Imports
// ---------------------------------------------------------------------------

// Full, pinned specifiers: the file runs without a deno.json. @octokit/request-error is the
// version @octokit/core@7.0.8 resolves to, so that its error class is the very one Octokit
// throws (`instanceof`); bump the three together.
import { Octokit as OctokitCore } from "npm:@octokit/core@7.0.8";
import { paginateRest } from "npm:@octokit/plugin-paginate-rest@14.0.0";
import { RequestError } from "npm:@octokit/request-error@7.1.2";
import { parse as parseToml, TomlError } from "npm:smol-toml@1.9.1";
import { parseArgs } from "node:util";

// ---------------------------------------------------------------------------
// # Main
// ---------------------------------------------------------------------------

/**
 * Runs the CLI and returns the exit code: 0 success, 1 failure, 2 usage.
 * Errors become one line on stderr, never a stack trace, and never show a token.
 */
export async function main(args: string[], deps: Deps): Promise<number> {
  // The one redactor: every logger and all that is printed below go through it.
  const redactor = new Redactor();
  let output: Output;
  try {
    const cli = parseCli(args);
    const result = await runCli(cli, deps, redactor).catch(failedResult);
    const json = "json" in cli ? cli.json : args.includes("--json");
    output = present(result, { json, at: deps.now() });
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    // Also when the command line cannot be parsed: `--json` asks for the error as JSON.
    const usage = { kind: "usage", message: error.message, usage: usageLine(args) } as const;
    output = present(usage, { json: args.includes("--json"), at: deps.now() });
  }
  if (output.stderr) deps.stderr(redactor.redact(output.stderr));
  if (output.stdout) deps.stdout(redactor.redact(output.stdout));
  return output.exitCode;
}

/** Runs the command `cli` names. Throws what stops it; main() makes that one line. */
async function runCli(cli: Cli, deps: Deps, redactor: Redactor): Promise<CommandResult> {
  if (cli.command === "help") {
    return { kind: "help", text: cli.topic ? commandHelp(cli.topic) : HELP };
  }
  if (cli.command === "version") return { kind: "help", text: `coordinator ${VERSION}\n` };
  redactor.add(...SECRET_VARIABLES.map((name) => deps.env(name)));
  switch (cli.command) {
    case "run":
      return await runCommand(cli, deps, redactor);
    case "check":
      return await checkCommand(cli, deps, redactor);
    case "labels":
      return await labelsCommand(cli, deps, redactor);
    case "test":
      return await testCommand(cli, deps, redactor);
    case "status":
      return await statusCommand(cli, deps, redactor);
  }
}

/** What a command did or found, as facts: present() words it and picks the exit code. */
type CommandResult =
  | { kind: "help"; text: string }
  | { kind: "usage"; message: string; usage: string }
  | { kind: "failed"; message: string; error: ErrorKind }
  | { kind: "config-created"; path: string }
  | { kind: "run"; run: RunReport }
  | { kind: "run-busy"; startedAt: string; busySince: string }
  | { kind: "check"; checks: CheckResult[]; again: string }
  | { kind: "labels"; dryRun: boolean; reports: LabelsReport[]; again: string }
  | { kind: "test"; report: TestReport }
  | { kind: "status"; at: number; kv: string; repos: RepoStatus[] };

/** Environment variables whose values are masked in all output, whatever reads them. */
const SECRET_VARIABLES = [
  "GITHUB_TOKEN",
  "JENKINS_TOKEN",
  "COORDINATOR_KV_ACCESS_TOKEN",
  "DENO_KV_ACCESS_TOKEN",
];

/**
 * Turns a command's result into what main() prints and its exit code: the one place that
 * decides exit codes. 0 when the command did all it was asked, 1 when not, 2 for bad usage.
 * What stopped a command is a log line stamped `at` (`logLine()`); a usage error, for the
 * person at the terminal, says `Error:` and the usage line.
 */
function present(result: CommandResult, options: { json: boolean; at: number }): Output {
  const { json } = options;
  if (result.kind === "usage") {
    const error = { kind: "usage", message: result.message };
    return json
      ? { exitCode: EXIT_USAGE, stdout: jsonLine({ ok: false, exitCode: EXIT_USAGE, error }) }
      : { exitCode: EXIT_USAGE, stdout: "", stderr: `Error: ${result.message}\n${result.usage}\n` };
  }
  const ok = succeeded(result);
  const exit = {
    ok,
    exitCode: interrupted(result) ? EXIT_INTERRUPTED : ok ? EXIT_OK : EXIT_FAILURE,
  };
  return {
    exitCode: exit.exitCode,
    stdout: stdoutOf(result, { exit, json }),
    // With --json the error is in the JSON object: written once.
    stderr: json ? "" : failureLines(result, options.at),
  };
}

/**
 * In text, what stopped a command (or the config file it just created), as stamped ERROR log
 * lines: several problems (a config's) are a line each. Empty for any other result.
 */
function failureLines(result: Exclude<CommandResult, { kind: "usage" }>, at: number): string {
  const message = result.kind === "failed"
    ? result.message
    : result.kind === "config-created"
    ? createdMessage(result.path)
    : "";
  return message ? message.split("\n").map((line) => logLine(at, "ERROR", line)).join("") : "";
}

/** What a run that just created the config file from the template says. */
function createdMessage(path: string): string {
  return `Created config file ${path}\n` +
    "Please update it with your Jenkins and repository information, then run again.";
}

/** A `--json` document: one JSON object on one line (JSON Lines). */
function jsonLine(document: object): string {
  return JSON.stringify(document) + "\n";
}

/**
 * What kind of failure stopped a command, in its `--json` error (`error.kind`): a bad command
 * line, the config, GitHub, Jenkins, the KV store, a missing Deno permission, or anything else.
 */
type ErrorKind = "usage" | "config" | "github" | "jenkins" | "kv" | "permission" | "unexpected";

/** What main() writes for a result, and the exit code it returns. */
interface Output {
  exitCode: number;
  stdout: string;
  stderr?: string;
}

/** A result's verdict and exit code, as its `--json` document states them. */
type Exit = { ok: boolean; exitCode: number };

/** Whether a command did all it was asked. */
function succeeded(result: Exclude<CommandResult, { kind: "usage" }>): boolean {
  switch (result.kind) {
    case "run":
      return result.run.stop === null && result.run.repos.every((repo) => repo.error === null);
    case "check":
      return result.checks.every((check) => check.status !== "fail");
    case "labels":
      return result.reports.every((report) => report.error === null);
    case "failed":
    case "config-created":
      return false;
    case "help":
    case "run-busy":
    case "test":
    case "status":
      return true;
  }
}

/** Whether a signal stopped the command before it did all it was asked. */
function interrupted(result: Exclude<CommandResult, { kind: "usage" }>): boolean {
  if (result.kind === "run") return result.run.stop?.reason === "signal";
  return result.kind === "labels" && result.reports.some((report) => report.interrupted);
}

/** What a result prints on stdout: text, or with `json` its JSON document. */
function stdoutOf(
  result: Exclude<CommandResult, { kind: "usage" }>,
  options: { exit: Exit; json: boolean },
): string {
  const { exit, json } = options;
  const either = (document: object, text: () => string) => json ? jsonLine(document) : text();
  switch (result.kind) {
    case "help":
      return either({ ...exit, help: result.text }, () => result.text);
    case "failed": // in text, the message itself goes to stderr (`failureLines()`)
      return json
        ? jsonLine({ ...exit, error: { kind: result.error, message: result.message } })
        : "";
    case "config-created": {
      const message = createdMessage(result.path);
      return json ? jsonLine({ ...exit, error: { kind: "config", message } }) : "";
    }
    case "run":
    case "run-busy": {
      const summary = runSummary(result, exit);
      return either(summary, () => formatSummary(summary));
    }
    case "check":
      return either(
        { ...exit, checks: result.checks },
        () => formatChecks(result.checks, result.again),
      );
    case "labels": {
      const { dryRun, reports } = result;
      return either(
        { ...exit, dryRun, repos: reports },
        () => formatLabels(reports, { dryRun, again: result.again }),
      );
    }
    case "test":
      return either({ ...exit, ...result.report }, () => formatTestReport(result.report));
    case "status": {
      const at = new Date(result.at).toISOString();
      const { kv, repos } = result;
      return either({ ...exit, at, kv, repos }, () => formatStatus(repos, kv));
    }
  }
}

/** What stopped a command, in one line: never a stack trace. */
function failedResult(error: unknown): CommandResult {
  const kind: ErrorKind = error instanceof ConfigError
    ? "config"
    : error instanceof GitHubError
    ? "github"
    : error instanceof JenkinsError
    ? "jenkins"
    : error instanceof StoreError
    ? "kv"
    : error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
    ? "permission"
    : "unexpected";
  let message = errorMessage(error);
  if (kind === "permission") {
    message = `missing permission (${message.split(",")[0]}): run with --allow-net ` +
      "--allow-env --allow-read --allow-write";
  } else if (kind === "unexpected") message = `unexpected failure: ${message}`;
  return { kind: "failed", message, error: kind };
}

// ---------------------------------------------------------------------------
// ## Main: the bootstrap every command shares
// ---------------------------------------------------------------------------

/**
 * The one bootstrap of the commands: config, repositories, KV, clients, as `needs` says. Loads
 * the config (a missing file is created from the template with `needs.create`: the command then
 * ends, `config-created`), masks its tokens from then on, logs its warnings, picks the
 * repositories, opens the KV store (`openStore()`; the command closes it) and makes the clients.
 */
async function setUp<K extends KvNeed>(
  deps: Deps,
  redactor: Redactor,
  flags: { config?: string; kv?: string },
  needs: Needs<K>,
): Promise<Setup<K> | Extract<CommandResult, { kind: "config-created" }>> {
  const log = createLogger(deps.stderr, { level: needs.logLevel, redactor, now: deps.now });
  const config = await loadConfig(deps, {
    path: flags.config,
    create: needs.create,
    requireGitHub: needs.github,
    requireJenkins: needs.jenkins,
  });
  if (!config) return { kind: "config-created", path: configPath(flags.config, deps.env) };
  redactor.add(config.github.token, config.jenkins.apiToken);
  if (!needs.quiet) { for (const warning of config.warnings) log.warn(warning); }
  const repos = selectRepos(config, needs.repos);
  const store = needs.kv === "none" ? null : await openStore(deps, {
    path: kvPath(flags.kv, deps.env),
    log,
    timeoutMs: config.coordinator.kvTimeoutMs,
    readOnly: needs.kv !== "write",
    fallback: needs.kv === "dry-run",
  });
  return {
    config,
    repos,
    log,
    github: new GitHub(config, deps, log),
    jenkins: new Jenkins(config, deps),
    store: store as Setup<K>["store"],
  };
}

/**
 * The KV store a command needs: none; `read` (no file created, and a store that writes
 * nothing); `write`; or `dry-run`, read as `read` and in memory when the store cannot be opened.
 */
type KvNeed = "none" | "read" | "write" | "dry-run";

/** What a command needs set up (`setUp()`). */
interface Needs<K extends KvNeed> {
  /** The level of the command's log. */
  logLevel: LogLevel;
  /** A missing config file is created from the template, and the command ends; else an error. */
  create: boolean;
  /** It calls GitHub: a missing token is a config error. */
  github: boolean;
  /** It calls Jenkins: a missing URL, user or token is a config error. */
  jenkins: boolean;
  /** The KV store it opens. */
  kv: K;
  /** `--all` or `--repo NAME`. */
  repos: { all: boolean; repo?: string };
  /** The config's warnings are not logged (`check` reports them itself, `status` leaves them). */
  quiet?: boolean;
}

/** What a command works with: `setUp()` makes it. */
interface Setup<K extends KvNeed> {
  /** The validated config, its tokens masked in all output. */
  config: Config;
  /** The repositories `--all` or `--repo` picked. */
  repos: RepoConfig[];
  /** The command's log. */
  log: Logger;
  /** GitHub, through this command's log: it makes no request until asked. */
  github: GitHub;
  /** Jenkins: it makes no request until asked. */
  jenkins: Jenkins;
  /** The KV store; null when the command needs none. */
  store: K extends "none" ? null : Store;
}

// ---------------------------------------------------------------------------
// ## Main: Deno Deploy's cron run
// ---------------------------------------------------------------------------

/**
 * One `run --all` as a Deno Deploy cron job (`deploy.ts` registers it). Deploy fires
 * crons on every timeline, each with its own KV, whose exactly-once records production
 * cannot see: so only the production timeline, and those `$COORDINATOR_TIMELINES` lists,
 * dispatch. Every other timeline does a dry run and says so. Rejects when the run failed.
 */
export async function deployRun(deps: Deps = deployDeps()): Promise<void> {
  const log = createLogger(deps.stderr, { level: "INFO", redactor: new Redactor(), now: deps.now });
  const timeline = deps.env("DENO_TIMELINE");
  const listed = (deps.env("COORDINATOR_TIMELINES") ?? "").split(",").map((name) => name.trim());
  const args = ["run", "--all"];
  if (timeline !== "production" && !(timeline && listed.includes(timeline))) {
    log.info(`timeline ${timeline ?? "(DENO_TIMELINE not set)"} is not production: dry run`);
    args.push("--dry-run");
  } else if (timeline !== "production" && !deps.env("COORDINATOR_KV")) {
    log.warn(
      `timeline ${timeline} dispatches with its own KV: point COORDINATOR_KV at the store ` +
        "production uses, or it starts again every job production started",
    );
  }
  const code = await main(args, deps);
  if (code === EXIT_OK) return;
  // Thrown so that Deploy's Cron tab marks this execution as failed; the reason is logged.
  const failure = new Error(`coordinator ${args.join(" ")} exited with ${code}`);
  failure.stack = failure.message;
  throw failure;
}

/** The Deno Deploy cron schedule: `$COORDINATOR_SCHEDULE`, in UTC, default every 5 minutes. */
export function deploySchedule(): string {
  return Deno.env.get("COORDINATOR_SCHEDULE") || DEFAULT_SCHEDULE;
}

/** Deps of a cron run on Deno Deploy: output goes to the app's logs, a line per call. */
function deployDeps(): Deps {
  return {
    ...defaultDeps(),
    stdout: (text) => console.log(text.trimEnd()),
    stderr: (text) => console.error(text.trimEnd()),
  };
}

// ---------------------------------------------------------------------------
// ## Main: the command line
// ---------------------------------------------------------------------------

/**
 * Parses the command line; throws UsageError for anything it does not understand. A command
 * line in mcp-coder's spelling gets the equivalent command of this program in its message.
 */
function parseCli(args: string[]): Cli {
  try {
    return parseCommandLine(args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    const hint = mcpCoderHint(args);
    if (!hint) throw error;
    const what = error.message.replace(/ \(known [^)]*\)$/, "").replace(
      /^(Missing command).*/,
      "$1",
    );
    throw new UsageError(`${what}: ${hint}`, { cause: error });
  }
}

function parseCommandLine(args: string[]): Cli {
  const { values, positionals, tokens } = parseFlags(args, args.find(isCommand));
  const [name, ...extra] = positionals;
  if (values.help) return { command: "help", topic: isCommand(name) ? name : undefined };
  if (values.version) return { command: "version" };
  if (!isCommand(name)) {
    const commands = Object.keys(COMMANDS);
    throw new UsageError(
      name
        ? `Unknown command "${name}"${suggestion(name, commands, "commands")}`
        : `Missing command: ${commands.join(", ")}`,
    );
  }
  if (extra.length > 0) throw new UsageError(`Unexpected argument "${extra[0]}"`);
  const spec: CommandSpec = COMMANDS[name];
  const foreign = tokens.find((token) =>
    token.kind === "option" && !spec.flags.includes(token.name as FlagName)
  );
  if (foreign?.kind === "option") {
    throw new UsageError(`${foreign.rawName} is not an option of ${name}`);
  }
  return { command: name, ...commandOptions(name, spec, values) } as Cli;
}

/** A parsed command line: the command and its options. */
type Cli =
  | { command: "help"; topic?: CommandName }
  | { command: "version" }
  | { [C in CommandName]: { command: C } & Options<C> }[CommandName];

/**
 * The parsed options of command `C`, typed from `FLAGS` and the command's spec, each flag
 * camel-cased (`dry-run` as `dryRun`): a boolean flag is a boolean, `--log-level` a level, a
 * flag with a value a string, set where the command requires it.
 */
type Options<C extends CommandName> = {
  [
    F in (typeof COMMANDS)[C]["flags"][number] as F extends `${infer Head}-${infer Tail}`
      ? `${Head}${Capitalize<Tail>}`
      : F
  ]: F extends "log-level" ? LogLevel
    : (typeof FLAGS)[F] extends { type: "boolean" } ? boolean
    : F extends ((typeof COMMANDS)[C] extends { required: readonly (infer R)[] } ? R : never)
      ? string
    : string | undefined;
};

/** The options of a command: each flag it takes, camel-cased, checked by its spec's rules. */
function commandOptions(name: CommandName, spec: CommandSpec, values: FlagValues) {
  const options: Record<string, unknown> = {};
  for (const flag of spec.flags) {
    options[flag.replace(/-(.)/g, (_, letter: string) => letter.toUpperCase())] = values[flag];
  }
  for (const flag of spec.required ?? []) {
    if (!values[flag]) throw new UsageError(`${name} needs --${flag} ${FLAG_ARGUMENT[flag]}`);
  }
  if (spec.flags.includes("all")) Object.assign(options, selection(values, name !== "check"));
  if (spec.flags.includes("log-level")) options.logLevel = logLevelOf(values);
  return options;
}

/** Every flag of the command line; an unknown one is named with those `command` takes. */
function parseFlags(args: string[], command?: CommandName) {
  try {
    return parseArgs({ args, allowPositionals: true, strict: true, tokens: true, options: FLAGS });
  } catch (error) {
    let message = errorMessage(error).split(". ")[0].replace(/\.$/, "");
    const unknown = /^Unknown option '(--[^']+)'$/.exec(message)?.[1];
    const takes = command ? [...COMMANDS[command].flags, "help"] : Object.keys(FLAGS);
    const flags = takes.map((flag) => `--${flag}`);
    if (unknown) message += suggestion(unknown, flags, "options");
    throw new UsageError(message, { cause: error });
  }
}

type FlagValues = ReturnType<typeof parseFlags>["values"];

/** --all or --repo NAME; when not `required`, neither means all. */
function selection(values: FlagValues, required: boolean): { all: boolean; repo?: string } {
  if (values.all && values.repo !== undefined) {
    throw new UsageError("Use --all or --repo NAME, not both");
  }
  if (values.repo === "") throw new UsageError("--repo needs a repository name");
  if (!values.all && values.repo === undefined && required) {
    throw new UsageError("Missing --all or --repo NAME");
  }
  return { all: values.repo === undefined, repo: values.repo };
}

function logLevelOf(values: FlagValues): LogLevel {
  const logLevel = values["log-level"].toUpperCase();
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    // mcp-coder takes CRITICAL too; here ERROR is the quietest level.
    const note = logLevel === "CRITICAL" ? " (mcp-coder's CRITICAL is ERROR here)" : "";
    throw new UsageError(
      `--log-level must be one of ${LOG_LEVELS.join(", ")}, got "${values["log-level"]}"${note}`,
    );
  }
  return logLevel as LogLevel;
}

/**
 * The command of this program that does what a command line in mcp-coder's spelling asks, as a
 * hint to paste; null when `args` is not one or no command of this program would take it.
 * Spellings: a leading `mcp-coder` and `coordinator` (`coordinator run --all`), mcp-coder's
 * `coordinator --all` (run), `coordinator --dry-run --repo R --branch-name B` and the older
 * `coordinator test R --branch-name B` (test), `--log-level-coordinator L` (the test script's
 * level: `job_log_level` here), `define-labels`.
 */
function mcpCoderHint(args: readonly string[]): string | null {
  const { rest, scriptLevel } = withoutScriptLevel(args);
  const positions = parseArgs({
    args: rest,
    allowPositionals: true,
    strict: false,
    tokens: true,
    options: FLAGS,
  }).tokens.filter((token) => token.kind === "positional").map((token) => token.index);
  const words: string[] = [];
  for (const word of ["mcp-coder", "coordinator", "gh-tool"]) {
    if (positions.length > 0 && rest[positions[0]] === word) {
      rest.splice(positions.shift()!, 1);
      for (let i = 0; i < positions.length; i++) positions[i]--;
      words.push(word);
    }
  }
  let command = positions.length > 0 ? rest.splice(positions[0], 1)[0] : undefined;
  if (command === "test" && positions.length > 1) {
    rest.splice(positions[1] - 1, 0, "--repo"); // mcp-coder's `coordinator test REPO_NAME`
  } else if (command === "define-labels") {
    command = "labels";
    if (!rest.includes("--repo")) rest.push("--all");
  } else if (command === undefined) {
    command = rest.includes("--dry-run") && rest.includes("--branch-name") ? "test" : "run";
    if (command === "test") rest.splice(rest.indexOf("--dry-run"), 1);
  }
  const equivalent = [command, ...rest];
  if (equivalent.join(" ") === args.join(" ")) return null;
  const itself = words.includes("coordinator") ? "this is the coordinator itself" : "";
  try {
    parseCommandLine(equivalent);
  } catch (error) {
    return itself ? `${itself}; without "coordinator": ${errorMessage(error)}` : null;
  }
  const pasted = `\`coordinator.ts ${equivalent.map(shellQuote).join(" ")}\``;
  const level = scriptLevel
    ? `, with job_log_level = "${scriptLevel}" in [coordinator] for the script's mcp-coder`
    : "";
  return `${itself || "that is mcp-coder's spelling"}: run ${pasted}${level}`;
}

/**
 * `args` without mcp-coder's `--log-level-coordinator L`, and L: in mcp-coder it sets the test
 * script's `mcp-coder --log-level`, which is the config's `job_log_level` here.
 */
function withoutScriptLevel(args: readonly string[]): { rest: string[]; scriptLevel?: string } {
  const rest = [...args];
  const at = rest.findIndex((arg) => /^--log-level-coordinator(=|$)/.test(arg));
  if (at === -1) return { rest };
  const [flag] = rest.splice(at, 1);
  const value = flag.includes("=") ? flag.split("=")[1] : rest.splice(at, 1)[0];
  return { rest, scriptLevel: value?.toUpperCase() };
}

/**
 * A command line of this program to paste: command `name` with `args`, and the `--config` and
 * `--kv` the user gave, where that command takes them, so that it runs on the same config and KV.
 */
function pasteable(
  name: CommandName,
  args: readonly string[],
  given: { config?: string; kv?: string },
): string {
  const flags: readonly FlagName[] = COMMANDS[name].flags;
  const words = ["coordinator.ts", name, ...args];
  if (given.config && flags.includes("config")) words.push("--config", given.config);
  if (given.kv && flags.includes("kv")) words.push("--kv", given.kv);
  return words.map(shellQuote).join(" ");
}

/** `arg` as a POSIX shell reads it back: quoted when it holds anything but plain characters. */
function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** The command line is wrong: exit code 2. */
class UsageError extends Error {
  /** A one-line message in std style; `options.cause` keeps the underlying error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UsageError";
  }
}

function isCommand(name: string | undefined): name is CommandName {
  return name !== undefined && Object.hasOwn(COMMANDS, name);
}

/** `COMMAND --help` text. */
function commandHelp(name: CommandName): string {
  return `Usage: coordinator.ts ${name} ${COMMANDS[name].usage}\n\n${COMMANDS[name].help}`;
}

/** The usage line printed after a usage error: the command's own if one was named. */
function usageLine(args: readonly string[]): string {
  const name = args.find(isCommand);
  return name
    ? `Usage: coordinator.ts ${name} ${COMMANDS[name].usage}   (${name} --help for more)`
    : `Usage: coordinator.ts COMMAND [options]; commands: ${
      Object.keys(COMMANDS).join(", ")
    }   (--help for more)`;
}

// ---------------------------------------------------------------------------
// # Run
// ---------------------------------------------------------------------------

/** `run`: one coordinator run, holding its leases while it goes (a dry run takes none). */
async function runCommand(
  options: Options<"run">,
  deps: Deps,
  redactor: Redactor,
): Promise<CommandResult> {
  const setup = await setUp(deps, redactor, options, {
    logLevel: options.logLevel,
    // A dry run writes nothing anywhere, a config file neither.
    create: !options.dryRun,
    github: true,
    jenkins: !options.dryRun,
    kv: options.dryRun ? "dry-run" : "write",
    repos: options,
  });
  if ("kind" in setup) return setup;
  const { config, log, store } = setup;
  const runId = deps.randomId();
  let release = async () => {};
  try {
    if (!options.dryRun) {
      const leases = await startLeases(store, { all: options.all, runId, log });
      if ("busySince" in leases) {
        log.debug(`Not starting: ${busyNote(leases.busySince)}`);
        const startedAt = new Date(deps.now()).toISOString();
        return { kind: "run-busy", startedAt, busySince: leases.busySince };
      }
      release = leases.release;
    }
    const ctx = runContext({
      deps,
      config,
      log,
      store,
      github: setup.github,
      jenkins: setup.jenkins,
      options,
      runId,
      tokenId: await fingerprint(`${config.github.apiUrl} ${config.github.token}`),
    });
    return { kind: "run", run: await runCoordinator(ctx, setup.repos) };
  } finally {
    await release();
    store.close();
  }
}

/**
 * The run loop: one coordinator run over `repos`. Reads run concurrently (bounded), dispatches
 * one at a time in config order (see `dispatchOrder()`). Never throws for GitHub or Jenkins
 * failures: they end up in the report, and so does why the run stopped early, if it did. A KV
 * store that fails or stops answering (StoreError) ends the run at once: that is thrown.
 */
async function runCoordinator(
  ctx: RunContext,
  repos: readonly RepoConfig[],
): Promise<RunReport> {
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
  let stop: RunStop | null = null;
  const skipLists: RunRecord[] = [];
  const order = await dispatchOrder(ctx, repos);
  for (const [position, index] of order.entries()) {
    const [repo, report, read] = [repos[index], reports[index], reads[index]];
    ctx.store.throwIfStopped();
    if (ctx.deps.stop.aborted) {
      stop = { reason: "signal", unprocessed: order.slice(position), partial: null };
      break;
    }
    if (read instanceof StoreError) throw read;
    if (read instanceof Error) {
      report.error = errorMessage(read);
      ctx.log.debug(`${repo.name}: ${report.error}`);
      if (read instanceof GitHubError && read.kind === "rate-limit") {
        stop = { reason: "rate-limit", unprocessed: order.slice(position + 1), partial: null };
        break;
      }
      continue;
    }
    report.read = read.read;
    const reason = await dispatchRepo(ctx, repo, { issues: read.issues, report });
    skipLists.push(runRecord(ctx, repo, report));
    if (reason) {
      // dispatchRepo() stops for a signal only between two of the repository's issues.
      const partial = reason === "signal" ? index : null;
      stop = { reason, unprocessed: order.slice(position + 1), partial };
      break;
    }
  }
  const turn = ctx.tally.lastRepo ?? undefined;
  await noteUnchangedSkips(ctx, { repos, reports, skipLists });
  await ctx.store.runs.remember(skipLists, { turn }).catch((error) => {
    if (error instanceof StoreError) throw error;
    ctx.log.warn(`Cannot record this run for status: ${errorMessage(error)}`);
  });
  return {
    dryRun: ctx.options.dryRun,
    startedAt: new Date(started).toISOString(),
    durationMs: ctx.deps.now() - started,
    repos: reports,
    github: { ...ctx.github.stats },
    jenkins: { builds: ctx.jenkins.builds },
    stop,
  };
}

/**
 * Notes in each report whose skips are the ones the last run recorded (`skipsUnchangedSince`),
 * and whose stuck issues only reported are (`staleUnchangedSince`, by number and code): the
 * text report then says so in one line instead of repeating them. Read before this run's lists
 * are recorded; a store that cannot say leaves them all as new.
 */
async function noteUnchangedSkips(
  ctx: RunContext,
  options: {
    repos: readonly RepoConfig[];
    reports: RepoReport[];
    skipLists: RunRecord[];
  },
): Promise<void> {
  const since = await ctx.store.runs.unchangedSince(options.skipLists).catch((error) => {
    if (error instanceof StoreError) throw error;
    return { skips: new Map<string, number>(), stuck: new Map<string, number>() };
  });
  const iso = (at: number | undefined) => at === undefined ? null : new Date(at).toISOString();
  for (const [index, repo] of options.repos.entries()) {
    options.reports[index].skipsUnchangedSince = iso(since.skips.get(repo.id));
    options.reports[index].staleUnchangedSince = iso(since.stuck.get(repo.id));
  }
}

/** What the run log keeps of a repository the run went through: its skips, its quiet stuck issues. */
function runRecord(ctx: RunContext, repo: RepoConfig, report: RepoReport): RunRecord {
  const stuck = report.stale.filter(foldable).map(({ issue, code }) => ({ issue, code }));
  return { repo, list: { at: ctx.deps.now(), items: report.skipped }, stuck };
}

/**
 * Whether a stuck issue is one a person need not see again while it stays so: only reported, at
 * INFO (not `jenkins_unreachable`), and not what a dry run says a real run would do.
 */
function foldable(item: StaleReport): boolean {
  return item.action === "reported" && item.code !== "jenkins_unreachable" &&
    item.code !== "dry_run";
}

/**
 * The order of the repositories' dispatches, as indices into `repos`: config order, unless a
 * cap spans repositories (`[coordinator] max_active_jobs` or `max_dispatches_per_run`); then
 * it starts after the repository the last run that dispatched started its last job in, so
 * that each repository in turn is first to the free slots.
 */
async function dispatchOrder(ctx: RunContext, repos: readonly RepoConfig[]): Promise<number[]> {
  const indices = repos.map((_, index) => index);
  const { maxActiveJobs, maxDispatchesPerRun } = ctx.config.coordinator;
  if (maxActiveJobs === null && maxDispatchesPerRun === null) return indices;
  const turn = await ctx.store.runs.lastTurn();
  const last = repos.findIndex((repo) => repo.id === turn);
  return [...indices.slice(last + 1), ...indices.slice(0, last + 1)];
}

/** Dispatches a repository's candidates in order; returns why the whole run must stop, if so. */
async function dispatchRepo(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issues: Issue[]; report: RepoReport },
): Promise<StopReason | null> {
  const { report } = options;
  await closeFinishedCycles(ctx, repo, options.issues).catch((error) => {
    if (error instanceof StoreError) throw error;
    ctx.log.warn(`${repo.name}: cannot check unfinished dispatches: ${errorMessage(error)}`);
  });
  ctx.tally.issues.set(repo.id, options.issues);
  // First, so that jobs found failed free their slots under the caps.
  const halt = await reconcileRepo(ctx, repo, options);
  if (halt) return halt;
  const candidates = orderCandidates(options.issues);
  report.eligible = candidates.filter((issue) => assess(issue).kind === "eligible").length;
  ctx.log.debug(`${repo.name}: ${report.eligible} eligible issue(s) (${report.read} read)`);
  for (const issue of candidates) {
    ctx.store.throwIfStopped();
    // Between two issues only: the one in progress is finished, so none is left half done.
    if (ctx.deps.stop.aborted) return "signal";
    try {
      const outcome = await dispatchIssue(ctx, repo, issue);
      if (outcome.kind === "dispatched") {
        report.dispatched.push(outcome.report);
        if (outcome.report.note !== "reconciled") countDispatch(ctx, repo);
        const { workflow } = outcome.report;
        // The run's report has it: only in a DEBUG log also as it happens.
        ctx.log.debug(
          `${repo.name}: ${dispatchVerb(outcome.report)} ${workflow} for #${issue.number}`,
        );
      } else if (outcome.kind === "skipped") {
        report.skipped.push({ issue: issue.number, code: outcome.code, reason: outcome.reason });
        ctx.log.debug(`${repo.name}: skipped #${issue.number}: ${outcome.reason}`);
      } else {
        ctx.log.debug(`${repo.name}: #${issue.number}: ${outcome.reason}`);
      }
    } catch (error) {
      const next = await afterFailure(ctx, repo, { number: issue.number, report, error });
      if (next !== "next") return next;
    }
  }
  return null;
}

/**
 * Deals with a failure while dispatching one issue. A gone issue is forgotten, and a GitHub
 * error about this issue only is reported: then the repository's other issues go on ("next").
 * Otherwise returns why the whole run stops, or null when only this repository does.
 */
async function afterFailure(
  ctx: RunContext,
  repo: RepoConfig,
  options: { number: number; report: RepoReport; error: unknown },
): Promise<"next" | StopReason | null> {
  const { number, report, error } = options;
  if (error instanceof StoreError) throw error;
  const gone = goneStatus(error);
  if (gone !== null) {
    report.gone.push(await forgetIssue(ctx, repo, { number, status: gone }));
    return "next";
  }
  if (error instanceof GitHubError && ["graphql", "not-found", "renamed"].includes(error.kind)) {
    // About this issue only (e.g. a GHES without linkedBranches): the others go on. A renamed
    // repository is about all of them: the first says so, the others wait with it.
    const code = error.kind === "renamed" ? "repository_renamed" : "github_refused";
    report.skipped.push({ issue: number, code, reason: error.message });
    ctx.log.debug(`${repo.name}: skipped #${number}: ${error.message}`);
    return error.kind === "renamed" ? null : "next";
  }
  const message = `Failed to process issue #${number}: ${errorMessage(error)}`;
  addError(ctx, { repo, report, message });
  if (error instanceof GitHubError && error.kind === "rate-limit") return "rate-limit";
  if (error instanceof JenkinsError && !ctx.options.keepGoing) return "fail-fast";
  return aboutOneIssue(error) ? "next" : null;
}

function emptyReport(repo: RepoConfig): RepoReport {
  return {
    name: repo.name,
    repository: `${repo.owner}/${repo.repo}`,
    read: "none",
    eligible: 0,
    dispatched: [],
    skipped: [],
    skipsUnchangedSince: null,
    stale: [],
    staleUnchangedSince: null,
    gone: [],
    error: null,
  };
}

/** Logs an error of a repository and adds it to the repository's report, after any before it. */
function addError(
  ctx: RunContext,
  options: { repo: RepoConfig; report: RepoReport; message: string },
): void {
  const { report, message } = options;
  report.error = report.error ? `${report.error}; ${message}` : message;
  // The run's report has it (an ERROR line); here only as it happens, in a DEBUG log.
  ctx.log.debug(`${options.repo.name}: ${message}`);
}

// ---------------------------------------------------------------------------
// ## Run: its context, and its leases
// ---------------------------------------------------------------------------

/**
 * A new run's context, with a fresh tally. The seam between a real run and a dry run is chosen
 * here, once: a dry run gets a store whose writes do nothing and a dispatcher that stops before
 * every claim, so the code in between reads the same for both.
 */
function runContext(parts: Omit<RunContext, "dispatcher" | "tally">): RunContext {
  const { store, options } = parts;
  return {
    ...parts,
    ...(options.dryRun
      ? { store: store.readOnly(), dispatcher: new DryRunDispatcher() }
      : { store, dispatcher: new Dispatcher() }),
    tally: {
      dispatched: 0,
      perRepo: new Map(),
      lastRepo: null,
      issues: new Map(),
      full: new Map(),
      checks: 0,
      jenkinsDown: false,
    },
  };
}

/** Everything one run shares. */
interface RunContext {
  /** The outside world. */
  deps: Deps;
  /** The validated config. */
  config: Config;
  /** Where the run says what it does. */
  log: Logger;
  /** The KV store: issue cache, dispatch records, run log, leases; a dry run's writes nothing. */
  store: Store;
  /** GitHub, through the calls a run makes. */
  github: GitHubApi;
  /** Jenkins, through the calls a run makes. */
  jenkins: JenkinsApi;
  /** Acts on what the run decides, or in a dry run says what it would do (`runContext()`). */
  dispatcher: Dispatcher;
  /** The command line. */
  options: Options<"run">;
  /** This run's id: its claims carry it, its lease says whether it is alive. */
  runId: string;
  /** Identifies the GitHub token in KV (a hash prefix). */
  tokenId: string;
  /** What this run has done so far, for the caps and the bound on Jenkins requests. */
  tally: RunTally;
}

/** The bookkeeping one run keeps in memory. */
interface RunTally {
  /** Jobs started (in a dry run: that would start) by this run, in all and per repository id. */
  dispatched: number;
  /** Jobs started per repository id. */
  perRepo: Map<string, number>;
  /** The repository id of the last job started: where the next run's turn begins after. */
  lastRepo: string | null;
  /** The issues read per repository id (a dry run counts active jobs from them). */
  issues: Map<string, Issue[]>;
  /** A cap found reached: for the whole run (`""` key) or per repository id. */
  full: Map<string, string>;
  /** Builds asked about in Jenkins; after one failed ask, no more this run. */
  checks: number;
  /** Set by the first failed ask: the other stuck builds wait for the next run. */
  jenkinsDown: boolean;
}

/** The GitHub calls a run makes: the `GitHub` class, or an in-memory double in tests. */
type GitHubApi = Pick<
  GitHub,
  | "stats"
  | "probe"
  | "pages"
  | "listOpen"
  | "getIssue"
  | "issueIfChanged"
  | "labelEvent"
  | "bodyEdits"
  | "collaboratorRole"
  | "linkedBranches"
  | "addLabel"
  | "removeLabel"
  | "hasComment"
  | "addComment"
  | "labelRemovedSince"
>;

/** The Jenkins calls a run makes: the `Jenkins` class, or an in-memory double in tests. */
type JenkinsApi = Pick<
  Jenkins,
  "builds" | "jobUrl" | "trigger" | "buildUrl" | "find" | "buildState" | "sameWork"
>;

/**
 * Takes this run's leases: its own (claims are alive while it is renewed) and, for
 * `--all`, the overlap guard. Returns the holder's start when another run --all is live.
 */
async function startLeases(
  store: Store,
  options: { all: boolean; runId: string; log: Logger },
): Promise<{ busySince: string } | { release: () => Promise<void> }> {
  const { runId } = options;
  const names = [runLeaseName(runId)];
  if (options.all) {
    const holder = await store.leases.acquire(RUN_ALL_LEASE, runId);
    if (holder) return { busySince: new Date(holder.startedAt).toISOString() };
    names.push(RUN_ALL_LEASE);
  }
  await store.leases.acquire(runLeaseName(runId), runId);
  return { release: keepLeases(store, { names, runId, log: options.log }) };
}

/**
 * Keeps this run's leases alive until the returned function is called, which waits for a
 * renewal under way (the KV closes right after) and gives the leases back.
 */
function keepLeases(store: Store, options: { names: string[]; runId: string; log: Logger }) {
  const renewals = new Set<Promise<void>>();
  const timer = setInterval(() => {
    for (const name of options.names) {
      const renewal: Promise<void> = store.leases.renew(name, options.runId).then((held) => {
        if (!held) options.log.warn(`Lost the run lease "${name}"; another run may have started`);
        // A store that stopped stops the run too, which then says so in its one error line.
      }, () => {}).finally(() => renewals.delete(renewal));
      renewals.add(renewal);
    }
  }, LEASE_RENEW_MS);
  return async () => {
    clearInterval(timer);
    await Promise.all(renewals);
    for (const name of options.names) {
      await store.leases.release(name, options.runId).catch(() => {});
    }
  };
}

// ---------------------------------------------------------------------------
// ## Run: what a run reports
// ---------------------------------------------------------------------------

/** What one run did, as facts; `present()` words them and decides the exit code. */
interface RunReport {
  /** Whether it was a dry run (nothing written). */
  dryRun: boolean;
  /** When it started (ISO 8601). */
  startedAt: string;
  /** How long it took. */
  durationMs: number;
  /** What happened in each repository, in config order. */
  repos: RepoReport[];
  /** GitHub requests made, 304s and requests that cost rate limit. */
  github: RunSummary["github"];
  /** Jenkins builds queued. */
  jenkins: RunSummary["jenkins"];
  /** Why and where the run stopped early; null when it went through every repository. */
  stop: RunStop | null;
}

/** Where and why a run stopped. */
interface RunStop {
  /** Why it stopped. */
  reason: StopReason;
  /** The indices in `repos` of the repositories the run did not process. */
  unprocessed: number[];
  /** The index of a repository a signal stopped between two of its issues: half done. */
  partial: number | null;
}

/** Why a run stops before its end; the summary chooses the words (`STOP_WORDING`). */
type StopReason = "signal" | "rate-limit" | "fail-fast";

/** What happened in one repository. */
interface RepoReport {
  /** The config section's name. */
  name: string;
  /** `owner/repo` on GitHub. */
  repository: string;
  /** How the issue list was read: full, incremental or not-modified (304). */
  read: "full" | "incremental" | "not-modified" | "none";
  /** Issues that could be dispatched now, before caps, gates and branches were asked. */
  eligible: number;
  /** Issues dispatched (in a dry run: that would be), in order. */
  dispatched: DispatchReport[];
  /** Issues with a pickup label left where they are, and why. */
  skipped: SkipItem[];
  /**
   * When the skips are those the last run recorded (not empty): since when they are unchanged
   * (ISO 8601); null when they changed or there are none.
   */
  skipsUnchangedSince: string | null;
  /** Issues at a bot-busy label past their stale timeout, and what was done about them. */
  stale: StaleReport[];
  /**
   * When the stuck issues only reported (not none; not moved, retried, `jenkins_unreachable` or
   * `dry_run`) are those the last run reported, by number and code: since when (ISO 8601); null
   * when they changed or there are none.
   */
  staleUnchangedSince: string | null;
  /** Issues GitHub no longer shows (404/410); dropped from the cache. */
  gone: GoneReport[];
  /** What went wrong in this repository (several joined by `; `); null when nothing did. */
  error: string | null;
}

/** One dispatched (or, in a dry run, dispatchable) issue in the run summary. */
interface DispatchReport {
  /** The issue number. */
  issue: number;
  /** The issue's title. */
  title: string;
  /** The workflow started (`WorkflowSpec.workflow`). */
  workflow: string;
  /** The branch the job runs on; empty for a workflow without one. */
  branch: string;
  /** The pickup label the issue had. */
  from: string;
  /** The bot-busy label it has now (in a dry run: would have). */
  to: string;
  /** The Jenkins queue item, when Jenkins named one. */
  queueUrl: string | null;
  /** The build, once known. */
  buildUrl: string | null;
  /** The `COORDINATOR_REQUEST_ID` sent with the build; null in a dry run. */
  requestId: string | null;
  /** `reconciled`: an earlier run queued the build; this run finished the label move. */
  note: "reconciled" | "dry-run" | null;
  /**
   * A retry of a build that died of the infrastructure: which attempt (2 is the first retry).
   * The issue kept its busy label: `from` and `to` both name it.
   */
  attempt?: number;
}

/** An issue at a bot-busy label for longer than that label's stale timeout. */
interface StaleReport {
  /** The issue number. */
  issue: number;
  /** The issue's title. */
  title: string;
  /** The workflow whose busy label it carries. */
  workflow: string;
  /** That bot-busy label. */
  busy: string;
  /** When the coordinator dispatched it; without a record, the issue's last update. */
  since: string;
  /** What Jenkins said (see `DispatchRecord.result`); null when not asked. */
  result: string | null;
  /** The build, or its queue item. */
  buildUrl: string | null;
  /**
   * `moved`: busy label replaced by `to`; `retry`: its build died of the infrastructure and the
   * next attempt waits for its backoff (the label stays); `reported`: nothing changed.
   */
  action: "moved" | "retry" | "reported";
  /** The failure label it was moved to; null when it was not moved. */
  to: string | null;
  /** Why it was moved or left: a stable code (`CODES`) and in words. */
  code: Code;
  /** Why it was moved or left, in words. */
  reason: string;
}

/** A skipped issue: its number, why as a stable code (`CODES`), and why in words. */
interface SkipItem {
  /** The issue number. */
  issue: number;
  /** Why, as a stable snake_case code: one of `CODES`. */
  code: Code;
  /** Why, in words, with the fix. */
  reason: string;
}

/** An issue that disappeared from GitHub, with the build dispatched for it. */
interface GoneReport {
  /** The issue number. */
  issue: number;
  /**
   * 410: deleted; 301: transferred to a repository the token can see (GitHub redirects there);
   * 404: transferred to one it cannot see, or no longer visible to the token.
   */
  status: number;
  /** The build (or queue item) of its current dispatch, now without an issue. */
  buildUrl: string | null;
}

/** The run summary (`--json`, and what formatSummary() prints), also of a run that did nothing. */
function runSummary(
  result: Extract<CommandResult, { kind: "run" | "run-busy" }>,
  exit: Exit,
): RunSummary {
  if (result.kind === "run-busy") {
    return {
      ok: exit.ok,
      dryRun: false, // only a real run takes leases
      exitCode: exit.exitCode,
      startedAt: result.startedAt,
      durationMs: 0,
      repos: [],
      github: { requests: 0, notModified: 0, costed: 0, rateLimitRemaining: null },
      jenkins: { builds: 0 },
      note: busyNote(result.busySince),
    };
  }
  const { run } = result;
  return {
    ok: exit.ok,
    dryRun: run.dryRun,
    exitCode: exit.exitCode,
    startedAt: run.startedAt,
    durationMs: run.durationMs,
    repos: run.stop ? stoppedRepos(run.repos, run.stop) : run.repos,
    github: run.github,
    jenkins: run.jenkins,
    note: null,
  };
}

/** The machine-readable result of a run (`--json`): a `RunReport` with its verdict, in words. */
interface RunSummary {
  /** No repository has an error. */
  ok: boolean;
  /** `--dry-run`: the dispatches are what would be done. */
  dryRun: boolean;
  /** What the process exits with: 0 when `ok`, else 1. */
  exitCode: number;
  /** When the run started (ISO 8601). */
  startedAt: string;
  /** How long it took. */
  durationMs: number;
  /** One per repository of the run, in config order. */
  repos: RepoReport[];
  /** GitHub requests made, those answered 304, and those that cost rate limit. */
  github: GitHubStats;
  /** Builds Jenkins was asked to start. */
  jenkins: { builds: number };
  /** Why the run did nothing, e.g. another run holds the lease. */
  note: string | null;
}

/** The repositories of a run that stopped early, with why in the `error` of those it left. */
function stoppedRepos(repos: readonly RepoReport[], stop: RunStop): RepoReport[] {
  const why = STOP_WORDING[stop.reason];
  return repos.map((repo, index) => {
    if (stop.unprocessed.includes(index)) {
      return { ...repo, error: repo.error ?? `not processed: ${why}` };
    }
    if (index === stop.partial) {
      return { ...repo, error: `${why} before all issues were processed` };
    }
    return repo;
  });
}

/** How each stop reason reads in the `error` of the repositories it concerns. */
const STOP_WORDING: Record<StopReason, string> = {
  signal: "interrupted by a signal",
  "rate-limit": "the GitHub rate limit is exhausted",
  "fail-fast": "a dispatch failed (fail-fast; --keep-going continues with other repositories)",
};

/** Why a run did nothing: another `run --all` holds the lease. */
function busyNote(busySince: string): string {
  return `another run is in progress (started ${busySince})`;
}

/**
 * The human-readable run report printed on stdout (also used by the demo in fakes.ts): log
 * lines (`logLine()`, stamped with the run's end), one per event (dispatch, new skip, stuck or
 * moved issue, gone issue, error); one line for skips and quiet stuck issues (`foldable()`)
 * unchanged since the last run, which are not repeated (`--log-level DEBUG` and `status` list
 * them); then one summary line.
 */
function formatSummary(summary: RunSummary): string {
  const at = Date.parse(summary.startedAt) + summary.durationMs;
  const lines: string[] = [];
  const line = (level: LogLevel, message: string) => lines.push(logLine(at, level, message));
  if (summary.note) line("INFO", summary.note);
  for (const repo of summary.repos) {
    for (const [level, text] of eventLines(repo)) line(level, `${repo.name}: ${text}`);
    if (repo.error) line("ERROR", `${repo.name}: ${repo.error}`);
  }
  const unchanged = unchangedLine(summary.repos);
  if (unchanged) line("INFO", unchanged);
  const errors = summary.repos.filter((repo) => repo.error).length;
  line(errors > 0 ? "ERROR" : "INFO", summaryLine(summary));
  return lines.join("");
}

/**
 * The one line for the skips and stuck issues (`foldable()`) unchanged since the last run, which
 * the report leaves out; null when there are none.
 */
function unchangedLine(repos: readonly RepoReport[]): string | null {
  const skips = repos.filter((repo) => repo.skipsUnchangedSince !== null);
  const stuck = repos.filter((repo) => repo.staleUnchangedSince !== null);
  const unchanged = repos.filter((repo) => skips.includes(repo) || stuck.includes(repo));
  if (unchanged.length === 0) return null;
  const count = (list: RepoReport[], pick: (repo: RepoReport) => number) =>
    list.reduce((sum, repo) => sum + pick(repo), 0);
  const what = [
    skips.length > 0 && plural(count(skips, (repo) => repo.skipped.length), "skip", "skips"),
    stuck.length > 0 &&
    plural(
      count(stuck, (repo) => repo.stale.filter(foldable).length),
      "stuck issue",
      "stuck issues",
    ),
  ].filter(Boolean).join(" and ");
  const since = [...skips.map((repo) => repo.skipsUnchangedSince!)]
    .concat(stuck.map((repo) => repo.staleUnchangedSince!)).sort().at(-1);
  const where = plural(unchanged.length, "repository", "repositories");
  return `${where}, ${what} unchanged since ${since} (status lists them)`;
}

/**
 * A run's events in one repository, one line each with its level: WARNING for an issue moved to
 * its failure label or gone from GitHub, and for a stuck build Jenkins could not be asked about;
 * else INFO. Unchanged skips, and stuck issues only reported that are unchanged, are left out.
 */
function eventLines(repo: RepoReport): [LogLevel, string][] {
  const lines: [LogLevel, string][] = [];
  for (const item of repo.dispatched) {
    const where = item.buildUrl ?? item.queueUrl ? ` (${item.buildUrl ?? item.queueUrl})` : "";
    const move = `${item.from} -> ${item.to}${where}`;
    lines.push([
      "INFO",
      `${dispatchVerb(item)} ${item.workflow} for #${item.issue} on ${item.branch}: ${move}`,
    ]);
  }
  if (repo.skipsUnchangedSince === null) {
    for (const item of repo.skipped) lines.push(["INFO", `skipped #${item.issue}: ${item.reason}`]);
  }
  for (const item of repo.stale) {
    if (repo.staleUnchangedSince !== null && foldable(item)) continue;
    const moved = item.action === "moved";
    const where = item.buildUrl ? ` (${item.buildUrl})` : "";
    const text = `#${item.issue} at ${item.busy} since ${item.since}: ${item.reason}${where}`;
    const warn = moved || item.code === "jenkins_unreachable";
    lines.push([warn ? "WARNING" : "INFO", `${moved ? "moved" : "stuck"} ${text}`]);
  }
  for (const item of repo.gone) {
    const why = goneReason(item.status);
    const build = item.buildUrl ? `; its build has no issue now: ${item.buildUrl}` : "";
    lines.push([
      "WARNING",
      `gone #${item.issue}: ${why} (${item.status}), dropped from the cache${build}`,
    ]);
  }
  return lines;
}

/**
 * The run's one summary line: what it did in how many repositories and how long, and what it
 * cost on GitHub.
 */
function summaryLine(summary: RunSummary): string {
  const count = (pick: (repo: RepoReport) => number) =>
    summary.repos.reduce((sum, repo) => sum + pick(repo), 0);
  const dispatched = count((repo) => repo.dispatched.length);
  const moved = count((repo) => repo.stale.filter((item) => item.action === "moved").length);
  const gone = count((repo) => repo.gone.length);
  const errors = summary.repos.filter((repo) => repo.error).length;
  const { requests, notModified, rateLimitRemaining } = summary.github;
  const left = rateLimitRemaining === null ? "" : `, rate limit ${rateLimitRemaining} left`;
  return `${summary.dryRun ? "Dry run: would dispatch" : "Dispatched"} ${dispatched}, skipped ${
    count((repo) => repo.skipped.length)
  }, moved ${moved} to failure labels${gone ? `, ${gone} gone from GitHub` : ""}, ${
    plural(errors, "repository", "repositories")
  } with errors; ${plural(summary.repos.length, "repository", "repositories")} in ${
    (summary.durationMs / 1000).toFixed(1)
  } s; GitHub: ${plural(requests, "request", "requests")}, ${notModified} not modified${left}`;
}

/** `count` and the noun, singular or plural as `count` asks. */
function plural(count: number, one: string, many: string): string {
  return `${count} ${count === 1 ? one : many}`;
}

/** What the run report says was done with a dispatched (or dispatchable) issue. */
function dispatchVerb(item: DispatchReport): string {
  if (item.attempt) {
    return `${
      item.note === "reconciled" ? "finished earlier retry of" : "retried"
    } (attempt ${item.attempt})`;
  }
  if (item.note === "dry-run") return "would dispatch";
  return item.note === "reconciled" ? "finished earlier dispatch of" : "dispatched";
}

// ---------------------------------------------------------------------------
// # Reading issues
// ---------------------------------------------------------------------------

/**
 * The open issues of a repository that the cache keeps (see `cacheable()`), from the KV
 * cache kept current with as few GitHub requests as possible. GitHub errors propagate and
 * leave the cache untouched; so do KV errors (StoreError), which stop the run.
 */
async function readIssues(ctx: RunContext, repo: RepoConfig): Promise<RepoRead> {
  const { store, deps, options } = ctx;
  const cached = await store.cache.load(repo);
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
  await ctx.store.cache.save(repo, { upsert: open, remove: [], meta: fresh, clear: true });
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
  await ctx.store.cache.save(repo, { upsert, remove, meta: fresh });
  return { issues: [...issues.values()], read: "incremental" };
}

type RepoRead = { issues: Issue[]; read: RepoReport["read"] };

function newest(issues: readonly Issue[], start: string | null): string | null {
  return issues.reduce<string | null>(
    (max, issue) => (max === null || issue.updatedAt > max ? issue.updatedAt : max),
    start,
  );
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

// ---------------------------------------------------------------------------
// # Which issues
// ---------------------------------------------------------------------------

/** Issues with a pickup label, closest to done first, then newest first as GitHub lists them. */
function orderCandidates(issues: readonly Issue[]): Issue[] {
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

/**
 * Eligibility: open, not a pull request, exactly one pickup label, no ignored label and
 * no bot-busy label. Issues without a pickup label are not candidates at all.
 */
function assess(issue: Issue): Verdict {
  const pickups = pickupsOf(issue);
  if (issue.pullRequest || issue.state !== "open" || pickups.length === 0) {
    return { kind: "ignore" };
  }
  if (pickups.length > 1) {
    return {
      kind: "skip",
      code: "several_pickup_labels",
      reason: `has ${pickups.length} pickup labels (${
        pickups.map((spec) => spec.pickup).join(", ")
      }): keep exactly one`,
    };
  }
  const ignored = issue.labels.find((label) => IGNORE_LABELS.includes(label));
  if (ignored) {
    return { kind: "skip", code: "ignore_label", reason: `held back by the "${ignored}" label` };
  }
  const busy = WORKFLOWS.find((spec) => issue.labels.includes(spec.busy));
  if (busy) {
    return {
      kind: "skip",
      code: "busy_label",
      reason:
        `also has the bot-busy label "${busy.busy}": a job may be running; remove one of the two`,
    };
  }
  return { kind: "eligible", spec: pickups[0] };
}

/** Whether an issue can be dispatched now, and if not, why. */
type Verdict =
  | { kind: "eligible"; spec: WorkflowSpec }
  | { kind: "skip"; code: Code; reason: string }
  | { kind: "ignore" };

/** The pickup workflows whose label an issue carries. */
function pickupsOf(issue: Issue): WorkflowSpec[] {
  return WORKFLOWS.filter((spec) => issue.labels.includes(spec.pickup));
}

// ---------------------------------------------------------------------------
// ## Which issues: gates (who set the pickup label, and GitHub's "blocked by")
// ---------------------------------------------------------------------------

/**
 * Whether a gate holds a candidate about to be dispatched: GitHub's issue dependencies (open
 * blockers), then the verified trigger (who set its pickup label, who edited it since). `fresh`:
 * the issue as just read from GitHub; otherwise as cached, and a held blocked issue is read
 * again (conditionally) at most every BLOCKED_RECHECK_MS. An answer GitHub fails to give holds
 * the issue until a later run gets it: never dispatched on a role it could not read.
 */
async function gateHold(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; spec: WorkflowSpec; fresh: boolean },
): Promise<Outcome | null> {
  const gates = gatesOf(ctx.config, repo);
  if (gates.respectIssueDependencies) {
    const blocked = await blockedHold(ctx, repo, options);
    if (blocked) return blocked;
  }
  if (gates.triggerMinRole === null) return null;
  try {
    return await trustHold(ctx, repo, { ...options, gates });
  } catch (error) {
    if (!(error instanceof GitHubError) || stopsRun(error) || goneStatus(error) !== null) {
      throw error;
    }
    ctx.log.warn(`${repo.name}: #${options.issue.number}: ${error.message}`);
    return {
      kind: "skipped",
      code: "trigger_unverified",
      reason:
        `cannot tell who set "${options.spec.pickup}": ${error.message}; asked again next run`,
    };
  }
}

/** A GitHub failure a gate does not hold an issue for: a rate limit stops the whole run. */
function stopsRun(error: GitHubError): boolean {
  return error.kind === "rate-limit" || error.kind === "secondary-limit";
}

/** A repository's gates: its own settings over `[coordinator]`'s. */
function gatesOf(config: Config, repo: RepoConfig): Gates {
  return { ...config.coordinator.gates, ...repo.gates };
}

/**
 * Holds an issue GitHub counts open blockers of (`Issue.blockedBy`, from the issue list: no
 * request). Adding or removing a blocker, or closing one, leaves the blocked issue's updated_at
 * alone, so the list does not bring the change: a held issue is read on its own, conditionally
 * with its ETag (304: uncounted), when first held and then at most every BLOCKED_RECHECK_MS.
 */
async function blockedHold(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; fresh: boolean },
): Promise<Outcome | null> {
  const { issue } = options;
  let count = issue.blockedBy ?? 0;
  if (count <= 0) return null;
  const now = ctx.deps.now();
  const memo = options.fresh ? null : await ctx.store.memos.get(repo, "held", issue.number);
  if (!options.fresh && (!memo || now - memo.checkedAt >= BLOCKED_RECHECK_MS)) {
    const read = await ctx.github.issueIfChanged(repo, issue.number, memo?.etag ?? null)
      .catch((error: unknown) => {
        // Held as last seen, and read again next run; the repository's other issues go on.
        if (!(error instanceof GitHubError) || stopsRun(error) || goneStatus(error) !== null) {
          throw error;
        }
        ctx.log.warn(`${repo.name}: #${issue.number}: ${error.message}; held as last read`);
        return undefined;
      });
    if (read !== undefined) {
      const etag = read ? read.etag : memo?.etag ?? null;
      await ctx.store.memos.set(repo, "held", issue.number, { etag, checkedAt: now });
    }
    if (read) {
      await ctx.store.cache.put(repo, read.issue);
      count = read.issue.blockedBy ?? 0;
    }
  }
  if (count <= 0) return null;
  const reason = `blocked by ${count} open issue${count === 1 ? "" : "s"} (GitHub's "blocked by")`;
  return { kind: "skipped", code: "blocked_by_issues", reason };
}

/**
 * The verified trigger: the pickup label counts only when its latest `labeled` event was made
 * by someone with `trigger_min_role` or higher, or in `trusted_actors`, and nobody below that
 * edited the title or body since. Otherwise the issue is held, and once per label event a
 * comment says what to do (and, with `remove_untrusted_label`, the label comes off).
 */
async function trustHold(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; spec: WorkflowSpec; gates: Gates },
): Promise<Outcome | null> {
  const { issue, spec, gates } = options;
  const memo = await triggerFacts(ctx, repo, { issue, label: spec.pickup });
  const rule = ruleWords(gates);
  let held: { code: Code; reason: string } | null = null;
  if (!memo.labeled) {
    held = {
      code: "untrusted_actor",
      reason: `no "labeled" event of "${spec.pickup}" among its newest events; ${rule}`,
    };
  } else {
    const who = await untrustedWhy(ctx, repo, { gates, acted: memo.labeled });
    if (who) {
      held = { code: "untrusted_actor", reason: `"${spec.pickup}" was added by ${who}; ${rule}` };
    }
  }
  const edits = [
    ...(memo.labeled?.renames ?? []).map((acted) => ({ acted, what: "title" })),
    ...memo.edits.map((acted) => ({ acted, what: "body" })),
  ];
  for (const { acted, what } of held ? [] : edits) {
    const who = await untrustedWhy(ctx, repo, { gates, acted });
    if (!who) continue;
    const reason = `its ${what} was edited by ${who} after "${spec.pickup}" was added; ${rule}`;
    held = { code: "edited_after_label", reason };
    break;
  }
  if (!held && !memo.complete) {
    const reason = `its body was edited more often since "${spec.pickup}" was added than ` +
      `one read shows; ${rule}`;
    held = { code: "edited_after_label", reason };
  }
  if (!held) return null;
  await ctx.dispatcher.holdUntrusted(ctx, repo, { issue, spec, memo, reason: held.reason });
  return { kind: "skipped", ...held };
}

/**
 * Who set `label` on the issue and who edited it since: remembered while the issue's updated_at
 * stays (a label or an edit moves it), else read from GitHub (its events, and its body edits
 * through GraphQL) and remembered.
 */
async function triggerFacts(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; label: string },
): Promise<GateMemo["trust"]> {
  const { issue, label } = options;
  const known = await ctx.store.memos.get(repo, "trust", issue.number);
  if (known && known.updatedAt === issue.updatedAt && known.label === label) return known;
  const labeled = await ctx.github.labelEvent(repo, issue.number, label);
  const body = labeled
    ? await ctx.github.bodyEdits(repo, issue.number, Date.parse(labeled.at))
    : { edits: [], complete: true };
  const sameEvent = known?.label === label && known.labeled?.at === labeled?.at;
  const memo: GateMemo["trust"] = {
    updatedAt: issue.updatedAt,
    label,
    labeled,
    ...body,
    ...(sameEvent && known?.notified ? { notified: known.notified } : {}),
  };
  await ctx.store.memos.set(repo, "trust", issue.number, memo);
  return memo;
}

/**
 * Why `acted` does not count, in words naming the account (and its role), or null when it
 * does: listed in `trusted_actors`, or a person with `trigger_min_role` or higher. A GitHub
 * App's bot counts only when listed; so does a person acting through an app (the app, or the
 * person, listed): the app may act for whoever asks it.
 */
async function untrustedWhy(
  ctx: RunContext,
  repo: RepoConfig,
  options: { gates: Gates; acted: Acted },
): Promise<string | null> {
  const { gates, acted } = options;
  const trusted = new Set(gates.trustedActors.map((login) => login.toLowerCase()));
  if (trusted.has(acted.actor.toLowerCase())) return null;
  const bot = acted.via ? `${acted.via}[bot]` : null;
  if (bot && trusted.has(bot.toLowerCase())) return null;
  if (bot && bot.toLowerCase() !== acted.actor.toLowerCase()) {
    return `${acted.actor} through the GitHub App ${acted.via} (neither in trusted_actors)`;
  }
  if (/\[bot\]$/i.test(acted.actor)) return `${acted.actor}, a bot not in trusted_actors`;
  const role = await roleOfActor(ctx, repo, acted.actor);
  const min = gates.triggerMinRole!;
  if (role !== null && TRIGGER_ROLES.indexOf(role) >= TRIGGER_ROLES.indexOf(min)) return null;
  return `${acted.actor} (role: ${role ?? "none"})`;
}

/**
 * A person's role in the repository: remembered for ROLE_TRUST_MS, then asked again with the
 * answer's ETag (a 304 costs no rate limit and keeps it for another ROLE_TRUST_MS).
 */
async function roleOfActor(
  ctx: RunContext,
  repo: RepoConfig,
  login: string,
): Promise<TriggerRole | null> {
  const name = login.toLowerCase();
  const memo = await ctx.store.memos.get(repo, "role", name);
  const now = ctx.deps.now();
  if (memo && now - memo.checkedAt < ROLE_TRUST_MS) return memo.role;
  const answer = await ctx.github.collaboratorRole(repo, login, memo?.etag ?? null);
  const { role, etag } = answer ?? memo!;
  await ctx.store.memos.set(repo, "role", name, { role, etag, checkedAt: now });
  return role;
}

/** The rule of the verified trigger, in words. */
function ruleWords(gates: Gates): string {
  const listed = gates.trustedActors.length > 0
    ? ` (or listed in trusted_actors: ${gates.trustedActors.join(", ")})`
    : "";
  return `the label counts only from ${gates.triggerMinRole} or above${listed} (trigger_min_role)`;
}

/** The issue comment that says why a pickup label did not count, and what to do. */
function untrustedComment(
  options: { spec: WorkflowSpec; reason: string; gates: Gates; removed: boolean },
): string {
  const { spec, gates } = options;
  return [
    `The coordinator did not start **${spec.workflow}** for this issue: ${options.reason}.`,
    "",
    options.removed
      ? `It removed the \`${spec.pickup}\` label.`
      : `It leaves the \`${spec.pickup}\` label where it is and will not act on it.`,
    `What a maintainer can do: check the issue, then add \`${spec.pickup}\` again themselves ` +
    `(remove it first) with the ${gates.triggerMinRole} role or above; or, if the account ` +
    "above is to be trusted, list it in `trusted_actors` in the coordinator's config.",
  ].join("\n");
}

// ---------------------------------------------------------------------------
// # Dispatching
// ---------------------------------------------------------------------------

/**
 * Dispatches one candidate issue exactly once per pickup cycle: read it again, claim in KV
 * (check-and-set), trigger Jenkins, record `queued`, move the labels, record `done`. Each step
 * is recorded first, so a crash at any step leaves a record the next run finishes
 * (DISPATCH_TRANSITIONS).
 */
async function dispatchIssue(
  ctx: RunContext,
  repo: RepoConfig,
  candidate: Issue,
): Promise<Outcome> {
  const entry = await ctx.store.records.get(repo, candidate.number);
  const previous = entry.record;
  if (isUnfinished(previous)) {
    // Also when the pickup label changed meanwhile: a claim over a live run's would start a
    // second job on the issue while that run's trigger may still be on its way to Jenkins.
    if (previous.runId !== ctx.runId && await ctx.store.leases.runAlive(previous.runId)) {
      const reason = "another coordinator run is dispatching it right now";
      return { kind: "skipped", code: "another_run", reason };
    }
    if (candidate.labels.includes(previous.pickup)) {
      const resumed = await ctx.dispatcher.resume(ctx, repo, { issue: candidate, entry });
      if (resumed.kind !== "released") return resumed;
    }
  }
  const verdict = assess(candidate);
  if (verdict.kind !== "eligible") {
    return verdict.kind === "skip"
      ? { kind: "skipped", code: verdict.code, reason: verdict.reason }
      : { kind: "skipped", code: "not_a_candidate", reason: "not a candidate" };
  }
  const spec = verdict.spec;
  if (!candidate.labels.includes(spec.busy) && candidate.labels.length >= LABEL_LIMIT) {
    return { kind: "skipped", code: "label_limit", reason: labelLimitReason(candidate, spec.busy) };
  }
  // Spares the GraphQL request of an issue that cannot start anyway.
  const known = capReached(ctx, repo);
  if (known) return { kind: "skipped", code: "cap_reached", reason: known };
  // The gates ask GitHub only here, for a candidate about to be dispatched; their answers are
  // remembered, so an issue they hold costs the runs after nothing (`# Which issues: gates`).
  const held = await gateHold(ctx, repo, { issue: candidate, spec, fresh: false });
  if (held) return held;
  const branch = await branchFor(ctx, repo, { issue: candidate, spec });
  if ("skip" in branch) return { kind: "skipped", code: branch.code, reason: branch.skip };
  // Before the claim, the issue as GitHub has it now: one request per dispatch, none for an
  // issue skipped above. A transferred issue or a renamed repository throws (`getIssue()`);
  // labels changed since the read (the cache's, or a person's edit) decide.
  const issue = await ctx.github.getIssue(repo, candidate.number);
  const now = assess(issue);
  if (now.kind !== "eligible" || now.spec !== spec) {
    await ctx.store.cache.put(repo, issue).catch(() => {});
    return now.kind === "skip"
      ? { kind: "skipped", code: now.code, reason: now.reason }
      : { kind: "quiet", reason: "its labels changed since they were read: the next run decides" };
  }
  // Free when the issue is as cached: its gate answers are remembered for its updated_at.
  const heldNow = await gateHold(ctx, repo, { issue, spec, fresh: true });
  if (heldNow) return heldNow;
  return await ctx.dispatcher.start(ctx, repo, { issue, spec, branch: branch.branch, entry });
}

/** An eligible issue, what to start for it, and the handle on its dispatch record. */
interface DispatchPlan {
  /** The issue, as read. */
  issue: Issue;
  /** The workflow its pickup label asks for. */
  spec: WorkflowSpec;
  /** The branch the job runs on. */
  branch: string;
  /** The issue's dispatch record, as read before deciding. */
  entry: DispatchEntry;
}

/** What happened to one candidate issue. */
type Outcome =
  | { kind: "dispatched"; report: DispatchReport }
  | { kind: "skipped"; code: Code; reason: string }
  | { kind: "quiet"; reason: string };

/**
 * What going on with an unfinished dispatch came to. `released`: the earlier trigger never
 * reached Jenkins, so the issue may be claimed again (its handle holds the released record).
 */
type Resumed = Outcome | { kind: "released" };

/**
 * The steps where a run acts: claims and triggers, resumes, asks Jenkins about a stuck build,
 * moves an issue to its failure label, and counts the active jobs for the caps. This class is a
 * real run's, so each method below is the code that runs; a dry run's (`DryRunDispatcher`)
 * overrides each to stop before it acts and say what a real run would do. `runContext()` chooses.
 */
class Dispatcher {
  /**
   * Claims an eligible issue within the caps (check-and-set against the record read before
   * deciding), triggers Jenkins and records the outcome: `released` when Jenkins surely did not
   * queue the build, `queued` when it did; then moves the labels.
   */
  async start(
    ctx: RunContext,
    repo: RepoConfig,
    plan: DispatchPlan,
  ): Promise<Outcome> {
    const { issue, entry } = plan;
    const record = newRecord(ctx, repo, { ...plan, requestId: ctx.deps.randomId() });
    const started = await claimAndTrigger(ctx, repo, { issue, entry, record, back: "released" });
    if ("skip" in started) return { kind: "skipped", code: started.code, reason: started.skip };
    const urls = started;
    return { kind: "dispatched", report: await finishDispatch(ctx, repo, { issue, entry, urls }) };
  }

  /**
   * Goes on with a dispatch an earlier run left unfinished: a queued build whose labels did
   * not move, or a trigger whose outcome is unknown (timeout, crash), which is looked up in
   * Jenkins before anything is triggered again.
   */
  async resume(
    ctx: RunContext,
    repo: RepoConfig,
    options: { issue: Issue; entry: DispatchEntry },
  ): Promise<Resumed> {
    const { issue, entry } = options;
    const record = entry.record!;
    if (record.state === "triggering") {
      const found = await ctx.jenkins.find(record);
      const moved = found
        ? await entry.advance("queued", { queueUrl: found.url })
        : await entry.advance("released");
      if (!moved) {
        return {
          kind: "skipped",
          code: "another_run",
          reason: "another coordinator run is finishing it",
        };
      }
      if (!found) {
        ctx.log.info(
          `${repo.name}: #${issue.number}: the earlier trigger never reached Jenkins; retrying`,
        );
        return { kind: "released" };
      }
    }
    ctx.log.debug(
      `${repo.name}: #${issue.number}: finishing the label move of an earlier dispatch`,
    );
    return {
      kind: "dispatched",
      report: await finishDispatch(ctx, repo, { issue, entry, note: "reconciled" }),
    };
  }

  /**
   * Tells an issue the verified trigger holds why, once per label event (the memo remembers
   * it): a comment when comments are on, and with `remove_untrusted_label` the pickup label
   * comes off (an idempotent DELETE).
   */
  async holdUntrusted(
    ctx: RunContext,
    repo: RepoConfig,
    held: { issue: Issue; spec: WorkflowSpec; memo: GateMemo["trust"]; reason: string },
  ): Promise<void> {
    const { issue, spec, memo } = held;
    const event = memo.labeled?.at ?? "none";
    if (memo.notified === event) return;
    const gates = gatesOf(ctx.config, repo);
    const removed = gates.removeUntrustedLabel;
    if (removed) {
      try {
        await ctx.github.removeLabel(repo, issue.number, spec.pickup);
      } catch (error) {
        if (!(error instanceof GitHubError) || stopsRun(error) || goneStatus(error) !== null) {
          throw error;
        }
        // Neither comment nor memo: the next run tries again.
        ctx.log.warn(`${repo.name}: cannot remove the untrusted label: ${error.message}`);
        return;
      }
    }
    const id = `untrusted-${memo.labeled ? Date.parse(memo.labeled.at) / 1000 : 0}`;
    await commentOnce(ctx, repo, {
      number: issue.number,
      record: { requestId: id },
      kind: "untrusted",
      body: untrustedComment({ spec, reason: held.reason, gates, removed }),
    });
    await ctx.store.memos.set(repo, "trust", issue.number, { ...memo, notified: event });
  }

  /**
   * A real run's look at a stuck issue's build: asks Jenkins (`#askJenkins()`) unless its answer
   * is known or Jenkins cannot be asked this run (at most every BUILD_RECHECK_MS, and
   * MAX_BUILD_CHECKS per run).
   */
  async checkBuild(
    ctx: RunContext,
    repo: RepoConfig,
    stuck: StuckIssue,
  ): Promise<StaleReport | null> {
    const { tally } = ctx;
    const now = ctx.deps.now();
    const record = stuck.entry.record!;
    // A finished build's result never changes: no need to ask again.
    const finished = record.result === "SUCCESS" || record.result === "UNSTABLE";
    const asked = finished ||
      record.checkedAt !== undefined && now - record.checkedAt < BUILD_RECHECK_MS;
    const code: Code = asked
      ? "checked_recently"
      : tally.jenkinsDown
      ? "jenkins_unreachable"
      : "check_limit";
    const why = asked
      ? `Jenkins said ${record.result} ${Math.floor((now - record.checkedAt!) / 60_000)} min ago`
      : tally.jenkinsDown
      ? "Jenkins could not be asked this run"
      : tally.checks >= MAX_BUILD_CHECKS
      ? `more than ${MAX_BUILD_CHECKS} builds to ask about: asked next run`
      : null;
    if (!why) return await this.#askJenkins(ctx, repo, stuck);
    const reason = `at "${stuck.spec.busy}" for ${stuck.minutes} min; ${why}`;
    return { ...stuck.stale, code, reason };
  }

  /**
   * Asks Jenkins about a stuck issue's build and notes the answer in its record; a failed,
   * cancelled or missing build has the issue moved to the failure label.
   */
  async #askJenkins(
    ctx: RunContext,
    repo: RepoConfig,
    stuck: StuckIssue,
  ): Promise<StaleReport | null> {
    const { issue, spec, stale, entry } = stuck;
    const record = entry.record!;
    const now = ctx.deps.now();
    ctx.tally.checks++;
    let build: BuildState;
    try {
      build = await ctx.jenkins.buildState(record);
    } catch (error) {
      if (!(error instanceof JenkinsError)) throw error;
      ctx.tally.jenkinsDown = true;
      // The run's report says it, as a WARNING line: here only as it happens, at DEBUG.
      ctx.log.debug(`${repo.name}: #${issue.number}: ${error.message}; dispatching goes on`);
      const reason = `${error.message}; asked again next run, dispatching goes on`;
      return { ...stale, code: "jenkins_unreachable", reason };
    }
    const checked = await entry.advance("done", {
      checkedAt: now,
      result: build.result,
      ...(build.buildUrl ? { buildUrl: build.buildUrl } : {}),
    });
    if (!checked) {
      return { ...stale, code: "another_run", reason: "another coordinator run is checking it" };
    }
    const seen = { ...stale, result: build.result, buildUrl: build.buildUrl ?? stale.buildUrl };
    if (FAILED_RESULTS.has(build.result)) {
      const notRetried = await whyNotRetried(ctx, repo, { record: entry.record!, build });
      if (notRetried === null) return await scheduleRetry(ctx, repo, { ...stuck, stale: seen });
      // Asked early for a retry that is not to be: the stale timeout decides, as without retries.
      if (stuck.early) return null;
      ctx.log.debug(`${repo.name}: #${issue.number}: not retried: ${notRetried}`);
      return await this.moveToFailed(ctx, repo, { ...stuck, stale: seen });
    }
    const minutes = Math.floor((now - record.claimedAt) / 60_000);
    const running = build.result === "QUEUED" || build.result === "RUNNING";
    const reason = running
      ? `still ${build.result.toLowerCase()} in Jenkins after ${minutes} min: left as is`
      : `the build finished ${build.result} but the issue is still at "${spec.busy}": left for the executor to move`;
    return { ...seen, code: running ? "still_running" : "finished_not_moved", reason };
  }

  /**
   * Replaces an issue's busy label with its workflow's failure label (add, then remove), with a
   * comment when comments are on. Claimed first (`failing`), so it happens once per pickup
   * cycle; re-reads the issue, so a label moved meanwhile, or set again by someone else since
   * (`cycleIsCurrent()`), is left alone.
   */
  async moveToFailed(
    ctx: RunContext,
    repo: RepoConfig,
    stuck: StuckIssue,
  ): Promise<StaleReport | null> {
    const { spec, stale, entry } = stuck;
    const { store, github, deps } = ctx;
    const number = stuck.issue.number;
    const failed = spec.failed;
    const left = (code: Code, reason: string) => ({ ...stale, code, reason });
    if (
      entry.record!.state !== "failing" && !await entry.advance("failing", { runId: ctx.runId })
    ) {
      return left("another_run", "another coordinator run is moving it");
    }
    const record = entry.record!;
    const issue = await github.getIssue(repo, number);
    // Back to `done`, looked at again later. Lost only to a run that moved the record
    // meanwhile, which changes nothing here: this run moved no label.
    const back = async (code: Code, reason: string) => {
      await entry.advance("done", { checkedAt: deps.now() });
      return left(code, reason);
    };
    if (issue.state !== "open" || !issue.labels.includes(record.busy)) {
      await store.cache.put(repo, issue).catch(() => {});
      return await back("no_longer_busy", `no longer at "${record.busy}" on GitHub: left alone`);
    }
    if (!await cycleIsCurrent(ctx, repo, { issue, entry })) {
      return await endCycle(ctx, repo, { issue, spec, entry });
    }
    if (!issue.labels.includes(failed) && issue.labels.length >= LABEL_LIMIT) {
      const reason = `cannot move it to "${failed}": ${labelLimitReason(issue, failed)}`;
      return await back("label_limit", reason);
    }
    await commentOnce(ctx, repo, {
      number,
      record,
      kind: "failed",
      body: failureComment(record, failed),
    });
    await github.addLabel(repo, number, failed);
    await github.removeLabel(repo, number, record.busy);
    const labels = [...new Set([...issue.labels.filter((label) => label !== record.busy), failed])];
    await store.cache.put(repo, { ...issue, labels });
    // Lost only to a run that took the move over meanwhile: the labels are moved all the same.
    await entry.advance("failed");
    ctx.log.debug(
      `${repo.name}: moved #${number} from "${record.busy}" to "${failed}": ${record.result}`,
    );
    const attempts = isRetry(record) ? ` on attempt ${record.attempt}` : "";
    const spent = retriesSpent(ctx, repo, record);
    return {
      ...stale,
      action: "moved",
      to: failed,
      code: spent ? "retry_budget_spent" : "moved_to_failure",
      reason: `the build ended ${record.result}${attempts}: moved to "${failed}"`,
    };
  }

  /**
   * Goes on with the retry of a build that died of the infrastructure (`retryIssue()` has the
   * steps): a waiting one once its time has come, or one an earlier run left unfinished.
   */
  async retry(ctx: RunContext, repo: RepoConfig, job: RetryJob): Promise<Reconciled> {
    return await retryIssue(ctx, repo, job);
  }

  /** A real run's count: from KV, where overlapping runs record their dispatches too. */
  async activeJobs(ctx: RunContext, repo: RepoConfig): Promise<number> {
    const { issues } = await ctx.store.cache.load(repo);
    return running(await activeJobsOf(ctx.store, repo, issues.values()));
  }
}

/** A dry run's steps: it stops before every claim, Jenkins request and GitHub write. */
class DryRunDispatcher extends Dispatcher {
  /** What a real run would start, within the caps: nothing is claimed. */
  override async start(ctx: RunContext, repo: RepoConfig, plan: DispatchPlan): Promise<Outcome> {
    const cap = await capCheck(ctx, repo);
    if ("skip" in cap) return { kind: "skipped", code: cap.code, reason: cap.skip };
    const record = newRecord(ctx, repo, { ...plan, requestId: "" });
    return { kind: "dispatched", report: reportOf(plan.issue, record, "dry-run") };
  }

  /** An unfinished dispatch is left to a real run: Jenkins is not asked. */
  override resume(
    _ctx: RunContext,
    _repo: RepoConfig,
    { entry }: { issue: Issue; entry: DispatchEntry },
  ): Promise<Resumed> {
    return Promise.resolve({
      kind: "skipped",
      code: "unfinished_dispatch",
      reason: entry.record?.state === "queued"
        ? `an earlier run queued ${entry.record.workflow}; a real run moves the labels`
        : "an earlier trigger's outcome is unknown; a real run checks Jenkins first",
    });
  }

  /** Nothing is said or removed. */
  override holdUntrusted(): Promise<void> {
    return Promise.resolve();
  }

  /** Jenkins is not asked. */
  override checkBuild(
    _ctx: RunContext,
    _repo: RepoConfig,
    { spec, stale, minutes }: StuckIssue,
  ): Promise<StaleReport | null> {
    const reason = `at "${spec.busy}" for ${minutes} min; a real run asks Jenkins about its build`;
    return Promise.resolve({ ...stale, code: "dry_run", reason });
  }

  /** Nothing is claimed or triggered: says which attempt a real run would start. */
  override retry(ctx: RunContext, repo: RepoConfig, { entry }: RetryJob): Promise<Reconciled> {
    const record = entry.record!;
    if (record.state === "retrying" && ctx.deps.now() < (record.retryAt ?? 0)) {
      return Promise.resolve(null);
    }
    const of = maxRetries(ctx, repo) + 1;
    return Promise.resolve({
      skipped: `a real run starts attempt ${record.attempt} of ${of} of ${record.workflow}`,
      code: "retry_due",
    });
  }

  /** No label is moved. */
  override moveToFailed(
    _ctx: RunContext,
    _repo: RepoConfig,
    { spec, stale }: StuckIssue,
  ): Promise<StaleReport | null> {
    const reason = `a real run moves it to "${spec.failed}"`;
    return Promise.resolve({ ...stale, code: "dry_run", reason });
  }

  /** Its store keeps neither what it read nor what it would start, so it counts both itself. */
  override async activeJobs(ctx: RunContext, repo: RepoConfig): Promise<number> {
    const issues = ctx.tally.issues.get(repo.id) ??
      (await ctx.store.cache.load(repo)).issues.values();
    const planned = ctx.tally.perRepo.get(repo.id) ?? 0;
    return running(await activeJobsOf(ctx.store, repo, issues)) + planned;
  }
}

/**
 * The claim and the trigger of a dispatch or a retry: claims `record` within the caps
 * (check-and-set), triggers its Jenkins job and records it `queued`. When Jenkins surely queued
 * nothing, the record goes `back` (released, or a retry waiting again) and the error stands.
 * Returns why the caps refused, or the queue and build URLs this run learnt.
 */
async function claimAndTrigger(
  ctx: RunContext,
  repo: RepoConfig,
  options: {
    issue: Issue;
    entry: DispatchEntry;
    record: DispatchRecord;
    back: "released" | "retrying";
  },
): Promise<Skip | NonNullable<QueuedDispatch["urls"]>> {
  const { issue, entry, record } = options;
  const refused = await claimWithinCaps(ctx, repo, { entry, record });
  if (refused) return refused;
  let queue: { queueUrl: string | null; existing: boolean };
  try {
    queue = await ctx.jenkins.trigger(record.jobPath, record.params);
  } catch (error) {
    // Losing this write to a run that took the record over changes nothing: the error stands.
    if (error instanceof JenkinsError && error.queued === "no") await entry.advance(options.back);
    throw error;
  }
  const queueUrl = queue.queueUrl ?? undefined;
  if (!await entry.advance("queued", { queueUrl })) {
    // Another run took the record over (this run's lease lapsed, or the issue went). Jenkins
    // has the build all the same, so the labels follow it; the record is that run's now.
    ctx.log.warn(
      `${repo.name}: #${issue.number}: another coordinator run changed the dispatch record while Jenkins queued the build; finishing it all the same`,
    );
  }
  const buildUrl = await ctx.jenkins.buildUrl(queue.queueUrl) ?? undefined;
  return { ...(queueUrl ? { queueUrl } : {}), ...(buildUrl ? { buildUrl } : {}) };
}

/**
 * A dispatch (or retry) Jenkins has queued, to finish: its record's entry, the issue as read,
 * the queue and build URLs this run learnt, and the report's note.
 */
interface QueuedDispatch {
  issue: Issue;
  entry: DispatchEntry;
  urls?: Pick<DispatchRecord, "queueUrl" | "buildUrl">;
  note?: DispatchReport["note"];
}

/**
 * Moves the labels of a queued dispatch (busy label on, then pickup label off) and records it
 * done, with the queue and build URLs this run learnt (`urls`). Safe to repeat: a second run
 * finishing it changes nothing.
 */
async function finishDispatch(
  ctx: RunContext,
  repo: RepoConfig,
  options: QueuedDispatch,
): Promise<DispatchReport> {
  const { issue, entry, urls } = options;
  const record: DispatchRecord = { ...entry.record!, ...urls };
  // Before the labels: a crash after them closes the cycle without coming back here.
  await commentOnce(ctx, repo, {
    number: issue.number,
    record,
    kind: "dispatch",
    body: dispatchComment(ctx, record),
  });
  try {
    if (!issue.labels.includes(record.busy) && issue.labels.length >= LABEL_LIMIT) {
      throw new GitHubError(labelLimitReason(issue, record.busy), { status: 422 });
    }
    await ctx.github.addLabel(repo, issue.number, record.busy);
    await ctx.github.removeLabel(repo, issue.number, record.pickup);
  } catch (error) {
    // A write GitHub redirected: the read tells a transferred issue (gone: it throws) from a
    // renamed repository (the error below stands: the build is queued).
    if (error instanceof GitHubError && error.status >= 300 && error.status < 400) {
      await ctx.github.getIssue(repo, issue.number).catch((read: unknown) => {
        if (goneStatus(read) !== null) throw read;
      });
    }
    const where = record.queueUrl ? ` (${record.queueUrl})` : "";
    throw new GitHubError(
      `the Jenkins build is queued${where} but the labels were not moved; the next run moves them: ${
        errorMessage(error)
      }`,
      {
        cause: error,
        kind: error instanceof GitHubError ? error.kind : "other",
        status: error instanceof GitHubError ? error.status : 0,
      },
    );
  }
  // The cache shows the busy label before the record stops counting as unfinished, so an
  // overlapping run counting active jobs sees this one at every moment.
  const labels = issue.labels.filter((label) => label !== record.pickup);
  await ctx.store.cache.put(repo, { ...issue, labels: [...new Set([...labels, record.busy])] });
  // Lost only to a run that finished or closed this cycle meanwhile: the labels are moved.
  await entry.advance("done", urls);
  return reportOf(issue, record, options.note);
}

/** The dispatch record a claim writes: everything needed to trigger or find the build later. */
function newRecord(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; spec: WorkflowSpec; branch: string; requestId: string },
): DispatchRecord {
  const { issue, spec, branch, requestId } = options;
  const command = jobScript(spec, {
    os: repo.executorOs,
    logLevel: repo.jobLogLevel ?? ctx.config.coordinator.jobLogLevel,
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
    note: note ?? null,
  } satisfies DispatchReport;
}

/** Why a label cannot be added: the issue is at GitHub's label limit. */
function labelLimitReason(issue: Issue, label: string): string {
  return `has ${issue.labels.length} labels, GitHub's limit: remove one so "${label}" fits`;
}

/** The branch a workflow runs on, or why there is none to use. */
async function branchFor(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; spec: WorkflowSpec },
): Promise<{ branch: string } | Skip> {
  const { issue, spec } = options;
  if (spec.branch === "main") return { branch: "main" };
  // Re-asking GitHub every few minutes for an issue nobody touched would make idle runs
  // cost rate limit; a branch linked meanwhile is seen within BRANCH_RECHECK_MS.
  const known = await ctx.store.cache.branches(repo, issue).catch(() => null);
  const branches = known ?? await ctx.github.linkedBranches(repo, issue.number);
  if (branches.length !== 1 && !known) {
    await ctx.store.cache.putBranches(repo, issue, branches).catch(() => {});
  }
  if (branches.length === 0) {
    const skip = "no linked branch: link one under Development on the issue";
    return { code: "no_linked_branch", skip };
  }
  if (branches.length > 1) {
    return {
      code: "several_linked_branches",
      skip: `${branches.length} linked branches (${branches.join(", ")}): keep exactly one`,
    };
  }
  return { branch: branches[0] };
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
  for (const number of await ctx.store.records.pending(repo)) {
    const entry = await ctx.store.records.get(repo, number);
    const record = entry.record;
    if (!isUnfinished(record)) {
      // Lost when a run claimed the issue since: then its marker stays, as it must.
      await entry.dropPending();
      continue;
    }
    if (open.get(number)?.labels.includes(record.pickup)) continue;
    // A retry's cycle lives at the busy label: stuck-job handling finishes it (`retryIssue()`).
    if (isRetry(record) && open.get(number)?.labels.includes(record.busy)) continue;
    if (record.runId !== ctx.runId && await ctx.store.leases.runAlive(record.runId)) continue;
    // Lost when another run moved the record meanwhile: it is that run's to finish.
    if (await entry.advance("done")) {
      ctx.log.info(
        `${repo.name}: #${number}: "${record.pickup}" is gone from the issue; its ${record.state} dispatch is closed`,
      );
    }
  }
}

// ---------------------------------------------------------------------------
// # Dispatch records
// ---------------------------------------------------------------------------

/** The KV record that makes one pickup cycle of an issue dispatch exactly once. */
interface DispatchRecord {
  /** Where the dispatch stands (see DISPATCH_TRANSITIONS). */
  state: DispatchState;
  /** The label that asked for this cycle's job. */
  pickup: string;
  /** The label that says the job runs. */
  busy: string;
  /** The mcp-coder command the job runs. */
  workflow: string;
  /** The Jenkins job triggered. */
  jobPath: string;
  /** The Jenkins parameters sent: a later run finds the build by them. */
  params: Record<string, string>;
  /** Unique per claim, sent as the REQUEST_ID_PARAM parameter. */
  requestId: string;
  /** The run that claimed the cycle, or moves it to the failure label: its lease says if alive. */
  runId: string;
  /** When the cycle was claimed (epoch ms). */
  claimedAt: number;
  /** When the record last changed (epoch ms). */
  updatedAt: number;
  /** The Jenkins queue item, once Jenkins named it. */
  queueUrl?: string;
  /** The build, once Jenkins started it and a run saw it. */
  buildUrl?: string;
  /** When reconciliation last asked Jenkins about the build (epoch ms). */
  checkedAt?: number;
  /** What Jenkins last said: a build result, or QUEUED, RUNNING, CANCELLED, MISSING. */
  result?: string;
  /**
   * The issue's `updated_at` when its events last showed the busy label on since the claim:
   * while the issue stays unchanged (a label change changes it), they are not read again.
   */
  ownedAsOf?: string;
  /**
   * Which build of the pickup cycle this is: 1 (or absent) the first, 2 the first retry, and so
   * on; in a `retrying` record, the attempt that waits to start. Its request id is the first
   * one's with `-aN` appended.
   */
  attempt?: number;
  /** `retrying`: when that attempt may start (epoch ms). */
  retryAt?: number;
}

/**
 * Where a dispatch stands. A record moves only along DISPATCH_TRANSITIONS, by a check-and-set
 * through its `DispatchEntry`. `triggering` and `queued` are unfinished: they count as active jobs
 * (the pending index), and the next run resumes them.
 */
type DispatchState =
  | "triggering"
  | "queued"
  | "done"
  | "retrying"
  | "released"
  | "failing"
  | "failed"
  | "ended"
  | "gone";

/**
 * The protocol: from each state (`none`: no record yet), the states a record may move to.
 * `DispatchEntry` refuses any other move. From every state a run may claim a new pickup cycle
 * (`triggering`, written before Jenkins is called) when the issue carries a pickup label;
 * after `done` only once GitHub confirms the label is back. From every state but `gone`, an
 * issue GitHub answers 404/410 for moves to `gone` and out of the cache (`forgetIssue()`).
 */
const DISPATCH_TRANSITIONS: Readonly<Record<DispatchState | "none", readonly DispatchState[]>> = {
  none: ["triggering"],
  // Jenkins answered 201/303, or the next run found the build: `queued`. Jenkins surely did
  // not queue it (it refused; the next run did not find it): `released`. An unknown outcome
  // (timeout, crash) stays `triggering`, looked up in Jenkins by the next run. The pickup
  // label gone and the claiming run dead: `done` (`closeFinishedCycles()`). A new claim: the
  // pickup label changed meanwhile.
  // A retry's trigger that Jenkins refused or the next run did not find: `retrying` again.
  triggering: ["queued", "released", "done", "triggering", "retrying", "gone"],
  // Busy label added and pickup label removed (`finishDispatch()`), or the pickup label gone
  // and the claiming run dead (`closeFinishedCycles()`): `done`.
  queued: ["done", "triggering", "gone"],
  // Reconciliation noted what Jenkins said, or that the busy label is still this cycle's
  // (`done`); the build failed, was cancelled or is missing: the busy label is being replaced by
  // the failure label (`failing`). The busy label was taken off since the claim and the one on
  // the issue now was set again by someone else (`ended`, `cycleIsCurrent()`). The build died
  // of the infrastructure with retries left: the next attempt waits (`retrying`).
  done: ["done", "failing", "ended", "retrying", "triggering", "gone"],
  // The issue keeps its busy label while the next attempt waits; claimed by a check-and-set
  // like any dispatch (`triggering`, with its attempt's request id).
  retrying: ["triggering", "ended", "gone"],
  released: ["triggering", "gone"],
  // The failure label replaced the busy label: `failed`. The busy label was gone already, or
  // the failure label does not fit (GitHub's label limit): back to `done`, checked again later.
  // The busy label on the issue is someone else's: `ended`.
  failing: ["failed", "done", "ended", "triggering", "gone"],
  failed: ["triggering", "gone"],
  // Stuck-job handling never acts on the record again: a busy label seen is someone else's.
  ended: ["triggering", "gone"],
  gone: ["triggering"],
};

/** Whether a record's build is a retry (attempt 2 or later) of its pickup cycle's job. */
function isRetry(record: DispatchRecord | null): boolean {
  return (record?.attempt ?? 1) > 1;
}

/** Whether a dispatch is under way: claimed or queued, its labels not moved yet. */
function isUnfinished(
  record: DispatchRecord | null,
): record is DispatchRecord & { state: "triggering" | "queued" } {
  return record?.state === "triggering" || record?.state === "queued";
}

/**
 * The handle on one issue's dispatch record, and the only way to write it. It holds the record
 * as read and its versionstamp, so every write is a check-and-set that answers false when
 * another run wrote the record since (in a dry run's store: always, as nothing is written);
 * the handle then stays behind and its later writes fail too. `claim()` claims a new pickup
 * cycle, `advance()` moves it along DISPATCH_TRANSITIONS; a move the table lacks throws.
 * Made by `DispatchRecords.get()` and `DispatchRecords.getMany()`.
 */
class DispatchEntry {
  /** The issue the record belongs to. */
  readonly number: number;
  #record: DispatchRecord | null;
  #versionstamp: string | null;
  #kv: RecordKv;

  /** For the store: the record as read, and the check-and-set writes of its key. */
  constructor(
    entry: { number: number; value: DispatchRecord | null; versionstamp: string | null },
    kv: RecordKv,
  ) {
    this.number = entry.number;
    this.#record = entry.value;
    this.#versionstamp = entry.versionstamp;
    this.#kv = kv;
  }

  /** The record as this handle last read or wrote it; null when there is none. */
  get record(): DispatchRecord | null {
    return this.#record;
  }

  /**
   * Claims a new pickup cycle: writes `record` (state `triggering`) over the one read. With
   * `capStamp`, only if no run claimed a job under a cap since the active jobs were counted.
   */
  async claim(record: DispatchRecord, capStamp?: string | null): Promise<boolean> {
    if (record.state !== "triggering") throw this.#refused(record.state, "a claim is `triggering`");
    return await this.#write(record, capStamp);
  }

  /** Moves the record on to `state`, with the fields of `patch`, in the same pickup cycle. */
  async advance(
    state: Exclude<DispatchState, "triggering">,
    patch: Partial<Omit<DispatchRecord, "state" | "updatedAt">> = {},
  ): Promise<boolean> {
    if (!this.#record) throw this.#refused(state, "there is no record");
    return await this.#write({ ...this.#record, ...patch, state, updatedAt: this.#kv.now() });
  }

  /**
   * Takes the issue out of the pending index, for a record that is finished or absent; false
   * when a run wrote the record since (a new claim, whose marker stays).
   */
  async dropPending(): Promise<boolean> {
    return await this.#kv.dropPending(this.#versionstamp);
  }

  /** Whether KV still holds the record this handle holds. */
  async isCurrent(): Promise<boolean> {
    return await this.#kv.versionstamp() === this.#versionstamp;
  }

  async #write(next: DispatchRecord, capStamp?: string | null): Promise<boolean> {
    const from = this.#record?.state ?? "none";
    if (!DISPATCH_TRANSITIONS[from].includes(next.state)) {
      throw this.#refused(next.state, "the protocol has no such step");
    }
    const versionstamp = await this.#kv.commit({
      versionstamp: this.#versionstamp,
      value: next,
      capStamp,
    });
    if (!versionstamp) return false;
    this.#record = next;
    this.#versionstamp = versionstamp;
    return true;
  }

  /** A move the protocol does not allow: a bug in the coordinator, not a lost race. */
  #refused(to: DispatchState, why: string): Error {
    const from = this.#record?.state ?? "none";
    return new Error(
      `Cannot move the dispatch of issue #${this.number} from ${from} to ${to}: ${why}`,
    );
  }
}

/** How a `DispatchEntry` reaches its record: the store's check-and-set writes of one key. */
interface RecordKv {
  now(): number;
  commit(
    change: { versionstamp: string | null; value: DispatchRecord; capStamp?: string | null },
  ): Promise<string | null>;
  dropPending(versionstamp: string | null): Promise<boolean>;
  versionstamp(): Promise<string | null>;
}

/**
 * The dispatch records: one per issue (`DispatchRecord`), written only through its
 * `DispatchEntry`, by check-and-set; an index of the unfinished ones (`pending()`), so a run
 * finds them without reading them all; and the key every claim under a cap bumps.
 */
class DispatchRecords {
  /** The records in `kv`: `Store` makes it. */
  constructor(private readonly kv: BoundedKv) {}

  /** The dispatch record of an issue, as the handle that alone can write it. */
  async get(repo: RepoConfig, number: number): Promise<DispatchEntry> {
    return this.#entry(repo, number, await this.#read(repo, number));
  }

  /** The dispatch records of several issues, read 10 at a time (Deno KV's getMany limit). */
  async getMany(repo: RepoConfig, numbers: readonly number[]): Promise<DispatchEntry[]> {
    const handles: DispatchEntry[] = [];
    for (let start = 0; start < numbers.length; start += 10) {
      const batch = numbers.slice(start, start + 10);
      const keys = batch.map((n) => dispatchKey(repo, n));
      const entries = await this.kv.retry(
        () => this.kv.db.getMany(keys),
        `reading the dispatch records of ${repo.name}`,
      );
      handles.push(...entries.map((entry, index) => this.#entry(repo, batch[index], entry)));
    }
    return handles;
  }

  /** Issue numbers whose dispatch is unfinished (triggering or queued). */
  async pending(repo: RepoConfig): Promise<number[]> {
    return await this.kv.retry(async () => {
      const numbers: number[] = [];
      for await (const entry of this.kv.db.list({ prefix: pendingPrefix(repo) })) {
        if (typeof entry.key.at(-1) === "number") numbers.push(entry.key.at(-1) as number);
      }
      return numbers;
    }, `reading the unfinished dispatches of ${repo.name}`);
  }

  /** Versionstamp of the key every claim under a cap bumps (null before the first). */
  async capStamp(): Promise<string | null> {
    return (await this.kv.retry(() => this.kv.db.get(capKey()), "reading the caps"))
      .versionstamp;
  }

  #entry(repo: RepoConfig, number: number, entry: Deno.KvEntryMaybe<unknown>): DispatchEntry {
    const value = isRecord(entry.value) ? entry.value : null;
    return new DispatchEntry({ number, value, versionstamp: entry.versionstamp }, {
      now: () => this.kv.deps.now(),
      commit: (change) => this.#commit(repo, number, change),
      dropPending: (versionstamp) => this.#dropPending(repo, number, versionstamp),
      versionstamp: async () => (await this.#read(repo, number)).versionstamp,
    });
  }

  #read(repo: RepoConfig, number: number): Promise<Deno.KvEntryMaybe<unknown>> {
    return this.kv.retry(
      () => this.kv.db.get(dispatchKey(repo, number)),
      `reading the dispatch record of #${number} of ${repo.name}`,
    );
  }

  /**
   * Replaces a dispatch record if nobody changed it since `versionstamp` was read, keeping the
   * pending index in step. With `capStamp` (what `capStamp()` gave when the active jobs were
   * counted) it also fails when any run claimed a job since, so a count is never acted on
   * twice. Returns the new versionstamp, or null when another run got there first (and always
   * in a read-only store).
   */
  async #commit(
    repo: RepoConfig,
    number: number,
    change: { versionstamp: string | null; value: DispatchRecord; capStamp?: string | null },
  ): Promise<string | null> {
    const { db } = this.kv;
    const key = dispatchKey(repo, number);
    const pending = pendingKey(repo, number);
    const unfinished = change.value.state === "triggering" || change.value.state === "queued";
    const result = await this.kv.retry(() => {
      let op = db.atomic().check({ key, versionstamp: change.versionstamp }).set(key, change.value);
      if (change.capStamp !== undefined) {
        op = op.check({ key: capKey(), versionstamp: change.capStamp }).set(capKey(), number);
      }
      return (unfinished ? op.set(pending, number) : op.delete(pending)).commit();
    }, `recording #${number} of ${repo.name} as ${change.value.state}`);
    return result.ok ? result.versionstamp : null;
  }

  /**
   * Drops an issue's pending marker if its record is still at `versionstamp` (finished, or
   * absent); false when a run wrote the record since, and in a read-only store.
   */
  async #dropPending(
    repo: RepoConfig,
    number: number,
    versionstamp: string | null,
  ): Promise<boolean> {
    const { db } = this.kv;
    const record = { key: dispatchKey(repo, number), versionstamp };
    const result = await this.kv.retry(
      () => db.atomic().check(record).delete(pendingKey(repo, number)).commit(),
      `closing the unfinished dispatch of #${number} of ${repo.name}`,
    );
    return result.ok;
  }
}

/** An issue's dispatch record: `DispatchRecord`. */
function dispatchKey(repo: RepoConfig, number: number): Deno.KvKey {
  return repoKey(repo, "dispatch", number);
}

/** The marker of an unfinished dispatch: the issue number. */
function pendingKey(repo: RepoConfig, number: number): Deno.KvKey {
  return repoKey(repo, "pending", number);
}

/** The prefix of every `pendingKey` of a repository. */
function pendingPrefix(repo: RepoConfig): Deno.KvKey {
  return repoKey(repo, "pending");
}

/** Bumped by every claim made under a cap: a claim fails if it moved since the count. */
function capKey(): Deno.KvKey {
  return [...KV_PREFIX, "caps"];
}

function isRecord(value: unknown): value is DispatchRecord {
  const record = value as DispatchRecord;
  return isTable(value) &&
    isDispatchState(record.state) &&
    typeof record.pickup === "string" && typeof record.requestId === "string" &&
    typeof record.runId === "string" && isTable(record.params);
}

function isDispatchState(value: unknown): value is DispatchState {
  return typeof value === "string" && value !== "none" &&
    Object.hasOwn(DISPATCH_TRANSITIONS, value);
}

// ---------------------------------------------------------------------------
// # Stuck jobs and gone issues
// ---------------------------------------------------------------------------

/**
 * Acts on issues stuck at a bot-busy label (see `reconcileIssue()`). A GitHub error about one
 * issue is reported and the others go on; returns why the whole run must stop, if so.
 */
async function reconcileRepo(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issues: Issue[]; report: RepoReport },
): Promise<StopReason | null> {
  const { report } = options;
  const busy = options.issues.filter((issue) => activeJob(issue, null));
  const entries = await ctx.store.records.getMany(repo, busy.map((issue) => issue.number));
  for (const [index, issue] of busy.entries()) {
    if (ctx.deps.stop.aborted) return null;
    try {
      const done = await reconcileIssue(ctx, repo, { issue, entry: entries[index] });
      if (done && "dispatched" in done) noteRetry(ctx, repo, { report, retry: done.dispatched });
      else if (done && "skipped" in done) {
        report.skipped.push({ issue: issue.number, code: done.code, reason: done.skipped });
      } else if (done) {
        report.stale.push(done);
        ctx.log.debug(`${repo.name}: stuck #${issue.number}: ${done.reason}`);
      }
    } catch (error) {
      if (error instanceof StoreError) throw error;
      const gone = goneStatus(error);
      if (gone !== null) {
        report.gone.push(await forgetIssue(ctx, repo, { number: issue.number, status: gone }));
        continue;
      }
      const message = `Cannot move stuck issue #${issue.number}: ${errorMessage(error)}`;
      addError(ctx, { repo, report, message });
      if (error instanceof GitHubError && error.kind === "rate-limit") return "rate-limit";
      if (!aboutOneIssue(error) && !(error instanceof JenkinsError)) return null;
    }
  }
  return null;
}

/**
 * One issue at a bot-busy label. Within the label's stale timeout: nothing (no request).
 * Past it, with a dispatch record of this coordinator whose cycle the label still belongs to
 * (`cycleIsCurrent()`): asks Jenkins about the build (at most every BUILD_RECHECK_MS,
 * MAX_BUILD_CHECKS per run) and moves the issue to the failure label when the build failed,
 * was aborted or not built, its queue item was cancelled, or it is missing. Anything else is
 * only reported, and so is a busy label this coordinator did not set (`foreignBusy()`).
 * With retries left (`max_retries`), Jenkins is asked once the build is older than the next
 * backoff, and a build that died of the infrastructure is retried instead (`retryIssue()`).
 */
async function reconcileIssue(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; entry: DispatchEntry },
): Promise<Reconciled> {
  const { issue, entry } = options;
  const now = ctx.deps.now();
  const job = activeJob(issue, entry.record);
  if (job && job.state !== "running") {
    // A waiting retry, or an unfinished one, which lives at the busy label; any other
    // unfinished dispatch is the dispatch path's to resume.
    const retry = job.state === "retrying" ||
      isRetry(job.record) && job.spec?.busy === job.record.busy;
    return retry ? await ctx.dispatcher.retry(ctx, repo, { issue, spec: job.spec!, entry }) : null;
  }
  // Not at a busy label.
  if (job?.state !== "running") return null;
  const { spec, record: ours } = job;
  if (!ours) return foreignBusy(ctx, { issue, spec });
  const timeout = staleTimeoutMs(ctx.config, spec.busy);
  const attempt = ours.attempt ?? 1;
  // With retries left, a dead build is looked for early, so that the backoff means something.
  const asked = attempt <= maxRetries(ctx, repo)
    ? Math.min(timeout, retryBackoffMs(ctx, repo, attempt + 1))
    : timeout;
  if (!(now - ours.claimedAt >= asked)) return null;
  const early = now - ours.claimedAt < timeout;
  const minutes = Math.floor((now - ours.claimedAt) / 60_000);
  const stale = staleReport(issue, spec, {
    since: ours.claimedAt,
    result: ours.result ?? null,
    buildUrl: ours.buildUrl ?? ours.queueUrl ?? null,
    code: "another_run",
    reason: "",
  });
  if (
    ours.state === "failing" && ours.runId !== ctx.runId &&
    await ctx.store.leases.runAlive(ours.runId)
  ) {
    return { ...stale, code: "another_run", reason: "another coordinator run is moving it" };
  }
  // Asked early, only Jenkins is: the retry checks the cycle before its claim (`retryIssue()`).
  if (!early && !await cycleIsCurrent(ctx, repo, { issue, entry })) {
    return await endCycle(ctx, repo, { issue, spec, entry });
  }
  const stuck = { issue, spec, entry, stale, minutes, ...(early ? { early } : {}) };
  if (ours.state === "failing") return await ctx.dispatcher.moveToFailed(ctx, repo, stuck);
  const checked = await ctx.dispatcher.checkBuild(ctx, repo, stuck);
  // Before the stale timeout only a retry is worth reporting.
  return early && checked?.action !== "retry" ? null : checked;
}

/** An issue at a bot-busy label past its stale timeout, dispatched by this coordinator. */
interface StuckIssue {
  /** The issue, as read. */
  issue: Issue;
  /** The workflow whose busy label it carries. */
  spec: WorkflowSpec;
  /** The handle on its dispatch record (`done` or `failing`). */
  entry: DispatchEntry;
  /** What is reported about it so far. */
  stale: StaleReport;
  /** How long it has been at the busy label. */
  minutes: number;
  /**
   * Asked about before its stale timeout, for a retry: only a build that died of the
   * infrastructure is acted on.
   */
  early?: boolean;
}

/**
 * A busy label this coordinator did not set: reported once the issue has not been updated for
 * longer than the label's stale timeout (setting a label updates the issue, so the label is at
 * least that old), never changed; null before.
 */
function foreignBusy(
  ctx: RunContext,
  options: { issue: Issue; spec: WorkflowSpec },
): StaleReport | null {
  const { issue, spec } = options;
  const since = Date.parse(issue.updatedAt);
  const now = ctx.deps.now();
  if (!(now - since >= staleTimeoutMs(ctx.config, spec.busy))) return null;
  const minutes = Math.floor((now - since) / 60_000);
  const reason =
    `not updated for ${minutes} min and not dispatched by this coordinator: left alone`;
  const found = { since, result: null, buildUrl: null, code: "foreign_busy", reason } as const;
  return staleReport(issue, spec, found);
}

/** A stuck issue, reported: nothing done about it (yet). `since` is epoch ms. */
function staleReport(
  issue: Issue,
  spec: WorkflowSpec,
  found: {
    since: number;
    result: string | null;
    buildUrl: string | null;
    code: Code;
    reason: string;
  },
): StaleReport {
  return {
    issue: issue.number,
    title: issue.title,
    workflow: spec.workflow,
    busy: spec.busy,
    since: new Date(found.since).toISOString(),
    result: found.result,
    buildUrl: found.buildUrl,
    action: "reported",
    to: null,
    code: found.code,
    reason: found.reason,
  };
}

/**
 * Whether the busy label on `issue` is still the one its record's dispatch set: the issue's
 * events show no removal of it since the claim, so nobody can have set it again. A record ends
 * its cycle only that way: the dispatch adds the label after the claim, and only a failure move
 * (recorded first) takes it off. The events are read only when the issue changed since they last
 * showed the label this cycle's (`ownedAsOf`, kept by a `done` record).
 */
async function cycleIsCurrent(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; entry: DispatchEntry },
): Promise<boolean> {
  const { issue, entry } = options;
  const record = entry.record!;
  if (record.ownedAsOf === issue.updatedAt) return true;
  const removed = await ctx.github.labelRemovedSince(
    repo,
    issue.number,
    record.busy,
    record.claimedAt,
  );
  if (removed !== null) return false;
  // Lost only to a run that changed the record meanwhile: then the events are read again later.
  if (record.state === "done") await entry.advance("done", { ownedAsOf: issue.updatedAt });
  return true;
}

/**
 * The busy label on a stuck issue was set again after its record's cycle: closes that cycle
 * (`ended`), so no later run acts on the record, and treats the label as one this coordinator
 * did not set.
 */
async function endCycle(
  ctx: RunContext,
  repo: RepoConfig,
  options: { issue: Issue; spec: WorkflowSpec; entry: DispatchEntry },
): Promise<StaleReport | null> {
  const { issue, spec, entry } = options;
  // Lost only to a run that changed the record meanwhile, which then looks again.
  if (await entry.advance("ended")) {
    ctx.log.info(
      `${repo.name}: #${issue.number}: "${spec.busy}" was taken off after this coordinator's dispatch and set again since: not this coordinator's to move`,
    );
  }
  return foreignBusy(ctx, { issue, spec });
}

/** The workflow whose bot-busy label an issue carries, if any. */
function busySpecOf(issue: Issue): WorkflowSpec | undefined {
  return WORKFLOWS.find((spec) => issue.labels.includes(spec.busy));
}

/** How long an issue may stay at `busy` before its build is looked at (ms). */
function staleTimeoutMs(config: Config, busy: string): number {
  const minutes = config.coordinator.staleTimeoutMinutes[busy] ??
    Math.max(...Object.values(STALE_TIMEOUT_MINUTES));
  return minutes * 60_000;
}

/**
 * Forgets an issue GitHub no longer shows: drops it from the cache and closes its dispatch
 * record, so no later run tries it again. Returns the build dispatched for it, reported once.
 */
async function forgetIssue(
  ctx: RunContext,
  repo: RepoConfig,
  options: { number: number; status: number },
): Promise<GoneReport> {
  const { number, status } = options;
  const entry = await ctx.store.records.get(repo, number);
  const record = entry.record;
  const current = record && record.state !== "gone" && record.state !== "released";
  const buildUrl = current ? record.buildUrl ?? record.queueUrl ?? null : null;
  const why = `${goneReason(status)} (${status})`;
  ctx.log.debug(
    `${repo.name}: #${number} is gone from GitHub: ${why}${
      buildUrl ? `; its build ${buildUrl} has no issue now` : ""
    }`,
  );
  // Losing this to another run closing it too is fine.
  if (record && record.state !== "gone") await entry.advance("gone");
  await ctx.store.cache.drop(repo, number);
  return { issue: number, status, buildUrl };
}

/**
 * The status of a GitHub error that says the issue itself is gone: 410 (deleted), 301 (moved:
 * transferred to another repository) or 404 (transferred where the token cannot see it, or no
 * longer visible to it), also as GraphQL NOT_FOUND for the issue. Null for any other error.
 */
function goneStatus(error: unknown): number | null {
  if (!(error instanceof GitHubError)) return null;
  if (error.kind === "moved") return 301;
  if (error.status === 404 || error.status === 410) return error.status;
  const errors = (error.cause as { errors?: { type?: string; path?: unknown[] }[] } | undefined)
    ?.errors;
  const issueMissing = Array.isArray(errors) &&
    errors.some((item) => item.type === "NOT_FOUND" && item.path?.includes("issue"));
  return error.kind === "graphql" && issueMissing ? 404 : null;
}

/** Why GitHub no longer shows an issue, from the status `goneStatus()` gave. */
function goneReason(status: number): string {
  if (status === 410) return "deleted";
  if (status === 301) return "transferred to another repository";
  return "transferred or no longer visible";
}

/** Whether a failure concerns one issue only (GitHub refused that request), not the service. */
function aboutOneIssue(error: unknown): boolean {
  return error instanceof GitHubError && error.kind === "other" && error.status >= 400 &&
    error.status < 500;
}

// ---------------------------------------------------------------------------
// ## Stuck jobs: retries
// ---------------------------------------------------------------------------

/**
 * What stuck-job handling came to for one issue: a report (see `StaleReport`), a retry started
 * or finished (`dispatched`), a retry that could not start this run (`skipped`), or nothing.
 */
type Reconciled =
  | StaleReport
  | { dispatched: DispatchReport }
  | { skipped: string; code: Code }
  | null;

/** An issue at its busy label whose next attempt waits, or whose retry is unfinished. */
interface RetryJob {
  /** The issue, as read. */
  issue: Issue;
  /** The workflow whose busy label it carries. */
  spec: WorkflowSpec;
  /** The handle on its dispatch record (`retrying`, or a retry's `triggering` or `queued`). */
  entry: DispatchEntry;
}

/**
 * The retry of a build that died of the infrastructure, exactly once per attempt, through the
 * dispatch protocol: a `retrying` record waits for its time (no request), then, if the busy
 * label is still this cycle's, is claimed by check-and-set within the caps (`triggering`, with
 * the request id `<first id>-aN`), triggered and recorded `queued`, commented on and `done`.
 * An unfinished retry an earlier run left is looked up in Jenkins by its request id first:
 * found, it is finished; not found, triggered again under the same id.
 */
async function retryIssue(ctx: RunContext, repo: RepoConfig, job: RetryJob): Promise<Reconciled> {
  const { issue, spec, entry } = job;
  const record = entry.record!;
  if (record.state === "retrying") {
    if (ctx.deps.now() < (record.retryAt ?? 0)) return null;
    if (!await cycleIsCurrent(ctx, repo, { issue, entry })) {
      return await endCycle(ctx, repo, { issue, spec, entry });
    }
    return await startRetry(ctx, repo, job);
  }
  if (record.runId !== ctx.runId && await ctx.store.leases.runAlive(record.runId)) {
    return { skipped: "another coordinator run is retrying it right now", code: "another_run" };
  }
  if (record.state === "triggering") {
    const found = await ctx.jenkins.find(record);
    const moved = found
      ? await entry.advance("queued", { queueUrl: found.url })
      : await entry.advance("retrying");
    if (!moved) {
      return { skipped: "another coordinator run is finishing its retry", code: "another_run" };
    }
    if (!found) {
      ctx.log.info(
        `${repo.name}: #${issue.number}: the earlier trigger of attempt ${record.attempt} never reached Jenkins; triggering it again`,
      );
      return await startRetry(ctx, repo, job);
    }
  }
  ctx.log.info(`${repo.name}: #${issue.number}: finishing an earlier run's retry`);
  return { dispatched: await finishRetry(ctx, repo, { issue, entry, note: "reconciled" }) };
}

/**
 * Claims a waiting retry within the caps, triggers it and finishes it. The issue is read again
 * first: a busy label gone meanwhile leaves the record as it is (no longer an active job).
 */
async function startRetry(ctx: RunContext, repo: RepoConfig, job: RetryJob): Promise<Reconciled> {
  const { entry } = job;
  const known = capReached(ctx, repo);
  if (known) return { skipped: known, code: "cap_reached" };
  const issue = await ctx.github.getIssue(repo, job.issue.number);
  if (issue.state !== "open" || !issue.labels.includes(entry.record!.busy)) {
    await ctx.store.cache.put(repo, issue).catch(() => {});
    return null;
  }
  const record = retryRecord(ctx, entry.record!);
  // Jenkins surely queued nothing: the same attempt waits again, its time already come.
  const started = await claimAndTrigger(ctx, repo, { issue, entry, record, back: "retrying" });
  if ("skip" in started) return { skipped: started.skip, code: started.code };
  return { dispatched: await finishRetry(ctx, repo, { issue, entry, urls: started }) };
}

/**
 * The claim of a waiting attempt: the same job and parameters, with the attempt's request id
 * (the first attempt's, `-aN` appended), claimed by this run now.
 */
function retryRecord(ctx: RunContext, waiting: DispatchRecord): DispatchRecord {
  const attempt = waiting.attempt ?? 2;
  // A random UUID never ends in `-a` and 1-3 digits: only a retry's id does.
  const requestId = `${waiting.requestId.replace(/-a\d{1,3}$/, "")}-a${attempt}`;
  const { queueUrl: _q, buildUrl: _b, checkedAt: _c, result: _r, retryAt: _t, ...kept } = waiting;
  return {
    ...kept,
    state: "triggering",
    attempt,
    requestId,
    params: { ...waiting.params, [REQUEST_ID_PARAM]: requestId },
    runId: ctx.runId,
    claimedAt: ctx.deps.now(),
    updatedAt: ctx.deps.now(),
  };
}

/** Comments on a queued retry (once per attempt) and records it `done`: the labels stay. */
async function finishRetry(
  ctx: RunContext,
  repo: RepoConfig,
  options: QueuedDispatch,
): Promise<DispatchReport> {
  const { issue, entry, urls } = options;
  const record: DispatchRecord = { ...entry.record!, ...urls };
  await commentOnce(ctx, repo, {
    number: issue.number,
    record,
    kind: "dispatch",
    body: retryComment(ctx, repo, record),
  });
  // Lost only to a run that finished or closed this cycle meanwhile.
  await entry.advance("done", urls);
  return { ...reportOf(issue, record, options.note), from: record.busy, attempt: record.attempt };
}

/** Reports a retry started or finished, and counts it for the caps like any dispatch. */
function noteRetry(
  ctx: RunContext,
  repo: RepoConfig,
  options: { report: RepoReport; retry: DispatchReport },
): void {
  const { report, retry } = options;
  report.dispatched.push(retry);
  if (retry.note !== "reconciled") countDispatch(ctx, repo);
  ctx.log.debug(`${repo.name}: ${dispatchVerb(retry)} ${retry.workflow} for #${retry.issue}`);
}

/**
 * A build found dead of the infrastructure with retries left: its record waits for the next
 * attempt (`retrying`), the backoff counted from now. The busy label stays.
 */
async function scheduleRetry(
  ctx: RunContext,
  repo: RepoConfig,
  stuck: StuckIssue,
): Promise<StaleReport> {
  const { issue, entry, stale } = stuck;
  const record = entry.record!;
  const attempt = (record.attempt ?? 1) + 1;
  const retryAt = ctx.deps.now() + retryBackoffMs(ctx, repo, attempt);
  if (!await entry.advance("retrying", { attempt, retryAt })) {
    return { ...stale, reason: "another coordinator run is checking it" };
  }
  const when = `attempt ${attempt} of ${maxRetries(ctx, repo) + 1} starts after ${
    new Date(retryAt).toISOString()
  }`;
  ctx.log.debug(`${repo.name}: #${issue.number}: its build ended ${record.result}: ${when}`);
  return {
    ...stale,
    action: "retry",
    reason: `the build ended ${record.result}, not by the job's own doing: ${when}`,
    code: "retry_scheduled",
  };
}

/**
 * Why a dead build is not retried, or null when it is: only NOT_BUILT, ABORTED, a cancelled
 * queue item and a missing build are, within the budget; never an ABORTED a person stopped
 * (Stop, `…/stop`), nor a NOT_BUILT superseded by a newer build of the same issue (the same
 * repository and job script). With no retries left, Jenkins is not asked anything more.
 */
async function whyNotRetried(
  ctx: RunContext,
  repo: RepoConfig,
  options: { record: DispatchRecord; build: BuildState },
): Promise<string | null> {
  const { record, build } = options;
  const max = maxRetries(ctx, repo);
  if (!RETRIED_RESULTS.has(build.result)) return `it ended ${build.result}, the job's own outcome`;
  if ((record.attempt ?? 1) > max) return max === 0 ? "max_retries = 0" : `${max} retries spent`;
  const causes = build.interruptions ?? [];
  if (causes.some((cause) => cause._class === USER_INTERRUPTION)) return "a person stopped it";
  const superseded = causes.find((cause) => cause._class === SUPERSEDED_INTERRUPTION);
  if (superseded) {
    const url = superseded.newerBuild?.url;
    // A newer build Jenkins no longer knows cannot be told apart: not retried, to be safe.
    const same = url ? await ctx.jenkins.sameWork(record, url) : null;
    if (same !== false) return "a newer build of the same issue took over";
  }
  return null;
}

/** Whether a record's build died of the infrastructure on its last allowed attempt. */
function retriesSpent(ctx: RunContext, repo: RepoConfig, record: DispatchRecord): boolean {
  const max = maxRetries(ctx, repo);
  return max > 0 && (record.attempt ?? 1) > max && RETRIED_RESULTS.has(record.result ?? "");
}

/** Retries per pickup cycle for `repo`: the repository's setting wins. */
function maxRetries(ctx: { config: Config }, repo: RepoConfig): number {
  return repo.maxRetries ?? ctx.config.coordinator.maxRetries;
}

/** The wait before attempt `attempt` (2 is the first retry): doubled each time (ms). */
function retryBackoffMs(ctx: { config: Config }, repo: RepoConfig, attempt: number): number {
  const base = repo.retryBackoffMs ?? ctx.config.coordinator.retryBackoffMs;
  return base * 2 ** Math.max(0, attempt - 2);
}

// ---------------------------------------------------------------------------
// # Caps
// ---------------------------------------------------------------------------

/**
 * Claims an issue if the caps allow. Under an active-jobs cap the claim also bumps a shared
 * KV key that the count was taken against (check-and-set): of two overlapping runs that
 * counted the same free slot, one claim fails, and that run counts again. Returns why the
 * issue was not claimed, or null once it is.
 */
async function claimWithinCaps(
  ctx: RunContext,
  repo: RepoConfig,
  options: { entry: DispatchEntry; record: DispatchRecord },
): Promise<Skip | null> {
  const { entry, record } = options;
  for (let attempt = 0; attempt < CAP_ATTEMPTS; attempt++) {
    const cap = await capCheck(ctx, repo);
    if ("skip" in cap) return cap;
    if (await entry.claim(record, cap.capStamp)) return null;
    // Lost to a run that wrote this record, or, with the record unchanged, to one that
    // claimed another job since the count: then count again.
    if (cap.capStamp === undefined || !await entry.isCurrent()) {
      return { code: "another_run", skip: "claimed by another coordinator run" };
    }
  }
  const skip = "other coordinator runs kept starting jobs while this one counted them";
  return { code: "another_run", skip };
}

/** Why an issue is not dispatched: a stable code (`CODES`) and in words (`skip`). */
type Skip = { code: Code; skip: string };

/**
 * Whether a cap forbids starting a job in `repo` now. If not, `capStamp` is what the claim
 * must find unchanged (undefined when no active-jobs cap is set).
 */
async function capCheck(
  ctx: RunContext,
  repo: RepoConfig,
): Promise<Skip | { capStamp?: string | null }> {
  const known = capReached(ctx, repo);
  if (known) return { code: "cap_reached", skip: known };
  const { maxActiveJobs } = ctx.config.coordinator;
  const reached = (key: string, skip: string): Skip => (
    ctx.tally.full.set(key, skip), { code: "cap_reached", skip }
  );
  if (maxActiveJobs === null && repo.maxActiveJobs === null) return {};
  // Read before counting: a claim made after this changes it and fails ours.
  const capStamp = await ctx.store.records.capStamp();
  const counts = await countActive(ctx, maxActiveJobs === null ? [repo] : ctx.config.repos);
  const total = [...counts.values()].reduce((sum, count) => sum + count, 0);
  if (maxActiveJobs !== null && total >= maxActiveJobs) {
    return reached(
      "",
      `cap reached (${total} active): [coordinator] max_active_jobs = ${maxActiveJobs}`,
    );
  }
  const here = counts.get(repo.id) ?? 0;
  if (repo.maxActiveJobs !== null && here >= repo.maxActiveJobs) {
    return reached(
      repo.id,
      `cap reached (${here} active): [coordinator.repos.${repo.name}] max_active_jobs = ${repo.maxActiveJobs}`,
    );
  }
  return { capStamp };
}

/**
 * A cap known reached without asking KV: the run's own cap, or an active-jobs cap this run
 * found reached, which stays so for the rest of the run (jobs ending are seen by later runs).
 */
function capReached(ctx: RunContext, repo: RepoConfig): string | undefined {
  const { maxDispatchesPerRun } = ctx.config.coordinator;
  if (maxDispatchesPerRun !== null && ctx.tally.dispatched >= maxDispatchesPerRun) {
    return `cap reached (${ctx.tally.dispatched} started by this run): [coordinator] max_dispatches_per_run = ${maxDispatchesPerRun}`;
  }
  return ctx.tally.full.get("") ?? ctx.tally.full.get(repo.id);
}

/**
 * Active jobs (`activeJob()`) per repository id, as the run's dispatcher counts them
 * (`Dispatcher.activeJobs()`).
 */
async function countActive(
  ctx: RunContext,
  repos: readonly RepoConfig[],
): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const repo of repos) counts.set(repo.id, await ctx.dispatcher.activeJobs(ctx, repo));
  return counts;
}

/**
 * The active jobs of a repository (see `activeJob()`), by issue number: its `issues` at a
 * bot-busy label and its unfinished dispatches, each with its dispatch record.
 */
async function activeJobsOf(
  store: Store,
  repo: RepoConfig,
  issues: Iterable<Issue>,
): Promise<{ number: number; issue: Issue | undefined; job: ActiveJob }[]> {
  const byNumber = new Map([...issues].map((issue) => [issue.number, issue]));
  const numbers = new Set(await store.records.pending(repo));
  for (const issue of byNumber.values()) if (activeJob(issue, null)) numbers.add(issue.number);
  const sorted = [...numbers].sort((a, b) => a - b);
  const entries = await store.records.getMany(repo, sorted);
  return sorted.flatMap((number, index) => {
    const issue = byNumber.get(number);
    const job = activeJob(issue, entries[index].record);
    // None for a pending marker whose record is finished: a run has not cleaned it up yet.
    return job ? [{ number, issue, job }] : [];
  });
}

/**
 * Whether an issue is an active job, and whose (see `ActiveJob`): from the issue (undefined when
 * the cache does not keep it) and its dispatch record (null: none, or not asked). Null if not.
 */
function activeJob(issue: Issue | undefined, record: DispatchRecord | null): ActiveJob | null {
  const spec = issue?.state === "open" && !issue.pullRequest ? busySpecOf(issue) : undefined;
  if (isUnfinished(record)) return { state: record.state, spec, record };
  if (!spec) return null;
  if (record?.state === "retrying" && record.busy === spec.busy) {
    return { state: "retrying", spec, record };
  }
  // A `done` or `failing` record set this busy label, unless the cycle ended since (`ended`).
  const ours = (record?.state === "done" || record?.state === "failing") &&
    record.busy === spec.busy;
  return { state: "running", spec, record: ours ? record : null };
}

/**
 * An active job: what the caps count, stuck-job handling acts on and `status` shows. Either
 * dispatched and not yet confirmed (`triggering`, `queued`: `record` is that unfinished dispatch,
 * whatever the labels say), or open at a bot-busy label (`running`, `spec` the label's workflow),
 * `record` then being the dispatch that set the label, or null when someone else did. At its
 * busy label with its next attempt waiting (`retrying`): shown, not counted by the caps (no
 * build runs), until the retry's claim.
 */
type ActiveJob =
  | { state: "triggering" | "queued"; spec: WorkflowSpec | undefined; record: DispatchRecord }
  | { state: "retrying"; spec: WorkflowSpec; record: DispatchRecord }
  | { state: "running"; spec: WorkflowSpec; record: DispatchRecord | null };

/** How many of `jobs` the caps count: all but the waiting retries, which run no build. */
function running(jobs: readonly { job: ActiveJob }[]): number {
  return jobs.filter(({ job }) => job.state !== "retrying").length;
}

/** Counts a job this run started (or would start), for the caps. */
function countDispatch(ctx: RunContext, repo: RepoConfig): void {
  ctx.tally.dispatched++;
  ctx.tally.lastRepo = repo.id;
  ctx.tally.perRepo.set(repo.id, (ctx.tally.perRepo.get(repo.id) ?? 0) + 1);
}

// ---------------------------------------------------------------------------
// # Comments
// ---------------------------------------------------------------------------

/**
 * Posts a comment once per pickup cycle, if comments are on. A hidden marker with the
 * request id is looked for first, so a crash or an overlapping run never doubles it, and again
 * after an answer that leaves open whether GitHub stored it (`GitHubError.unconfirmed`), before
 * posting again. Only a gone issue stops here: a comment that cannot be posted is warned about.
 */
async function commentOnce(
  ctx: RunContext,
  repo: RepoConfig,
  options: {
    number: number;
    record: Pick<DispatchRecord, "requestId">;
    kind: "dispatch" | "failed" | "untrusted";
    body: string;
  },
): Promise<void> {
  const { number, record } = options;
  if (!commentsOn(ctx, repo)) return;
  const marker = `<!-- coordinator:${record.requestId}:${options.kind} -->`;
  try {
    for (let attempt = 1;; attempt++) {
      if (await ctx.github.hasComment(repo, number, marker)) return;
      try {
        await ctx.github.addComment(repo, number, `${marker}\n${options.body}`);
        return;
      } catch (error) {
        if (!(error instanceof GitHubError && error.unconfirmed) || attempt >= GITHUB_ATTEMPTS) {
          throw error;
        }
        ctx.log.debug(`${repo.name}: ${error.message}; looking for the comment before posting`);
      }
    }
  } catch (error) {
    if (goneStatus(error) !== null) throw error;
    ctx.log.warn(`${repo.name}: cannot comment on #${number}: ${errorMessage(error)}`);
  }
}

/** Whether the coordinator comments on `repo`'s issues: the repository's setting wins. */
function commentsOn(ctx: RunContext, repo: RepoConfig): boolean {
  return repo.issueComments ?? ctx.config.coordinator.issueComments;
}

function dispatchComment(ctx: RunContext, record: DispatchRecord): string {
  const where = record.buildUrl ?? record.queueUrl;
  return [
    `The coordinator started the Jenkins job **${record.workflow}** for this issue${
      where ? `: ${where}` : ""
    } (job: ${ctx.jenkins.jobUrl(record.jobPath)}/).`,
    "",
    `The label moves from \`${record.pickup}\` to \`${record.busy}\` while the job runs.`,
  ].join("\n");
}

function retryComment(ctx: RunContext, repo: RepoConfig, record: DispatchRecord): string {
  const where = record.buildUrl ?? record.queueUrl;
  return [
    `The coordinator started the Jenkins job **${record.workflow}** again for this issue, ` +
    `attempt ${record.attempt} of ${maxRetries(ctx, repo) + 1}${where ? `: ${where}` : ""} ` +
    `(job: ${ctx.jenkins.jobUrl(record.jobPath)}/).`,
    "",
    "The previous build died of the infrastructure (never built, cancelled in the queue, gone, " +
    `or aborted by an agent going away), not of the job itself. The label stays \`${record.busy}\`.`,
  ].join("\n");
}

function failureComment(record: DispatchRecord, failed: string): string {
  const url = record.buildUrl ?? record.queueUrl;
  const what = record.result === "CANCELLED"
    ? "its Jenkins queue item was cancelled before the build started"
    : record.result === "MISSING"
    ? "Jenkins no longer knows its build (deleted, or it never started)"
    : `its Jenkins build ended ${record.result}`;
  const attempt = isRetry(record) ? ` on attempt ${record.attempt}` : "";
  return [
    `The **${record.workflow}** job for this issue did not succeed: ${what}${attempt}${
      url ? ` (${url})` : ""
    }.`,
    "",
    `The coordinator moved the label from \`${record.busy}\` to \`${failed}\`.`,
    `What next: read the build's console output to see why; once the cause is fixed, set the ` +
    `label back to \`${record.pickup}\` to run the job again.`,
  ].join("\n");
}

// ---------------------------------------------------------------------------
// # Check
// ---------------------------------------------------------------------------

/**
 * `check`: the read-only preflight, one result per check, in the order a first run meets them.
 * Writes nothing anywhere; GitHub and Jenkins are only read.
 */
async function checkCommand(
  options: Options<"check">,
  deps: Deps,
  redactor: Redactor,
): Promise<CommandResult> {
  const checked = await checkConfig(deps, options, redactor);
  const again = pasteable("check", options.all ? [] : ["--repo", options.repo!], options);
  if (Array.isArray(checked)) {
    return { kind: "check", checks: [...checked, await checkKv(deps, options)], again };
  }
  const { config, repos, github, jenkins } = checked.setup;
  const checks = [
    ...checked.results,
    ...await checkGitHub(github, { config, repos, given: options }),
    ...await checkJenkins(jenkins, config, repos),
    await checkKv(deps, options, config.coordinator.kvTimeoutMs),
  ];
  return { kind: "check", checks, again };
}

/** One line of `check`: what was checked, how it went, and for a failure how to fix it. */
interface CheckResult {
  /** `fail` makes `check` exit 1; `warn` does not. */
  status: "ok" | "warn" | "fail";
  /** What was checked, e.g. `GitHub repository acme/alpha (alpha)`. */
  subject: string;
  /** What was found; for a failure, also how to fix it. */
  detail: string;
}

/** What `check` works with, and the config's lines; or the lines saying why there is nothing. */
async function checkConfig(
  deps: Deps,
  options: Options<"check">,
  redactor: Redactor,
): Promise<{ setup: Setup<"none">; results: CheckResult[] } | CheckResult[]> {
  try {
    // Never `config-created`: with `create: false` a missing file is an error. The KV store is
    // checked on its own (`checkKv()`), also when the config is not valid.
    const setup = await setUp(deps, redactor, options, {
      logLevel: "WARNING",
      create: false,
      github: true,
      jenkins: true,
      kv: "none",
      repos: options,
      quiet: true,
    }) as Setup<"none">;
    const { config, repos } = setup;
    const names = repos.map((repo) => repo.name).join(", ");
    const results: CheckResult[] = [
      { status: "ok", subject: "config", detail: `${config.source} is valid; checking ${names}` },
      ...config.warnings.map((detail): CheckResult => ({
        status: "warn",
        subject: "config",
        detail,
      })),
    ];
    return { setup, results };
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    return error.message.split("\n").map((detail) => ({
      status: "fail",
      subject: "config",
      detail,
    }));
  }
}

/** The GitHub half of `check`: token, rate limit, then per repository access and labels. */
async function checkGitHub(
  github: GitHub,
  options: { config: Config; repos: readonly RepoConfig[]; given: { config?: string } },
): Promise<CheckResult[]> {
  const { config, repos } = options;
  const subject = `GitHub token (${config.github.apiUrl})`;
  let limit: Awaited<ReturnType<GitHub["rateLimit"]>>;
  try {
    limit = await github.rateLimit();
  } catch (error) {
    return [{ status: "fail", subject, detail: errorMessage(error) }];
  }
  if (limit && limit.remaining === 0) {
    const detail = `rate limit exhausted (0 of ${limit.limit} left); it resets at ${limit.reset}`;
    return [{ status: "fail", subject, detail: `${detail}: check again after that` }];
  }
  const results: CheckResult[] = [{
    status: "ok",
    subject,
    detail: limit
      ? `accepted; ${limit.remaining} of ${limit.limit} requests left this hour`
      : "GET /rate_limit answered 404: rate limiting is off (the GitHub Enterprise Server " +
        "default) or api_url is no GitHub API; the repository checks below tell",
  }];
  for (const repo of repos) {
    const where = `GitHub repository ${repo.owner}/${repo.repo} (${repo.name})`;
    try {
      const { fullName, permissions } = await github.getRepo(repo);
      results.push(roleLine(where, repoRole(permissions)));
      results.push(gatesLine(where, { config, repo }, repoRole(permissions)));
      if (fullName.toLowerCase() !== `${repo.owner}/${repo.repo}`.toLowerCase()) {
        results.push({
          status: "warn",
          subject: where,
          detail: `GitHub calls it ${fullName} now (renamed or transferred; its old name ` +
            `redirects reads, not writes: runs skip its issues): set repo_url to the new name`,
        });
      }
      const labels = pasteable("labels", ["--repo", repo.name], options.given);
      results.push(
        ...labelLines(
          `labels of ${repo.owner}/${repo.repo}`,
          labels,
          await github.listLabels(repo),
        ),
      );
    } catch (error) {
      results.push({ status: "fail", subject: where, detail: errorMessage(error) });
    }
  }
  return results;
}

/** Whether the token's account may move labels on issues (triage or higher). */
function roleLine(subject: string, role: string | null): CheckResult {
  if (role === null) {
    return {
      status: "warn",
      subject,
      detail: "readable, but GitHub does not say what the token may do there; " +
        "moving labels needs triage access or higher",
    };
  }
  if (role === "pull" || role === "none") {
    return {
      status: "fail",
      subject,
      detail: `readable, but the token's account has ${role} access: moving labels needs ` +
        "triage or higher: give it the Triage or Write role on the repository",
    };
  }
  const note = role === "triage" ? "; creating labels (the labels command) needs write" : "";
  return {
    status: "ok",
    subject,
    detail: `readable; the token's account has ${role} access and may move labels${note}`,
  };
}

/**
 * The gates of a repository (`Gates`): who may trigger, and whether GitHub's "blocked by" holds
 * issues; and its retry budget for dead builds. Reading people's roles needs push access: below
 * it the trigger holds every issue.
 */
function gatesLine(
  subject: string,
  ctx: { config: Config; repo: RepoConfig },
  role: string | null,
): CheckResult {
  const gates = gatesOf(ctx.config, ctx.repo);
  const { triggerMinRole: min, trustedActors } = gates;
  const by = trustedActors.length > 0 ? `, or by: ${trustedActors.join(", ")}` : "";
  const trigger = min === null ? "any label (off)" : `label by ${min} or above${by}`;
  const blind = min !== null && role !== null && ["none", "pull", "triage"].includes(role);
  const warning = blind
    ? `, but reading people's roles needs push access and the token's account has ${role}: ` +
      "labels count only from trusted_actors until it has Write"
    : "";
  const dependencies = gates.respectIssueDependencies
    ? "blocked issues wait (respect_issue_dependencies)"
    : "ignored (respect_issue_dependencies = false)";
  const retries = maxRetries(ctx, ctx.repo);
  const budget = retries === 0
    ? "off (max_retries = 0)"
    : `up to ${retries} per pickup, the first ${
      retryBackoffMs(ctx, ctx.repo, 2) / 60_000
    } min after the build died`;
  return {
    status: blind ? "warn" : "ok",
    subject,
    detail: `trigger: ${trigger}${warning}; GitHub's "blocked by": ${dependencies}; ` +
      `retries of dead builds: ${budget}`,
  };
}

/** The highest repository role GitHub reports for the token's account, or null. */
function repoRole(permissions: Record<string, boolean> | null): string | null {
  if (!permissions) return null;
  return ["admin", "maintain", "push", "triage", "pull"].find((role) => permissions[role]) ??
    "none";
}

/**
 * Missing workflow labels and labels that differ only in case, matched as GitHub does; `labels`
 * is the command line that creates and updates them.
 */
function labelLines(
  subject: string,
  labels: string,
  existing: readonly LabelSpec[],
): CheckResult[] {
  const plan = planLabels(existing);
  const results: CheckResult[] = [];
  if (plan.create.length > 0) {
    results.push({
      status: "fail",
      subject,
      detail: `${plan.create.length} of ${LABELS.length} workflow labels missing: ${
        listNames(plan.create.map((label) => label.name))
      }: run \`${labels}\``,
    });
  }
  if (plan.caseDiffers.length > 0) {
    // The coordinator compares label names exactly: an issue labelled "Status-02:…" is not
    // picked up, and adding a busy label GitHub spells differently cannot be confirmed.
    const used = new Set(WORKFLOWS.flatMap((spec) => [spec.pickup, spec.busy]));
    const names = plan.caseDiffers.map((item) => `"${item.name}" (not "${item.expected}")`);
    results.push({
      status: plan.caseDiffers.some((item) => used.has(item.expected)) ? "fail" : "warn",
      subject,
      detail: `${listNames(names)} differ only in case; the coordinator and mcp-coder match ` +
        "label names exactly: rename them on GitHub",
    });
  }
  if (results.length === 0) {
    const note = plan.update.length > 0
      ? ` (${plan.update.length} with another colour or description: \`${labels}\` sets them)`
      : "";
    results.push({
      status: "ok",
      subject,
      detail: `all ${LABELS.length} workflow labels present${note}`,
    });
  }
  return results;
}

function listNames(names: readonly string[]): string {
  const shown = names.slice(0, NAMES_SHOWN).join(", ");
  return names.length > NAMES_SHOWN ? `${shown} and ${names.length - NAMES_SHOWN} more` : shown;
}

/** The switch guide, where the check lines' longer stories are. */
const SWITCH_GUIDE = "docs/switching.md";

/** How many names a check line lists before "and N more" (--json has them all). */
const NAMES_SHOWN = 5;

/** The Jenkins half of `check`: sign-in, crumbs, then each distinct executor job. */
async function checkJenkins(
  jenkins: Jenkins,
  config: Config,
  repos: readonly RepoConfig[],
): Promise<CheckResult[]> {
  const subject = `Jenkins (${config.jenkins.serverUrl})`;
  const results: CheckResult[] = [];
  try {
    const me = await jenkins.whoAmI();
    if (me.anonymous) {
      return [{
        status: "fail",
        subject,
        detail: "took the request as anonymous: check [jenkins] username and api_token",
      }];
    }
    const version = me.version ? `Jenkins ${me.version}` : "reachable";
    results.push({ status: "ok", subject, detail: `${version}; signed in as "${me.user}"` });
    const crumb = await jenkins.crumbStatus();
    if (crumb !== 200 && crumb !== 404) {
      results.push({
        status: "warn",
        subject,
        detail: `the crumb issuer answered ${crumb}: an API token in api_token needs no ` +
          "crumb, but a password would be refused",
      });
    }
  } catch (error) {
    return [{ status: "fail", subject, detail: errorMessage(error) }];
  }
  const jobs = Map.groupBy(repos, (repo) => repo.executorJobPath);
  for (const [jobPath, users] of jobs) results.push(...await checkJob(jenkins, jobPath, users));
  return results;
}

/** One executor job: it exists, can be built and defines every parameter a dispatch sends. */
async function checkJob(
  jenkins: Jenkins,
  jobPath: string,
  repos: readonly RepoConfig[],
): Promise<CheckResult[]> {
  const subject = `Jenkins job "${jobPath}" (${repos.map((repo) => repo.name).join(", ")})`;
  let job: Awaited<ReturnType<Jenkins["jobParameters"]>>;
  try {
    job = await jenkins.jobParameters(jobPath);
  } catch (error) {
    return [{ status: "fail", subject, detail: errorMessage(error) }];
  }
  if (!job.buildable) {
    return [{ status: "fail", subject, detail: "is disabled: enable it in Jenkins" }];
  }
  const sent = Object.keys(jobParams(repos[0], { branch: "", command: "", requestId: "" }));
  const required = sent.filter((name) => name !== REQUEST_ID_PARAM);
  const defined = new Set(job.parameters ?? []);
  const missing = required.filter((name) => !defined.has(name));
  if (job.parameters === null || missing.length > 0) {
    const add = job.parameters === null ? required : missing;
    const what = job.parameters === null
      ? "is not parameterized"
      : `does not define ${missing.join(", ")}`;
    return [{
      status: "fail",
      subject,
      detail: `${what}; Jenkins drops parameters a job does not define: add ${add.join(", ")} as ${
        add.length === 1 ? "a string parameter" : "string parameters"
      } ("This project is parameterized")`,
    }];
  }
  if (!defined.has(REQUEST_ID_PARAM)) {
    return [{
      status: "warn",
      subject,
      detail: `no ${REQUEST_ID_PARAM} parameter, which finds a build again after a crash: ` +
        `add it (${SWITCH_GUIDE}#add-coordinator_request_id-to-the-executor-job)`,
    }];
  }
  return [{ status: "ok", subject, detail: `defines ${sent.join(", ")}` }];
}

/** Whether the KV store opens and reads; a missing file is not created. */
async function checkKv(
  deps: Deps,
  options: Options<"check">,
  timeoutMs = DEFAULT_KV_TIMEOUT_SECONDS * 1000,
): Promise<CheckResult> {
  let path: string | undefined;
  try {
    path = kvPath(options.kv, deps.env);
  } catch (error) {
    return { status: "fail", subject: "KV store", detail: errorMessage(error) };
  }
  const subject = `KV store ${path ?? "(the deployment's own)"}`;
  if (path === ":memory:") {
    return {
      status: "warn",
      subject,
      detail:
        "in memory: a run forgets its dispatch records when it ends; use a file for real runs",
    };
  }
  const file = path !== undefined && !/^https?:\/\//.test(path);
  if (file && !(await deps.fileMode(path!).then(() => true, () => false))) {
    return { status: "ok", subject, detail: "does not exist yet; the first run creates it" };
  }
  try {
    const options = { path, timeoutMs, readOnly: true, fallback: false };
    (await openStore(deps, options)).close();
    return { status: "ok", subject, detail: "opens and reads" };
  } catch (error) {
    const why = error instanceof StoreError ? error.detail : errorMessage(error);
    return { status: "fail", subject, detail: `cannot open it: ${why}: ${storeAdvice(path)}` };
  }
}

/** The human-readable `check` report: one line per check, then a verdict; `again` reruns it. */
function formatChecks(checks: readonly CheckResult[], again: string): string {
  const tags = { ok: "ok  ", warn: "WARN", fail: "FAIL" } as const;
  const lines = checks.map((check) => `${tags[check.status]}  ${check.subject}: ${check.detail}`);
  const failed = checks.filter((check) => check.status === "fail").length;
  const warned = checks.filter((check) => check.status === "warn").length;
  const warnings = warned === 1 ? "1 warning" : `${warned} warnings`;
  lines.push(
    failed > 0
      ? `${failed} of ${checks.length} checks failed${
        warned ? `, ${warnings}` : ""
      }: fix the FAIL lines, then run \`${again}\` again`
      : `All ${checks.length} checks passed${warned ? ` (${warnings})` : ""}`,
  );
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------
// # Labels
// ---------------------------------------------------------------------------

/** `labels`: creates and updates mcp_coder's workflow labels, repository by repository. */
async function labelsCommand(
  options: Options<"labels">,
  deps: Deps,
  redactor: Redactor,
): Promise<CommandResult> {
  const setup = await setUp(deps, redactor, options, {
    logLevel: "INFO",
    create: !options.dryRun,
    github: true,
    jenkins: false,
    kv: "none",
    repos: options,
  });
  if ("kind" in setup) return setup;
  const reports: LabelsReport[] = [];
  const progress = options.dryRun ? undefined : labelsProgress(deps, setup);
  for (const repo of setup.repos) {
    // A signal stops at the next label write (the first Ctrl-C; a second one exits at once).
    const report = await syncLabels(setup.github, repo, {
      dryRun: options.dryRun,
      stop: deps.stop,
      progress,
    });
    // The report says it (stdout); the log only at DEBUG, so a `>> log 2>&1` file has it once.
    if (report.error && !report.interrupted) setup.log.debug(`${repo.name}: ${report.error}`);
    reports.push(report);
  }
  const again = pasteable("labels", options.all ? ["--all"] : ["--repo", options.repo!], options);
  return { kind: "labels", dryRun: options.dryRun, reports, again };
}

/** What `labels` changes (or, in a dry run, would change) in one repository. */
interface LabelsReport {
  /** The `[coordinator.repos.NAME]` name. */
  name: string;
  /** `owner/repo` on GitHub. */
  repository: string;
  /** Labels created (in a dry run: that would be). */
  created: LabelSpec[];
  /** Labels whose colour or description was set; `name` is the label's name on GitHub. */
  updated: { name: string; changes: string[] }[];
  /** Workflow labels that were right already. */
  unchanged: number;
  /** Labels GitHub has under a name that differs only in case; their names are left alone. */
  caseDiffers: { name: string; expected: string }[];
  /** The error that stopped this repository's changes (the first one); null if none. */
  error: string | null;
  /** A signal stopped the command before this repository's writes were all done. */
  interrupted: boolean;
}

/**
 * How `labels` shows its progress on stderr, through the command's log: one line per repository
 * as it starts its writes (in a log file, that is all); on a terminal also a live count.
 */
function labelsProgress(deps: Deps, setup: Setup<"none">): LabelsProgress {
  const live = deps.stderrIsTerminal();
  const pace = setup.config.coordinator.githubWriteIntervalMs / 1000;
  let [name, total] = ["", 0];
  return {
    start(report, writes) {
      [name, total] = [`${report.repository} (${report.name})`, writes];
      const paced = pace > 0 ? `, ${pace} s apart: about ${Math.ceil(writes * pace)} s` : "";
      setup.log.info(
        writes === 0
          ? `${name}: all ${LABELS.length} workflow labels right already`
          : `${name}: ${writes === 1 ? "1 label write" : `${writes} label writes`}${paced}`,
      );
    },
    wrote(done) {
      if (live) deps.stderr(`\r\x1b[K${name}: ${done} of ${total} label writes done`);
    },
    end() {
      if (live && total > 0) deps.stderr("\r\x1b[K");
    },
  };
}

/** What `syncLabels()` tells as it goes: `labelsProgress()` shows it. */
interface LabelsProgress {
  /** A repository's labels are read: `writes` writes follow. */
  start(report: LabelsReport, writes: number): void;
  /** `done` of them are done. */
  wrote(done: number): void;
  /** The repository is done, or stopped. */
  end(): void;
}

/**
 * Creates the missing workflow labels of one repository and sets colour and description
 * where they differ; never deletes or renames. Stops the repository at the first error, and
 * before the next write once `stop` is aborted (then it is `interrupted`).
 */
async function syncLabels(
  github: GitHub,
  repo: RepoConfig,
  options: { dryRun: boolean; stop?: AbortSignal; progress?: LabelsProgress },
): Promise<LabelsReport> {
  const { dryRun, stop, progress } = options;
  const report: LabelsReport = {
    name: repo.name,
    repository: `${repo.owner}/${repo.repo}`,
    created: [],
    updated: [],
    unchanged: 0,
    caseDiffers: [],
    error: null,
    interrupted: false,
  };
  if (stop?.aborted) {
    return { ...report, error: "not processed: interrupted by a signal", interrupted: true };
  }
  try {
    const plan = planLabels(await github.listLabels(repo));
    report.unchanged = plan.unchanged;
    report.caseDiffers = plan.caseDiffers;
    const writes = [
      ...plan.create.map((label) => ({
        send: () => github.createLabel(repo, label),
        done: () => report.created.push(label),
      })),
      ...plan.update.map(({ name, label, changes }) => ({
        send: () => github.updateLabel(repo, name, label),
        done: () => report.updated.push({ name, changes }),
      })),
    ];
    progress?.start(report, writes.length);
    for (const [index, write] of writes.entries()) {
      if (stop?.aborted) {
        report.error = `interrupted by a signal after ${index} of ${writes.length} label writes`;
        report.interrupted = true;
        break;
      }
      if (!dryRun) await write.send();
      write.done();
      progress?.wrote(index + 1);
    }
  } catch (error) {
    report.error = errorMessage(error);
  } finally {
    progress?.end();
  }
  return report;
}

/** What `labels` would do in a repository that has `existing` labels. */
function planLabels(existing: readonly LabelSpec[]): {
  create: LabelSpec[];
  update: { name: string; label: LabelSpec; changes: string[] }[];
  unchanged: number;
  caseDiffers: { name: string; expected: string }[];
} {
  // GitHub label names are unique ignoring case, and so is its matching.
  const byName = new Map(existing.map((label) => [label.name.toLowerCase(), label]));
  const plan: ReturnType<typeof planLabels> = {
    create: [],
    update: [],
    unchanged: 0,
    caseDiffers: [],
  };
  for (const label of LABELS) {
    const found = byName.get(label.name.toLowerCase());
    if (!found) {
      plan.create.push(label);
      continue;
    }
    if (found.name !== label.name) {
      plan.caseDiffers.push({ name: found.name, expected: label.name });
    }
    const changes: string[] = [];
    if (found.color.toLowerCase() !== label.color) {
      changes.push(`color ${found.color || "none"} -> ${label.color}`);
    }
    if (found.description !== label.description) changes.push("description");
    if (changes.length > 0) plan.update.push({ name: found.name, label, changes });
    else plan.unchanged++;
  }
  return plan;
}

/** The human-readable `labels` report; `again` is the command that finishes an interrupted one. */
function formatLabels(
  reports: readonly LabelsReport[],
  options: { dryRun: boolean; again: string },
): string {
  const { dryRun } = options;
  const lines: string[] = [];
  const [create, update] = dryRun ? ["would create", "would update"] : ["created", "updated"];
  for (const report of reports) {
    lines.push(
      `${report.repository} (${report.name}): ${create} ${report.created.length}, ${update} ${report.updated.length}, ${report.unchanged} already right`,
    );
    for (const label of report.created) {
      lines.push(`  ${create} ${label.name} (${label.color}: ${label.description})`);
    }
    for (const item of report.updated) {
      lines.push(`  ${update} ${item.name}: ${item.changes.join(", ")}`);
    }
    for (const item of report.caseDiffers) {
      lines.push(
        `  kept the name "${item.name}" (differs from "${item.expected}" only in case; labels never renames)`,
      );
    }
    if (report.error) lines.push(`  error: ${report.error}`);
  }
  const total = (pick: (report: LabelsReport) => number) =>
    reports.reduce((sum, report) => sum + pick(report), 0);
  const errors = reports.filter((report) => report.error).length;
  lines.push(
    `${dryRun ? "Dry run: would create" : "Created"} ${total((r) => r.created.length)}, ${
      dryRun ? "would update" : "updated"
    } ${total((r) => r.updated.length)} labels in ${reports.length} repositor${
      reports.length === 1 ? "y" : "ies"
    }${errors ? `; ${errors} with errors` : ""}`,
  );
  if (reports.some((report) => report.interrupted)) {
    lines.push(`Interrupted: run \`${options.again}\` to write the rest`);
  }
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------
// # Test
// ---------------------------------------------------------------------------

/**
 * `test`: one verification build on a repository's executor. Reads the config and
 * calls Jenkins only: no GitHub request, no KV, no lease.
 */
async function testCommand(
  options: Options<"test">,
  deps: Deps,
  redactor: Redactor,
): Promise<CommandResult> {
  const setup = await setUp(deps, redactor, options, {
    logLevel: options.logLevel,
    create: true,
    github: false,
    jenkins: true,
    kv: "none",
    repos: { all: false, repo: options.repo },
  });
  if ("kind" in setup) return setup;
  const [repo] = setup.repos;
  const report = await triggerTestJob(setup.jenkins, repo, {
    branch: options.branchName,
    logLevel: repo.jobLogLevel ?? setup.config.coordinator.jobLogLevel,
    requestId: deps.randomId(),
  });
  setup.log.debug(`${repo.name}: queued a test build of ${repo.executorJobPath}`);
  return { kind: "test", report };
}

/** What `test` queued in Jenkins (`--json` adds `ok` and `exitCode`). */
interface TestReport {
  repo: string;
  repository: string;
  job: string;
  branch: string;
  queueUrl: string | null;
  /** Null while the build waits in the Jenkins queue. */
  buildUrl: string | null;
  requestId: string;
  /** Jenkins answered 303: this very request already waited in its queue. */
  existing: boolean;
}

/**
 * mcp_coder's `coordinator test`: queues one build of the repository's executor job
 * running the verification script on `branch`. Asks nothing of GitHub and KV.
 */
async function triggerTestJob(
  jenkins: Jenkins,
  repo: RepoConfig,
  options: { branch: string; logLevel: string; requestId: string },
): Promise<TestReport> {
  const { branch, requestId } = options;
  const command = testScript({ os: repo.executorOs, logLevel: options.logLevel });
  const queue = await jenkins.trigger(
    repo.executorJobPath,
    jobParams(repo, { branch, command, requestId }),
  );
  return {
    repo: repo.name,
    repository: `${repo.owner}/${repo.repo}`,
    job: repo.executorJobPath,
    branch,
    queueUrl: queue.queueUrl,
    buildUrl: await jenkins.buildUrl(queue.queueUrl),
    requestId,
    existing: queue.existing,
  };
}

/** The human-readable report of `test`. */
function formatTestReport(report: TestReport): string {
  const lines = [
    `Queued a test build of ${report.job} for ${report.repository} (${report.repo}) on ${report.branch}`,
    `queue: ${report.queueUrl ?? "(Jenkins named no queue item)"}`,
    `build: ${report.buildUrl ?? "not started yet (Jenkins starts it once it leaves the queue)"}`,
  ];
  if (report.existing) lines.push("Jenkins had this very request queued already: no new build");
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------
// # Status
// ---------------------------------------------------------------------------

/** `status`: reads the config and KV, asks neither GitHub nor Jenkins, writes nothing. */
async function statusCommand(
  options: Options<"status">,
  deps: Deps,
  redactor: Redactor,
): Promise<CommandResult> {
  // Never `config-created`: with `create: false` a missing file is an error.
  const { config, repos, store } = await setUp(deps, redactor, options, {
    logLevel: "INFO",
    create: false,
    github: false,
    jenkins: false,
    // An absent KV file is not created; a store that cannot be read is an error.
    kv: "read",
    repos: options,
    quiet: true,
  }) as Setup<"read">;
  try {
    const kv = await statusKv(deps, options.kv);
    if (typeof kv !== "string") return kv;
    const now = deps.now();
    const runs = await store.runs.lastRuns();
    const report = await Promise.all(
      repos.map((repo) => repoStatus(store, config, { repo, now, lastRun: runs.get(repo.id) })),
    );
    return { kind: "status", at: now, kv, repos: report };
  } finally {
    store.close();
  }
}

/**
 * The KV store `status` reads, as it shows it (a remote URL without credentials or query); or,
 * when that is a file that does not exist, the failure saying so: an empty report would look
 * healthy, and that is what a cron job of another user, with another default path, shows.
 */
async function statusKv(
  deps: Deps,
  flag: string | undefined,
): Promise<string | Extract<CommandResult, { kind: "failed" }>> {
  const path = kvPath(flag, deps.env);
  if (path === undefined) return "(the deployment's own)";
  if (/^https?:\/\//.test(path)) {
    const url = new URL(path);
    [url.username, url.password, url.search, url.hash] = ["", "", "", ""];
    return url.href;
  }
  if (path === ":memory:" || await deps.fileMode(path).then(() => true, () => false)) return path;
  const from = flag ? "--kv" : deps.env("COORDINATOR_KV") ? "COORDINATOR_KV" : "the default path";
  return {
    kind: "failed",
    message: `KV store ${path} (${from}) does not exist: no run has written there; pass the ` +
      "--kv (or COORDINATOR_KV) your runs use",
    error: "kv",
  };
}

/** What `status` shows for one repository. */
interface RepoStatus {
  name: string;
  repository: string;
  active: ActiveJobReport[];
  /** Issues at a busy label past its stale timeout, with how long they have been there. */
  stale: {
    issue: number;
    busy: string;
    minutes: number;
    timeoutMinutes: number;
    /** What KV knows about it (`stuckCode()`). */
    code: Code;
  }[];
  /** The issues the last run skipped, and why. */
  skipped: SkipItem[];
  /** How many more it skipped than `skipped` lists (a KV value holds a few hundred). */
  skippedOmitted: number;
  /** When that run finished with this repository; null if no run recorded it. */
  lastRun: string | null;
}

/** An active job as `status` shows it (see `activeJob()`). */
interface ActiveJobReport {
  issue: number;
  title: string;
  workflow: string;
  /**
   * `triggering` / `queued`: dispatched, labels not moved yet (or a retry under way); `running`:
   * at the busy label; `retrying`: at the busy label, its build dead, the next attempt waiting;
   * `finished`: at the busy label, but Jenkins said its build finished (`lastSeen`).
   */
  state: "triggering" | "queued" | "retrying" | "running" | "finished";
  /** When this coordinator dispatched it; null when something else set the busy label. */
  since: string | null;
  queueUrl: string | null;
  buildUrl: string | null;
  /** What Jenkins said when last asked (see `DispatchRecord.result`); null if never asked. */
  result: string | null;
  /**
   * The build's state as Jenkins last told a run (`result`) and when (ISO 8601); null when no
   * run has asked Jenkins about it since the dispatch (a run asks once it is past its timeout).
   */
  lastSeen: { state: string; at: string } | null;
  /** Past its busy label's stale timeout. */
  stale: boolean;
  /**
   * Which build of the pickup cycle it is (1 the first; for `retrying`, the one that waits);
   * null when this coordinator did not dispatch it.
   */
  attempt: number | null;
  /** Attempts allowed per pickup cycle: `max_retries` + 1. */
  maxAttempts: number;
  /** `retrying`: when the next attempt may start; null otherwise. */
  nextRetryAt: string | null;
}

/**
 * What `status` shows for one repository, from KV alone: its active jobs (`activeJobsOf()`),
 * those past their busy label's stale timeout, and the last run's skip list.
 */
async function repoStatus(
  store: Store,
  config: Config,
  options: { repo: RepoConfig; now: number; lastRun?: number },
): Promise<RepoStatus> {
  const { repo, now } = options;
  const { issues } = await store.cache.load(repo);
  const active: ActiveJobReport[] = [];
  const stale: RepoStatus["stale"] = [];
  for (const { number, issue, job } of await activeJobsOf(store, repo, issues.values())) {
    const { spec, record } = job;
    const startedAt = record?.claimedAt ?? (issue ? Date.parse(issue.updatedAt) : now);
    const minutes = Math.floor((now - startedAt) / 60_000);
    const timeout = spec ? staleTimeoutMs(config, spec.busy) : Infinity;
    if (spec && now - startedAt >= timeout) {
      const code = stuckCode(record);
      stale.push({
        issue: number,
        busy: spec.busy,
        minutes,
        timeoutMinutes: timeout / 60_000,
        code,
      });
    }
    active.push({
      issue: number,
      title: issue?.title ?? "",
      workflow: record?.workflow ?? spec!.workflow,
      state: job.state === "running" && finishedResult(record?.result) ? "finished" : job.state,
      since: record ? new Date(record.claimedAt).toISOString() : null,
      queueUrl: record?.queueUrl ?? null,
      buildUrl: record?.buildUrl ?? null,
      result: record?.result ?? null,
      lastSeen: record?.result !== undefined && record.checkedAt !== undefined
        ? { state: record.result, at: new Date(record.checkedAt).toISOString() }
        : null,
      stale: spec !== undefined && now - startedAt >= timeout,
      attempt: record ? record.attempt ?? 1 : null,
      maxAttempts: maxRetries({ config }, repo) + 1,
      nextRetryAt: job.state === "retrying" && record?.retryAt
        ? new Date(record.retryAt).toISOString()
        : null,
    });
  }
  const skipped = await store.runs.skipped(repo);
  const lastRun = options.lastRun ?? skipped?.at;
  return {
    name: repo.name,
    repository: `${repo.owner}/${repo.repo}`,
    active,
    stale,
    skipped: skipped?.items ?? [],
    skippedOmitted: skipped?.omitted ?? 0,
    // Not in the run index (no place, or a store an older version wrote): its skip list's time.
    lastRun: lastRun === undefined ? null : new Date(lastRun).toISOString(),
  };
}

/**
 * The code of a stuck issue in `status`, from its dispatch record alone: not this coordinator's
 * (`foreign_busy`), Jenkins' last word (`still_running`, `finished_not_moved`), else
 * `past_timeout` (the next run asks Jenkins, or moves it).
 */
function stuckCode(record: DispatchRecord | null): Code {
  if (!record) return "foreign_busy";
  if (record.result === "QUEUED" || record.result === "RUNNING") return "still_running";
  return record.result === "SUCCESS" || record.result === "UNSTABLE"
    ? "finished_not_moved"
    : "past_timeout";
}

/** Whether Jenkins' word on a build (`BuildState.result`) says it ended. */
function finishedResult(result: string | undefined): boolean {
  return result !== undefined && result !== "QUEUED" && result !== "RUNNING";
}

/** The human-readable `status` report of KV store `kv`. */
function formatStatus(repos: readonly RepoStatus[], kv: string): string {
  const lines = [`KV store ${kv}:`];
  for (const repo of repos) {
    const last = repo.lastRun ? `last run ${repo.lastRun}` : "no run recorded";
    lines.push(
      `${repo.repository} (${repo.name}): ${repo.active.length} active, ${repo.stale.length} stuck; ${last}`,
    );
    for (const job of repo.active) {
      const since = job.since ? ` since ${job.since}` : " (not dispatched by this coordinator)";
      // What Jenkins last said, and when.
      const seen = job.lastSeen;
      const result = seen ? ` [${seen.state} at ${seen.at}]` : job.result ? ` [${job.result}]` : "";
      const where = job.buildUrl ?? job.queueUrl;
      const url = where ? `: ${where}` : "";
      const attempt = job.attempt !== null && job.maxAttempts > 1
        ? `, attempt ${job.attempt} of ${job.maxAttempts}${
          job.nextRetryAt ? `, next retry at ${job.nextRetryAt}` : ""
        }`
        : "";
      lines.push(
        `  active #${job.issue} ${job.workflow} ${job.state}${since}${url}${result}${attempt}`,
      );
    }
    for (const item of repo.stale) {
      lines.push(
        `  stuck #${item.issue} at ${item.busy} for ${item.minutes} min (timeout ${item.timeoutMinutes} min)`,
      );
    }
    for (const item of repo.skipped) lines.push(`  skipped #${item.issue}: ${item.reason}`);
    if (repo.skippedOmitted > 0) lines.push(`  … and ${repo.skippedOmitted} more skipped`);
  }
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------
// # Dependencies
// ---------------------------------------------------------------------------

/** Everything that touches the outside world. Built once at the entry point. */
export interface Deps {
  /** An environment variable, or undefined when unset (or not permitted). */
  env(name: string): string | undefined;
  /** Every HTTP request to GitHub and Jenkins goes through this. */
  fetch: typeof fetch;
  /** Epoch milliseconds. */
  now(): number;
  /** Waits `ms` milliseconds (retries, pacing, lock backoff). */
  sleep(ms: number): Promise<void>;
  /** Opens the KV store: a file, `:memory:`, a remote URL, or the deployment's own. */
  openKv(path?: string): Promise<Deno.Kv>;
  /** Reads a text file (the config). */
  readTextFile(path: string): Promise<string>;
  /** Writes a new file atomically, creating parent directories. */
  writeNewFile(path: string, text: string): Promise<void>;
  /** Permission bits of a file, or null where the platform has none. */
  fileMode(path: string): Promise<number | null>;
  /** Creates the directory a file goes in (the KV file's). */
  mkdirFor(path: string): Promise<void>;
  /** Writes to standard output: the command's result. */
  stdout(text: string): void;
  /** Writes to standard error: the log. */
  stderr(text: string): void;
  /** Whether standard error is a terminal: progress is then a live line, not only log lines. */
  stderrIsTerminal(): boolean;
  /** A fresh unique id: run ids and request ids. */
  randomId(): string;
  /**
   * Aborted on the first SIGINT/SIGTERM: `run` stops before its next dispatch, `labels` before
   * its next label write (exit 130). A second signal ends the process at once (`# Program start`).
   */
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
    openKv(path) {
      if (typeof Deno.openKv !== "function") {
        // Run without the flag (the shebang has it), Deno has no KV at all.
        throw new Error("Deno KV is off: run deno with --unstable-kv (and --unstable-cron)");
      }
      // Deno reads a remote KV's token from DENO_KV_ACCESS_TOKEN, a name Deno Deploy does not
      // let users set: there it comes as COORDINATOR_KV_ACCESS_TOKEN.
      // Asked only for a remote KV, so a local run needs no env permission for it.
      const token = /^https?:\/\//.test(path ?? "") &&
        Deno.env.get("COORDINATOR_KV_ACCESS_TOKEN");
      if (token && !Deno.env.get("DENO_KV_ACCESS_TOKEN")) {
        Deno.env.set("DENO_KV_ACCESS_TOKEN", token);
      }
      return Deno.openKv(path);
    },
    readTextFile: (path) => Deno.readTextFile(path),
    async writeNewFile(path, text) {
      await Deno.mkdir(dirname(path), { recursive: true });
      const temp = `${path}.${crypto.randomUUID()}.tmp`;
      try {
        await Deno.writeTextFile(temp, text, { mode: 0o600, createNew: true });
        await Deno.rename(temp, path);
      } catch (error) {
        // A full disk or a failed rename must not leave the half-written temp file behind.
        await Deno.remove(temp).catch(() => {});
        throw error;
      }
    },
    async fileMode(path) {
      if (Deno.build.os === "windows") return null;
      return (await Deno.stat(path)).mode;
    },
    mkdirFor: (path) => Deno.mkdir(dirname(path), { recursive: true }),
    stdout: (text) => Deno.stdout.writeSync(encoder.encode(text)),
    stderr: (text) => Deno.stderr.writeSync(encoder.encode(text)),
    stderrIsTerminal: () => Deno.stderr.isTerminal(),
    randomId: () => crypto.randomUUID(),
    stop,
  };
}

/** Leveled logging to stderr with every known secret masked. */
interface Logger {
  /** Details for `--log-level DEBUG`. */
  debug(message: string): void;
  /** What the run does. */
  info(message: string): void;
  /** Something the user may want to fix; the run goes on. */
  warn(message: string): void;
  /** Something failed. */
  error(message: string): void;
}

/**
 * A logger writing `TIME LEVEL message` lines at or above `level` (`logLine()`); `now` is the
 * clock (deps'), epoch ms.
 */
function createLogger(
  write: (text: string) => void,
  options: { level: typeof LOG_LEVELS[number]; redactor: Redactor; now: () => number },
): Logger {
  const threshold = LOG_LEVELS.indexOf(options.level);
  const emit = (level: typeof LOG_LEVELS[number]) => (message: string) => {
    if (LOG_LEVELS.indexOf(level) < threshold) return;
    write(logLine(options.now(), level, options.redactor.redact(message)));
  };
  return { debug: emit("DEBUG"), info: emit("INFO"), warn: emit("WARNING"), error: emit("ERROR") };
}

/**
 * One line of the log: an ISO-8601 UTC timestamp, the level, the message. The run's report on
 * stdout has the same form, so a file both go to (`>> log 2>&1`) reads as one log.
 */
function logLine(at: number, level: LogLevel, message: string): string {
  return `${new Date(at).toISOString()} ${level.padEnd(7)} ${message}\n`;
}

/**
 * Masks secrets in text. `main` builds one and hands it to the loggers and to what it prints;
 * a command adds the tokens of the config it loads, so they are masked from then on.
 */
class Redactor {
  /** Longest first, so that a secret inside another cannot leave part of the longer shown. */
  #secrets: string[] = [];

  /** Masks `secrets`; unset ones are skipped. */
  constructor(secrets: readonly (string | undefined)[] = []) {
    this.add(...secrets);
  }

  /** Masks these too. Values under 4 characters are skipped: they would mask ordinary words. */
  add(...secrets: (string | undefined)[]): void {
    for (const secret of secrets) {
      if (secret && secret.length >= 4 && !this.#secrets.includes(secret)) {
        this.#secrets.push(secret);
      }
    }
    this.#secrets.sort((a, b) => b.length - a.length);
  }

  /** `text` with every secret replaced by `***`. */
  redact(text: string): string {
    let out = text;
    for (const secret of this.#secrets) out = out.replaceAll(secret, "***");
    return out;
  }
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

function dirname(path: string): string {
  const index = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
  return index <= 0 ? (index === 0 ? "/" : ".") : path.slice(0, index);
}

// ---------------------------------------------------------------------------
// # Config
// ---------------------------------------------------------------------------

/**
 * Loads the config: `$COORDINATOR_CONFIG_TOML` if set (Deno Deploy has no files),
 * else the file. Returns null after creating a missing file from the template
 * (`create: false`: throws instead, for read-only commands and dry runs).
 */
async function loadConfig(
  deps: Deps,
  options: {
    path?: string;
    create?: boolean;
    requireGitHub?: boolean;
    requireJenkins?: boolean;
  },
): Promise<Config | null> {
  const { path: flag, create = true, ...needs } = options;
  const inline = flag ? undefined : deps.env("COORDINATOR_CONFIG_TOML");
  if (inline) {
    return parseConfig(inline, { ...needs, source: "$COORDINATOR_CONFIG_TOML", env: deps.env });
  }
  const path = configPath(flag, deps.env);
  // A template goes only where nobody named a file: a mistyped path is an error, not a new file.
  const named = flag ? "--config" : deps.env("COORDINATOR_CONFIG") ? "COORDINATOR_CONFIG" : null;
  const text = await readConfigFile(deps, path, { create: create && !named, named });
  if (text === null) return null;
  const mode = await deps.fileMode(path).catch(() => null);
  return parseConfig(text, { ...needs, source: path, env: deps.env, mode });
}

/**
 * The config file's text, or null after creating the missing file from the template. `named`:
 * what named the path (the flag or the variable), for the message when it does not exist.
 */
async function readConfigFile(
  deps: Deps,
  path: string,
  options: { create: boolean; named: string | null },
): Promise<string | null> {
  try {
    return await deps.readTextFile(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new ConfigError(`Cannot read config file ${path}: ${errorMessage(error)}`, {
        cause: error,
      });
    }
    if (options.named) {
      throw new ConfigError(
        `Config file ${path} (from ${options.named}) does not exist: check the path`,
        { cause: error },
      );
    }
    if (!options.create) {
      throw new ConfigError(
        `Config file ${path} does not exist: pass --config PATH, or let "run" (without --dry-run) create it from the template`,
        { cause: error },
      );
    }
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

/** The config path: --config, $COORDINATOR_CONFIG, then the XDG location. */
function configPath(flag: string | undefined, env: Deps["env"]): string {
  if (flag) return flag;
  const fromEnv = env("COORDINATOR_CONFIG");
  if (fromEnv) return fromEnv;
  if (onDeploy(env)) {
    throw new ConfigError(
      "No config on Deno Deploy: set COORDINATOR_CONFIG_TOML to the text of the config file",
    );
  }
  const base = env("XDG_CONFIG_HOME") ?? (env("HOME") ? `${env("HOME")}/.config` : undefined);
  if (!base) throw new ConfigError("Cannot locate the config file: pass --config PATH or set HOME");
  return `${base}/coordinator/config.toml`;
}

/** The KV location: --kv, $COORDINATOR_KV, the deployment's own KV, then the XDG state dir. */
function kvPath(flag: string | undefined, env: Deps["env"]): string | undefined {
  if (flag) return flag;
  const fromEnv = env("COORDINATOR_KV");
  if (fromEnv) return fromEnv;
  if (onDeploy(env)) return undefined;
  const base = env("XDG_STATE_HOME") ??
    (env("HOME") ? `${env("HOME")}/.local/state` : undefined);
  if (!base) throw new ConfigError("Cannot locate the KV store: pass --kv PATH or set HOME");
  return `${base}/coordinator/kv.sqlite3`;
}

/** Whether this process runs on Deno Deploy: `DENO_DEPLOY=true` today, a deployment id always. */
function onDeploy(env: Deps["env"]): boolean {
  return env("DENO_DEPLOY") === "true" || !!env("DENO_DEPLOYMENT_ID");
}

/** Picks the repositories of this run: all, or the one `--repo` names. */
function selectRepos(
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

/** The whole validated config, with environment overrides applied. */
interface Config {
  /** Where the config came from, for messages. */
  source: string;
  /** `[github]`: the token and the API root (github.com's, or a GitHub Enterprise one). */
  github: { token: string; apiUrl: string };
  /** `[jenkins]`: the server and the user the coordinator signs in as. */
  jenkins: { serverUrl: string; username: string; apiToken: string };
  /** `[coordinator]`, defaults filled in. */
  coordinator: {
    /** A full read of a repository at least this often; incremental reads in between. */
    cacheRefreshMinutes: number;
    /** Every GitHub and Jenkins request gives up after this. */
    requestTimeoutMs: number;
    /** Every KV operation gives up after this; the store then counts as stopped. */
    kvTimeoutMs: number;
    /** Pause between two GitHub writes, as GitHub asks of integrations. */
    githubWriteIntervalMs: number;
    /** Repositories read at the same time. */
    maxParallelRepos: number;
    /** Cap on active jobs over all repositories; null: none. */
    maxActiveJobs: number | null;
    /** Cap on jobs started by one run; null: none. */
    maxDispatchesPerRun: number | null;
    /** Comment on issues at dispatch and failure moves (repositories may override). */
    issueComments: boolean;
    /** Retries of a build that died of the infrastructure, per pickup cycle; 0: none. */
    maxRetries: number;
    /** Wait before the first retry (ms); each next one waits twice as long. */
    retryBackoffMs: number;
    /**
     * `mcp-coder --log-level` in the job scripts (`job_log_level`; repositories may override):
     * the coordinator's own `--log-level` does not change it.
     */
    jobLogLevel: LogLevel;
    /** Stale timeouts by busy label, defaults and overrides merged. */
    staleTimeoutMinutes: Record<string, number>;
    /** Who may start work, and whether GitHub's "blocked by" holds it (repositories may override). */
    gates: Gates;
  };
  /** The valid `[coordinator.repos.NAME]` sections, in file order. */
  repos: RepoConfig[];
  /** What is worth saying but does not stop a run (unknown keys, a readable token). */
  warnings: string[];
  /**
   * Where each credential's value comes from, for the errors about it: `GITHUB_TOKEN
   * (environment)` or `[github] token in /path/config.toml`.
   */
  credentialsFrom: { githubToken: string; jenkinsUsername: string; jenkinsApiToken: string };
}

/** One `[coordinator.repos.NAME]` section, validated. */
interface RepoConfig {
  /** The section's NAME: how messages and `--repo` call the repository. */
  name: string;
  /** `repo_url` as written: what the job clones. */
  repoUrl: string;
  /** `host/owner/name`, lower case: the repository's identity in KV. */
  id: string;
  /** The repository's owner on GitHub, from `repo_url`. */
  owner: string;
  /** The repository's name on GitHub, from `repo_url`. */
  repo: string;
  /** `executor_job_path`: the Jenkins job, folders separated by `/`. */
  executorJobPath: string;
  /** `github_credentials_id`: the Jenkins credentials the job clones with. */
  githubCredentialsId: string;
  /** `executor_os`: which dialect the job scripts are written in. */
  executorOs: ExecutorOs;
  /** This repository's cap on active jobs; null: none. */
  maxActiveJobs: number | null;
  /** Overrides `[coordinator] issue_comments` when set. */
  issueComments?: boolean;
  /** Overrides `[coordinator] max_retries` when set. */
  maxRetries?: number;
  /** Overrides `[coordinator] retry_backoff_minutes` when set (ms). */
  retryBackoffMs?: number;
  /** Override the `[coordinator]` gates they set (`gatesOf()` merges). */
  gates?: Partial<Gates>;
  /** Overrides `[coordinator] job_log_level` when set. */
  jobLogLevel?: LogLevel;
}

/**
 * What a pickup label must pass besides the labels: the verified trigger (`trigger_min_role`,
 * `trusted_actors`, `remove_untrusted_label`) and GitHub's issue dependencies
 * (`respect_issue_dependencies`). Set in `[coordinator]`, overridden per repository.
 */
interface Gates {
  /** The least repository role whose pickup label counts; null: any label counts (off). */
  triggerMinRole: TriggerRole | null;
  /** Logins whose pickup labels count whatever their role (a GitHub App's bot: `slug[bot]`). */
  trustedActors: string[];
  /** Take an untrusted pickup label off the issue (besides skipping it). */
  removeUntrustedLabel: boolean;
  /** Hold an issue GitHub says is blocked by open issues, like the `blocked` label. */
  respectIssueDependencies: boolean;
}

/** A repository role as `trigger_min_role` names it, weakest first. */
type TriggerRole = "read" | "triage" | "write" | "maintain" | "admin";

/** The roles `trigger_min_role` takes, weakest first (GitHub's read is pull, write is push). */
const TRIGGER_ROLES: readonly TriggerRole[] = ["read", "triage", "write", "maintain", "admin"];

/** The operating system of the Jenkins executor: decides the job script's dialect. */
type ExecutorOs = "linux" | "windows";

/** The config file is missing, unreadable or invalid. */
class ConfigError extends Error {
  /** A one-line message in std style; `options.cause` keeps the underlying error. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ConfigError";
  }
}

// ---------------------------------------------------------------------------
// ## Config: parsing and environment
// ---------------------------------------------------------------------------

/**
 * Parses a config, applies the environment's overrides (they win over the file), then
 * validates it. Throws one ConfigError listing every problem, each naming section and field.
 */
function parseConfig(
  text: string,
  options: {
    /** Where the text comes from; every message starts with it. */
    source: string;
    env: Deps["env"];
    /** Check the GitHub token: every command but `test` and `status` calls GitHub. */
    requireGitHub?: boolean;
    /** Check Jenkins URL, user and token: a dry run, `labels` and `status` never call Jenkins. */
    requireJenkins?: boolean;
    /** Permission bits of the file `source` names: a token others can read is warned about. */
    mode?: number | null;
  },
): Config {
  const { source } = options;
  const doc = applyEnv(parseTomlText(text, source), options.env);
  const { github, jenkins, coordinator } = sectionsOf(doc);
  const apiUrl = (typeof github.api_url === "string" ? github.api_url : DEFAULT_API_URL)
    .replace(/\/+$/, "");
  const { repos, problems: repoProblems } = readRepos(coordinator, apiUrl);
  const problems = [
    ...checkDocument(doc, apiUrl),
    ...repoProblems,
    ...credentialProblems({ github, jenkins }, options),
  ];
  if (problems.length > 0) {
    throw new ConfigError(problems.map((problem) => `${source}: ${problem}`).join("\n"));
  }
  return {
    source,
    github: { token: stringAt(github, "token"), apiUrl },
    jenkins: {
      serverUrl: stringAt(jenkins, "server_url").replace(/\/+$/, ""),
      username: stringAt(jenkins, "username"),
      apiToken: stringAt(jenkins, "api_token"),
    },
    coordinator: settings(coordinator),
    repos,
    warnings: exposedToken(text, source, options.mode),
    credentialsFrom: credentialsFrom(options.env, source),
  };
}

/** Where each credential comes from (`Config.credentialsFrom`): its variable, else the file. */
function credentialsFrom(env: Deps["env"], source: string): Config["credentialsFrom"] {
  const from = (variable: string, key: string) =>
    env(variable) ? `${variable} (environment)` : `${key} in ${source}`;
  return {
    githubToken: from("GITHUB_TOKEN", "[github] token"),
    jenkinsUsername: from("JENKINS_USER", "[jenkins] username"),
    jenkinsApiToken: from("JENKINS_TOKEN", "[jenkins] api_token"),
  };
}

/**
 * The document with each set override variable in place of the file's value. "Env wins" is
 * decided here alone: the checks then see the values the run will use, so a placeholder a
 * variable replaces is no problem, and neither is a credential it supplies.
 */
function applyEnv(doc: Table, env: Deps["env"]): Table {
  const result: Table = { ...doc };
  for (const { variable, section, key } of ENV_OVERRIDES) {
    const value = env(variable);
    // A section given as a plain value stays one, so the checks still report it.
    if (!value || (result[section] !== undefined && !isTable(result[section]))) continue;
    result[section] = { ...result[section] as Table | undefined, [key]: value };
  }
  return result;
}

/** The TOML document, or a ConfigError naming line and column. */
function parseTomlText(text: string, source: string): Table {
  try {
    return parseToml(text) as Table;
  } catch (error) {
    if (error instanceof TomlError) {
      throw new ConfigError(
        `${source}:${error.line}:${error.column}: invalid TOML: ${tomlProblem(error, text)}`,
        { cause: error },
      );
    }
    throw new ConfigError(`${source}: invalid TOML: ${errorMessage(error)}`, { cause: error });
  }
}

/** What smol-toml's error means, in the words of a person editing the file. */
function tomlProblem(error: TomlError, text: string): string {
  const reason = error.message.split("\n")[0].replace(/^Invalid TOML document: /, "");
  const line = text.split(/\r?\n/)[error.line - 1] ?? "";
  const at = line.slice(error.column - 1);
  const header = /^\s*(\[\[?)\s*([^\]]*?)\s*$/.exec(line);
  switch (reason) {
    case "unfinished string":
      return "unterminated string: the closing quote is missing";
    case "control characters are not allowed in strings":
      return at === "" || at.startsWith("\r")
        ? "unterminated string: the closing quote is missing on this line " +
          '(a string over several lines takes """)'
        : "control character in a string: write it as an escape such as \\t or \\u0001";
    case "illegal character in key":
      if (header) {
        return `missing ${header[1] === "[[" ? "]]" : "]"} after ${header[1]}${header[2]}`;
      }
      return line.includes("=")
        ? "illegal character in key: quote a key that is not letters, digits, _ and -"
        : "missing = after the key (key = value)";
    case "trying to redefine an already defined table or value": {
      const table = /^\s*\[\s*([^\]]+?)\s*\]/.exec(line);
      if (table) return `duplicate table [${table[1]}]: it is defined above already`;
      const key = /^\s*([^=]+?)\s*=/.exec(line);
      return `duplicate key${key ? ` "${key[1]}"` : ""}: it is set above already`;
    }
    case "expected comma or end of structure":
      return "missing ] or } (or a comma between two values) in the array or inline table above";
    case "invalid value":
      return 'missing or invalid value: text takes quotes (key = "text")';
    case "each key-value declaration must be followed by an end-of-line":
      return "unexpected text after the value: one key = value per line";
  }
  return reason;
}

/** The sections the coordinator reads; a missing one, or one that is not a table, reads empty. */
function sectionsOf(doc: Table): { github: Table; jenkins: Table; coordinator: Table } {
  const section = (name: string): Table => {
    const value = doc[name];
    return isTable(value) ? value : {};
  };
  return {
    github: section("github"),
    jenkins: section("jenkins"),
    coordinator: section("coordinator"),
  };
}

/** A string value, or "" when it is absent or of another type (the checks report that). */
function stringAt(table: Table, key: string): string {
  const value = table[key];
  return typeof value === "string" ? value : "";
}

/** The credentials a command needs that neither file nor environment gives, naming the variable. */
function credentialProblems(
  tables: { github: Table; jenkins: Table },
  needs: { requireGitHub?: boolean; requireJenkins?: boolean },
): string[] {
  const missing = ENV_OVERRIDES
    .filter(({ section, credential }) =>
      credential && (section === "github" ? needs.requireGitHub : needs.requireJenkins)
    )
    .filter(({ section, key }) => !stringAt(tables[section], key))
    .map(({ section, key, variable }) => `[${section}] ${key} (or set ${variable})`);
  const problems = missing.length > 0 ? [`missing credentials: ${missing.join(", ")}`] : [];
  const serverUrl = stringAt(tables.jenkins, "server_url").replace(/\/+$/, "");
  if (needs.requireJenkins && serverUrl) {
    const problem = checkUrl(serverUrl, "[jenkins] server_url (JENKINS_URL)");
    if (problem) problems.push(problem);
  }
  return problems;
}

/** A token in a file other users can read lets them act as the bot: worth a warning. */
function exposedToken(text: string, source: string, mode: number | null | undefined): string[] {
  const readable = typeof mode === "number" && (mode & 0o044) !== 0;
  return readable && /token\s*=\s*["'][^"']/.test(text)
    ? [
      `${source} holds a token and is readable by other users: run chmod 600 ${shellQuote(source)}`,
    ]
    : [];
}

/** The `[coordinator]` settings, defaults filled in. */
function settings(table: Table): Config["coordinator"] {
  const number = (key: string, fallback: number) => {
    const value = table[key];
    return typeof value === "number" ? value : fallback;
  };
  const stale = isTable(table.stale_timeout_minutes) ? table.stale_timeout_minutes : {};
  const cap = (key: string) => typeof table[key] === "number" ? table[key] as number : null;
  return {
    cacheRefreshMinutes: number("cache_refresh_minutes", DEFAULT_CACHE_REFRESH_MINUTES),
    requestTimeoutMs: number("request_timeout_seconds", DEFAULT_TIMEOUT_SECONDS) * 1000,
    kvTimeoutMs: number("kv_timeout_seconds", DEFAULT_KV_TIMEOUT_SECONDS) * 1000,
    githubWriteIntervalMs: number("github_write_interval_ms", DEFAULT_WRITE_INTERVAL_MS),
    maxParallelRepos: number("max_parallel_repos", DEFAULT_MAX_PARALLEL_REPOS),
    maxActiveJobs: cap("max_active_jobs"),
    maxDispatchesPerRun: cap("max_dispatches_per_run"),
    issueComments: table.issue_comments === true,
    maxRetries: number("max_retries", 0),
    retryBackoffMs: number("retry_backoff_minutes", DEFAULT_RETRY_BACKOFF_MINUTES) * 60_000,
    jobLogLevel: jobLogLevelOf(table) ?? "INFO",
    staleTimeoutMinutes: { ...STALE_TIMEOUT_MINUTES, ...stale as Record<string, number> },
    gates: {
      triggerMinRole: null,
      trustedActors: [],
      removeUntrustedLabel: false,
      respectIssueDependencies: true,
      ...readGates(table),
    },
  };
}

/** The gate keys a section sets (`Gates`), validated by `checkGates()`. */
function readGates(table: Table): Partial<Gates> {
  const gates: Partial<Gates> = {};
  if (typeof table.trigger_min_role === "string") {
    gates.triggerMinRole = table.trigger_min_role as TriggerRole;
  }
  if (Array.isArray(table.trusted_actors)) {
    gates.trustedActors = table.trusted_actors.map(String);
  }
  if (typeof table.remove_untrusted_label === "boolean") {
    gates.removeUntrustedLabel = table.remove_untrusted_label;
  }
  if (typeof table.respect_issue_dependencies === "boolean") {
    gates.respectIssueDependencies = table.respect_issue_dependencies;
  }
  return gates;
}

/** A section's `trigger_min_role` (one of TRIGGER_ROLES) and `trusted_actors` (logins). */
function checkGates(table: Table, section: string): string[] {
  const problems: string[] = [];
  const role = table.trigger_min_role;
  if (typeof role === "string" && !(TRIGGER_ROLES as readonly string[]).includes(role)) {
    const hint = suggestion(role, [...TRIGGER_ROLES]);
    problems.push(
      `[${section}] trigger_min_role must be one of ${TRIGGER_ROLES.join(", ")}, got "${role}"${
        hint.startsWith(" (did") ? hint : ""
      }`,
    );
  }
  const actors = table.trusted_actors;
  if (Array.isArray(actors) && !actors.every((login) => typeof login === "string" && login)) {
    problems.push(
      `[${section}] trusted_actors must list logins as strings, e.g. ["alice", "app-slug[bot]"]`,
    );
  }
  return problems;
}

// ---------------------------------------------------------------------------
// ## Config: validation
// ---------------------------------------------------------------------------

/**
 * Checks the document outside the repository sections, after the environment is applied.
 * The sections only other mcp-coder commands read are accepted and left to them.
 */
function checkDocument(doc: Table, apiUrl: string): string[] {
  const { github, jenkins, coordinator } = sectionsOf(doc);
  const problems = [
    ...checkTopLevel(doc),
    ...checkTable(github, "github", SCHEMA.github),
    ...checkTable(jenkins, "jenkins", SCHEMA.jenkins),
    ...checkTable(coordinator, "coordinator", SCHEMA.coordinator),
    ...checkTuning(coordinator),
    ...checkJobLogLevel(coordinator, "coordinator"),
    ...checkStaleTimeouts(coordinator.stale_timeout_minutes),
    ...checkGates(coordinator, "coordinator"),
  ];
  const apiProblem = checkUrl(apiUrl, "[github] api_url");
  if (apiProblem) problems.push(apiProblem);
  return problems;
}

/** Top-level keys: the sections mcp_coder knows, each a table. */
function checkTopLevel(doc: Table): string[] {
  const problems: string[] = [];
  const known = ["github", "jenkins", "coordinator", ...FOREIGN_SECTIONS];
  for (const [key, value] of Object.entries(doc)) {
    if (!known.includes(key)) {
      const what = isTable(value) ? `section [${key}]` : `key "${key}"`;
      problems.push(`unknown top-level ${what}${suggestion(key, known)}`);
    } else if (!isTable(value)) problems.push(`"${key}" must be a section ([${key}])`);
  }
  return problems;
}

/** Checks keys, types and placeholders of one table. */
function checkTable(table: Table, section: string, schema: Record<string, FieldType>): string[] {
  const problems: string[] = [];
  for (const [key, value] of Object.entries(table)) {
    const type = schema[key];
    if (!type) {
      problems.push(
        `[${section}] unknown key "${key}"${suggestion(key, Object.keys(schema))}`,
      );
    } else if (!hasType(value, type)) {
      const shown = typeof value === "string" ? ` "${value}"` : "";
      problems.push(
        `[${section}] ${key} must be ${
          type === "array" ? "an array" : type === "integer" ? "an integer" : `a ${type}`
        }, got ${typeName(value)}${shown}`,
      );
    } else if (typeof value === "string" && value.includes(PLACEHOLDER_MARK)) {
      problems.push(`[${section}] ${key} still holds the template placeholder "${value}"`);
    }
  }
  return problems;
}

/** `[coordinator]` tuning values below their minimum. */
function checkTuning(table: Table): string[] {
  return Object.entries(TUNING_MINIMUM).flatMap(([key, [minimum, words]]) => {
    const value = table[key];
    return typeof value === "number" && value < minimum
      ? [`[coordinator] ${key} must be ${words}, got ${value}`]
      : [];
  });
}

/** `[coordinator.stale_timeout_minutes]`: known busy labels, whole minutes of at least 1. */
function checkStaleTimeouts(table: unknown): string[] {
  if (!isTable(table)) return [];
  const known = Object.keys(STALE_TIMEOUT_MINUTES);
  return Object.entries(table).flatMap(([label, value]) => {
    const where = `[coordinator.stale_timeout_minutes] "${label}"`;
    if (!known.includes(label)) {
      return [`${where} is not a bot-busy label${suggestion(label, known)}`];
    }
    return typeof value === "number" && Number.isInteger(value) && value >= 1
      ? []
      : [`${where} must be a whole number of minutes, at least 1, got ${typeName(value)}`];
  });
}

/** Why a URL a client will call is not usable, or null. Never shows credentials it carries. */
function checkUrl(value: string, label: string): string | null {
  // Credentials in a URL end up in every message that shows it: a user name alone is often a
  // token (https://TOKEN@host), so either one is refused, and neither is shown.
  const shown = value.replace(/^([a-z][a-z\d+.-]*:\/*)[^/?#]*@/i, "$1***@");
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return `${label} must be an http(s) URL, got "${shown}"`;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    return `${label} must be an http(s) URL, got "${shown}"`;
  }
  if (url.username || url.password) {
    return `${label} must not contain a user name or password: use the username and token keys`;
  }
  return null;
}

/** A TOML table (or JSON object): not an array, not a date. */
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
    case "array":
      return Array.isArray(value);
    case "table":
      return isTable(value);
    case "string":
      return typeof value === "string";
    case "boolean":
      return typeof value === "boolean";
  }
}

/** The known key an unknown one was probably meant to be, or the list of known keys. */
function suggestion(key: string, known: string[], what = "keys"): string {
  const best = known
    .map((name) => ({ name, distance: editDistance(key.toLowerCase(), name) }))
    .sort((a, b) => a.distance - b.distance)[0];
  return best && best.distance <= Math.max(2, Math.floor(key.length / 3))
    ? ` (did you mean "${best.name}"?)`
    : ` (known ${what}: ${known.join(", ")})`;
}

/** Levenshtein distance: how far a mistyped key is from a known one. */
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

// ---------------------------------------------------------------------------
// ## Config: repositories
// ---------------------------------------------------------------------------

/** The `[coordinator.repos]` sections: the valid repositories, and every other one's problems. */
function readRepos(
  coordinator: Table,
  apiUrl: string,
): { repos: RepoConfig[]; problems: string[] } {
  const repos: RepoConfig[] = [];
  const problems: string[] = [];
  const tables = isTable(coordinator.repos) ? coordinator.repos : {};
  const hosts = githubHosts(apiUrl);
  for (const [name, table] of Object.entries(tables)) {
    if (!isTable(table)) {
      problems.push(
        `[coordinator.repos] "${name}" must be a section ([coordinator.repos.${name}])`,
      );
      continue;
    }
    const repo = validateRepo(name, table, hosts);
    if (Array.isArray(repo)) problems.push(...repo);
    else repos.push(repo);
  }
  return { repos, problems: [...problems, ...duplicateRepos(repos)] };
}

/** One `[coordinator.repos.NAME]` section as a repository, or its problems. */
function validateRepo(name: string, table: Table, hosts: Set<string>): RepoConfig | string[] {
  const section = `coordinator.repos.${name}`;
  const problems = [...checkTable(table, section, SCHEMA.repo), ...checkGates(table, section)];
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
  problems.push(...checkJobLogLevel(table, section));
  const os = typeof table.executor_os === "string" ? table.executor_os.toLowerCase() : "linux";
  for (const key of ["max_active_jobs", "max_retries", "retry_backoff_minutes"]) {
    const [minimum, words] = TUNING_MINIMUM[key];
    const value = table[key];
    if (typeof value === "number" && value < minimum) {
      problems.push(`[${section}] ${key} must be ${words}, got ${value}`);
    }
  }
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
    } else if (!hosts.has(where.host)) {
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
    maxActiveJobs: typeof table.max_active_jobs === "number" ? table.max_active_jobs : null,
    ...repoOverrides(table),
  };
}

/** What a repository's section sets over `[coordinator]`: only the keys it has. */
function repoOverrides(table: Table): Partial<RepoConfig> {
  const gates = readGates(table);
  const jobLogLevel = jobLogLevelOf(table);
  return {
    ...(typeof table.issue_comments === "boolean" ? { issueComments: table.issue_comments } : {}),
    ...(typeof table.max_retries === "number" ? { maxRetries: table.max_retries } : {}),
    ...(typeof table.retry_backoff_minutes === "number"
      ? { retryBackoffMs: table.retry_backoff_minutes * 60_000 }
      : {}),
    ...(Object.keys(gates).length > 0 ? { gates } : {}),
    ...(jobLogLevel ? { jobLogLevel } : {}),
  };
}

/** A section's `job_log_level`, upper-cased; undefined when unset (or invalid: a problem). */
function jobLogLevelOf(table: Table): LogLevel | undefined {
  const level = typeof table.job_log_level === "string"
    ? table.job_log_level.toUpperCase()
    : undefined;
  return LOG_LEVELS.find((known) => known === level);
}

/** A `job_log_level` that is not one of LOG_LEVELS. */
function checkJobLogLevel(table: Table, section: string): string[] {
  const value = table.job_log_level;
  return typeof value === "string" && !jobLogLevelOf(table)
    ? [
      `[${section}] job_log_level must be one of ${
        LOG_LEVELS.join(", ")
      } (case-insensitive), got "${value}"`,
    ]
    : [];
}

/** Two sections for one repository: the second would be read again and never dispatched. */
function duplicateRepos(repos: readonly RepoConfig[]): string[] {
  const byId = Map.groupBy(repos, (repo) => repo.id);
  return [...byId].filter(([, group]) => group.length > 1).map(([id, group]) =>
    `${group.map((repo) => `[coordinator.repos.${repo.name}]`).join(" and ")} name the same ` +
    `repository ${id}: keep one section per repository`
  );
}

/** `owner`/`repo` of a GitHub repository URL (https, ssh or scp-like), or null. */
function parseRepoUrl(url: string): { host: string; owner: string; repo: string } | null {
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

// ---------------------------------------------------------------------------
// # KV store
// ---------------------------------------------------------------------------

/**
 * The coordinator's state in Deno KV, in five parts over one KV, each with its own keys:
 * `cache` (the issues each repository has at a workflow label), `memos` (what the gates
 * remember of GitHub's answers), `records` (one dispatch record
 * per issue, and the key claims under a cap bump), `runs` (when runs went through each
 * repository, what they skipped, whose turn it is under a cap) and `leases`. Every operation is
 * bounded in time and retries SQLite's "database is locked" (`BoundedKv`); the first that fails
 * or times out stops the store: it and every later one throw a StoreError naming the store and
 * what failed, and nothing is written after. A dry run's store (`readOnly()`) writes nothing.
 *
 * Every key starts with KV_PREFIX; `R` is `"repo", repo.id`. Nothing else reads or writes KV.
 *
 * | Part      | Key (builder)                        | Value                                  |
 * | --------- | ------------------------------------ | -------------------------------------- |
 * | `cache`   | `R, "meta"` (`metaKey`)              | `RepoMeta`: cursor, ETag; written last |
 * |           | `R, "issue", n` (`issueKey`)         | `Issue`, while `cacheable()`           |
 * |           | `R, "branches", n` (`branchMemoKey`) | `BranchMemo`; expires                  |
 * | `memos`   | `R, "trust" / "held", n`; `R, "role", login` | `GateMemo`; expire             |
 * | `records` | `R, "dispatch", n` (`dispatchKey`)   | `DispatchRecord`, by `DispatchEntry`   |
 * |           | `R, "pending", n` (`pendingKey`)     | `n`, while the record is unfinished    |
 * |           | `"caps"` (`capKey`)                  | `n` of the last claim under a cap      |
 * | `runs`    | `"runs"` (`runIndexKey`)             | `RunIndex`, rewritten by every run     |
 * |           | `R, "skipped"` (`skipListKey`)       | `SkipList`, written when it changed    |
 * |           | `"turn"` (`turnKey`)                 | `{ repo }` of the last dispatch        |
 * | `leases`  | `"lease", name` (`leaseKey`)         | `Lease` of `run-all` or `run:ID`       |
 */
class Store {
  /** The issues each repository has at a workflow label, and how current they are. */
  readonly cache: IssueCache;
  /** What the gates remember of GitHub's answers: who set a label, roles, blocked issues. */
  readonly memos: GateMemos;
  /** The dispatch records: each pickup dispatched exactly once, within the caps. */
  readonly records: DispatchRecords;
  /** When runs went through each repository, what they skipped, and whose turn it is. */
  readonly runs: RunLog;
  /** One `run --all` at a time, and which runs are alive. */
  readonly leases: Leases;
  #kv: BoundedKv;

  /**
   * A store over `kv`; `deps` gives the clock and the sleep of lock retries. `where` names it in
   * messages (its path or URL), `timeoutMs` bounds each operation (default 10 s).
   */
  static over(
    kv: Deno.Kv,
    deps: Deps,
    options: { where?: string; timeoutMs?: number } = {},
  ): Store {
    return new Store(new BoundedKv(kv, deps, options));
  }

  /** The parts over one bounded KV; made by `over()`, and by `readOnly()`. */
  constructor(kv: BoundedKv) {
    this.#kv = kv;
    this.cache = new IssueCache(kv);
    this.memos = new GateMemos(kv);
    this.records = new DispatchRecords(kv);
    this.runs = new RunLog(kv);
    this.leases = new Leases(kv);
  }

  /**
   * The same KV as a store whose writes do nothing: a dry run's, so the core needs no dry-run
   * branches of its own. It reads as this one does and stops when this one does; its writes are
   * dropped, and a claim or a move of a record reads as lost (`readOnlyKv()`).
   */
  readOnly(): Store {
    return new Store(this.#kv.readOnlyView());
  }

  /**
   * Runs `operation` as the parts run each of theirs (`BoundedKv.retry()`): within the bound,
   * lock contention retried, a failure stopping the store. The tests of that bound use it.
   */
  retry<T>(operation: () => Promise<T>, what = "using it"): Promise<T> {
    return this.#kv.retry(operation, what);
  }

  /** Why the store stopped (see `retry()`); null while it works. */
  get failure(): StoreError | null {
    return this.#kv.failure;
  }

  /** Throws the store's failure, if it stopped: where a run must not go on without it. */
  throwIfStopped(): void {
    if (this.#kv.failure) throw this.#kv.failure;
  }

  /** Whether the store answers: reads one key (of no part: any answers), within the bound. */
  async ping(): Promise<void> {
    await this.#kv.retry(() => this.#kv.db.get([...KV_PREFIX]), "reading from it");
  }

  /** Closes the KV. An operation still waiting on a remote store is abandoned, not cancelled. */
  close(): void {
    this.#kv.db.close();
  }
}

/**
 * The KV store failed, or did not answer within `[coordinator] kv_timeout_seconds`. Nothing may
 * be dispatched without it, so the command stops; every later operation on it fails at once.
 */
class StoreError extends Error {
  /** What failed and why, without the store's name, which `message` gives. */
  detail: string;
  /** A one-line message naming the store; `options.detail` defaults to it. */
  constructor(message: string, options: ErrorOptions & { detail?: string } = {}) {
    super(message, options);
    this.name = "StoreError";
    this.detail = options.detail ?? message;
  }
}

/**
 * One Deno.Kv as the parts of a store use it: each operation goes through `retry()`, which
 * retries SQLite's "database is locked" (several processes sharing one KV file hit it under
 * contention) with jittered backoff and bounds each attempt in time. The first operation that
 * fails or times out stops it for good. A read-only view shares that; its parts write nothing.
 */
class BoundedKv {
  /** The KV: the parts reach it inside `retry()` only. */
  readonly db: Deno.Kv;
  /** The clock of leases, records and branch memos, and the sleep of lock retries. */
  readonly deps: Deps;
  /** A dry run's view (`readOnlyView()`): its writes are dropped (`readOnlyKv()`). */
  readonly readOnly: boolean;
  /** Where the KV is, for messages; the bound; why it stopped. Shared with every view. */
  #health: { where: string; timeoutMs: number; failure: StoreError | null };

  /** `kv`, named `where` in messages, each operation bounded by `timeoutMs` (default 10 s). */
  constructor(
    kv: Deno.Kv,
    deps: Deps,
    options: { where?: string; timeoutMs?: number; readOnly?: boolean },
  ) {
    this.db = kv;
    this.deps = deps;
    this.readOnly = options.readOnly ?? false;
    this.#health = {
      where: options.where ?? "(KV)",
      timeoutMs: options.timeoutMs ?? DEFAULT_KV_TIMEOUT_SECONDS * 1000,
      failure: null,
    };
  }

  /** The same KV, stopping with this one, for a store that writes nothing (`readOnlyKv()`). */
  readOnlyView(): BoundedKv {
    const view = new BoundedKv(readOnlyKv(this.db), this.deps, { readOnly: true });
    view.#health = this.#health;
    return view;
  }

  /**
   * Runs a KV operation, retrying lock contention, each attempt within the bound. A failure
   * stops the KV (`failure`): throws a StoreError saying `what` failed.
   */
  async retry<T>(operation: () => Promise<T>, what: string): Promise<T> {
    const health = this.#health;
    if (health.failure) throw health.failure;
    const seconds = health.timeoutMs / 1000;
    try {
      return await retryLocked(
        this.deps,
        () => within(operation(), health.timeoutMs, () => new KvTimeout()),
      );
    } catch (error) {
      const detail = error instanceof KvTimeout
        ? `no answer within ${seconds} s ${what}`
        : `failed ${what}: ${errorMessage(error)}`;
      health.failure ??= new StoreError(
        `The KV store ${health.where} stopped: ${detail}; nothing more is dispatched this run, ` +
          `and the next run goes on from what it recorded`,
        { cause: error, detail },
      );
      throw health.failure;
    }
  }

  /** Why the KV stopped (see `retry()`); null while it works. */
  get failure(): StoreError | null {
    return this.#health.failure;
  }
}

/**
 * `kv` as a dry run's store sees it: it reads as `kv` does and writes nothing. A `set` or a
 * `delete` is dropped; an atomic commit is not made and answers as lost to another run, so each
 * check-and-set of the parts (a claim, a move of a dispatch record) says it did not happen.
 */
function readOnlyKv(kv: Deno.Kv): Deno.Kv {
  const unsent: Deno.AtomicOperation = new Proxy({} as Deno.AtomicOperation, {
    get: (_, name) => name === "commit" ? () => Promise.resolve({ ok: false }) : () => unsent,
  });
  return new Proxy(kv, {
    get(target, name) {
      if (name === "atomic") return () => unsent;
      if (name === "set" || name === "delete") return () => Promise.resolve();
      const value = Reflect.get(target, name);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/**
 * Opens the KV store and reads from it, each within `timeoutMs`, so that a store that does not
 * answer is found here: Deno 2.9 opens a remote one only once it answered, Deno 2.5 at once.
 * Real runs refuse to go on without it: the claims in it are what keeps a pickup from being
 * dispatched twice. `readOnly` (a dry run, `status`, `check`) creates no file (a missing one
 * reads as empty) and makes a store that writes nothing. `fallback` (a dry run) goes on in
 * memory when the store cannot be opened, but not when it did not answer in time: the call
 * given up on would go on (and a remote one log) meanwhile.
 */
async function openStore(
  deps: Deps,
  options: { path?: string; log?: Logger; timeoutMs: number; readOnly: boolean; fallback: boolean },
): Promise<Store> {
  const { path, log, timeoutMs } = options;
  const where = path ?? "(the deployment's own)";
  const remote = /^https?:\/\//.test(path ?? "");
  const file = path && path !== ":memory:" && !remote;
  const over = (kv: Deno.Kv) => {
    const store = Store.over(kv, deps, { where, timeoutMs });
    return options.readOnly ? store.readOnly() : store;
  };
  const memory = async () => over(await deps.openKv(":memory:"));
  let kv: Deno.Kv | undefined;
  try {
    if (file && options.readOnly) {
      // Nothing is written, not even an empty KV file where none exists yet.
      const exists = await deps.fileMode(path).then(() => true, () => false);
      if (!exists) return await memory();
    } else if (file) await deps.mkdirFor(path);
    const opening = retryLocked(deps, () => deps.openKv(path));
    kv = await within(opening, timeoutMs, () => new KvTimeout());
    const store = over(kv);
    await store.ping();
    return store;
  } catch (error) {
    kv?.close();
    const why = error instanceof StoreError
      ? error.detail
      : error instanceof KvTimeout
      ? `no answer within ${timeoutMs / 1000} s opening it`
      : errorMessage(error);
    const reason = `Cannot open the KV store ${where}: ${why}`;
    const timedOut = error instanceof KvTimeout ||
      (error instanceof StoreError && error.cause instanceof KvTimeout);
    if (!options.fallback || timedOut) {
      throw new StoreError(
        `${reason}; it records every dispatch so that none is started twice: ${storeAdvice(path)}`,
        { cause: error, detail: why },
      );
    }
    log?.warn(`${reason}; the dry run goes on without the cache`);
    return await memory();
  }
}

/** How to fix a KV store at `path` that cannot be used. */
function storeAdvice(path: string | undefined): string {
  return /^https?:\/\//.test(path ?? "")
    ? "check the URL and its access token (DENO_KV_ACCESS_TOKEN; on Deno Deploy " +
      "COORDINATOR_KV_ACCESS_TOKEN)"
    : "fix the path or its permissions, or pass --kv";
}

/** Every key of a repository: `R` in the table at `Store`. */
function repoKey(repo: RepoConfig, ...rest: (string | number)[]): Deno.KvKey {
  return [...KV_PREFIX, "repo", repo.id, ...rest];
}

/**
 * `mutations` in batches that each fit one atomic commit: at most KV_BATCH of them, and about
 * KV_BATCH_BYTES of values (as JSON) plus a generous 100 bytes per key.
 */
function commitBatches(mutations: readonly Deno.KvMutation[]): Deno.KvMutation[][] {
  const batches: Deno.KvMutation[][] = [];
  let batch: Deno.KvMutation[] = [];
  let size = 0;
  for (const mutation of mutations) {
    const bytes = 100 + (mutation.type === "set" ? JSON.stringify(mutation.value).length : 0);
    if (batch.length >= KV_BATCH || (batch.length > 0 && size + bytes > KV_BATCH_BYTES)) {
      batches.push(batch);
      [batch, size] = [[], 0];
    }
    batch.push(mutation);
    size += bytes;
  }
  if (batch.length > 0) batches.push(batch);
  return batches;
}

/**
 * `promise`, or a rejection with `timeout()`'s error once `ms` have passed. The promise is left
 * to settle on its own: Deno cannot cancel a KV operation (closing a remote store does not stop
 * a request it retries), so its late result or error is dropped.
 */
async function within<T>(promise: Promise<T>, ms: number, timeout: () => Error): Promise<T> {
  promise.catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => timer = setTimeout(() => reject(timeout()), ms)),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** What `within()` rejects with when the time is up. */
class KvTimeout extends Error {}

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

function isLockError(error: unknown): boolean {
  return error instanceof Error && /database is locked/i.test(error.message);
}

// ---------------------------------------------------------------------------
// ## KV store: the issue cache
// ---------------------------------------------------------------------------

/**
 * The issue cache: per repository the open issues with a pickup, busy or failure label of
 * WORKFLOWS (`cacheable()`), the bookkeeping that keeps them current (`RepoMeta`), and the
 * linked branches last seen on issues that could not be dispatched for them.
 */
class IssueCache {
  /** The cache in `kv`: `Store` makes it. */
  constructor(private readonly kv: BoundedKv) {}

  /**
   * Cached issues and bookkeeping of a repository; `corrupt` when anything was unreadable.
   * Issues of a cache without a current meta record are not read: it is rebuilt anyway.
   */
  async load(
    repo: RepoConfig,
  ): Promise<{ meta: RepoMeta | null; issues: Map<number, Issue>; corrupt: boolean }> {
    const { db } = this.kv;
    const what = `reading the cache of ${repo.name}`;
    const metaEntry = await this.kv.retry(() => db.get(metaKey(repo)), what);
    const meta = isMeta(metaEntry.value) ? metaEntry.value : null;
    const issues = new Map<number, Issue>();
    let corrupt = metaEntry.value !== null && !meta;
    if (meta?.schema !== CACHE_SCHEMA) return { meta, issues, corrupt };
    await this.kv.retry(async () => {
      issues.clear();
      for await (const entry of db.list({ prefix: issuesPrefix(repo) })) {
        if (isIssue(entry.value) && entry.key.at(-1) === entry.value.number) {
          issues.set(entry.value.number, entry.value);
        } else corrupt = true;
      }
    }, what);
    return { meta, issues, corrupt };
  }

  /**
   * Writes issues, then the meta record. The meta goes last so a
   * crash in between leaves the old cursor in place and the next run reads the same changes.
   */
  async save(
    repo: RepoConfig,
    changes: { upsert: Issue[]; remove: number[]; meta: RepoMeta; clear?: boolean },
  ): Promise<void> {
    const { db } = this.kv;
    const what = `writing the cache of ${repo.name}`;
    const remove = new Set(changes.remove);
    if (changes.clear) {
      const keys = await this.kv.retry(
        () => Array.fromAsync(db.list({ prefix: issuesPrefix(repo) }), (e) => e.key),
        what,
      );
      const kept = new Set(changes.upsert.map((issue) => issue.number));
      for (const key of keys) {
        const number = key.at(-1) as number;
        if (!kept.has(number)) remove.add(number);
      }
    }
    const mutations: Deno.KvMutation[] = [
      ...changes.upsert.map((issue): Deno.KvMutation => ({
        type: "set",
        key: issueKey(repo, issue.number),
        value: issue,
      })),
      ...[...remove].map((number): Deno.KvMutation => ({
        type: "delete",
        key: issueKey(repo, number),
      })),
    ];
    for (const batch of commitBatches(mutations)) {
      await this.kv.retry(() => db.atomic().mutate(...batch).commit(), what);
    }
    await this.kv.retry(() => db.set(metaKey(repo), changes.meta), what);
  }

  /**
   * Stores one issue as now seen (after a dispatch moved its labels, or a fresh read); drops it
   * when the cache does not keep it (closed, or no workflow label left).
   */
  async put(repo: RepoConfig, issue: Issue): Promise<void> {
    const { db } = this.kv;
    const key = issueKey(repo, issue.number);
    const what = `writing issue #${issue.number} of ${repo.name} to the cache`;
    if (!cacheable(issue)) await this.kv.retry(() => db.delete(key), what);
    else await this.kv.retry(() => db.set(key, issue), what);
  }

  /** Drops an issue from the cache (GitHub no longer shows it). */
  async drop(repo: RepoConfig, number: number): Promise<void> {
    const { db } = this.kv;
    await this.kv.retry(
      () => db.delete(issueKey(repo, number)),
      `dropping #${number} of ${repo.name} from the cache`,
    );
  }

  /**
   * The linked branches GitHub named for `issue` when it could not be dispatched for them (none,
   * or several), while the issue is unchanged and for BRANCH_RECHECK_MS; null: ask GitHub.
   */
  async branches(repo: RepoConfig, issue: Issue): Promise<string[] | null> {
    const { db, deps } = this.kv;
    const entry = await this.kv.retry(
      () => db.get<BranchMemo>(branchMemoKey(repo, issue.number)),
      `reading the linked branches of #${issue.number} of ${repo.name}`,
    );
    const memo = entry.value;
    const known = isTable(memo) && Array.isArray(memo.branches) &&
      typeof memo.checkedAt === "number";
    return known && memo.updatedAt === issue.updatedAt &&
        deps.now() - memo.checkedAt < BRANCH_RECHECK_MS
      ? memo.branches
      : null;
  }

  /** Remembers `issue`'s linked branches for `branches()` (the key expires after that). */
  async putBranches(repo: RepoConfig, issue: Issue, branches: string[]): Promise<void> {
    const { db, deps } = this.kv;
    const memo: BranchMemo = { updatedAt: issue.updatedAt, checkedAt: deps.now(), branches };
    await this.kv.retry(
      () => db.set(branchMemoKey(repo, issue.number), memo, { expireIn: BRANCH_RECHECK_MS }),
      `writing the linked branches of #${issue.number} of ${repo.name}`,
    );
  }
}

/**
 * What the gates of `# Which issues: gates` remember of GitHub's answers (`Memo`), each under
 * its own key in a repository: who set an issue's pickup label (`"trust", n`: while the issue
 * is unchanged), a person's role (`"role", login`: with its ETag), a blocked issue's own ETag
 * (`"held", n`). Each key expires after MEMO_TTL_MS; `when()` tells how old an answer is.
 */
class GateMemos {
  /** The memos in `kv`: `Store` makes it. */
  constructor(private readonly kv: BoundedKv) {}

  /** The memo of `kind` under `name`, or null. */
  async get<K extends keyof GateMemo>(
    repo: RepoConfig,
    kind: K,
    name: string | number,
  ): Promise<GateMemo[K] | null> {
    const entry = await this.kv.retry(
      () => this.kv.db.get<GateMemo[K]>(repoKey(repo, kind, name)),
      `reading the ${kind} memo of ${name} in ${repo.name}`,
    );
    return isTable(entry.value) ? entry.value : null;
  }

  /** Remembers `value` (it expires after MEMO_TTL_MS). */
  async set<K extends keyof GateMemo>(
    repo: RepoConfig,
    kind: K,
    name: string | number,
    value: GateMemo[K],
  ): Promise<void> {
    await this.kv.retry(
      () => this.kv.db.set(repoKey(repo, kind, name), value, { expireIn: MEMO_TTL_MS }),
      `writing the ${kind} memo of ${name} in ${repo.name}`,
    );
  }
}

/** The memos of the gates, by key kind (see `GateMemos`). */
interface GateMemo {
  /** Who set an issue's pickup label and edited it since, while its `updatedAt` is this. */
  trust: {
    updatedAt: string;
    label: string;
    labeled: LabelEvent | null;
    edits: Acted[];
    complete: boolean;
    /** The `at` of the label event the comment (and label removal) was made for. */
    notified?: string;
  };
  /** A person's role and the answer's ETag, as read at `checkedAt` (epoch ms). */
  role: { role: TriggerRole | null; etag: string | null; checkedAt: number };
  /** A blocked issue's last single read: its ETag, and when (epoch ms). */
  held: { etag: string | null; checkedAt: number };
}

/** Per-repository cache bookkeeping stored in KV. */
interface RepoMeta {
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

/** Why an issue could not be dispatched for its branches, so idle runs need not ask again. */
interface BranchMemo {
  /** The issue's `updatedAt` when asked: a change to the issue asks again. */
  updatedAt: string;
  /** When GitHub was asked (epoch ms). */
  checkedAt: number;
  /** The linked branches GitHub named: none, or more than one. */
  branches: string[];
}

/** A repository's cache bookkeeping: `RepoMeta`. */
function metaKey(repo: RepoConfig): Deno.KvKey {
  return repoKey(repo, "meta");
}

/** A cached issue: `Issue`. */
function issueKey(repo: RepoConfig, number: number): Deno.KvKey {
  return repoKey(repo, "issue", number);
}

/** The prefix of every `issueKey` of a repository. */
function issuesPrefix(repo: RepoConfig): Deno.KvKey {
  return repoKey(repo, "issue");
}

/** Why an issue was not dispatched for its linked branches: `BranchMemo`. */
function branchMemoKey(repo: RepoConfig, number: number): Deno.KvKey {
  return repoKey(repo, "branches", number);
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

// ---------------------------------------------------------------------------
// # Run log and leases
// ---------------------------------------------------------------------------

/**
 * What the runs did, for `status` and for the caps' turns: when a run last went through each
 * repository (the run index), what it skipped there (a skip list per repository), and the
 * repository of the last dispatch, where the next run's turn starts after.
 */
class RunLog {
  /** The run log in `kv`: `Store` makes it. */
  constructor(private readonly kv: BoundedKv) {}

  /**
   * Remembers, for `status`, when a run went through each of `runs`' repositories and what it
   * skipped there, and `turn`, the repository of its last dispatch (the next run's turn starts
   * after it). The times go into the run index, one KV value, with a fingerprint of the stuck
   * issues only reported and since when they are so; a skip list is written only when
   * it changed, or when its repository has no place in the index (`fitRunIndex()`), whose time
   * its list then keeps. So an idle run writes one entry. The commit that writes the index
   * checks it: of two runs recording at once, one starts over from the other's index. A
   * read-only store records nothing: its commits never succeed, so it would start over for ever.
   */
  async remember(
    runs: readonly RunRecord[],
    options: { turn?: string } = {},
  ): Promise<void> {
    // A read-only store, or a run that went through no repository.
    if (this.kv.readOnly || runs.length === 0) return;
    const lists = runs.map(({ repo, list: whole, stuck = [] }) => {
      const list = fitSkipList(whole);
      return { repo, list, skips: skipsFingerprint(list), stuck: stuckFingerprint(stuck) };
    });
    for (let attempt = 1;; attempt++) {
      const { index, versionstamp } = await this.#read();
      const merged = new Map(index);
      for (const { repo, list, skips, stuck } of lists) {
        const last = index.get(repo.id);
        // The stuck issues keep the time of the run that first saw them so.
        const stuckAt = last?.stuck === stuck ? last.stuckAt : list.at;
        merged.set(repo.id, { at: list.at, skips, ...(stuck ? { stuck, stuckAt } : {}) });
      }
      const value = fitRunIndex(merged);
      const mutations: Deno.KvMutation[] = lists
        .filter(({ repo, skips }) =>
          index.get(repo.id)?.skips !== skips || !Object.hasOwn(value.repos, repo.id)
        )
        .map(({ repo, list }) => ({ type: "set", key: skipListKey(repo), value: list }));
      // The lists first: the commit of the index comes last and checks it.
      const batches = commitBatches([...mutations, { type: "set", key: runIndexKey(), value }]);
      if (options.turn !== undefined) {
        batches.at(-1)!.push({ type: "set", key: turnKey(), value: { repo: options.turn } });
      }
      if (await this.#commitIndex(batches, versionstamp)) return;
      if (attempt >= KV_LOCK_ATTEMPTS) {
        throw new Error("the run index kept changing under this run");
      }
    }
  }

  /**
   * Commits `batches` in order (usually one), the last only while the run index is still at
   * `versionstamp`; false when another run wrote it since.
   */
  async #commitIndex(batches: Deno.KvMutation[][], versionstamp: string | null): Promise<boolean> {
    for (const [position, batch] of batches.entries()) {
      let op = this.kv.db.atomic().mutate(...batch);
      if (position === batches.length - 1) op = op.check({ key: runIndexKey(), versionstamp });
      if (!(await this.kv.retry(() => op.commit(), "recording the run")).ok) return false;
    }
    return true;
  }

  /** The repository id of the last dispatch of the last run that dispatched; null if none. */
  async lastTurn(): Promise<string | null> {
    const { value } = await this.kv.retry(
      () => this.kv.db.get(turnKey()),
      "reading which repository's turn it is",
    );
    return isTable(value) && typeof value.repo === "string" ? value.repo : null;
  }

  /**
   * When a run last went through each repository of the run index (epoch ms), by repository id.
   * A repository it has no place for (`fitRunIndex()`) has its time in its skip list.
   */
  async lastRuns(): Promise<Map<string, number>> {
    const { index } = await this.#read();
    return new Map([...index].map(([id, run]) => [id, run.at]));
  }

  /** The run index, by repository id, and its versionstamp. */
  async #read(): Promise<{ index: Map<string, RunEntry>; versionstamp: string | null }> {
    const entry = await this.kv.retry(
      () => this.kv.db.get(runIndexKey()),
      "reading the run index",
    );
    const repos = isTable(entry.value) && isTable(entry.value.repos) ? entry.value.repos : {};
    const index = new Map<string, RunEntry>();
    for (const [id, run] of Object.entries(repos)) {
      if (isTable(run) && typeof run.at === "number" && typeof run.skips === "string") {
        const { stuck, stuckAt } = run;
        const known = typeof stuck === "string" && typeof stuckAt === "number";
        index.set(id, { at: run.at, skips: run.skips, ...(known ? { stuck, stuckAt } : {}) });
      }
    }
    return { index, versionstamp: entry.versionstamp };
  }

  /**
   * Of `runs`, the repositories whose skip list (not empty) is the one recorded last, each with
   * since when, by repository id: the recorded list's time, as a list is written only when it
   * changes. Reads the run index and those lists (ten to a read). And `stuck`: those whose
   * stuck issues (not none) are the ones recorded last, with since when, from the index alone.
   */
  async unchangedSince(
    runs: readonly RunRecord[],
  ): Promise<{ skips: Map<string, number>; stuck: Map<string, number> }> {
    const { index } = await this.#read();
    const same = runs.filter(({ repo, list }) =>
      list.items.length > 0 && index.get(repo.id)?.skips === skipsFingerprint(fitSkipList(list))
    );
    const stuck = new Map<string, number>();
    for (const { repo, stuck: items = [] } of runs) {
      const last = index.get(repo.id);
      const print = stuckFingerprint(items);
      if (print && last?.stuck === print) stuck.set(repo.id, last.stuckAt!);
    }
    const since = new Map<string, number>();
    for (let start = 0; start < same.length; start += 10) {
      const batch = same.slice(start, start + 10);
      const entries = await this.kv.retry(
        () => this.kv.db.getMany(batch.map(({ repo }) => skipListKey(repo))),
        "reading the skip lists",
      );
      for (const [position, { value }] of entries.entries()) {
        if (isTable(value) && typeof value.at === "number") {
          since.set(batch[position].repo.id, value.at);
        }
      }
    }
    return { skips: since, stuck };
  }

  /** What the last run skipped in a repository; null if none recorded. */
  async skipped(repo: RepoConfig): Promise<SkipList | null> {
    const entry = await this.kv.retry(
      () => this.kv.db.get<SkipList>(skipListKey(repo)),
      `reading the skip list of ${repo.name}`,
    );
    const list = entry.value;
    return isTable(list) && typeof list.at === "number" && Array.isArray(list.items) ? list : null;
  }
}

/**
 * What a run recorded of one repository: its skips, and the stuck issues it only reported that
 * a person need not see again while they stay so (`foldable()`), by number and code.
 */
interface RunRecord {
  /** The repository. */
  repo: RepoConfig;
  /** What the run skipped there. */
  list: SkipList;
  /** Its stuck issues only reported, by number and code (absent: none). */
  stuck?: readonly { issue: number; code: Code }[];
}

/** The issues a run skipped in a repository, and why: what `status` shows. */
interface SkipList {
  /** When the run that recorded this list finished with the repository (epoch ms). */
  at: number;
  /** The skipped issues and why, as the run reported them (before codes: without `code`). */
  items: SkipItem[];
  /** Skipped issues left out to keep the list within a KV value (absent: none). */
  omitted?: number;
}

/** The run index: per repository id, when a run last went through it (see `RunLog`). */
interface RunIndex {
  /** By repository id (`RepoConfig.id`). */
  repos: Record<string, RunEntry>;
}

/** A repository in the run index. */
interface RunEntry {
  /** When the run finished with the repository (epoch ms). */
  at: number;
  /** `skipsFingerprint()` of the skip list then: a different one rewrites the list. */
  skips: string;
  /** `stuckFingerprint()` of its stuck issues only reported; absent when none. */
  stuck?: string;
  /** Since when (epoch ms) those stuck issues are so: the run that first saw them. */
  stuckAt?: number;
}

/** What the last run skipped in a repository: `SkipList`. */
function skipListKey(repo: RepoConfig): Deno.KvKey {
  return repoKey(repo, "skipped");
}

/**
 * The run index: `RunIndex`, one value. (Before it, entries `"runs", k` held 250 repositories
 * each; a store that has them keeps them unread: the first run writes the index anew.)
 */
function runIndexKey(): Deno.KvKey {
  return [...KV_PREFIX, "runs"];
}

/** The repository of the last dispatch: `{ repo }`, its id. */
function turnKey(): Deno.KvKey {
  return [...KV_PREFIX, "turn"];
}

/** A short hash of a skip list's items (FNV-1a): whether it changed since the last run. */
function skipsFingerprint(list: SkipList): string {
  const { items, omitted = 0 } = list;
  return `${items.length + omitted}:${fnv1a(JSON.stringify([items, omitted]))}`;
}

/**
 * A short hash of a repository's stuck issues only reported, by number and code, in any order:
 * whether they changed since the last run; empty for none.
 */
function stuckFingerprint(items: readonly { issue: number; code: Code }[]): string {
  if (items.length === 0) return "";
  const text = items.map(({ issue, code }) => `${issue} ${code}`).sort().join(",");
  return `${items.length}:${fnv1a(text)}`;
}

/** FNV-1a of `text`, in hex. */
function fnv1a(text: string): string {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193) >>> 0;
  }
  return hash.toString(16);
}

/**
 * The run index as one KV value holds it: the repositories run most recently (ties: by id),
 * as many as fit RUN_INDEX_BYTES of JSON. One left out keeps its time in its skip list, which
 * `RunLog.remember()` then writes at every run. A fleet run with `--all` loses no time that way;
 * one run with `--repo` can push out a repository whose list is older than its last run.
 */
function fitRunIndex(index: ReadonlyMap<string, RunEntry>): RunIndex {
  const whole: RunIndex = { repos: Object.fromEntries(index) };
  if (JSON.stringify(whole).length <= RUN_INDEX_BYTES) return whole;
  let bytes = JSON.stringify({ repos: {} }).length;
  const newest = [...index].sort(([a, x], [b, y]) => y.at - x.at || a.localeCompare(b));
  const fits = newest.findIndex(([id, run]) =>
    (bytes += JSON.stringify(id).length + JSON.stringify(run).length + 2) > RUN_INDEX_BYTES
  );
  return { repos: Object.fromEntries(fits === -1 ? newest : newest.slice(0, fits)) };
}

/** The list as KV can hold it: the first issues that fit SKIP_LIST_BYTES, and how many more. */
function fitSkipList(list: SkipList): SkipList {
  let bytes = 0;
  const fits = list.items.findIndex((item) =>
    (bytes += JSON.stringify(item).length) > SKIP_LIST_BYTES
  );
  if (fits === -1) return list;
  return { at: list.at, items: list.items.slice(0, fits), omitted: list.items.length - fits };
}

// ---------------------------------------------------------------------------
// ## Run log and leases: leases
// ---------------------------------------------------------------------------

/**
 * The leases: `run --all` takes RUN_ALL_LEASE, so at most one such run goes at a time, and each
 * real run holds its own (`runLeaseName()`) while it lives, so its claims count as alive. A
 * holder that stops renewing loses its lease after LEASE_TTL_MS. A dry run takes none.
 */
class Leases {
  /** The leases in `kv`: `Store` makes it. */
  constructor(private readonly kv: BoundedKv) {}

  /**
   * Takes the named lease unless a live run holds it. Returns the holder when refused: which
   * run, and since when (epoch ms). A read-only store takes none: that throws.
   */
  async acquire(
    name: string,
    runId: string,
  ): Promise<{ runId: string; startedAt: number } | null> {
    const { db, deps, readOnly } = this.kv;
    if (readOnly) throw new Error(`A read-only store takes no lease ("${name}")`);
    return await this.kv.retry(async () => {
      const current = await db.get<Lease>(leaseKey(name));
      const held = current.value;
      if (held && held.runId !== runId && held.expiresAt > deps.now()) return held;
      if (await this.#hold(current, runId)) return null;
      return (await db.get<Lease>(leaseKey(name))).value ?? { runId: "?", startedAt: 0 };
    }, `taking the lease "${name}"`);
  }

  /** Extends a lease this run holds; false when it was lost (or the store is read-only). */
  async renew(name: string, runId: string): Promise<boolean> {
    const { db } = this.kv;
    return await this.kv.retry(async () => {
      const current = await db.get<Lease>(leaseKey(name));
      if (current.value && current.value.runId !== runId) return false;
      return await this.#hold(current, runId);
    }, `renewing the lease "${name}"`);
  }

  /** Writes `runId`'s lease over `current` (check-and-set); a renewal keeps its start. */
  async #hold(current: Deno.KvEntryMaybe<Lease>, runId: string): Promise<boolean> {
    const now = this.kv.deps.now();
    const startedAt = current.value?.runId === runId ? current.value.startedAt : now;
    const lease: Lease = { runId, expiresAt: now + LEASE_TTL_MS, startedAt };
    const result = await this.kv.db.atomic().check(current).set(current.key, lease, {
      expireIn: LEASE_TTL_MS * 4,
    }).commit();
    return result.ok;
  }

  /** Gives a lease back, if this run still holds it. */
  async release(name: string, runId: string): Promise<void> {
    const { db } = this.kv;
    await this.kv.retry(async () => {
      const current = await db.get<Lease>(leaseKey(name));
      if (current.value?.runId !== runId) return;
      await db.atomic().check(current).delete(leaseKey(name)).commit();
    }, `giving back the lease "${name}"`);
  }

  /** Whether the run that wrote a record is still alive (its lease is being renewed). */
  async runAlive(runId: string): Promise<boolean> {
    const entry = await this.kv.retry(
      () => this.kv.db.get<Lease>(leaseKey(runLeaseName(runId))),
      "reading whether another run is alive",
    );
    return entry.value !== null && entry.value.expiresAt > this.kv.deps.now();
  }
}

/** A lease that keeps overlapping runs apart; `expiresAt` is renewed while the run lives. */
interface Lease {
  /** The run holding it. */
  runId: string;
  /** When it lapses unless renewed (epoch ms). */
  expiresAt: number;
  /** When its holder took it (epoch ms); renewals keep it. */
  startedAt: number;
}

/** A lease: `Lease`. Names are `RUN_ALL_LEASE` and `runLeaseName(runId)`. */
function leaseKey(name: string): Deno.KvKey {
  return [...KV_PREFIX, "lease", name];
}

/** The lease of `run --all`: at most one such run at a time. */
const RUN_ALL_LEASE = "run-all";

/** The lease a run holds while it lives: its claims are alive while it is renewed. */
function runLeaseName(runId: string): string {
  return `run:${runId}`;
}

// ---------------------------------------------------------------------------
// # GitHub
// ---------------------------------------------------------------------------

/**
 * GitHub REST and GraphQL through Octokit: the API calls the coordinator makes. How the
 * requests go out (timeouts, retries, rate limits, write pacing) and how their failures read
 * is GitHubTransport's part, below.
 */
class GitHub {
  /** Counted per run, for the summary and the benchmark. */
  readonly stats: GitHubStats = {
    requests: 0,
    notModified: 0,
    costed: 0,
    rateLimitRemaining: null,
  };
  #octokit: Octokit;
  #unparsedRequest: Octokit["request"] | null = null;
  #apiUrl: string;
  #deps: Deps;
  #log: Logger;

  /**
   * A client for `config.github`; `log` hears about retries and rate limits. Each request
   * passes the words for its action as `request: { what }`: GitHubTransport's hook puts them
   * in the message of whatever fails (`Cannot add label "x" to issue #3: …`).
   */
  constructor(config: Config, deps: Deps, log: Logger) {
    this.#apiUrl = config.github.apiUrl;
    this.#deps = deps;
    this.#log = log;
    const http = new GitHubTransport(config, deps, log, this.stats);
    this.#octokit = new Octokit({
      auth: config.github.token,
      baseUrl: config.github.apiUrl,
      userAgent: `coordinator/${VERSION}`,
      log: SILENT_LOG,
      request: { fetch: (input: string, init: RequestInit) => http.fetch(input, init) },
    });
    this.#octokit.hook.wrap("request", (send, options) => http.hook(send, options));
  }

  /**
   * First page of all issues, most recently updated first. The URL never changes, so
   * `If-None-Match` makes an idle run cost one uncounted 304. Null means unchanged.
   */
  async probe(repo: RepoConfig, etag: string | null): Promise<IssuePage | null> {
    const what = `read issues of ${repo.owner}/${repo.repo}`;
    const response = await this.#unparsed()("GET /repos/{owner}/{repo}/issues", {
      ...inRepo(repo, what),
      state: "all",
      sort: "updated",
      direction: "desc",
      per_page: PAGE_SIZE,
      headers: etag ? { "if-none-match": etag } : {},
    }).catch(nullOn(304));
    return response && await issuePage(response, { repo, what, log: this.#log });
  }

  /**
   * The issues of `first` (a probe), then of each following page, requested only when the
   * caller asks for it: a `break` stops before the next request. The links are followed
   * exactly as GitHub gave them; the probe's `If-None-Match` is not sent with them.
   */
  async *pages(repo: RepoConfig, first: IssuePage): AsyncGenerator<Issue[]> {
    yield first.issues;
    if (!first.next) return;
    const what = `read issues of ${repo.owner}/${repo.repo}`;
    for await (const response of this.#list(what, { url: first.next })) {
      yield (await issuePage(response, { repo, what, log: this.#log })).issues;
    }
  }

  /**
   * The open issues (not pull requests) that `keep` accepts, read 100 per page; each page
   * is dropped once filtered, so a large repository is never held in memory at once.
   */
  async listOpen(repo: RepoConfig, keep: (issue: Issue) => boolean): Promise<Issue[]> {
    const what = `read open issues of ${repo.owner}/${repo.repo}`;
    const kept: Issue[] = [];
    const pages = this.#list(what, {
      url: "/repos/{owner}/{repo}/issues",
      owner: repo.owner,
      repo: repo.repo,
      state: "open",
      per_page: PAGE_SIZE,
    });
    for await (const response of pages) {
      for (const issue of (await issuePage(response, { repo, what, log: this.#log })).issues) {
        if (!issue.pullRequest && issue.state === "open" && keep(issue)) kept.push(issue);
      }
    }
    return kept;
  }

  /**
   * One issue as GitHub has it now. Reads follow GitHub's redirects, so an answer may be another
   * issue: a transferred issue's old address answers with the issue in its new repository (a
   * GitHubError of kind `moved`), and a renamed repository's old name with the issue under the
   * new name (kind `renamed`: writes to the old name are redirected, and never sent on).
   */
  async getIssue(repo: RepoConfig, number: number): Promise<Issue> {
    return (await this.issueIfChanged(repo, number, null))!.issue;
  }

  /**
   * `getIssue()`, conditional on `etag` (the one it answered last time): null when the issue is
   * unchanged, which GitHub answers `304 Not Modified` and does not count against the rate limit.
   * The ETag is a hash of the answer, so it also changes when only the issue's dependency
   * summary does (which leaves its updated_at alone).
   */
  async issueIfChanged(
    repo: RepoConfig,
    number: number,
    etag: string | null,
  ): Promise<{ issue: Issue; etag: string | null } | null> {
    const what = `read issue #${number} of ${repo.owner}/${repo.repo}`;
    const response = await this.#octokit.request(
      "GET /repos/{owner}/{repo}/issues/{issue_number}",
      {
        ...inRepo(repo, what),
        issue_number: number,
        headers: etag ? { "if-none-match": etag } : {},
      },
    ).catch(nullOn(304));
    if (!response) return null;
    const issue = await this.#checkIssue(repo, number, response.data as unknown as Table);
    return { issue, etag: response.headers.etag ?? null };
  }

  /** The issue of a single-issue answer, or why it is another one (see `getIssue()`). */
  async #checkIssue(repo: RepoConfig, number: number, data: Table): Promise<Issue> {
    const what = `read issue #${number} of ${repo.owner}/${repo.repo}`;
    const issue = toIssue(data);
    if (!issue) {
      throw new GitHubError(
        `Cannot ${what}: the response lacks number, state, labels or updated_at`,
      );
    }
    const home = `${this.#apiUrl}/repos/${repo.owner}/${repo.repo}`.toLowerCase();
    const at = String(data.repository_url ?? home).toLowerCase();
    if (issue.number === number && at === home) return issue;
    // The same number in another repository: a renamed one, or a transfer that kept the number.
    const name = issue.number === number ? await this.#nameOf(repo) : "";
    if (name && at.endsWith(`/repos/${name.toLowerCase()}`)) {
      throw new GitHubError(
        `Cannot ${what}: GitHub calls the repository ${name} now (renamed), and writes to its ` +
          "old name are not sent on: set repo_url to the new name",
        { kind: "renamed" },
      );
    }
    const where = typeof data.html_url === "string" ? data.html_url : `issue #${data.number}`;
    throw new GitHubError(
      `Cannot ${what}: GitHub answered with ${where}, where it was transferred`,
      { kind: "moved", status: 301 },
    );
  }

  /** The repository's full name as GitHub gives it now. */
  async #nameOf(repo: RepoConfig): Promise<string> {
    const { fullName } = await this.getRepo(repo).catch((error: GitHubError) => {
      // A 404 here is about the repository: it must not make the issue count as gone.
      if (error.kind === "rate-limit" || error.kind === "auth") throw error;
      throw new GitHubError(error.message, { cause: error });
    });
    return fullName;
  }

  /** Names of the branches linked to an issue (GitHub's "Development" sidebar). */
  async linkedBranches(repo: RepoConfig, number: number): Promise<string[]> {
    const what = `read linked branches of issue #${number}`;
    const data = await this.#octokit.graphql<LinkedBranchesJson>(LINKED_BRANCHES_QUERY, {
      ...inRepo(repo, what),
      number,
    });
    const nodes = data?.repository?.issue?.linkedBranches?.nodes;
    if (!Array.isArray(nodes)) {
      throw new GitHubError(`Cannot ${what}: the response has no linkedBranches`);
    }
    return nodes.flatMap((node) => typeof node?.ref?.name === "string" ? [node.ref.name] : []);
  }

  /**
   * Who last added `label` to an issue and when, and who renamed it since: its events come
   * oldest first, 100 a page; after the first page this reads back from the last one to that
   * `labeled` event, at most EVENT_PAGES pages. Null when no `labeled` event for it is found.
   * `via` is the slug of the GitHub App it was done through (`performed_via_github_app`).
   */
  async labelEvent(repo: RepoConfig, number: number, label: string): Promise<LabelEvent | null> {
    const what = `read the events of issue #${number}`;
    const eventPage = async (n: number) => {
      const response = await this.#octokit.request(
        "GET /repos/{owner}/{repo}/issues/{issue_number}/events",
        { ...inRepo(repo, what), issue_number: number, per_page: PAGE_SIZE, page: n },
      );
      const events = (Array.isArray(response.data) ? response.data : []) as unknown[];
      return { events, last: lastPage(response.headers, n) };
    };
    const renames: Acted[] = [];
    const first = await eventPage(1);
    for (let n = first.last; n >= 1 && first.last - n < EVENT_PAGES; n--) {
      const events = n === 1 ? first.events : (await eventPage(n)).events;
      for (const event of events.toReversed()) {
        if (!isTable(event) || typeof event.created_at !== "string") continue;
        const name = isTable(event.label) ? String(event.label.name) : "";
        if (event.event === "renamed") renames.push(actedOf(event));
        if (event.event === "labeled" && name.toLowerCase() === label.toLowerCase()) {
          return { ...actedOf(event), renames };
        }
      }
    }
    return null;
  }

  /**
   * Who edited an issue's body at or after `since` (epoch ms), newest first: GraphQL's
   * `userContentEdits` (the REST API keeps no record of body edits), the issue's creation left
   * out. `complete` is false when more edits than one page holds may be after `since`.
   */
  async bodyEdits(
    repo: RepoConfig,
    number: number,
    since: number,
  ): Promise<{ edits: Acted[]; complete: boolean }> {
    const what = `read the body edits of issue #${number}`;
    const data = await this.#octokit.graphql<BodyEditsJson>(BODY_EDITS_QUERY, {
      ...inRepo(repo, what),
      number,
    });
    const issue = data?.repository?.issue;
    const nodes = issue?.userContentEdits?.nodes;
    if (!issue || !Array.isArray(nodes)) {
      throw new GitHubError(`Cannot ${what}: the response has no userContentEdits`);
    }
    const from = Math.floor(since / 1000) * 1000;
    const created = Date.parse(issue.createdAt);
    const edits = nodes.flatMap((node) => {
      const at = Date.parse(node?.editedAt ?? "");
      return at >= from && at !== created
        ? [{ actor: node?.editor?.login ?? "ghost", via: null, at: node!.editedAt }]
        : [];
    });
    const total = issue.userContentEdits.totalCount ?? nodes.length;
    return { edits, complete: total <= nodes.length || edits.length < nodes.length };
  }

  /**
   * A person's role in the repository (`GET …/collaborators/{username}/permission`), from
   * `role_name`, a custom role's through `user.permissions`; never from `permission`, which
   * shows triage as read and maintain as write. Null role: none (unknown to GitHub: 404). Sent
   * with `etag` (If-None-Match): null when unchanged (304, not counted against the rate limit).
   */
  async collaboratorRole(
    repo: RepoConfig,
    login: string,
    etag: string | null,
  ): Promise<{ role: TriggerRole | null; etag: string | null } | null> {
    const what = `read the role of ${login} in ${repo.owner}/${repo.repo}`;
    let response;
    try {
      response = await this.#octokit.request(
        "GET /repos/{owner}/{repo}/collaborators/{username}/permission",
        { ...inRepo(repo, what), username: login, headers: etag ? { "if-none-match": etag } : {} },
      );
    } catch (error) {
      if (error instanceof GitHubError && error.status === 304) return null;
      // Not about the issue: a 404 here must not make it count as gone.
      if (error instanceof GitHubError && error.status === 404) {
        return { role: null, etag: null };
      }
      throw error;
    }
    return { role: roleOf(response.data as unknown), etag: response.headers.etag ?? null };
  }

  /**
   * Adds one label, keeping all others (never replaces the set: people may be editing). After
   * an unconfirmed answer the issue is read again, and the label added again only if missing.
   */
  async addLabel(repo: RepoConfig, number: number, label: string): Promise<void> {
    const what = `add label "${label}" to issue #${number}`;
    const labels = await this.#writeOnce(async () => {
      const response = await this.#octokit.request(
        "POST /repos/{owner}/{repo}/issues/{issue_number}/labels",
        { ...inRepo(repo, what), issue_number: number, labels: [label] },
      );
      return response.data as unknown;
    }, async () => (await this.getIssue(repo, number)).labels.includes(label));
    // Exactly-once rests on label moves GitHub confirmed, so check the answer says so.
    if (labels !== undefined && !labelNames(labels)?.includes(label)) {
      throw new GitHubError(`Cannot ${what}: GitHub's answer does not list it`);
    }
  }

  /** Removes one label; a label already gone (404) is fine. */
  async removeLabel(repo: RepoConfig, number: number, label: string): Promise<void> {
    const what = `remove label "${label}" from issue #${number}`;
    const response = await this.#octokit.request(
      "DELETE /repos/{owner}/{repo}/issues/{issue_number}/labels/{name}",
      { ...inRepo(repo, what), issue_number: number, name: label },
    ).catch(nullOn(404));
    const remaining = response && labelNames(response.data);
    if (response && (!remaining || remaining.includes(label))) {
      throw new GitHubError(`Cannot ${what}: GitHub's answer still lists it`);
    }
  }

  /**
   * The token's rate limit (`GET /rate_limit`, which costs none of it); null where the
   * server has rate limiting off (GitHub Enterprise Server by default answers 404).
   */
  async rateLimit(): Promise<{ limit: number; remaining: number; reset: string } | null> {
    const what = "read the rate limit";
    const response = await this.#octokit.request("GET /rate_limit", { request: { what } })
      .catch(nullOn(404));
    if (!response) return null;
    const core = (response.data as { resources?: { core?: Record<string, unknown> } }).resources
      ?.core;
    if (typeof core?.limit !== "number" || typeof core.remaining !== "number") {
      throw new GitHubError(`Cannot ${what}: the answer has no resources.core.limit and remaining`);
    }
    const reset = resetTime(String(core.reset), this.#deps.now());
    return { limit: core.limit, remaining: core.remaining, reset };
  }

  /** The repository's full name and what the token's account may do there, if GitHub says. */
  async getRepo(
    repo: RepoConfig,
  ): Promise<{ fullName: string; permissions: Record<string, boolean> | null }> {
    const { data } = await this.#octokit.request(
      "GET /repos/{owner}/{repo}",
      inRepo(repo, `read repository ${repo.owner}/${repo.repo}`),
    );
    const permissions = isTable(data.permissions)
      ? data.permissions as unknown as Record<string, boolean>
      : null;
    return { fullName: String(data.full_name ?? `${repo.owner}/${repo.repo}`), permissions };
  }

  /** Every label of the repository, 100 per page. */
  async listLabels(repo: RepoConfig): Promise<LabelSpec[]> {
    const labels: LabelSpec[] = [];
    const pages = this.#list(`read the labels of ${repo.owner}/${repo.repo}`, {
      url: "/repos/{owner}/{repo}/labels",
      owner: repo.owner,
      repo: repo.repo,
      per_page: PAGE_SIZE,
    }, { parsed: true });
    for await (const { data } of pages) {
      for (const label of data as unknown[]) {
        if (!isTable(label) || typeof label.name !== "string") continue;
        labels.push({
          name: label.name,
          color: typeof label.color === "string" ? label.color : "",
          description: typeof label.description === "string" ? label.description : "",
        });
      }
    }
    return labels;
  }

  /** Creates a repository label; after an unconfirmed answer, again only if it is missing. */
  async createLabel(repo: RepoConfig, label: LabelSpec): Promise<void> {
    const what = `create label "${label.name}" in ${repo.owner}/${repo.repo}`;
    await this.#writeOnce(
      () =>
        this.#octokit.request("POST /repos/{owner}/{repo}/labels", {
          ...inRepo(repo, what),
          ...label,
        }),
      async () =>
        await this.#octokit.request("GET /repos/{owner}/{repo}/labels/{name}", {
          ...inRepo(repo, what),
          name: label.name,
        }).catch(nullOn(404)) !== null,
    );
  }

  /** Sets the colour and description of the label named `name`; never renames it. */
  async updateLabel(
    repo: RepoConfig,
    name: string,
    change: { color: string; description: string },
  ): Promise<void> {
    await this.#octokit.request("PATCH /repos/{owner}/{repo}/labels/{name}", {
      ...inRepo(repo, `update label "${name}" in ${repo.owner}/${repo.repo}`),
      name,
      ...change,
    });
  }

  /**
   * Whether one of an issue's newest comments contains `marker`. Comments come oldest first,
   * so after the first page this reads the last COMMENT_PAGES pages, newest first. Pages are
   * asked for by number on the documented route, not by following the `link` header's URLs.
   */
  async hasComment(repo: RepoConfig, number: number, marker: string): Promise<boolean> {
    const what = `read the comments of issue #${number}`;
    const commentPage = async (n: number) => {
      const response = await this.#octokit.request(
        "GET /repos/{owner}/{repo}/issues/{issue_number}/comments",
        { ...inRepo(repo, what), issue_number: number, per_page: PAGE_SIZE, page: n },
      );
      const found = Array.isArray(response.data) &&
        response.data.some((comment) =>
          isTable(comment) && String(comment.body ?? "").includes(marker)
        );
      return { found, last: lastPage(response.headers, n) };
    };
    const first = await commentPage(1);
    if (first.found) return true;
    const oldest = Math.max(2, first.last - COMMENT_PAGES + 1);
    for (let n = first.last; n >= oldest; n--) {
      if ((await commentPage(n)).found) return true;
    }
    return false;
  }

  /**
   * When `label` was last taken off the issue at or after `since` (epoch ms; GitHub's times
   * have whole seconds, so the same second counts), or null if it was not. The issue's events
   * come oldest first, 100 a page: after the first page this reads back from the last one,
   * only as far as `since`, and throws when that is more than EVENT_PAGES pages back.
   */
  async labelRemovedSince(
    repo: RepoConfig,
    number: number,
    label: string,
    since: number,
  ): Promise<string | null> {
    const from = Math.floor(since / 1000) * 1000;
    const what = `read the events of issue #${number}`;
    const eventPage = async (n: number) => {
      const response = await this.#octokit.request(
        "GET /repos/{owner}/{repo}/issues/{issue_number}/events",
        { ...inRepo(repo, what), issue_number: number, per_page: PAGE_SIZE, page: n },
      );
      const events = (Array.isArray(response.data) ? response.data : []) as unknown[];
      return { events, last: lastPage(response.headers, n) };
    };
    // Newest first: the first event older than `since` ends the search.
    const removal = (events: unknown[]): string | null | undefined => {
      for (const event of events.toReversed()) {
        if (!isTable(event) || typeof event.created_at !== "string") continue;
        if (Date.parse(event.created_at) < from) return null;
        const name = isTable(event.label) ? String(event.label.name) : "";
        if (event.event === "unlabeled" && name.toLowerCase() === label.toLowerCase()) {
          return event.created_at;
        }
      }
      return undefined;
    };
    const first = await eventPage(1);
    for (let n = first.last; n >= 1; n--) {
      if (first.last - n >= EVENT_PAGES) {
        throw new GitHubError(
          `Cannot ${what}: more than ${EVENT_PAGES * PAGE_SIZE} events since ${
            new Date(since).toISOString()
          }`,
        );
      }
      const found = removal(n === 1 ? first.events : (await eventPage(n)).events);
      if (found !== undefined) return found;
    }
    return null;
  }

  /**
   * Posts a comment on an issue (a write: paced like label writes). Never sent twice: after an
   * unconfirmed answer it throws, and the caller looks for the comment (`commentOnce()`).
   */
  async addComment(repo: RepoConfig, number: number, body: string): Promise<void> {
    await this.#octokit.request("POST /repos/{owner}/{repo}/issues/{issue_number}/comments", {
      ...inRepo(repo, `comment on issue #${number}`),
      issue_number: number,
      body,
    });
  }

  /**
   * A write GitHub may store without saying so (see `GitHubError.unconfirmed`): after an
   * unconfirmed answer, `done()` looks whether it took effect before it is sent again (at most
   * GITHUB_ATTEMPTS times in all). What the write answered, or undefined when the look found it
   * done.
   */
  async #writeOnce<T>(
    write: () => Promise<T>,
    done: () => Promise<boolean>,
  ): Promise<T | undefined> {
    for (let attempt = 1;; attempt++) {
      try {
        return await write();
      } catch (error) {
        if (!(error instanceof GitHubError) || !error.unconfirmed || attempt >= GITHUB_ATTEMPTS) {
          throw error;
        }
        this.#log.debug(`${error.message}; looking whether GitHub did it before trying again`);
      }
      if (await done()) return undefined;
    }
  }

  /**
   * Octokit's request, leaving the body of a 2xx unparsed for issuePage(). Octokit parses with a
   * reviver that keeps big integers exact and makes a string of every value's source text:
   * for pages of 100 issues that made a full read take about half as much memory again.
   */
  #unparsed(): Octokit["request"] {
    // Made once: defaults() builds a new endpoint with every default option merged in.
    return this.#unparsedRequest ??= this.#octokit.request.defaults({
      request: { parseSuccessResponseBody: false },
    });
  }

  /**
   * Octokit's paginate.iterator from `parameters.url` on, bodies unparsed unless `parsed`. The
   * iterator sends only the method, URL and headers of each page: the words of `what` come
   * with the request method instead.
   */
  #list(
    what: string,
    parameters: { url: string } & Record<string, unknown>,
    options: { parsed?: boolean } = {},
  ) {
    const request = options.parsed ? this.#octokit.request : this.#unparsed();
    // Given a request method, iterator() takes endpoint options (its `url` and parameters),
    // though its type asks for a route string there.
    return this.#octokit.paginate.iterator(
      request.defaults({ request: { what } }),
      parameters as unknown as string,
    );
  }
}

/**
 * Octokit's core with pagination: the coordinator calls `request`, `paginate` and `graphql`
 * only. `@octokit/rest` adds about 1,000 endpoint methods built at module load, and a request
 * log hook that parses every request's options a second time to log them.
 */
const Octokit = OctokitCore.plugin(paginateRest);
type Octokit = InstanceType<typeof Octokit>;

const SILENT_LOG = { debug() {}, info() {}, warn() {}, error() {} };

// ---------------------------------------------------------------------------
// ## GitHub: answers (what the API calls read)
// ---------------------------------------------------------------------------

/** What the coordinator keeps of a GitHub issue. Pull requests are not kept. */
interface Issue {
  /** The issue number. */
  number: number;
  /** The title, for the summary. */
  title: string;
  /** GitHub's state: the cache keeps open issues only. */
  state: "open" | "closed";
  /** Label names. */
  labels: string[];
  /** Whether it is a pull request (the issue list has both); those are never dispatched. */
  pullRequest: boolean;
  /** ISO 8601, as GitHub gives it. */
  createdAt: string;
  /** ISO 8601, as GitHub gives it: any change moves it. */
  updatedAt: string;
  /**
   * How many open issues block it (`issue_dependencies_summary.blocked_by`); absent when GitHub
   * did not say (a GitHub Enterprise Server without issue dependencies): then none hold it.
   */
  blockedBy?: number;
}

/** A page of issues from GitHub, and the link to the next one. */
interface IssuePage {
  /** The page's issues (pull requests included: the caller drops them). */
  issues: Issue[];
  /** The `rel="next"` URL of the `link` header, or null on the last page. */
  next: string | null;
  /** The page's ETag, for the next run's `If-None-Match`. */
  etag: string | null;
}

/**
 * The issues of a page of the issue list, its body parsed here (see GitHub's #unparsed()); a
 * body that fails to arrive or is no list of issues is a GitHubError in the words of `what`.
 */
async function issuePage(
  response: { data: unknown; headers: Record<string, unknown> },
  options: { repo: RepoConfig; what: string; log: Logger },
): Promise<IssuePage> {
  const { repo, what, log } = options;
  let data = response.data;
  if (data instanceof ReadableStream) {
    const text = await new Response(data).text().catch((error: unknown) => {
      throw new GitHubError(`Cannot ${what}: ${errorMessage(error)}`, { cause: error });
    });
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!Array.isArray(data)) {
    throw new GitHubError(`Cannot ${what}: expected a JSON array of issues, got ${typeName(data)}`);
  }
  const issues: Issue[] = [];
  for (const raw of data) {
    const issue = toIssue(raw);
    if (issue) issues.push(issue);
    else {
      log.warn(
        `${repo.owner}/${repo.repo}: skipped an issue GitHub returned without number, state, labels or updated_at`,
      );
    }
  }
  return {
    issues,
    next: relLink(header(response.headers, "link"), "next"),
    etag: header(response.headers, "etag") ?? null,
  };
}

/** Converts one REST issue object; null when fields the coordinator needs are missing. */
function toIssue(raw: unknown): Issue | null {
  if (!isTable(raw)) return null;
  const { number, title, state, labels, created_at, updated_at } = raw;
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
    ...blockedByOf(raw.issue_dependencies_summary),
  };
}

/**
 * `blocked_by` of an issue's `issue_dependencies_summary`; nothing when absent (a GitHub
 * Enterprise Server without issue dependencies). GitHub's REST description gives every issue
 * object (the list's and a single issue's) an optional `issue_dependencies_summary`, schema
 * `issue-dependencies-summary`: the integers `blocked_by`, `blocking`, `total_blocked_by` and
 * `total_blocking`, all required. The REST schema does not say what they count; its GraphQL twin,
 * `IssueDependenciesSummary`, does: `blockedBy` "Count of issues this issue is blocked by",
 * `totalBlockedBy` "Total count of issues this issue is blocked by (open and closed)": so
 * `blocked_by` counts the open blockers only. Changing them leaves the issue's `updated_at` alone
 * (`blockedHold()`). Not in shared/reference/github-jenkins-api.md; the endpoints that change
 * them: https://docs.github.com/en/rest/issues/issue-dependencies.
 */
function blockedByOf(summary: unknown): { blockedBy?: number } {
  return isTable(summary) && Number.isInteger(summary.blocked_by)
    ? { blockedBy: summary.blocked_by as number }
    : {};
}

const LINKED_BRANCHES_QUERY = `query($owner: String!, $repo: String!, $number: Int!) {
  repository(owner: $owner, name: $repo) {
    issue(number: $number) { linkedBranches(first: 25) { totalCount nodes { ref { name } } } }
  }
}`;

/** The answer to LINKED_BRANCHES_QUERY, as far as GitHub's schema lets it be null. */
interface LinkedBranchesJson {
  repository: {
    issue: { linkedBranches: { nodes: ({ ref: { name: string } | null } | null)[] } } | null;
  } | null;
}

/** Someone who did something on an issue, through which GitHub App if any, and when. */
interface Acted {
  /** The login: a person's, or a GitHub App's bot, `slug[bot]`; "ghost" for a deleted account. */
  actor: string;
  /** The slug of the GitHub App it was done through (`performed_via_github_app`), or null. */
  via: string | null;
  /** When (ISO 8601). */
  at: string;
}

/** The latest `labeled` event of a label, and the `renamed` events after it, newest first. */
interface LabelEvent extends Acted {
  /** Title changes after the label was added. */
  renames: Acted[];
}

/** An issue event's actor, app and time. */
function actedOf(event: Table): Acted {
  const login = isTable(event.actor) && typeof event.actor.login === "string"
    ? event.actor.login
    : "ghost";
  const app = event.performed_via_github_app;
  const via = isTable(app) && typeof app.slug === "string" ? app.slug : null;
  return { actor: login, via, at: String(event.created_at) };
}

/**
 * The role in a collaborator-permission answer: `role_name` when it is a base role, else (a
 * custom role) the highest of `user.permissions` (admin > maintain > push > triage > pull).
 * The legacy `permission` field is never read: it shows triage as read and maintain as write.
 */
function roleOf(data: unknown): TriggerRole | null {
  if (!isTable(data)) return null;
  const name = typeof data.role_name === "string" ? data.role_name.toLowerCase() : "";
  if ((TRIGGER_ROLES as readonly string[]).includes(name)) return name as TriggerRole;
  const permissions = isTable(data.user) && isTable(data.user.permissions)
    ? data.user.permissions
    : {};
  const granted = (["admin", "maintain", "push", "triage", "pull"] as const)
    .find((key) => permissions[key] === true);
  const names = {
    admin: "admin",
    maintain: "maintain",
    push: "write",
    triage: "triage",
    pull: "read",
  } as const;
  return granted ? names[granted] : null;
}

const BODY_EDITS_QUERY = `query($owner: String!, $repo: String!, $number: Int!) {
  repository(owner: $owner, name: $repo) {
    issue(number: $number) {
      createdAt
      userContentEdits(first: 50) { totalCount nodes { editedAt editor { login } } }
    }
  }
}`;

/** The answer to BODY_EDITS_QUERY, as far as GitHub's schema lets it be null. */
interface BodyEditsJson {
  repository: {
    issue: {
      createdAt: string;
      userContentEdits: {
        totalCount: number;
        nodes: ({ editedAt: string; editor: { login: string } | null } | null)[];
      };
    } | null;
  } | null;
}

/**
 * The parameters of a request about `repo`: where, and the words for its action, which
 * GitHubTransport's hook puts in the message of whatever fails.
 */
function inRepo(repo: RepoConfig, what: string) {
  return { owner: repo.owner, repo: repo.repo, request: { what } };
}

/** A catch handler: null for a GitHubError of `status` (304 unchanged, 404 none), else rethrows. */
function nullOn(status: number): (error: unknown) => null {
  return (error) => {
    if (error instanceof GitHubError && error.status === status) return null;
    throw error;
  };
}

/** Label names of a labels response, or null when it is not one. */
function labelNames(data: unknown): string[] | null {
  if (!Array.isArray(data)) return null;
  const names = data.map((label) => isTable(label) ? label.name : undefined);
  return names.every((name) => typeof name === "string") ? names as string[] : null;
}

/**
 * The URL a `link` header gives for `rel` (next, prev, first, last), or null. A URL may hold
 * commas (`labels=a,b`): each link is matched whole, not split at them.
 */
function relLink(link: string | undefined, rel: string): string | null {
  for (const match of link?.matchAll(/<([^<>]+)>;\s*rel="([^"]+)"/g) ?? []) {
    if (match[2].split(" ").includes(rel)) return match[1];
  }
  return null;
}

/** The page number of a paged answer's `rel="last"` link; `n`, the page read, when it is the last. */
function lastPage(headers: Record<string, unknown>, n: number): number {
  const last = relLink(header(headers, "link"), "last");
  return Number(last ? new URL(last).searchParams.get("page") : n) || n;
}

// ---------------------------------------------------------------------------
// # GitHub transport
// ---------------------------------------------------------------------------

/**
 * The fetch under the GitHub client's Octokit, which adds timeouts, retries of 5xx and
 * network errors, short rate-limit waits and request counting; write pacing; and the
 * translation of what Octokit throws into a GitHubError that says what to do.
 *
 * That transport policy stays hand-written, not in `@octokit/plugin-retry` and
 * `@octokit/plugin-throttling`: both wait on Bottleneck's real-clock timers, which
 * `Deps` (and so the pacing and retry tests) cannot drive; plugin-retry keeps its retry
 * count in `options.request`, which Octokit shares between all requests of a client;
 * plugin-throttling's limiters are module-global, shared by every client in the process;
 * and their Bottleneck queues added about 8 and 25 ms to every request (a cold benchmark
 * run took 67% longer). Octokit's typed error is used: `RequestError`; GraphQL's errors, which
 * come in a 200 answer, are read in the hook.
 *
 * Every answer's body is read or cancelled: here, the ones retried and the redirected writes;
 * by Octokit, every other answer (success, 304, error status); by `issuePage()`, the
 * issue pages Octokit leaves unparsed. The timeout signal stays armed until then, so a body that
 * stalls is cut too. The bodies pass through rather than being read here first: holding each
 * page's bytes once more cost a cold run over 500 repositories 5 to 10 MB of peak RSS.
 */
class GitHubTransport {
  #deps: Deps;
  #log: Logger;
  #stats: GitHubStats;
  #timeoutMs: number;
  #writeIntervalMs: number;
  #lastWrite = -Infinity;
  #exhausted: GitHubError | null = null;
  #tokenFrom: string;

  /** Transport for `config.github`, counting requests into `stats`. */
  constructor(config: Config, deps: Deps, log: Logger, stats: GitHubStats) {
    this.#tokenFrom = config.credentialsFrom.githubToken;
    this.#deps = deps;
    this.#log = log;
    this.#stats = stats;
    this.#timeoutMs = config.coordinator.requestTimeoutMs;
    this.#writeIntervalMs = config.coordinator.githubWriteIntervalMs;
  }

  /**
   * Octokit's fetch: retries what is worth retrying; throws once the rate limit is spent.
   * Reads follow GitHub's redirects (a renamed repository's old name, a transferred issue's old
   * address: `GitHub.getIssue()` tells them apart). A write never does: fetch on its own would
   * send a DELETE on to the new address and turn a POST into a GET, and only a read can tell
   * whether the new address is still the issue the write is for. So a redirected write is a
   * GitHubError naming where it was sent (the hook's `#toGitHubError()` adds which write).
   */
  async fetch(input: string, init: RequestInit): Promise<Response> {
    const method = init.method ?? "GET";
    if (method === "GET" || method === "HEAD") return await this.#send(input, init);
    const response = await this.#send(input, { ...init, redirect: "manual" });
    const { status } = response;
    if (status < 300 || status >= 400 || status === 304) return response;
    await response.body?.cancel();
    const location = response.headers.get("location");
    const target = location ? new URL(location, input).href : "no location";
    throw new GitHubError(
      `GitHub redirected ${method} ${input} to ${target} (${status}); writes are not sent on ` +
        "where GitHub redirects them: if the repository was renamed, set repo_url to its new name",
      { status },
    );
  }

  /**
   * One request with its retries. A POST other than GraphQL's (a write that is not idempotent)
   * is not sent again once it may have reached GitHub, answered 5xx or not at all: its caller
   * looks first (`GitHub.#writeOnce()`, `commentOnce()`).
   */
  async #send(input: string, init: RequestInit): Promise<Response> {
    if (this.#exhausted) throw this.#exhausted;
    const once = init.method === "POST" && !/\/graphql$/.test(new URL(input).pathname);
    for (let attempt = 1;; attempt++) {
      const last = attempt >= GITHUB_ATTEMPTS;
      let response: Response;
      try {
        response = await this.#fetch(input, init, once);
      } catch (error) {
        const timedOut = error instanceof DOMException && error.name === "TimeoutError";
        const cause = error instanceof Error && error.cause ? error.cause : error;
        const reason = timedOut
          ? `no answer within ${this.#timeoutMs / 1000} s`
          : errorMessage(cause);
        // Connect errors (refused, DNS, TLS handshake) happen before the request is sent.
        const sent = timedOut ||
          !/\(Connect\)|connection refused|dns error|certificate/i.test(
            `${errorMessage(error)} ${reason}`,
          );
        if (last || (once && sent)) {
          throw new GitHubError(
            `Cannot reach GitHub (${reason}): ${init.method ?? "GET"} ${input}`,
            { cause: error, unconfirmed: sent },
          );
        }
        this.#log.debug(`GitHub request failed (${reason}), retrying: ${input}`);
        await this.#backoff(attempt);
        continue;
      }
      this.#stats.requests++;
      if (response.status === 304) this.#stats.notModified++;
      else this.#stats.costed++;
      const left = response.headers.get("x-ratelimit-remaining");
      // GraphQL's limit is another one: the count of REST requests (`core`) is the one reported.
      if (left !== null && response.headers.get("x-ratelimit-resource") !== "graphql") {
        this.#stats.rateLimitRemaining = Number(left);
      }
      const wait = this.#retryWait(response);
      if (wait === null || last || (once && response.status >= 500)) return response;
      this.#log.debug(`GitHub answered ${response.status}, retrying in ${wait} ms: ${input}`);
      await response.body?.cancel();
      await this.#deps.sleep(wait);
    }
  }

  /**
   * fetch within the request timeout. A write that must not be repeated (`once`) goes on a
   * connection of its own, read to its end before that is closed: when a pooled connection
   * drops before the answer, Deno 2.9's fetch sends the request again by itself, stored or not.
   */
  async #fetch(input: string, init: RequestInit, once: boolean): Promise<Response> {
    const signal = AbortSignal.timeout(this.#timeoutMs);
    let client: Deno.HttpClient | undefined;
    try {
      client = once ? Deno.createHttpClient({ poolMaxIdlePerHost: 0 }) : undefined;
    } catch {
      // A runtime without its own HTTP clients has the default one only.
    }
    if (!client) return await this.#deps.fetch(input, { ...init, signal });
    try {
      const answer = await this.#deps.fetch(input, { ...init, signal, client } as RequestInit);
      const body = await answer.arrayBuffer();
      const { status, statusText, headers } = answer;
      const response = new Response(status === 204 || status === 304 ? null : body, {
        status,
        statusText,
        headers,
      });
      Object.defineProperty(response, "url", { value: answer.url });
      return response;
    } finally {
      client.close();
    }
  }

  /**
   * Octokit's request hook, around every request of the client (each page, GraphQL): paces
   * each write (a method other than GET and HEAD, but not a GraphQL query), and turns whatever
   * fails into a GitHubError in the words the caller gave as `request.what` (`#toGitHubError()`).
   */
  async hook<O, R extends { data: unknown; headers: Record<string, unknown> }>(
    send: (options: O) => R | Promise<R>,
    options: O & { method: string; url: string; request?: { what?: unknown }; query?: unknown },
  ): Promise<R> {
    const what = String(options.request?.what ?? `${options.method} ${options.url}`);
    const graphql = /\/graphql$/.test(options.url);
    const query = graphql && !/^\s*mutation\b/.test(String(options.query));
    if (options.method !== "GET" && options.method !== "HEAD" && !query) await this.#paceWrite();
    try {
      const response = await send(options);
      // GraphQL answers errors with 200; @octokit/graphql would throw them past this hook.
      const errors = graphql && isTable(response.data) && response.data.errors;
      if (Array.isArray(errors)) throw this.#graphqlFailure(errors, response.headers, what);
      return response;
    } catch (error) {
      throw this.#toGitHubError(error, what);
    }
  }

  /** Waits until the write interval has passed since the last write. */
  async #paceWrite(): Promise<void> {
    const wait = this.#lastWrite + this.#writeIntervalMs - this.#deps.now();
    if (wait > 0) await this.#deps.sleep(wait);
    this.#lastWrite = this.#deps.now();
  }

  /** Turns whatever Octokit threw into a GitHubError that says what to do. */
  #toGitHubError(error: unknown, what: string): GitHubError {
    if (error instanceof GitHubError) return error;
    // What fetch() throws (no answer, the spent-limit latch) arrives wrapped in a RequestError.
    if (error instanceof RequestError && error.cause instanceof GitHubError) {
      const { cause } = error;
      // A redirect a write did not follow: the message says which write.
      if (cause.status < 300 || cause.status >= 400) return cause;
      return new GitHubError(`Cannot ${what}: ${cause.message}`, {
        cause,
        kind: cause.kind,
        status: cause.status,
        unconfirmed: cause.unconfirmed,
      });
    }
    if (!(error instanceof RequestError)) {
      return new GitHubError(`Cannot ${what}: ${errorMessage(error)}`, { cause: error });
    }
    const { status, response } = error;
    const headers = response?.headers ?? {};
    const where = response?.url ? ` at ${response.url}` : "";
    const reason = error.message.split(" - ")[0];
    const message = `Cannot ${what}: `;
    if (status === 401) {
      return this.#badToken(error, `${message}GitHub answered 401 ${reason}${where}`);
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
    return new GitHubError(`${message}GitHub answered ${status} ${reason}${where}`, {
      cause: error,
      status,
      unconfirmed: status >= 500,
    });
  }

  /** A 401: `said`, then where the token came from and how to fix it there. */
  #badToken(error: RequestError, said: string): GitHubError {
    const from = this.#tokenFrom;
    const fix = from.startsWith("GITHUB_TOKEN ")
      ? "set GITHUB_TOKEN to a valid token, or unset it (it wins over [github] token)"
      : "put a valid token there";
    return new GitHubError(`${said} for the token from ${from}: ${fix}`, {
      cause: error,
      kind: "auth",
      status: 401,
    });
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

  /** GraphQL reports errors in a 200 answer; a spent rate limit is one of them. */
  #graphqlFailure(errors: unknown[], headers: Record<string, unknown>, what: string) {
    const items = errors.filter(isTable);
    const text = items.map((item) => String(item.message ?? item.type ?? "error")).join("; ");
    if (items.some((item) => item.type === "RATE_LIMITED")) {
      this.#exhausted = new GitHubError(
        `Cannot ${what}: GitHub GraphQL rate limit exhausted; it resets at ${
          resetTime(header(headers, "x-ratelimit-reset"), this.#deps.now())
        }. Stopping this run`,
        { cause: { errors }, kind: "rate-limit" },
      );
      return this.#exhausted;
    }
    return new GitHubError(`Cannot ${what}: GitHub GraphQL says: ${text}`, {
      cause: { errors },
      kind: "graphql",
    });
  }
}

/** Request counts of one run: `costed` are the ones GitHub counts against the rate limit. */
interface GitHubStats {
  /** Every request sent, retries included. */
  requests: number;
  /** Conditional requests answered 304 Not Modified: free of rate limit. */
  notModified: number;
  /** Requests GitHub counts against the rate limit. */
  costed: number;
  /** What GitHub's last REST answer said is left of the rate limit; null before any answer. */
  rateLimitRemaining: number | null;
}

/** A GitHub request failed after its retries. */
class GitHubError extends Error {
  /** Why it failed; `other` unless the caller knows better. */
  kind: GitHubFailure;
  /** GitHub's HTTP status; 0 when there was no answer. */
  status: number;
  /**
   * GitHub may have done it all the same: it answered 5xx (its load balancers do for writes
   * they stored), or nothing once the request was sent. A write that is not idempotent is then
   * looked for before it is sent again, never repeated blind.
   */
  unconfirmed: boolean;
  /** A one-line message in std style, with the failure's kind and status. */
  constructor(
    message: string,
    options: ErrorOptions & { kind?: GitHubFailure; status?: number; unconfirmed?: boolean } = {},
  ) {
    super(message, options);
    this.name = "GitHubError";
    this.kind = options.kind ?? "other";
    this.status = options.status ?? 0;
    this.unconfirmed = options.unconfirmed ?? false;
  }
}

/** Why a GitHub request failed, so callers can decide how far to stop. */
type GitHubFailure =
  | "auth"
  | "rate-limit"
  | "secondary-limit"
  | "not-found"
  | "moved"
  | "renamed"
  | "graphql"
  | "other";

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

// ---------------------------------------------------------------------------
// # Jenkins
// ---------------------------------------------------------------------------

/** Jenkins remote access: trigger a parameterized build, find it again, read its URL. */
class Jenkins {
  /** Builds queued by this run. */
  builds = 0;
  #server: string;
  #http: JenkinsTransport;
  /** JENKINS_ADVICE, its 401 naming where the user name and API token come from. */
  #advice: Record<number, string>;

  /** A client for `config.jenkins`, signing in with its user name and API token. */
  constructor(config: Config, deps: Deps) {
    this.#server = config.jenkins.serverUrl;
    this.#http = new JenkinsTransport(config, deps);
    const { jenkinsUsername, jenkinsApiToken } = config.credentialsFrom;
    this.#advice = {
      ...JENKINS_ADVICE,
      401: `Jenkins rejected the user name from ${jenkinsUsername} or the API token from ` +
        `${jenkinsApiToken}: fix them there (environment variables win over the file)`,
    };
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
    const answer = await this.#http.postForm(url, body, what);
    if (answer.status === 201 || answer.status === 303) {
      if (answer.status === 201) this.builds++;
      return { queueUrl: answer.headers.get("location"), existing: answer.status === 303 };
    }
    throw triggerFailure(answer, { url, what, advice: this.#advice });
  }

  /** The build URL once the queue item has left the queue; null if not yet (never throws). */
  async buildUrl(queueUrl: string | null): Promise<string | null> {
    if (!queueUrl) return null;
    try {
      const answer = await this.#http.send(`${queueUrl.replace(/\/?$/, "/")}api/json`, {}, "");
      const item = answer.ok ? jsonOrNull<QueueItemJson>(answer.text) : null;
      return typeof item?.executable?.url === "string" ? item.executable.url : null;
    } catch {
      return null;
    }
  }

  /**
   * Looks for the build a dispatch record triggered, in the queue and the job's recent
   * builds. Returns its URL and whether it still waits in the queue (null if none);
   * throws JenkinsError if Jenkins cannot be asked.
   */
  async find(record: DispatchRecord): Promise<{ url: string; queued: boolean } | null> {
    const what = `Cannot look for the build of request ${record.requestId} in Jenkins`;
    const params = "actions[parameters[name,value]]";
    const queue = await this.#http.getJson<{ items?: JenkinsWork[] }>(
      `${this.#server}/queue/api/json?tree=items[url,inQueueSince,${params}]`,
      what,
    );
    const item = queue.items?.find((work) => matchesDispatch(work, record));
    if (item) return { url: new URL(item.url ?? "", `${this.#server}/`).href, queued: true };
    const job = await this.#http.getJson<{ builds?: JenkinsWork[] }>(
      `${this.jobUrl(record.jobPath)}/api/json?tree=builds[url,timestamp,${params}]{0,100}`,
      what,
    );
    const build = job.builds?.find((work) => matchesDispatch(work, record));
    return build ? { url: build.url ?? this.jobUrl(record.jobPath), queued: false } : null;
  }

  /**
   * What became of a dispatched build: follows the queue item to the build (Jenkins forgets
   * the item 5 minutes after it left the queue), else looks the build up by request id or
   * parameters, then reads the build. Throws JenkinsError if Jenkins cannot be asked.
   */
  async buildState(record: DispatchRecord): Promise<BuildState> {
    const what = `Cannot ask Jenkins about the build of request ${record.requestId}`;
    let buildUrl = record.buildUrl ?? null;
    if (!buildUrl && record.queueUrl) {
      const item = await this.#http.getJsonOrNull<QueueItemJson>(
        `${record.queueUrl.replace(/\/?$/, "/")}api/json?tree=cancelled,executable[number,url]`,
        what,
      );
      const queueUrl = record.queueUrl;
      if (item?.cancelled === true) return { result: "CANCELLED", buildUrl: null, queueUrl };
      if (item && typeof item.executable?.url === "string") buildUrl = item.executable.url;
      else if (item) return { result: "QUEUED", buildUrl: null, queueUrl };
    }
    if (!buildUrl) {
      const found = await this.find(record);
      if (!found) return { result: "MISSING", buildUrl: null, queueUrl: null };
      if (found.queued) return { result: "QUEUED", buildUrl: null, queueUrl: found.url };
      buildUrl = found.url;
    }
    // Read the build through the configured server: the URL Jenkins gives is built from its
    // own root URL setting, which may name another host than the one we may send credentials to.
    const number = /\/(\d+)\/?$/.exec(new URL(buildUrl).pathname)?.[1];
    const tree = "building,result,actions[causes[newerBuild[url]]]";
    const api = number
      ? `${this.jobUrl(record.jobPath)}/${number}/api/json?tree=${tree}`
      : `${buildUrl.replace(/\/?$/, "/")}api/json?tree=${tree}`;
    const build = await this.#http.getJsonOrNull<BuildJson>(api, what);
    if (!build) return { result: "MISSING", buildUrl, queueUrl: null };
    const running = build.building || typeof build.result !== "string";
    const interruptions = (build.actions ?? [])
      .filter((action) => action?._class === INTERRUPTED_ACTION)
      .flatMap((action) => action?.causes ?? []);
    return {
      result: running ? "RUNNING" : build.result!,
      buildUrl,
      queueUrl: null,
      ...(interruptions.length > 0 && !running ? { interruptions } : {}),
    };
  }

  /**
   * Whether the build at `buildUrl` (a newer build that superseded one) was started for the same
   * issue and workflow as `record`: the same repository and job script. Null when Jenkins does
   * not know it; throws JenkinsError if Jenkins cannot be asked.
   */
  async sameWork(record: DispatchRecord, buildUrl: string): Promise<boolean | null> {
    const what = `Cannot ask Jenkins about the build that superseded request ${record.requestId}`;
    const number = /\/(\d+)\/?$/.exec(new URL(buildUrl).pathname)?.[1];
    if (!number) return null;
    const build = await this.#http.getJsonOrNull<JenkinsWork>(
      `${this.jobUrl(record.jobPath)}/${number}/api/json?tree=actions[parameters[name,value]]`,
      what,
    );
    if (!build) return null;
    const params = workParams(build);
    return params.REPO_URL === record.params.REPO_URL && params.COMMAND === record.params.COMMAND;
  }

  /** Who Jenkins takes the configured credentials for, and its version (`X-Jenkins`). */
  async whoAmI(): Promise<{ user: string; anonymous: boolean; version: string | null }> {
    const url = `${this.#server}/whoAmI/api/json`;
    const what = "Cannot sign in to Jenkins";
    const answer = await this.#http.send(url, {}, what);
    ensureOk(answer, {
      url,
      what,
      advice: {
        ...this.#advice,
        404: "no Jenkins answers there: check [jenkins] server_url (JENKINS_URL)",
      },
    });
    const data = jsonOrNull(answer.text);
    if (!isTable(data) || typeof data.name !== "string") {
      throw new JenkinsError(`${what}: ${url} did not answer like Jenkins (no user name)`);
    }
    return {
      user: data.name,
      anonymous: data.anonymous === true,
      version: answer.headers.get("x-jenkins"),
    };
  }

  /** The HTTP status of the crumb issuer: 200 issues crumbs, 404 means CSRF protection is off. */
  async crumbStatus(): Promise<number> {
    return (await this.#http.send(`${this.#server}/crumbIssuer/api/json`, {}, "")).status;
  }

  /**
   * Whether the job can be built and which parameters it defines (null: not parameterized),
   * from `property[parameterDefinitions]` of the job's JSON.
   */
  async jobParameters(
    jobPath: string,
  ): Promise<{ buildable: boolean; parameters: string[] | null }> {
    const tree = "buildable,property[parameterDefinitions[name,type]]";
    const url = `${this.jobUrl(jobPath)}/api/json?tree=${tree}`;
    const what = `Cannot read Jenkins job "${jobPath}"`;
    const answer = await this.#http.send(url, {}, what);
    ensureOk(answer, {
      url,
      what,
      advice: {
        ...this.#advice,
        403: "the Jenkins user may not see this job: grant it Job/Read",
      },
    });
    const data = jsonOrNull(answer.text);
    if (!isTable(data)) throw new JenkinsError(`${what}: malformed JSON at ${url}`);
    const properties: unknown[] = Array.isArray(data.property) ? data.property : [];
    // A parameterized job has a ParametersDefinitionProperty; other properties lack the field.
    const holders = properties.filter((property) =>
      isTable(property) && Array.isArray(property.parameterDefinitions)
    ) as Table[];
    const names = holders.flatMap((property) => property.parameterDefinitions as unknown[])
      .flatMap((item) => isTable(item) && typeof item.name === "string" ? [item.name] : []);
    return { buildable: data.buildable !== false, parameters: holders.length > 0 ? names : null };
  }
}

/** What Jenkins says about a dispatched build. */
interface BuildState {
  /**
   * SUCCESS, UNSTABLE, FAILURE, NOT_BUILT or ABORTED once finished (Jenkins' own words);
   * QUEUED or RUNNING before; CANCELLED: the queue item was cancelled; MISSING: Jenkins
   * knows no such build (deleted, or never started).
   */
  result: string;
  /** The build, once it started and while Jenkins knows it. */
  buildUrl: string | null;
  /** The queue item, while no build is known. */
  queueUrl: string | null;
  /**
   * Why Jenkins interrupted a finished build: the causes of its `InterruptedBuildAction`, by
   * `_class` (a person's Stop, an agent gone, a newer build); absent when none was recorded.
   */
  interruptions?: Interruption[];
}

/** One cause of a build's interruption, as Jenkins exports it. */
interface Interruption {
  /** The cause's Java class, e.g. `jenkins.model.CauseOfInterruption$UserInterruption`. */
  _class?: string;
  /** A superseding build's `DisableConcurrentBuildsJobProperty$CancelledCause`: the newer build. */
  newerBuild?: { url?: string } | null;
}

/** A build as `tree=building,result,actions[causes[newerBuild[url]]]` gives it. */
interface BuildJson {
  building?: boolean;
  result?: string | null;
  actions?: ({ _class?: string; causes?: Interruption[] } | null)[];
}

/** A queue item as `tree=cancelled,executable[number,url]` gives it. */
interface QueueItemJson {
  cancelled?: boolean;
  executable?: { number?: number; url?: string } | null;
}

/** A Jenkins build or queue item, as far as matching a dispatch needs it. */
interface JenkinsWork {
  /** The build's or queue item's URL. */
  url?: string;
  /** A build's start (epoch ms). */
  timestamp?: number;
  /** A queue item's arrival in the queue (epoch ms). */
  inQueueSince?: number;
  /** Jenkins' actions; the parameters action names the build's parameters. */
  actions?: ({ parameters?: { name?: string; value?: unknown }[] } | null)[];
}

/** Whether a Jenkins build or queue item is the one a dispatch record triggered. */
function matchesDispatch(work: JenkinsWork, record: DispatchRecord): boolean {
  const params = workParams(work);
  if (params[REQUEST_ID_PARAM]) return params[REQUEST_ID_PARAM] === record.requestId;
  // Jobs drop parameters they do not define; then the same script after the claim matches.
  const since = work.timestamp ?? work.inQueueSince ?? 0;
  return ["REPO_URL", "BRANCH_NAME", "COMMAND"].every((name) =>
    params[name] === record.params[name]
  ) && since >= record.claimedAt - 60_000;
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

// ---------------------------------------------------------------------------
// ## Jenkins: transport and errors
// ---------------------------------------------------------------------------

/** How requests reach Jenkins: one connection each, credentials, the CSRF crumb. */
class JenkinsTransport {
  #deps: Deps;
  #server: string;
  #auth: string;
  #user: string;
  #timeoutMs: number;
  #crumb: Crumb | null = null;

  /** Transport for `config.jenkins`, signing in with its user name and API token. */
  constructor(config: Config, deps: Deps) {
    this.#deps = deps;
    this.#server = config.jenkins.serverUrl;
    this.#user = config.jenkins.username;
    this.#auth = "Basic " + btoa(`${config.jenkins.username}:${config.jenkins.apiToken}`);
    this.#timeoutMs = config.coordinator.requestTimeoutMs;
  }

  /**
   * POSTs a form. When Jenkins asks for a CSRF crumb, fetches one (once per client) and posts
   * again.
   */
  async postForm(url: string, body: string, what: string): Promise<JenkinsAnswer> {
    const post = () =>
      this.send(url, {
        method: "POST",
        body,
        headers: { "content-type": "application/x-www-form-urlencoded" },
      }, what);
    const answer = await post();
    if (answer.status === 403 && /No valid crumb/i.test(answer.text) && !this.#crumb) {
      await this.#fetchCrumb(what);
      return await post();
    }
    return answer;
  }

  /** JSON at `url`; throws JenkinsError when Jenkins cannot give it. */
  async getJson<T>(url: string, what: string): Promise<T> {
    const answer = await this.send(url, {}, what);
    // Asked while looking for a build: a failure leaves open whether it was queued.
    ensureOk(answer, { url, what, queued: "unknown" });
    try {
      return JSON.parse(answer.text) as T;
    } catch (error) {
      throw new JenkinsError(`${what}: malformed JSON at ${url}`, {
        cause: error,
        queued: "unknown",
      });
    }
  }

  /** JSON at `url`, or null for a 404 (Jenkins forgot it). */
  async getJsonOrNull<T>(url: string, what: string): Promise<T | null> {
    const answer = await this.send(url, {}, what);
    if (answer.status === 404) return null;
    ensureOk(answer, { url, what });
    try {
      return JSON.parse(answer.text) as T;
    } catch (error) {
      throw new JenkinsError(`${what}: malformed JSON at ${url}`, { cause: error });
    }
  }

  /**
   * A request to Jenkins and its answer, the body read in full within the request timeout.
   * Every answer (success, error status, redirect) is read here and nowhere else, so none can
   * leave its connection open. Credentials and crumb go only to the configured server.
   */
  async send(url: string, init: RequestInit, what: string): Promise<JenkinsAnswer> {
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
      const response = await this.#deps.fetch(url, {
        ...init,
        headers,
        redirect: "manual",
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
      const { status, statusText, ok } = response;
      return { status, statusText, ok, headers: response.headers, text: await response.text() };
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

  async #fetchCrumb(what: string): Promise<void> {
    const url = `${this.#server}/crumbIssuer/api/json`;
    const answer = await this.send(url, {}, what);
    if (!answer.ok) {
      throw new JenkinsError(
        `${what}: Jenkins asked for a CSRF crumb but ${url} answered ${answer.status}`,
      );
    }
    const data = jsonOrNull<{ crumb?: unknown; crumbRequestField?: unknown }>(answer.text);
    if (typeof data?.crumb !== "string" || typeof data?.crumbRequestField !== "string") {
      throw new JenkinsError(`${what}: malformed crumb at ${url}`);
    }
    // Crumbs are bound to the web session since Jenkins 2.176.2: keep its cookie.
    const cookie = answer.headers.getSetCookie().map((line) => line.split(";")[0]).join("; ");
    this.#crumb = { field: data.crumbRequestField, value: data.crumb, cookie };
  }
}

/** A Jenkins answer, its body read: what JenkinsTransport.send() gives instead of a Response. */
interface JenkinsAnswer {
  status: number;
  statusText: string;
  /** A 2xx status. */
  ok: boolean;
  headers: Headers;
  /** The body, read in full. */
  text: string;
}

interface Crumb {
  field: string;
  value: string;
  cookie: string;
}

/** Triggering or querying Jenkins failed. `queued` says whether a build may exist. */
class JenkinsError extends Error {
  /** `unknown` when the request may have reached Jenkins (look the build up before retrying). */
  queued: "no" | "unknown";
  /** Makes the error; `queued` defaults to `no`. */
  constructor(message: string, options: ErrorOptions & { queued?: "no" | "unknown" } = {}) {
    super(message, options);
    this.name = "JenkinsError";
    this.queued = options.queued ?? "no";
  }
}

/**
 * The JenkinsError for a trigger Jenkins did not accept: the advice by status and body, and
 * `queued: "unknown"` where a proxy, not Jenkins, failed.
 */
function triggerFailure(
  response: JenkinsAnswer,
  request: { url: string; what: string; advice: Record<number, string> },
): JenkinsError {
  const { url, what } = request;
  const { text } = response;
  const status = `${response.status} ${response.statusText || "error"}`.trim();
  let advice = request.advice[response.status] ?? "";
  if (/not parameterized/i.test(text)) advice = request.advice[400];
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
  return new JenkinsError(`${what}: ${status} at ${url}${advice ? `: ${advice}` : ""}`, {
    queued,
  });
}

/**
 * Throws the JenkinsError for an answer that is not 2xx: "what: STATUS TEXT at URL: advice",
 * the advice looked up by status in `advice`.
 */
function ensureOk(
  response: JenkinsAnswer,
  request: {
    url: string;
    what: string;
    advice?: Record<number, string>;
    queued?: JenkinsError["queued"];
  },
): void {
  if (response.ok) return;
  const { url, what } = request;
  const advice = request.advice?.[response.status] ?? "";
  throw new JenkinsError(
    `${what}: ${response.status} ${response.statusText} at ${url}${advice ? `: ${advice}` : ""}`,
    { queued: request.queued },
  );
}

/** What to do about a Jenkins answer, by status: the part of the message after the URL. */
const JENKINS_ADVICE: Record<number, string> = {
  403: "the Jenkins user may not build this job: grant it Job/Build, or use an API token " +
    "instead of a password",
  404: "no such job: check executor_job_path (folders separated by /)",
  405: "that URL is not a buildable job: check executor_job_path",
  409: "the job is disabled or not buildable: enable it in Jenkins",
  400: "Jenkins refused the parameters: the job must define the string parameters REPO_URL, " +
    "BRANCH_NAME, COMMAND and GITHUB_CREDENTIALS_ID",
};

/** The JSON value of `text` (taken to be a `T`, unchecked), or null when it is not JSON. */
function jsonOrNull<T = unknown>(text: string): T | null {
  try {
    return JSON.parse(text) as T;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// # Workflows and labels
// ---------------------------------------------------------------------------

/** A workflow the coordinator can start, keyed by the label that asks for it. */
export interface WorkflowSpec {
  /** The label a person sets to ask a bot for this step. */
  pickup: string;
  /** The mcp-coder command the Jenkins job runs. */
  workflow: "create-plan" | "implement" | "create-pr" | "review-plan" | "review-implementation";
  /** `main` for planning; `linked` uses the branch linked to the issue. */
  branch: "main" | "linked";
  /** The label that says the bot is working on it. */
  busy: string;
  /** Label the executor's watchdog sets when the job dies (mcp_coder #719). */
  failed: string;
}

/**
 * Pickup workflows, closest to done first: this is the dispatch order (mcp_coder's
 * PRIORITY_ORDER: each review sits just below the step it unblocks).
 */
export const WORKFLOWS: readonly WorkflowSpec[] = [
  {
    pickup: "status-08:ready-pr",
    workflow: "create-pr",
    branch: "linked",
    busy: "status-09:pr-creating",
    failed: "status-09f:pr-creating-failed",
  },
  {
    pickup: "status-17:code-review-bot",
    workflow: "review-implementation",
    branch: "linked",
    busy: "status-17i:code-reviewing",
    failed: "status-17f:code-review-failed",
  },
  {
    pickup: "status-05:plan-ready",
    workflow: "implement",
    branch: "linked",
    busy: "status-06:implementing",
    failed: "status-06f:implementing-failed",
  },
  {
    pickup: "status-14:plan-review-bot",
    workflow: "review-plan",
    branch: "linked",
    busy: "status-14i:plan-reviewing",
    failed: "status-14f:plan-review-failed",
  },
  {
    pickup: "status-02:awaiting-planning",
    workflow: "create-plan",
    branch: "main",
    busy: "status-03:planning",
    failed: "status-03f:planning-failed",
  },
];

/**
 * Minutes an issue may stay at each bot-busy label before the coordinator asks Jenkins
 * what became of its build: mcp_coder's `stale_timeout_minutes` (labels.json).
 * `[coordinator.stale_timeout_minutes]` overrides them per label.
 */
const STALE_TIMEOUT_MINUTES: Readonly<Record<string, number>> = {
  "status-03:planning": 15,
  "status-06:implementing": 120,
  "status-09:pr-creating": 15,
  "status-14i:plan-reviewing": 30,
  "status-17i:code-reviewing": 120,
};

/** Issues with one of these labels are never picked up: people add them to hold an issue back. */
export const IGNORE_LABELS: readonly string[] = ["Overview", "blocked", "wait"];

/** A GitHub label of mcp_coder's workflows, as `labels` creates it. */
export interface LabelSpec {
  /** The label's name, e.g. `status-02:awaiting-planning`. */
  name: string;
  /** Six hex digits without `#`, as GitHub takes it. */
  color: string;
  /** What the label means, shown by GitHub next to it. */
  description: string;
}

/**
 * mcp_coder's 36 workflow labels (its `config/labels.json`): 14 status labels, then 22 failure
 * labels. The executors and people set the ones WORKFLOWS does not name; `labels` creates them all.
 */
export const LABELS: readonly LabelSpec[] = ([
  // name, colour, description
  ["status-01:created", "10b981", "Fresh issue, may need refinement"],
  [
    "status-02:awaiting-planning",
    "6ee7b7",
    "Issue is refined and ready for implementation planning",
  ],
  ["status-03:planning", "a7f3d0", "Implementation plan being drafted (auto/in-progress)"],
  ["status-04:plan-review", "3b82f6", "First implementation plan available for review/discussion"],
  ["status-05:plan-ready", "93c5fd", "Implementation plan approved, ready to code"],
  ["status-06:implementing", "bfdbfe", "Code being written (auto/in-progress)"],
  ["status-07:code-review", "f59e0b", "Implementation complete, needs code review"],
  ["status-08:ready-pr", "fbbf24", "Approved for pull request creation"],
  ["status-09:pr-creating", "fed7aa", "Bot is creating the pull request (auto/in-progress)"],
  ["status-10:pr-created", "8b5cf6", "Pull request created, awaiting approval/merge"],
  ["status-14:plan-review-bot", "60a5fa", "Plan ready for automated review pickup"],
  ["status-14i:plan-reviewing", "bfdbfe", "Implementation plan being reviewed (auto/in-progress)"],
  ["status-17:code-review-bot", "fbbf24", "Implementation ready for automated review pickup"],
  ["status-17i:code-reviewing", "fed7aa", "Implementation being reviewed (auto/in-progress)"],
  ["status-03f-timeout:planning-llm-timeout", "e99695", "LLM timed out during planning"],
  [
    "status-03f-mcp:planning-mcp-unavailable",
    "e99695",
    "MCP server(s) failed to connect during planning",
  ],
  ["status-03f-prereq:planning-prereq-failed", "b60205", "Planning prerequisites failed"],
  ["status-03f:planning-failed", "b60205", "Plan generation failed"],
  ["status-06f:implementing-failed", "b60205", "General implementation failure"],
  ["status-06f-prep:task-tracker-prep-failed", "b60205", "Task tracker preparation failed"],
  ["status-06f-ci:ci-fix-needed", "d93f0b", "CI exhausted fix attempts, needs manual intervention"],
  ["status-06f-timeout:llm-timeout", "e99695", "LLM API timeout during implementation"],
  [
    "status-06f-mcp:mcp-unavailable",
    "e99695",
    "MCP server(s) failed to connect during implementation",
  ],
  [
    "status-06f-nochange:no-changes-after-retries",
    "d93f0b",
    "LLM produced no file changes after multiple retry attempts",
  ],
  ["status-09f-timeout:pr-creating-llm-timeout", "e99695", "LLM timed out during PR creation"],
  [
    "status-09f-mcp:pr-creating-mcp-unavailable",
    "e99695",
    "MCP server(s) failed to connect during PR creation",
  ],
  ["status-09f:pr-creating-failed", "b60205", "Pull request creation failed"],
  ["status-14f:plan-review-failed", "b60205", "Automated plan review failed"],
  [
    "status-14f-timeout:plan-review-llm-timeout",
    "e99695",
    "LLM timed out during automated plan review",
  ],
  [
    "status-14f-mcp:plan-review-mcp-unavailable",
    "e99695",
    "MCP server(s) failed to connect during automated plan review",
  ],
  ["status-17f:code-review-failed", "b60205", "Automated code review failed"],
  [
    "status-17f-ci:code-review-ci-fix-needed",
    "d93f0b",
    "CI still failing after automated code review fix attempts",
  ],
  [
    "status-17f-timeout:code-review-llm-timeout",
    "e99695",
    "LLM timed out during automated code review",
  ],
  [
    "status-17f-mcp:code-review-mcp-unavailable",
    "e99695",
    "MCP server(s) failed to connect during automated code review",
  ],
  [
    "status-17f-tasks:code-review-open-tasks",
    "d93f0b",
    "Open implementation tasks remain — run /implementation_finalise",
  ],
  [
    "status-17f-ci-unknown:code-review-ci-undeterminable",
    "d93f0b",
    "Could not prove CI ran green during automated code review",
  ],
] as const).map(([name, color, description]) => ({ name, color, description }));

// ---------------------------------------------------------------------------
// # Constants
// ---------------------------------------------------------------------------

/** Version reported by `--version` and in the GitHub User-Agent. */
const VERSION = "0.1.0";

/**
 * Log levels accepted by `--log-level` (the coordinator's own log) and by `job_log_level`
 * (`mcp-coder --log-level` in the job scripts).
 */
const LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"] as const;

/** One of `LOG_LEVELS`. */
type LogLevel = typeof LOG_LEVELS[number];

/**
 * The stable snake_case codes of why an issue was skipped (`SkipItem`: run report, `status`,
 * the skip lists in KV) or what was found about a stuck one (`StaleReport`), with what each
 * means. A code, once here, keeps its meaning; the words beside it (`reason`) may change.
 * docs/json.md lists them too.
 */
const CODES = {
  // Skips: an issue with a pickup label that was not dispatched.
  several_pickup_labels: "skip: more than one pickup label",
  ignore_label: "skip: an ignored label holds it back (IGNORE_LABELS)",
  busy_label: "skip: it also has a bot-busy label",
  label_limit: "skip or stuck: GitHub's label limit leaves no room for the next label",
  cap_reached: "skip: a cap is reached (max_active_jobs, max_dispatches_per_run)",
  no_linked_branch: "skip: no branch linked to the issue",
  several_linked_branches: "skip: more than one branch linked to the issue",
  another_run: "skip or stuck: another coordinator run is dispatching, finishing or moving it",
  unfinished_dispatch: "skip (dry run): an earlier dispatch is unfinished; a real run ends it",
  retry_due: "skip (dry run): a dead build's next attempt is due; a real run starts it",
  github_refused: "skip: GitHub refused a request about this issue",
  repository_renamed: "skip: the repository was renamed; set repo_url to its new name",
  not_a_candidate: "skip: not open, a pull request, or without a pickup label",
  blocked_by_issues: "skip: GitHub records it as blocked by open issues",
  untrusted_actor: "skip: its pickup label was not set by a trusted account (trigger_min_role)",
  edited_after_label: "skip: its title or body was edited by an untrusted account after the label",
  trigger_unverified: "skip: who set its pickup label could not be read; asked again next run",
  // Stuck: an issue at a bot-busy label past its stale timeout.
  foreign_busy: "stuck: the busy label was not set by this coordinator; left alone",
  checked_recently: "stuck: Jenkins was asked lately; its answer stands",
  jenkins_unreachable: "stuck: Jenkins could not be asked; asked again next run",
  check_limit: "stuck: more builds to ask about than a run asks; asked next run",
  still_running: "stuck: the build is still queued or running",
  finished_not_moved: "stuck: the build finished well but the issue is still at the busy label",
  no_longer_busy: "stuck: no longer at the busy label on GitHub; left alone",
  moved_to_failure: "stuck: the build failed or is gone; moved to the failure label",
  retry_scheduled: "stuck: the build died of the infrastructure; its next attempt waits",
  retry_budget_spent: "stuck: its last attempt died too; moved to the failure label",
  dry_run: "stuck (dry run): a real run asks Jenkins or moves it",
  past_timeout: "stuck (status): past its stale timeout; the next run asks Jenkins or moves it",
} as const;

/** One of `CODES`. */
type Code = keyof typeof CODES;

/**
 * Every KV key starts with this; the number is the key layout's version (see CACHE_SCHEMA).
 * The keys after it, and the part of `Store` that keeps each, are in the table at `Store`.
 */
const KV_PREFIX: readonly ["coordinator", number] = ["coordinator", 1];

/**
 * Version of the issue cache, kept in each repository's meta record. A cache written by
 * another version is rebuilt with a full read; dispatch records are not part of it and stay.
 * 2: only issues with a label of the workflow table are cached.
 * 3: issues keep `blockedBy` (GitHub's issue dependencies); older entries lack it.
 */
const CACHE_SCHEMA = 3;

/** Jenkins parameter that carries a unique id per dispatch. */
const REQUEST_ID_PARAM = "COORDINATOR_REQUEST_ID";

const DEFAULT_API_URL = "https://api.github.com";
const DEFAULT_SCHEDULE = "*/5 * * * *";
const DEFAULT_CACHE_REFRESH_MINUTES = 1440;
const DEFAULT_TIMEOUT_SECONDS = 30;
/**
 * Bound on every KV operation. Deno's KV Connect client retries a data request answered 5xx
 * without end (about 4 times a second, each logged as "KV Connect failed…"), and one that is
 * not answered waits forever: past this the store counts as stopped.
 */
const DEFAULT_KV_TIMEOUT_SECONDS = 10;
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
/** ... and 800 KiB of keys and values per commit: a batch stops at about half of that. */
const KV_BATCH_BYTES = 400_000;
/** A skip list keeps the issues that fit in this much JSON (Deno KV: 64 KiB per value). */
const SKIP_LIST_BYTES = 32_000;
/**
 * The run index keeps the repositories that fit this much JSON (Deno KV: 64 KiB per value,
 * serialized by V8, which takes less than JSON for its ASCII ids and numbers): 666 with ids of
 * 45 characters, 306 with the longest github.com has (151), fewer with stuck issues (their
 * fingerprint and time); see `fitRunIndex()`.
 */
const RUN_INDEX_BYTES = 60_000;
const PAGE_SIZE = 100;
const PLACEHOLDER_MARK = "REPLACE_ME";
/** GitHub refuses a label that would make an issue carry more than this (422). */
const LABEL_LIMIT = 100;
/** A stuck issue's build is asked about at most this often. */
const BUILD_RECHECK_MS = 5 * 60_000;
/** Builds asked about per run at most; the rest wait for the next run. */
const MAX_BUILD_CHECKS = 20;
/** Build results (and queue outcomes) after which a busy label is moved to the failure label. */
const FAILED_RESULTS = new Set(["FAILURE", "ABORTED", "NOT_BUILT", "CANCELLED", "MISSING"]);
/** Of those, the ones the infrastructure may have caused: retried within `max_retries`. */
const RETRIED_RESULTS = new Set(["ABORTED", "NOT_BUILT", "CANCELLED", "MISSING"]);
const DEFAULT_RETRY_BACKOFF_MINUTES = 5;
/** The action Jenkins records on a build it interrupted, with why (`causes`). */
const INTERRUPTED_ACTION = "jenkins.model.InterruptedBuildAction";
/** A person pressed Stop (or POSTed `…/stop`): the build was ended on purpose. */
const USER_INTERRUPTION = "jenkins.model.CauseOfInterruption$UserInterruption";
/** A newer build of a `disableConcurrentBuilds(abortPrevious: true)` Pipeline took over. */
const SUPERSEDED_INTERRUPTION =
  "org.jenkinsci.plugins.workflow.job.properties.DisableConcurrentBuildsJobProperty$CancelledCause";
/** Pages of the newest comments searched for a marker before commenting. */
const COMMENT_PAGES = 3;
/** A held blocked issue is read again (conditionally) at most this often: every 3rd 5-minute run. */
const BLOCKED_RECHECK_MS = 15 * 60_000;
/** A person's role is trusted this long, then asked again (conditionally: 304 costs nothing). */
const ROLE_TRUST_MS = 60 * 60_000;
/** The gates' memos (`GateMemos`) expire after this. */
const MEMO_TTL_MS = 7 * 24 * 60 * 60_000;
/** Pages of an issue's events read back from the newest, at most, to tell who set its label. */
const EVENT_PAGES = 10;
/** Attempts to claim within the caps while overlapping runs keep claiming too. */
const CAP_ATTEMPTS = 10;

const EXIT_OK = 0;
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;
/** Stopped by a signal (SIGINT or SIGTERM) before all was done: 128 + SIGINT, as shells do. */
const EXIT_INTERRUPTED = 130;

// ---------------------------------------------------------------------------
// # Job scripts
// ---------------------------------------------------------------------------

/** The Jenkins parameters of one dispatch: mcp_coder's four plus a unique request id. */
function jobParams(
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

/**
 * The script the Jenkins executor job runs (its COMMAND parameter): sh for linux,
 * batch for windows, line for line mcp_coder's workflow templates. After the mcp-coder
 * command a watchdog line moves a still-busy label to the failure label (mcp_coder #719).
 */
function jobScript(
  spec: WorkflowSpec,
  options: { os: ExecutorOs; logLevel: string; issue: number; branch: string },
): string {
  const planning = spec.workflow === "create-plan";
  // Only create-plan names the issue; the others find it from the branch they run on.
  const command = `${spec.workflow}${planning ? ` ${options.issue}` : ""}`;
  const watchdog = `${spec.failed} --from-status ${spec.busy}${
    planning ? ` --issue ${options.issue}` : ""
  }`;
  const lines = options.os === "windows"
    ? windowsJobScript({ logLevel: options.logLevel, command, watchdog })
    : linuxJobScript({ logLevel: options.logLevel, command, watchdog, branch: options.branch });
  return [...lines, ""].join("\n");
}

/** Quotes a branch name for sh only when it needs it, so plain names read as before. */
function shellWord(text: string): string {
  return /^[\w./@+-]+$/.test(text) ? text : `'${text.replaceAll("'", `'\\''`)}'`;
}

function linuxJobScript(
  options: { logLevel: string; command: string; watchdog: string; branch: string },
): string[] {
  return [
    `git checkout ${shellWord(options.branch)}`,
    "git pull",
    "export DISABLE_AUTOUPDATER=1",
    "export MCP_TIMEOUT=30000",
    "which mcp-coder && mcp-coder --version",
    "which claude && claude --version",
    "uv sync --extra types",
    `mcp-coder --log-level ${options.logLevel} ${options.command} --project-dir /workspace/repo --mcp-config .mcp.json`,
    "RC=$?",
    "echo RC=$RC",
    "",
    `mcp-coder gh-tool set-status ${options.watchdog} --project-dir /workspace/repo --force || true`,
    "",
    ...LINUX_ARCHIVE,
    "exit $RC",
  ];
}

/** Windows jobs have checked out BRANCH_NAME already, so the script starts in the workspace. */
function windowsJobScript(options: { logLevel: string; command: string; watchdog: string }) {
  return [
    ...WINDOWS_START,
    "",
    ...WINDOWS_VENV_CHECK,
    `if "%VIRTUAL_ENV%"=="" (`,
    String.raw`    %VENV_BASE_DIR%\.venv\Scripts\activate.bat`,
    ")",
    "",
    ...WINDOWS_STUBS,
    "echo command execution  =====================================",
    `mcp-coder --log-level ${options.logLevel} ${options.command} --project-dir ${WINDOWS_PROJECT} --mcp-config .mcp.json`,
    "set RC=%ERRORLEVEL%",
    "echo RC=%RC%",
    "",
    `mcp-coder gh-tool set-status ${options.watchdog} --project-dir ${WINDOWS_PROJECT} --force`,
    "",
    ...WINDOWS_ARCHIVE,
    "exit /b %RC%",
  ];
}

/**
 * The verification script of `test` (mcp_coder's DEFAULT_TEST_COMMAND and its windows
 * twin, line for line): checks the executor's tools, Claude, the MCP servers and a prompt.
 */
function testScript(options: { os: ExecutorOs; logLevel: string }): string {
  const level = options.logLevel;
  const mcpTest = `prompt --timeout 300 "For testing, please create a file, edit it, read it to ` +
    `verify, delete it, and tell me whether these actions worked well with the MCP server."`;
  if (options.os === "windows") return windowsTestScript(level, mcpTest);
  return [
    "# Tool verification",
    "which mcp-coder && mcp-coder --version",
    "which mcp-tools-py && mcp-tools-py --help",
    "which mcp-workspace && mcp-workspace --help",
    "mcp-coder verify",
    "export DISABLE_AUTOUPDATER=1",
    "export MCP_TIMEOUT=30000",
    "# Environment setup",
    "export MCP_CODER_PROJECT_DIR='/workspace/repo'",
    "export MCP_CODER_VENV_DIR='/workspace/.venv'",
    "uv sync --extra types",
    "# Claude CLI verification",
    "which claude",
    "claude --mcp-config .mcp.json --strict-mcp-config mcp list",
    `claude --mcp-config .mcp.json --strict-mcp-config -p "What is 1 + 1?"`,
    "# MCP Coder functionality test",
    `mcp-coder --log-level ${level} prompt "Which MCP server can you use?"`,
    `mcp-coder --log-level ${level} ${mcpTest} --project-dir /workspace/repo --mcp-config .mcp.json`,
    "# Project environment verification",
    "source .venv/bin/activate",
    "which mcp-coder && mcp-coder --version",
    ...LINUX_ARCHIVE,
  ].join("\n");
}

function windowsTestScript(level: string, mcpTest: string): string {
  return [
    ...WINDOWS_START,
    "cd",
    "dir",
    "",
    ...WINDOWS_VENV_CHECK,
    `if "%VIRTUAL_ENV%"=="" (`,
    "    echo Activating virtual environment...",
    String.raw`    %VENV_BASE_DIR%\.venv\Scripts\activate.bat`,
    ")",
    "",
    "echo %VIRTUAL_ENV%",
    "where python",
    "python --version",
    "pip list",
    "",
    "echo Tools in current environment ===================",
    "claude --version",
    ...["mcp-coder", "mcp-tools-py", "mcp-workspace", "mcp-config"].flatMap((tool) => [
      `where ${tool}`,
      `${tool} --version`,
    ]),
    "",
    ...WINDOWS_STUBS,
    "echo llm verification =====================================",
    "mcp-coder verify",
    // The trailing blank is mcp_coder's; kept so the scripts compare equal line by line.
    "claude --mcp-config .mcp.json --strict-mcp-config mcp list ",
    `claude --mcp-config .mcp.json --strict-mcp-config -p "What is 1 + 1?"`,
    "",
    `mcp-coder --log-level debug prompt "What is 1 + 1?"`,
    `mcp-coder --log-level ${level} prompt "Which MCP server can you use?"`,
    `mcp-coder --log-level ${level} ${mcpTest} --project-dir ${WINDOWS_PROJECT} --mcp-config .mcp.json`,
    "",
    ...WINDOWS_ARCHIVE,
  ].join("\n");
}

/** The lines mcp_coder's linux scripts end with: what the job leaves behind, for the archive. */
const LINUX_ARCHIVE = [
  `echo "archive after execution ======================================="`,
  "ls -la .mcp-coder/create_plan_sessions",
  "ls -la logs",
  "",
];

/** Where a windows job has the repository. */
const WINDOWS_PROJECT = String.raw`%WORKSPACE%\repo`;

/** The lines mcp_coder's windows scripts start with: to the workspace, then the venv's base. */
const WINDOWS_START = [
  "@echo ON",
  "",
  "echo current WORKSPACE directory===================================",
  "cd %WORKSPACE%",
  "",
  "echo switch to python execution environment =====================",
  "cd %VENV_BASE_DIR%",
];

/** mcp_coder's windows check that VENV_BASE_DIR is set. */
const WINDOWS_VENV_CHECK = [
  "echo python environment ================================",
  `if "%VENV_BASE_DIR%"=="" (`,
  "    echo ERROR: VENV_BASE_DIR environment variable not set",
  "    exit /b 1",
  ")",
  "",
];

/** mcp_coder's windows setup before the mcp-coder commands: its settings, the type stubs. */
const WINDOWS_STUBS = [
  "set DISABLE_AUTOUPDATER=1",
  "set MCP_TIMEOUT=30000",
  "",
  "echo Install type stubs in project environment ====================",
  `uv sync --project ${WINDOWS_PROJECT} --extra types`,
  "",
];

/** The lines mcp_coder's windows scripts end with: what the job leaves behind, for the archive. */
const WINDOWS_ARCHIVE = [
  "echo archive after execution =======================================",
  String.raw`dir .mcp-coder\create_plan_sessions`,
  "dir logs",
  "",
];

// ---------------------------------------------------------------------------
// # Config schema
// ---------------------------------------------------------------------------

/** The sections the coordinator reads, key by key; `repo` is each `[coordinator.repos.NAME]`. */
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
    kv_timeout_seconds: "number",
    github_write_interval_ms: "integer",
    max_parallel_repos: "integer",
    max_active_jobs: "integer",
    max_dispatches_per_run: "integer",
    issue_comments: "boolean",
    max_retries: "integer",
    retry_backoff_minutes: "number",
    job_log_level: "string",
    stale_timeout_minutes: "table",
    trigger_min_role: "string",
    trusted_actors: "array",
    remove_untrusted_label: "boolean",
    respect_issue_dependencies: "boolean",
    repos: "table",
  },
  repo: {
    repo_url: "string",
    executor_job_path: "string",
    executor_test_path: "string",
    github_credentials_id: "string",
    executor_os: "string",
    max_active_jobs: "integer",
    issue_comments: "boolean",
    max_retries: "integer",
    retry_backoff_minutes: "number",
    trigger_min_role: "string",
    trusted_actors: "array",
    remove_untrusted_label: "boolean",
    respect_issue_dependencies: "boolean",
    job_log_level: "string",
    // Read by mcp_coder's executors, not by the coordinator; accepted so one file serves both.
    update_issue_labels: "boolean",
    post_issue_comments: "boolean",
    auto_review_plan: "boolean",
    auto_review_implementation: "boolean",
    // mcp_coder's schema says "list" and turns each item into a string.
    setup_commands_linux: "array",
    setup_commands_windows: "array",
    // Not in mcp_coder's schema, but its vscodeclaude command reads it.
    setup_commands_macos: "array",
  },
};

type FieldType = "string" | "integer" | "number" | "boolean" | "array" | "table";

/** A TOML table as parsed. */
type Table = Record<string, unknown>;

/**
 * Sections of mcp_coder's config.toml that only other mcp-coder commands read (its
 * `_CONFIG_SCHEMA`): accepted and ignored, so one file serves both; those commands check them.
 */
const FOREIGN_SECTIONS = ["mcp", "claude", "llm", "vscodeclaude", "mlflow"];

/** The smallest value each [coordinator] tuning key takes, and how to say so. */
const TUNING_MINIMUM: Record<string, [number, string]> = {
  cache_refresh_minutes: [1, "at least 1"],
  max_parallel_repos: [1, "at least 1"],
  request_timeout_seconds: [Number.MIN_VALUE, "positive"],
  kv_timeout_seconds: [Number.MIN_VALUE, "positive"],
  github_write_interval_ms: [0, "0 or more"],
  max_active_jobs: [0, "0 or more"],
  max_dispatches_per_run: [0, "0 or more"],
  max_retries: [0, "0 or more"],
  retry_backoff_minutes: [Number.MIN_VALUE, "positive"],
};

/** Environment variables that win over the file; a command may require the credentials. */
const ENV_OVERRIDES = [
  { variable: "GITHUB_TOKEN", section: "github", key: "token", credential: true },
  { variable: "GITHUB_API_URL", section: "github", key: "api_url", credential: false },
  { variable: "JENKINS_URL", section: "jenkins", key: "server_url", credential: true },
  { variable: "JENKINS_USER", section: "jenkins", key: "username", credential: true },
  { variable: "JENKINS_TOKEN", section: "jenkins", key: "api_token", credential: true },
] as const;

// ---------------------------------------------------------------------------
// # Config template
// ---------------------------------------------------------------------------

/** Written when no config file exists; every REPLACE_ME must be filled in. */
const CONFIG_TEMPLATE = `# Coordinator configuration (compatible with mcp_coder's config.toml).
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
# Bound on every KV operation; past it the run stops, dispatching nothing more (default 10).
# kv_timeout_seconds = 10
# Pause between GitHub writes, as GitHub asks of integrations (default 1000).
# github_write_interval_ms = 1000
# Repositories read at the same time (default 4).
# max_parallel_repos = 4
# Caps (unset: none). Active jobs = issues at a bot-busy label plus unconfirmed dispatches.
# max_active_jobs = 5
# max_dispatches_per_run = 3
# Comment on the issue at dispatch and when a failed build's label is moved (default false).
# issue_comments = true
# Start a build again when it died of the infrastructure (never built, cancelled in the queue,
# gone, aborted by an agent going away), up to max_retries times per pickup (default 0: never),
# after retry_backoff_minutes, twice as long before each next retry (default 5).
# max_retries = 2
# retry_backoff_minutes = 5
# Verified trigger (unset: any pickup label counts): the label must come from someone with this
# role or higher (read, triage, write, maintain, admin), or from an account listed below.
# trigger_min_role = "triage"
# trusted_actors = ["release-bot[bot]"]
# remove_untrusted_label = false
# Hold issues GitHub records as blocked by open issues (default true).
# respect_issue_dependencies = true
# mcp-coder --log-level in the job scripts (default INFO; --log-level is this program's own).
# job_log_level = "INFO"

# Minutes an issue may stay at a bot-busy label before Jenkins is asked about its build
# (defaults: mcp_coder's stale timeouts).
# [coordinator.stale_timeout_minutes]
# "status-06:implementing" = 180

# One section per repository; the part after "repos." is what --repo takes.
[coordinator.repos.my_repo]
repo_url = "https://github.com/REPLACE_ME/my_repo.git"
# Jenkins job that runs the mcp-coder executor; folders separated by "/".
executor_job_path = "Coder/executor"
# Jenkins credentials id the job uses to clone the repository.
github_credentials_id = "github-pat"
# "linux" (shell script) or "windows" (batch script), case-insensitive.
executor_os = "linux"
# max_active_jobs = 2
# issue_comments = true

# [coordinator.repos.another_repo]
# repo_url = "https://github.com/your-org/another_repo.git"
# executor_job_path = "Coder/executor-windows"
# github_credentials_id = "github-pat"
# executor_os = "windows"
`;

// ---------------------------------------------------------------------------
// # Help and the command table
// ---------------------------------------------------------------------------

const CONFIG_HELP = `  --config PATH      config file (default: $COORDINATOR_CONFIG, else
                     $XDG_CONFIG_HOME/coordinator/config.toml, else ~/.config/coordinator/config.toml)`;
const KV_HELP =
  `  --kv PATH|URL      Deno KV store: a file, a remote KV URL or :memory: (default: $COORDINATOR_KV,
                     else $XDG_STATE_HOME/coordinator/kv.sqlite3, else ~/.local/state/coordinator/)`;

/** The commands, in the order the top-level help lists them. */
const COMMANDS = {
  run: {
    usage: "(--all | --repo NAME) [--dry-run] [options]",
    summary: "start the Jenkins job of each issue whose status label asks for a bot",
    flags: [
      "all",
      "repo",
      "config",
      "kv",
      "dry-run",
      "force-refresh",
      "keep-going",
      "log-level",
      "json",
    ],
    help: `Starts the Jenkins job of each issue whose status label asks for a bot, then moves
the label to the matching "bot is busy" status. Each pickup is dispatched once. Issues
left at a bot-busy label past its stale timeout are checked in Jenkins. \`status\` shows
what the runs left in KV.

Options:
  --all              process every repository in the config
  --repo NAME        process the repository of [coordinator.repos.NAME]
${CONFIG_HELP}
${KV_HELP}
  --dry-run          show what would be dispatched and why the rest is skipped; write nothing
  --force-refresh    re-read all open issues instead of only what changed
  --keep-going       after a Jenkins failure, go on with the other repositories
  --log-level LEVEL  DEBUG, INFO, WARNING or ERROR (default INFO): this program's log only;
                     the job scripts' mcp-coder --log-level is [coordinator] job_log_level
  --json             print the run summary as one JSON line on stdout (logs stay on stderr)

Ctrl-C (or SIGTERM) stops before the next dispatch; a second one at once: the next run
finishes a dispatch cut short.

Exit codes: 0 success (also nothing to do), 1 failure, 2 usage error, 130 stopped by Ctrl-C.
`,
  },
  check: {
    usage: "[--all | --repo NAME] [--config PATH] [--kv PATH|URL] [--json]",
    summary: "read-only preflight: config, GitHub, labels, Jenkins jobs, KV",
    flags: ["all", "repo", "config", "kv", "json"],
    help: `Checks everything a run needs, one line each, with the fix for each failure: the
config; the GitHub token and its rate limit; per repository, that it is readable, that
the token may move labels and that the workflow labels exist; that Jenkins answers and
takes the credentials; that each executor job exists, is enabled and defines the
parameters a dispatch sends; that the KV store opens. Writes nothing anywhere.

Options:
  --all              check every repository in the config (the default)
  --repo NAME        check only the repository of [coordinator.repos.NAME]
${CONFIG_HELP}
${KV_HELP}
  --json             print {"ok", "exitCode", "checks": [{"status", "subject", "detail"}]}

Exit codes: 0 every check passed (warnings allowed), 1 a check failed, 2 usage error.
`,
  },
  labels: {
    usage: "(--all | --repo NAME) [--dry-run] [--config PATH] [--json]",
    summary: "create or update mcp_coder's workflow labels on GitHub",
    flags: ["all", "repo", "config", "dry-run", "json"],
    help:
      `Creates mcp_coder's ${LABELS.length} workflow labels where a repository lacks them and sets
colour and description where they differ. Names match as on GitHub, ignoring case; a
label whose name differs only in case keeps its name. Nothing is deleted or renamed.
Writes are paced by [coordinator] github_write_interval_ms; a second run writes nothing.

Options:
  --all              every repository in the config
  --repo NAME        the repository of [coordinator.repos.NAME]
${CONFIG_HELP}
  --dry-run          print what would be created and updated; write nothing
  --json             print {"ok", "exitCode", "dryRun", "repos": [...]} on stdout

Progress goes to stderr: a line per repository (on a terminal also a live count). Ctrl-C
stops before the next label write, a second one at once; running it again writes the rest.

Exit codes: 0 success (also nothing to do), 1 failure, 2 usage error, 130 stopped by Ctrl-C.
`,
  },
  status: {
    usage: "(--all | --repo NAME) [--config PATH] [--kv PATH|URL] [--json]",
    summary: "show active jobs, stuck issues and the last run's skips, from KV only",
    flags: ["all", "repo", "config", "kv", "json"],
    help: `Shows, per repository, the jobs this coordinator has running (issue, workflow, since
when, queue or build URL, last known result), issues stuck at a busy label past its stale
timeout, and the issues the last run skipped with the reason. Reads the config and the KV
store only: no GitHub or Jenkins request, nothing written, no file created.

Options:
  --all              every repository in the config
  --repo NAME        the repository of [coordinator.repos.NAME]
${CONFIG_HELP}
${KV_HELP}
  --json             print {"ok", "exitCode", "at", "repos": [{"name", "active": [...], ...}]}

Exit codes: 0 success, 1 config or KV error (also a KV file that does not exist), 2 usage error.
`,
  },
  test: {
    usage: "--repo NAME --branch-name BRANCH [--config PATH] [--log-level L] [--json]",
    summary: "queue one build of a repository's executor job with mcp_coder's verification script",
    flags: ["repo", "config", "branch-name", "log-level", "json"],
    required: ["repo", "branch-name"],
    help: `Queues one build of the repository's executor job with mcp_coder's verification script
(tools, Claude, MCP servers) for its executor_os, on the given branch, with the usual job
parameters. Touches no issue: no GitHub request, no KV, no lease. mcp_coder spells this
\`mcp-coder coordinator --dry-run --repo NAME --branch-name BRANCH\`.

Options:
  --repo NAME        the repository of [coordinator.repos.NAME] (required)
  --branch-name B    the branch the test build checks out (required)
${CONFIG_HELP}
  --log-level LEVEL  DEBUG, INFO, WARNING or ERROR (default INFO): this program's log only;
                     the test script's mcp-coder --log-level is [coordinator] job_log_level
  --json             print {"ok", "exitCode", "repo", "job", "branch", "queueUrl", "buildUrl", ...}

Exit codes: 0 Jenkins accepted the build, 1 config or Jenkins error, 2 usage error.
`,
  },
} satisfies Record<string, CommandSpec>;

/** A command of the CLI: what `--help` says about it and which flags it takes. */
interface CommandSpec {
  /** The arguments after the command's name, for usage lines. */
  usage: string;
  /** One line for the top-level help. */
  summary: string;
  /** The flags it takes besides --help and --version. */
  flags: readonly FlagName[];
  /** The flags it cannot do without. */
  required?: readonly FlagName[];
  /** Its `COMMAND --help` text after the usage line. */
  help: string;
}

/** The name of a command: a key of `COMMANDS`. */
type CommandName = keyof typeof COMMANDS;

/** Flags of all commands, as `node:util` parseArgs takes them; each command takes some. */
const FLAGS = {
  all: { type: "boolean", default: false },
  repo: { type: "string" },
  config: { type: "string" },
  kv: { type: "string" },
  "dry-run": { type: "boolean", default: false },
  "force-refresh": { type: "boolean", default: false },
  "keep-going": { type: "boolean", default: false },
  "log-level": { type: "string", default: "INFO" },
  "branch-name": { type: "string" },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
  version: { type: "boolean", default: false },
} as const;

/** The name of a flag, without its dashes. */
type FlagName = keyof typeof FLAGS;

/** What a flag that takes a value calls it in messages. */
const FLAG_ARGUMENT: Partial<Record<FlagName, string>> = {
  repo: "NAME",
  "branch-name": "BRANCH",
};

/** Top-level `--help` text: every command. */
const HELP = `coordinator ${VERSION}: start Jenkins jobs for GitHub issues by status label.

Usage:
  deno task start COMMAND [options]
  deno run --allow-net --allow-env --allow-read --allow-write --unstable-kv --unstable-cron \\
    coordinator.ts COMMAND [options]

Commands:
${
  Object.entries(COMMANDS).map(([name, spec]) => `  ${name} ${spec.usage}\n      ${spec.summary}`)
    .join("\n")
}

  COMMAND --help     a command's options
  --version          show the version

Exit codes: 0 success, 1 failure (check: a check failed), 2 usage error, 130 stopped by
Ctrl-C (run, labels).
`;

// ---------------------------------------------------------------------------
// # For the tests and the doubles
// ---------------------------------------------------------------------------

/**
 * What the tests, the doubles (fakes.ts) and the benchmark reach besides the API above: not an
 * API, and it changes with the program. One object (Deno's idiom for testing a module's
 * internals), so the module's exports stay what a user of it needs.
 *
 * @internal
 */
export const _internals = {
  assess,
  CACHE_SCHEMA,
  CODES,
  COMMANDS,
  CONFIG_TEMPLATE,
  ConfigError,
  configPath,
  createLogger,
  dispatchIssue,
  formatSummary,
  GitHub,
  GitHubError,
  jobParams,
  jobScript,
  kvPath,
  matchesDispatch,
  onDeploy,
  orderCandidates,
  parseCli,
  parseConfig,
  parseRepoUrl,
  Redactor,
  REQUEST_ID_PARAM,
  runContext,
  runCoordinator,
  runLeaseName,
  selectRepos,
  STALE_TIMEOUT_MINUTES,
  Store,
  StoreError,
  testScript,
  toIssue,
  UsageError,
};

/**
 * The types that go with `_internals`, by name: `type Config = Internals["Config"]`.
 *
 * @internal
 */
export type Internals = {
  BuildState: BuildState;
  GitHub: GitHub;
  GitHubError: GitHubError;
  Store: Store;
  Config: Config;
  DispatchRecord: DispatchRecord;
  DispatchState: DispatchState;
  GitHubApi: GitHubApi;
  GitHubStats: GitHubStats;
  Issue: Issue;
  IssuePage: IssuePage;
  JenkinsApi: JenkinsApi;
  RepoConfig: RepoConfig;
  RepoMeta: RepoMeta;
  RunContext: RunContext;
  RunSummary: RunSummary;
};

// ---------------------------------------------------------------------------
// # Program start
// ---------------------------------------------------------------------------

// Run as a program, this file is the CLI and registers no cron: `deploy.ts` does that.
if (import.meta.main) {
  const stop = new AbortController();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  // `run` and `labels` stop at their next safe point on the first signal; the others at once.
  let command: string | undefined;
  try {
    command = parseCli(Deno.args).command;
  } catch { /* main() says what is wrong with the command line */ }
  const until = command === "run"
    ? "the next dispatch"
    : command === "labels"
    ? "the next label write"
    : undefined;
  const onSignal = () => {
    // The second signal: at once. What a dispatch cut short leaves, the next run finishes.
    if (!until || stop.signal.aborted) Deno.exit(EXIT_INTERRUPTED);
    stop.abort();
    if (Deno.stderr.isTerminal()) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[K"));
    createLogger((text) => Deno.stderr.writeSync(new TextEncoder().encode(text)), {
      level: "INFO",
      redactor: new Redactor(),
      now: Date.now,
    }).warn(`Stopping before ${until} (Ctrl-C again to stop at once)`);
  };
  for (const signal of signals) Deno.addSignalListener(signal, onSignal);
  const code = await main(Deno.args, defaultDeps(stop.signal));
  // Exits now, not once the event loop is empty: a KV operation given up on (see `within()`)
  // keeps it busy for ever, and a remote one retries and logs "KV Connect failed…" meanwhile.
  Deno.exit(code);
}
