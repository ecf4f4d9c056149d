// Copyright the coordinator authors. MIT license.
/**
 * Tests for coordinator.ts, in the order of its sections. Pure parts are tested
 * directly; everything else runs `main()` against the fake GitHub and Jenkins
 * servers of fakes.ts on 127.0.0.1, the way a user runs the CLI.
 */

import assert from "node:assert/strict";
import {
  assess,
  CACHE_SCHEMA,
  type Config,
  CONFIG_TEMPLATE,
  ConfigError,
  createLogger,
  defaultDeps,
  type Deps,
  type DispatchRecord,
  type Issue,
  jobParams,
  jobScript,
  KV_PREFIX,
  main,
  matchesDispatch,
  orderCandidates,
  parseCli,
  parseConfig,
  parseRepoUrl,
  redact,
  type RepoConfig,
  type RunSummary,
  selectRepos,
  Store,
  toIssue,
  UsageError,
  WORKFLOWS,
} from "./coordinator.ts";
import { FakeGitHub, type FakeIssueInit, FakeJenkins, type Fault } from "./fakes.ts";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const PLAN = "status-02:awaiting-planning";
const PLANNING = "status-03:planning";
const READY = "status-05:plan-ready";
const IMPLEMENTING = "status-06:implementing";
const PR = "status-08:ready-pr";
const PR_CREATING = "status-09:pr-creating";

function issue(number: number, labels: string[], extra: Partial<Issue> = {}): Issue {
  return {
    number,
    title: `Issue ${number}`,
    state: "open",
    labels,
    pullRequest: false,
    createdAt: new Date(Date.UTC(2026, 0, 1) + number * 60_000).toISOString(),
    updatedAt: "2026-06-01T00:00:00Z",
    url: `https://github.com/acme/alpha/issues/${number}`,
    ...extra,
  };
}

/** What one `main()` call printed and returned. */
interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Deps for a test: real fetch, KV and files; captured output; short sleeps. */
function testDeps(env: Record<string, string>, overrides: Partial<Deps> = {}) {
  const output = { stdout: "", stderr: "" };
  const deps: Deps = {
    ...defaultDeps(),
    env: (name) => env[name] || undefined,
    stdout: (text) => void (output.stdout += text),
    stderr: (text) => void (output.stderr += text),
    // Retries and write pacing wait as asked, but tests need not sit through them.
    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, Math.min(ms, 5))),
    ...overrides,
  };
  return { deps, output };
}

/** A repository as the test world configures it. */
interface WorldRepo {
  name: string;
  fullName: string;
  jobPath?: string;
  os?: "linux" | "windows";
  issues?: FakeIssueInit[];
}

/**
 * Fake GitHub and Jenkins on 127.0.0.1, a config file pointing at them and a KV
 * file shared by every run in the test.
 */
class World {
  gh!: FakeGitHub;
  jenkins!: FakeJenkins;
  dir!: string;
  configPath!: string;
  kvPath!: string;
  env: Record<string, string> = {};

  static async create(options: {
    repos?: WorldRepo[];
    prefix?: "" | "/api/v3";
    jenkinsPassword?: string;
    timeoutSeconds?: number;
    writeIntervalMs?: number;
    extraConfig?: string;
  } = {}): Promise<World> {
    const world = new World();
    world.gh = await FakeGitHub.start({ prefix: options.prefix ?? "" });
    world.jenkins = await FakeJenkins.start({ password: options.jenkinsPassword });
    world.dir = await Deno.makeTempDir({ prefix: "coordinator-test-" });
    world.configPath = `${world.dir}/config.toml`;
    world.kvPath = `${world.dir}/kv.sqlite3`;
    world.env = { HOME: world.dir };
    const repos = options.repos ?? [{ name: "alpha", fullName: "acme/alpha" }];
    for (const repo of repos) {
      world.gh.addRepo(repo.fullName, repo.issues ?? []);
      world.jenkins.addJob(repo.jobPath ?? "Coder/executor");
    }
    const sections = repos.map((repo) => `
[coordinator.repos.${repo.name}]
repo_url = "https://github.com/${repo.fullName}.git"
executor_job_path = "${repo.jobPath ?? "Coder/executor"}"
github_credentials_id = "github-pat"
executor_os = "${repo.os ?? "linux"}"
`);
    await Deno.writeTextFile(
      world.configPath,
      `[github]
token = "${world.gh.token}"
api_url = "${world.gh.url}"

[jenkins]
server_url = "${world.jenkins.url}"
username = "${world.jenkins.user}"
api_token = "${options.jenkinsPassword ?? world.jenkins.token}"

[coordinator]
github_write_interval_ms = ${options.writeIntervalMs ?? 0}
request_timeout_seconds = ${options.timeoutSeconds ?? 2}
${options.extraConfig ?? ""}
${sections.join("")}`,
      { mode: 0o600 },
    );
    return world;
  }

  /** The usual world: one repository, acme/alpha, with these issues. */
  static alpha(
    issues: FakeIssueInit[],
    options: Omit<Parameters<typeof World.create>[0], "repos"> = {},
  ): Promise<World> {
    return World.create({ ...options, repos: [{ name: "alpha", fullName: "acme/alpha", issues }] });
  }

  /** Runs `main(["run", ...args])` with this world's config and KV. */
  async run(args: string[], overrides: Partial<Deps> = {}): Promise<RunResult> {
    const { deps, output } = testDeps(this.env, overrides);
    const code = await main(
      ["run", ...args, "--config", this.configPath, "--kv", this.kvPath],
      deps,
    );
    return { code, ...output };
  }

  /** Runs with --json and returns the parsed summary too. */
  async runJson(args: string[], overrides: Partial<Deps> = {}) {
    const result = await this.run([...args, "--json"], overrides);
    return { ...result, summary: JSON.parse(result.stdout) as RunSummary };
  }

  /** Points the config at another Jenkins URL (e.g. a closed port). */
  async setJenkinsUrl(url: string): Promise<void> {
    const text = await Deno.readTextFile(this.configPath);
    await Deno.writeTextFile(
      this.configPath,
      text.replace(/^server_url = .*$/m, `server_url = "${url}"`),
    );
  }

  labels(fullName: string, number: number): string[] {
    return this.gh.getIssue(fullName, number).labels;
  }

  async [Symbol.asyncDispose]() {
    await this.gh.close();
    await this.jenkins.close();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

const COORDINATOR = new URL("./coordinator.ts", import.meta.url).pathname;

/** Env for a child `deno` process: only what Deno needs to find its cache. */
function childEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of ["HOME", "PATH", "DENO_DIR", "XDG_CACHE_HOME", "NO_COLOR"]) {
    const value = Deno.env.get(name);
    if (value) env[name] = value;
  }
  return env;
}

/** Starts the CLI as a separate `deno` process on the world's config and KV file. */
function spawnRun(world: World, args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "--allow-write",
      COORDINATOR,
      "run",
      ...args,
      "--config",
      world.configPath,
      "--kv",
      world.kvPath,
    ],
    clearEnv: true,
    env: childEnv(),
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

async function finished(child: Deno.ChildProcess) {
  const { code, stdout, stderr } = await child.output();
  const decoder = new TextDecoder();
  return { code, stdout: decoder.decode(stdout), stderr: decoder.decode(stderr) };
}

const NO_ENV = () => undefined;

const VALID_CONFIG = `
[github]
token = "ghp_example"
[jenkins]
server_url = "https://jenkins.example.com/"
username = "bot"
api_token = "jenkins-token"
[coordinator.repos.alpha]
repo_url = "https://github.com/acme/alpha.git"
executor_job_path = "Coder/executor"
github_credentials_id = "github-pat"
[coordinator.repos.beta]
repo_url = "git@github.com:acme/beta.git"
executor_test_path = "Coder/windows"
github_credentials_id = "github-pat"
executor_os = "Windows"
`;

function configError(
  text: string,
  env: (name: string) => string | undefined = NO_ENV,
  credentials?: { jenkins: boolean },
): string {
  try {
    parseConfig(text, { source: "/etc/c.toml", env, credentials });
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
    return error.message;
  }
  assert.fail("expected a ConfigError");
}

// ---------------------------------------------------------------------------
// Dependencies
// ---------------------------------------------------------------------------

Deno.test("redact() masks every secret, createLogger() masks and filters by level", () => {
  assert.equal(redact("token abcd1234 and abcd1234", ["abcd1234"]), "token *** and ***");
  const lines: string[] = [];
  const log = createLogger((text) => lines.push(text), { level: "INFO", secrets: ["s3cret"] });
  log.debug("hidden");
  log.info("uses s3cret");
  log.error("boom");
  assert.deepEqual(lines, ["INFO    uses ***\n", "ERROR   boom\n"]);
});

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

Deno.test("parseConfig()", async (t) => {
  await t.step("reads mcp_coder's keys, including the old executor_test_path", () => {
    const config = parseConfig(VALID_CONFIG, { source: "c.toml", env: NO_ENV });
    assert.equal(config.jenkins.serverUrl, "https://jenkins.example.com");
    assert.equal(config.github.apiUrl, "https://api.github.com");
    assert.equal(config.coordinator.cacheRefreshMinutes, 1440);
    assert.deepEqual(config.repos.map((repo) => [repo.name, repo.owner, repo.repo]), [
      ["alpha", "acme", "alpha"],
      ["beta", "acme", "beta"],
    ]);
    assert.equal(config.repos[1].executorJobPath, "Coder/windows");
    assert.equal(config.repos[1].executorOs, "windows");
    assert.equal(config.repos[0].executorOs, "linux");
  });

  await t.step("environment variables win over the file", () => {
    const env: Record<string, string> = {
      GITHUB_TOKEN: "ghp_env",
      GITHUB_API_URL: "https://ghe.example.com/api/v3/",
      JENKINS_URL: "http://ci:8080",
      JENKINS_USER: "envbot",
      JENKINS_TOKEN: "envtoken",
    };
    const config = parseConfig(VALID_CONFIG, { source: "c.toml", env: (name) => env[name] });
    assert.deepEqual(config.github, { token: "ghp_env", apiUrl: "https://ghe.example.com/api/v3" });
    assert.deepEqual(config.jenkins, {
      serverUrl: "http://ci:8080",
      username: "envbot",
      apiToken: "envtoken",
    });
  });

  await t.step("lists all missing required fields of a repository at once", () => {
    const message = configError(`[coordinator.repos.alpha]\nexecutor_os = "linux"\n`);
    assert.equal(
      message,
      "/etc/c.toml: [coordinator.repos.alpha] missing required fields: repo_url, executor_job_path, github_credentials_id",
    );
  });

  await t.step("names file, line and column of a TOML syntax error", () => {
    const message = configError(`[github]\ntoken = "abc\n`);
    assert.match(message, /^\/etc\/c\.toml:2:\d+: invalid TOML: /);
    assert.equal(message.split("\n").length, 1);
  });

  await t.step("reports wrong types and unknown keys with a suggestion", () => {
    const message = configError(`
[coordinator]
cache_refresh_minutes = "often"
[coordinator.repos.alpha]
repo_url = "https://github.com/acme/alpha.git"
executor_job_pth = "Coder/executor"
executor_job_path = "Coder/executor"
github_credentials_id = 7
`);
    assert.match(
      message,
      /\[coordinator\] cache_refresh_minutes must be an integer, got string "often"/,
    );
    assert.match(
      message,
      /\[coordinator.repos.alpha\] unknown key "executor_job_pth" \(did you mean "executor_job_path"\?\)/,
    );
    assert.match(
      message,
      /\[coordinator.repos.alpha\] github_credentials_id must be a string, got integer/,
    );
  });

  await t.step("rejects an unknown executor_os and a repo_url that is not GitHub", () => {
    const message = configError(`
[coordinator.repos.alpha]
repo_url = "https://gitlab.com/acme/alpha.git"
executor_job_path = "Coder/executor"
github_credentials_id = "x"
executor_os = "macos"
[coordinator.repos.beta]
repo_url = "not a url"
executor_job_path = "Coder/executor"
github_credentials_id = "x"
`);
    assert.match(
      message,
      /executor_os must be "linux" or "windows" \(case-insensitive\), got "macos"/,
    );
    assert.match(message, /repo_url "https:\/\/gitlab.com\/acme\/alpha.git" is not on GitHub/);
    assert.match(
      message,
      /\[coordinator.repos.beta\] repo_url "not a url" is not a repository URL/,
    );
  });

  await t.step("accepts a GitHub Enterprise repo_url when api_url names that host", () => {
    const config = parseConfig(
      `[github]\napi_url = "https://ghe.corp.example/api/v3"\n[coordinator.repos.x]\n` +
        `repo_url = "https://ghe.corp.example/team/x"\nexecutor_job_path = "J"\ngithub_credentials_id = "c"\n`,
      { source: "c.toml", env: NO_ENV },
    );
    assert.equal(config.repos[0].id, "ghe.corp.example/team/x");
  });

  await t.step("the created template is valid TOML and flags its placeholders", () => {
    const message = configError(CONFIG_TEMPLATE);
    assert.match(message, /\[github\] token still holds the template placeholder/);
    assert.match(
      message,
      /\[coordinator.repos.my_repo\] repo_url still holds the template placeholder/,
    );
    const env: Record<string, string> = { GITHUB_TOKEN: "t", JENKINS_USER: "u" };
    const withEnv = configError(CONFIG_TEMPLATE, (name) => env[name]);
    assert.doesNotMatch(withEnv, /\[github\] token/);
    assert.doesNotMatch(withEnv, /\[jenkins\] username/);
  });

  await t.step("accepts the sections other mcp-coder commands keep in the same file", () => {
    const config = parseConfig(
      `${VALID_CONFIG}\n[vscodeclaude]\nmax_sessions = 3\n[llm]\ndefault_provider = "claude"\n`,
      { source: "c.toml", env: NO_ENV },
    );
    assert.equal(config.repos.length, 2);
    assert.match(
      configError(`[githb]\ntoken = "x"\n`),
      /unknown top-level section \[githb\] \(did you mean "github"\?\)/,
    );
  });
});

Deno.test("parseConfig() reports missing credentials with the other problems, and URLs with passwords", () => {
  const message = configError(
    `[jenkins]\nserver_url = "https://bot:pw@ci.example.com"\nusername = "bot"\napi_token = "t"\n` +
      `[coordinator.repos.alpha]\nrepo_url = "https://github.com/a/b"\nexecutor_job_path = "J"\n`,
    NO_ENV,
    { jenkins: true },
  );
  assert.match(
    message,
    /\[coordinator.repos.alpha\] missing required field: github_credentials_id/,
  );
  assert.match(message, /missing credentials: \[github\] token \(or set GITHUB_TOKEN\)/);
  assert.match(message, /server_url \(JENKINS_URL\) must not contain a user name or password/);
  assert.doesNotMatch(message, /pw@/);
});

Deno.test("selectRepos() names the configured repositories when --repo is unknown", () => {
  const config = parseConfig(VALID_CONFIG, { source: "c.toml", env: NO_ENV });
  assert.equal(selectRepos(config, { all: true }).length, 2);
  assert.throws(
    () => selectRepos(config, { all: false, repo: "gamma" }),
    (error: Error) =>
      error instanceof ConfigError &&
      error.message === 'Repository "gamma" is not in c.toml; configured: alpha, beta',
  );
  const empty: Config = { ...config, repos: [] };
  assert.throws(() => selectRepos(empty, { all: true }), /no repositories configured/);
});

Deno.test("parseRepoUrl() understands https, ssh and scp-like URLs", () => {
  assert.deepEqual(parseRepoUrl("https://github.com/acme/mcp_coder.git"), {
    host: "github.com",
    owner: "acme",
    repo: "mcp_coder",
  });
  assert.deepEqual(parseRepoUrl("git@github.com:acme/x.y.git")?.repo, "x.y");
  assert.deepEqual(parseRepoUrl("ssh://git@github.com/acme/x")?.owner, "acme");
  assert.equal(parseRepoUrl("https://github.com/acme"), null);
  assert.equal(parseRepoUrl("https://github.com/acme/x/tree/main"), null);
  assert.equal(parseRepoUrl("ftp://github.com/acme/x"), null);
});

// ---------------------------------------------------------------------------
// KV cache
// ---------------------------------------------------------------------------

/** Every KV entry under a prefix of the coordinator's keys. */
async function kvEntries(path: string, ...prefix: Deno.KvKeyPart[]) {
  const kv = await Deno.openKv(path);
  try {
    return await Array.fromAsync(kv.list({ prefix: [...KV_PREFIX, ...prefix] }));
  } finally {
    kv.close();
  }
}

async function kvGet(path: string, key: Deno.KvKeyPart[]): Promise<unknown> {
  const kv = await Deno.openKv(path);
  try {
    return (await kv.get([...KV_PREFIX, ...key])).value;
  } finally {
    kv.close();
  }
}

async function kvSet(path: string, key: Deno.KvKeyPart[], value: unknown) {
  const kv = await Deno.openKv(path);
  await kv.set([...KV_PREFIX, ...key], value);
  kv.close();
}

const REPO_ID = "github.com/acme/alpha";

Deno.test("Store.retry() rides out 'database is locked' and rethrows anything else", async () => {
  const kv = await Deno.openKv(":memory:");
  const { deps } = testDeps({});
  const store = new Store(kv, deps);
  let calls = 0;
  const value = await store.retry(() => {
    if (++calls < 4) return Promise.reject(new TypeError("database is locked"));
    return Promise.resolve("claimed");
  });
  assert.equal(value, "claimed");
  assert.equal(calls, 4);
  await assert.rejects(
    () => store.retry(() => Promise.reject(new TypeError("disk full"))),
    /disk full/,
  );
  kv.close();
});

Deno.test("KV cache: an idle run makes one conditional request per repository, all 304", async () => {
  const repos: WorldRepo[] = ["alpha", "beta", "gamma"].map((name) => ({
    name,
    fullName: `acme/${name}`,
    issues: [{ number: 1, labels: [PLAN] }, { number: 2, labels: ["bug"] }],
  }));
  await using world = await World.create({ repos });
  assert.equal((await world.run(["--all"])).code, 0);
  assert.equal(world.jenkins.builds.length, 3);
  // Our own label moves changed each repository's newest-updated page once.
  const second = await world.runJson(["--all"]);
  assert.deepEqual(second.summary.repos.map((repo) => repo.read), Array(3).fill("incremental"));
  world.gh.resetCounters();
  const idle = await world.runJson(["--all"]);
  assert.equal(idle.code, 0);
  assert.deepEqual(world.gh.counters.requests, 3);
  assert.deepEqual(world.gh.counters.notModified, 3);
  assert.deepEqual(world.gh.counters.costed, 0);
  assert.deepEqual(idle.summary.github, { requests: 3, notModified: 3, costed: 0 });
  assert.deepEqual(idle.summary.repos.map((repo) => repo.read), Array(3).fill("not-modified"));
  assert.equal(world.jenkins.builds.length, 3);
});

Deno.test("KV cache: an issue waiting for a linked branch costs idle runs nothing", async () => {
  await using world = await World.alpha([{ number: 2, labels: [READY] }]);
  const first = await world.runJson(["--all"]);
  assert.match(first.summary.repos[0].skipped[0].reason, /no linked branch/);
  world.gh.resetCounters();
  const idle = await world.runJson(["--all"]);
  assert.match(idle.summary.repos[0].skipped[0].reason, /no linked branch/);
  assert.deepEqual(idle.summary.github, { requests: 1, notModified: 1, costed: 0 });
  world.gh.setLinkedBranches("acme/alpha", 2, ["2-x"]);
  const later = await world.runJson(["--all"], { now: () => Date.now() + 16 * 60_000 });
  assert.equal(later.code, 0, later.stderr);
  assert.deepEqual(world.jenkins.builds.map((build) => build.params.BRANCH_NAME), ["2-x"]);
});

Deno.test("KV cache: changes made by people are seen on the next run", async (t) => {
  await using world = await World.alpha([{ number: 1, labels: ["bug"] }, {
    number: 2,
    labels: [READY],
  }]);
  const first = await world.runJson(["--all"]);
  assert.equal(first.summary.repos[0].skipped[0].issue, 2);
  world.gh.setLabels("acme/alpha", 1, ["bug", PLAN]);
  world.gh.closeIssue("acme/alpha", 2);
  const second = await world.runJson(["--all"]);

  await t.step("a relabelled issue is dispatched, after an incremental read", () => {
    assert.equal(second.summary.repos[0].read, "incremental");
    assert.deepEqual(
      world.jenkins.builds.map((build) => build.params.COMMAND.match(/create-plan (\d+)/)?.[1]),
      ["1"],
    );
  });
  await t.step("a closed issue leaves the cache", async () => {
    assert.deepEqual(second.summary.repos[0].skipped, []);
    const cached = await kvEntries(world.kvPath, "repo", REPO_ID, "issue");
    assert.deepEqual(cached.map((entry) => entry.key.at(-1)), [1]);
  });
  await t.step("the cached labels follow the dispatch at once", async () => {
    const [entry] = await kvEntries(world.kvPath, "repo", REPO_ID, "issue");
    assert.deepEqual((entry.value as Issue).labels.sort(), ["bug", PLANNING].sort());
  });
  await t.step(
    "--force-refresh and an expired refresh interval read everything again",
    async () => {
      assert.equal(
        (await world.runJson(["--all", "--force-refresh"])).summary.repos[0].read,
        "full",
      );
      const later = Date.now() + 1441 * 60_000;
      const aged = await world.runJson(["--all"], { now: () => later });
      assert.equal(aged.summary.repos[0].read, "full");
    },
  );
});

/** The issues in acme/alpha's KV cache: number -> labels. */
async function cachedLabels(world: World): Promise<Record<number, string[]>> {
  const entries = await kvEntries(world.kvPath, "repo", REPO_ID, "issue");
  return Object.fromEntries(
    entries.map((entry) => [entry.key.at(-1) as number, (entry.value as Issue).labels]),
  );
}

Deno.test("KV cache: only issues with a workflow label are cached, following their labels", async (t) => {
  const planningFailed = WORKFLOWS.find((spec) => spec.busy === PLANNING)!.failed;
  await using world = await World.alpha([
    { number: 1, labels: ["bug"] },
    { number: 2, labels: [PLAN] },
    { number: 3, labels: [READY] }, // no linked branch: it waits, pickup label and all
    { number: 4, labels: ["documentation"] },
  ]);
  const first = await world.runJson(["--all"]);

  await t.step("a full read keeps the pickup and busy issues, nothing else", async () => {
    assert.equal(first.summary.repos[0].read, "full");
    assert.deepEqual(await cachedLabels(world), { 2: [PLANNING], 3: [READY] });
  });
  await t.step("an issue that gains a pickup label is cached and dispatched", async () => {
    world.gh.setLabels("acme/alpha", 1, ["bug", PLAN]);
    const run = await world.runJson(["--all"]);
    assert.equal(run.summary.repos[0].read, "incremental");
    assert.deepEqual(builtIssues(world), [2, 1]);
    assert.deepEqual((await cachedLabels(world))[1], ["bug", PLANNING]);
  });
  await t.step("an issue that loses its pickup label leaves the cache", async () => {
    world.gh.setLabels("acme/alpha", 3, ["bug"]);
    const run = await world.runJson(["--all"]);
    assert.deepEqual(run.summary.repos[0].skipped, [], "#3 is no longer waiting for a branch");
    assert.deepEqual(Object.keys(await cachedLabels(world)), ["1", "2"]);
  });
  await t.step("an issue a person marks busy is cached", async () => {
    world.gh.setLabels("acme/alpha", 4, ["documentation", IMPLEMENTING]);
    await world.runJson(["--all"]);
    assert.deepEqual((await cachedLabels(world))[4], ["documentation", IMPLEMENTING]);
  });
  await t.step("an issue whose job failed stays cached with the failure label", async () => {
    world.gh.setLabels("acme/alpha", 2, [planningFailed]);
    await world.runJson(["--all"]);
    assert.deepEqual((await cachedLabels(world))[2], [planningFailed]);
  });
  await t.step("a closed issue leaves the cache", async () => {
    world.gh.closeIssue("acme/alpha", 2);
    const run = await world.runJson(["--all"]);
    assert.equal(run.summary.repos[0].read, "incremental");
    assert.deepEqual(Object.keys(await cachedLabels(world)), ["1", "4"]);
  });
  await t.step(
    "the cache kept this way equals a full re-read, and no build was doubled",
    async () => {
      const kept = await cachedLabels(world);
      const full = await world.runJson(["--all", "--force-refresh"]);
      assert.equal(full.summary.repos[0].read, "full");
      assert.deepEqual(await cachedLabels(world), kept);
      assert.deepEqual(builtIssues(world), [2, 1]);
    },
  );
});

Deno.test("KV cache: a cache of an older version is rebuilt and the dispatch records stay", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }, {
    number: 2,
    labels: ["bug"],
  }]);
  assert.equal((await world.run(["--all"])).code, 0);
  // What version 1 left: every open issue cached, and a meta record without `schema`.
  const { schema, ...old } = await kvGet(world.kvPath, ["repo", REPO_ID, "meta"]) as {
    schema: number;
  };
  assert.equal(schema, CACHE_SCHEMA);
  await kvSet(world.kvPath, ["repo", REPO_ID, "meta"], old);
  await kvSet(world.kvPath, ["repo", REPO_ID, "issue", 2], issue(2, ["bug"]));
  const records = await kvEntries(world.kvPath, "repo", REPO_ID, "dispatch");
  assert.equal(records.length, 1);
  world.gh.resetCounters();
  const rebuilt = await world.runJson(["--all"]);
  assert.equal(rebuilt.code, 0, rebuilt.stderr);
  assert.equal(rebuilt.summary.repos[0].read, "full");
  assert.ok(world.gh.requests.every((request) => !request.headers.has("if-none-match")));
  assert.deepEqual(await cachedLabels(world), { 1: [PLANNING] });
  assert.deepEqual(await kvEntries(world.kvPath, "repo", REPO_ID, "dispatch"), records);
  assert.equal(world.jenkins.builds.length, 1);
  const meta = await kvGet(world.kvPath, ["repo", REPO_ID, "meta"]) as { schema: number };
  assert.equal(meta.schema, CACHE_SCHEMA);
});

Deno.test("KV cache: a GitHub failure leaves cache and cursor exactly as they were", async () => {
  await using world = await World.alpha([{ number: 1, labels: ["bug"] }]);
  assert.equal((await world.run(["--all"])).code, 0);
  const before = await kvEntries(world.kvPath);
  world.gh.setLabels("acme/alpha", 1, [PLAN]);
  world.gh.inject({ method: "GET", path: /\/issues$/, status: 502, times: Infinity });
  const failed = await world.run(["--all"]);
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /Cannot read issues of acme\/alpha: GitHub answered 502/);
  assert.deepEqual(await kvEntries(world.kvPath), before);
  world.gh.clearFaults();
  assert.equal((await world.run(["--all"])).code, 0);
  assert.equal(world.jenkins.builds.length, 1, "the change made during the outage is not lost");
});

Deno.test("KV cache: corrupt entries and another token's ETag trigger a full re-read", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
  assert.equal((await world.run(["--all"])).code, 0);
  await kvSet(world.kvPath, ["repo", REPO_ID, "issue", 1], { garbage: true });
  const rebuilt = await world.runJson(["--all"]);
  assert.equal(rebuilt.code, 0);
  assert.equal(rebuilt.summary.repos[0].read, "full");
  const [entry] = await kvEntries(world.kvPath, "repo", REPO_ID, "issue");
  assert.deepEqual((entry.value as Issue).labels, [PLANNING]);

  const meta = await kvGet(world.kvPath, ["repo", REPO_ID, "meta"]);
  await kvSet(world.kvPath, ["repo", REPO_ID, "meta"], {
    ...meta as object,
    tokenId: "other",
  });
  world.gh.resetCounters();
  const retoken = await world.runJson(["--all"]);
  assert.equal(retoken.summary.repos[0].read, "full");
  assert.ok(world.gh.requests.every((request) => !request.headers.has("if-none-match")));
  await kvSet(world.kvPath, ["repo", REPO_ID, "meta"], "not a meta record");
  assert.equal((await world.runJson(["--all"])).summary.repos[0].read, "full");
  assert.equal(world.jenkins.builds.length, 1);
});

Deno.test("KV cache: a run lease keeps overlapping run --all apart, and expires when its holder dies", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
  const now = Date.now();
  await kvSet(world.kvPath, ["lease", "run-all"], {
    runId: "other",
    expiresAt: now + 20_000,
    startedAt: now,
  });
  const blocked = await world.run(["--all"]);
  assert.equal(blocked.code, 0);
  assert.match(blocked.stdout, /another run is in progress/);
  assert.equal(world.gh.counters.requests, 0);
  const dead = await world.run(["--all"], { now: () => now + 31_000 });
  assert.equal(dead.code, 0, dead.stderr);
  assert.equal(world.jenkins.builds.length, 1);
  assert.deepEqual(await kvEntries(world.kvPath, "lease", "run-all"), [], "released at the end");
});

Deno.test("KV cache: an issue closed during a full read cannot hide another one", async () => {
  // 150 open issues: page 1 holds #150..#51, page 2 #50..#1. Closing #100 while page 2 is
  // on its way shifts #50 onto page 1, out of both pages.
  const issues = Array.from({ length: 150 }, (_, i) => ({
    number: i + 1,
    labels: i + 1 === 50 ? [PLAN] : ["bug"],
  }));
  await using world = await World.alpha(issues);
  world.gh.inject({ method: "GET", path: /^\/repositories\/\d+\/issues$/, delayMs: 200 });
  world.gh.waitForRequest({ method: "GET", path: /^\/repositories\/\d+\/issues$/ })
    .then(() => world.gh.closeIssue("acme/alpha", 100));
  const result = await world.runJson(["--all"]);
  assert.equal(result.code, 0, result.stderr);
  assert.deepEqual(builtIssues(world), [50]);
  // Only #50 carries a workflow label, so it is all the cache keeps of the 149 open issues.
  const cached = await kvEntries(world.kvPath, "repo", REPO_ID, "issue");
  assert.deepEqual(cached.map((entry) => entry.key.at(-1)), [50]);
});

// ---------------------------------------------------------------------------
// GitHub
// ---------------------------------------------------------------------------

Deno.test("toIssue() keeps what the coordinator needs and rejects incomplete items", () => {
  const raw = {
    number: 7,
    title: "t",
    state: "open",
    labels: [{ name: "needs review/x y" }, "plain"],
    created_at: "2026-01-01T00:00:00Z",
    updated_at: "2026-01-02T00:00:00Z",
    html_url: "https://github.com/a/b/issues/7",
    pull_request: { url: "u" },
  };
  assert.deepEqual(toIssue(raw)?.labels, ["needs review/x y", "plain"]);
  assert.equal(toIssue(raw)?.pullRequest, true);
  assert.equal(toIssue({ ...raw, number: "7" }), null);
  assert.equal(toIssue({ ...raw, labels: undefined }), null);
  assert.equal(toIssue({ ...raw, labels: [{ id: 1 }] }), null);
  assert.equal(toIssue(null), null);
});

Deno.test("GitHub client: rate limits, pacing and odd data", async (t) => {
  await t.step(
    "a short secondary-limit wait is honoured, then the request is retried",
    async () => {
      await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
      world.gh.inject({
        method: "GET",
        path: /\/issues$/,
        status: 429,
        headers: { "retry-after": "3" },
      });
      const sleeps: number[] = [];
      const result = await world.run(["--all"], {
        sleep: (ms) => (sleeps.push(ms), Promise.resolve()),
      });
      assert.equal(result.code, 0, result.stderr);
      assert.ok(sleeps.includes(3_000), `asked to sleep ${sleeps}`);
      assert.equal(world.jenkins.builds.length, 1);
    },
  );

  await t.step("an exhausted primary limit stops the run and names the reset time", async () => {
    await using world = await World.create({
      repos: [
        { name: "alpha", fullName: "acme/alpha", issues: [{ number: 1, labels: [PLAN] }] },
        { name: "beta", fullName: "acme/beta", issues: [{ number: 2, labels: [PLAN] }] },
      ],
      extraConfig: "max_parallel_repos = 1",
    });
    world.gh.rateLimitRemaining = 0;
    const result = await world.runJson(["--all"]);
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /GitHub rate limit exhausted for this token; it resets at \d\d:\d\d UTC \(in \d+ min\)/,
    );
    assert.equal(world.gh.counters.requests, 1, "no request after GitHub said the limit is spent");
    assert.equal(world.jenkins.builds.length, 0);
  });

  await t.step("a GraphQL RATE_LIMITED answer stops the run like a spent REST limit", async () => {
    await using world = await World.alpha([{ number: 1, labels: [PLAN] }, {
      number: 2,
      labels: [READY],
      linkedBranches: ["2-x"],
    }]);
    const body = JSON.stringify({
      data: null,
      errors: [{ type: "RATE_LIMITED", message: "API rate limit exceeded for user ID 1." }],
    });
    world.gh.inject({
      method: "POST",
      path: /graphql/,
      status: 200,
      body,
      headers: { "x-ratelimit-remaining": "0", "x-ratelimit-reset": RESET_AT },
    });
    const result = await world.run(["--all"]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /GitHub GraphQL rate limit exhausted; it resets at \d\d:\d\d UTC/);
    assert.equal(world.jenkins.builds.length, 0, "the run stopped: #1 was not dispatched either");
  });

  await t.step("label writes are paced at least github_write_interval_ms apart", async () => {
    await using world = await World.alpha([{ number: 1, labels: [PLAN] }, {
      number: 2,
      labels: [PLAN],
    }], { writeIntervalMs: 1000 });
    // A clock that only moves when the coordinator sleeps: each write happens at a clock
    // reading, so the gaps between them are the pauses it took.
    let clock = Date.now();
    const writtenAt: number[] = [];
    const result = await world.run(["--all"], {
      now: () => clock,
      sleep: (ms) => (clock += ms, Promise.resolve()),
      fetch: (input, init) => {
        if (/\/labels/.test(String(input))) writtenAt.push(clock);
        return fetch(input, init);
      },
    });
    assert.equal(result.code, 0, result.stderr);
    assert.equal(writtenAt.length, 4);
    const gaps = writtenAt.slice(1).map((at, i) => at - writtenAt[i]);
    assert.ok(gaps.every((gap) => gap >= 1000), `gaps between writes: ${gaps}`);
  });

  await t.step("issues GitHub returns without required fields are skipped, not fatal", async () => {
    await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
    const broken = JSON.stringify([{ title: "no number" }, {
      number: 1,
      title: "ok",
      state: "open",
      labels: [{ name: PLAN }],
      created_at: "2026-01-01T00:00:00Z",
      updated_at: "2026-01-01T00:00:00Z",
    }]);
    world.gh.inject({ method: "GET", path: /\/issues$/, status: 200, body: broken, times: 2 });
    const result = await world.run(["--all"]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(
      result.stderr,
      /skipped an issue GitHub returned without number, state, labels or updated_at/,
    );
    assert.equal(world.jenkins.builds.length, 1);
  });

  await t.step("an issue with hundreds of labels keeps them all", async () => {
    const many = Array.from({ length: 300 }, (_, i) => `label ${i}/x:${"é".repeat(i % 3)}`);
    await using world = await World.alpha([{ number: 1, labels: [...many, PLAN] }]);
    assert.equal((await world.run(["--all"])).code, 0);
    assert.deepEqual(world.labels("acme/alpha", 1).sort(), [...many, PLANNING].sort());
  });

  await t.step("10,000 open issues are read in 100 pages; the one pickup is cached", async () => {
    const issues = Array.from({ length: 10_000 }, (_, i) => ({
      number: i + 1,
      labels: i === 4_321 ? [PLAN] : ["bug"],
    }));
    await using world = await World.alpha(issues);
    const result = await world.runJson(["--all"]);
    assert.equal(result.code, 0, result.stderr);
    // Two probes around the full read, 100 pages, two label writes.
    assert.equal(result.summary.github.requests, 2 + 100 + 2);
    assert.deepEqual(builtIssues(world), [4_322]);
    const cached = await kvEntries(world.kvPath, "repo", REPO_ID, "issue");
    assert.deepEqual(cached.map((entry) => entry.key.at(-1)), [4_322]);
  });
});

// ---------------------------------------------------------------------------
// Jenkins
// ---------------------------------------------------------------------------

Deno.test("matchesDispatch() finds a build by request id, or by its script after the claim", () => {
  const record: DispatchRecord = {
    state: "triggering",
    pickup: PLAN,
    busy: PLANNING,
    workflow: "create-plan",
    jobPath: "Coder/executor",
    params: { REPO_URL: "r", BRANCH_NAME: "main", COMMAND: "c", COORDINATOR_REQUEST_ID: "id-1" },
    requestId: "id-1",
    runId: "run",
    claimedAt: 1_000_000,
    updatedAt: 1_000_000,
  };
  const params = (values: Record<string, string>) => [{
    parameters: Object.entries(values).map(([name, value]) => ({ name, value })),
  }];
  assert.ok(matchesDispatch({ actions: params(record.params) }, record));
  assert.ok(
    !matchesDispatch(
      { actions: params({ ...record.params, COORDINATOR_REQUEST_ID: "id-2" }) },
      record,
    ),
  );
  const { COORDINATOR_REQUEST_ID: _, ...dropped } = record.params;
  assert.ok(matchesDispatch({ actions: params(dropped), timestamp: 1_000_500 }, record));
  assert.ok(!matchesDispatch({ actions: params(dropped), timestamp: 100 }, record));
  assert.ok(
    !matchesDispatch(
      { actions: params({ ...dropped, COMMAND: "other" }), timestamp: 1_000_500 },
      record,
    ),
  );
});

Deno.test("Jenkins: a proxy's 5xx after the POST counts as maybe queued and is looked up", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
  // A gateway answers 504 (no X-Jenkins header) while Jenkins queued the build behind it.
  world.jenkins.inject({
    method: "POST",
    afterHandling: true,
    status: 504,
    headers: { "x-jenkins": "" },
  });
  const failed = await world.run(["--all"]);
  assert.equal(failed.code, 1);
  assert.equal(world.jenkins.builds.length, 1);
  assert.equal((await world.run(["--all"])).code, 0);
  assert.equal(world.jenkins.builds.length, 1);
  assert.deepEqual(world.labels("acme/alpha", 1), [PLANNING]);
});

// ---------------------------------------------------------------------------
// Coordinator core
// ---------------------------------------------------------------------------

Deno.test("assess()", async (t) => {
  await t.step("an open issue with exactly one pickup label is eligible", () => {
    const verdict = assess(issue(1, [PLAN, "bug"]));
    assert.equal(verdict.kind === "eligible" && verdict.spec.workflow, "create-plan");
  });
  await t.step("pull requests, closed issues and issues without pickup label are ignored", () => {
    assert.equal(assess(issue(1, [PLAN], { pullRequest: true })).kind, "ignore");
    assert.equal(assess(issue(1, [PLAN], { state: "closed" })).kind, "ignore");
    assert.equal(assess(issue(1, [PLANNING, "bug"])).kind, "ignore");
  });
  await t.step("two pickup labels, Overview or a busy label are skipped with a reason", () => {
    const two = assess(issue(1, [PLAN, READY]));
    assert.equal(two.kind, "skip");
    assert.match(two.kind === "skip" ? two.reason : "", /2 pickup labels/);
    const overview = assess(issue(1, [READY, "Overview"]));
    assert.match(overview.kind === "skip" ? overview.reason : "", /"Overview"/);
    const busy = assess(issue(1, [READY, IMPLEMENTING]));
    assert.match(
      busy.kind === "skip" ? busy.reason : "",
      /bot-busy label "status-06:implementing"/,
    );
  });
});

Deno.test("orderCandidates() puts ready-pr before plan-ready before awaiting-planning, newest first", () => {
  const ordered = orderCandidates([
    issue(1, [PLAN]),
    issue(2, [READY]),
    issue(3, ["bug"]),
    issue(4, [PR]),
    issue(5, [PLAN]),
    issue(6, [READY], { pullRequest: true }),
  ]);
  assert.deepEqual(ordered.map((item) => item.number), [4, 2, 5, 1]);
});

Deno.test("jobScript()", async (t) => {
  const [createPr, implement, createPlan] = WORKFLOWS;
  await t.step("linux create-plan checks out main and runs create-plan with the issue", () => {
    const script = jobScript(createPlan, {
      os: "linux",
      logLevel: "DEBUG",
      issue: 12,
      branch: "main",
    });
    const lines = script.split("\n");
    assert.equal(lines[0], "git checkout main");
    assert.ok(lines.includes("git pull"));
    assert.ok(
      lines.includes(
        "mcp-coder --log-level DEBUG create-plan 12 --project-dir /workspace/repo --mcp-config .mcp.json",
      ),
    );
    assert.match(
      script,
      /set-status status-03f:planning-failed --from-status status-03:planning --issue 12/,
    );
    assert.ok(lines.includes("exit $RC"));
  });
  await t.step("linux implement and create-pr check out the linked branch", () => {
    const script = jobScript(implement, {
      os: "linux",
      logLevel: "INFO",
      issue: 3,
      branch: "3-fix",
    });
    assert.match(script, /^git checkout 3-fix\n/);
    assert.match(script, /mcp-coder --log-level INFO implement --project-dir \/workspace\/repo/);
    assert.doesNotMatch(script, /--issue/);
    const pr = jobScript(createPr, { os: "linux", logLevel: "INFO", issue: 3, branch: "it's" });
    assert.match(pr, /^git checkout 'it'\\''s'\n/);
    assert.match(pr, /mcp-coder --log-level INFO create-pr --project-dir/);
  });
  await t.step("windows scripts are batch files using the job's workspace", () => {
    const script = jobScript(createPlan, {
      os: "windows",
      logLevel: "INFO",
      issue: 9,
      branch: "main",
    });
    assert.match(script, /^@echo ON\n/);
    assert.ok(
      script.includes(
        String
          .raw`mcp-coder --log-level INFO create-plan 9 --project-dir %WORKSPACE%\repo --mcp-config .mcp.json`,
      ),
    );
    assert.match(script, /set DISABLE_AUTOUPDATER=1/);
    assert.match(script, /exit \/b %RC%/);
    assert.doesNotMatch(script, /git checkout/);
  });
});

Deno.test("jobParams() carries mcp_coder's four parameters and a request id", () => {
  const repo = { repoUrl: "https://github.com/a/b.git", githubCredentialsId: "pat" } as RepoConfig;
  assert.deepEqual(jobParams(repo, { branch: "main", command: "echo", requestId: "r1" }), {
    REPO_URL: "https://github.com/a/b.git",
    BRANCH_NAME: "main",
    COMMAND: "echo",
    GITHUB_CREDENTIALS_ID: "pat",
    COORDINATOR_REQUEST_ID: "r1",
  });
});

Deno.test("run --all dispatches eligible issues end to end", async (t) => {
  await using world = await World.alpha([
    { number: 1, labels: [PLAN, "bug"] },
    { number: 2, labels: [READY], linkedBranches: ["2-feature"] },
    { number: 3, labels: [PR, "needs review/x y"], linkedBranches: ["3-pr"] },
    { number: 4, labels: [PLAN], pullRequest: true },
    { number: 5, labels: [PLAN, "Overview"] },
    { number: 6, labels: [READY] },
    { number: 7, labels: [READY], linkedBranches: ["a", "b"] },
    { number: 8, labels: [PLAN], state: "closed" },
    { number: 9, labels: ["status-01:created"] },
  ]);
  const { code, summary, stderr } = await world.runJson(["--all", "--log-level", "DEBUG"]);

  await t.step("exits 0 and starts one build per eligible issue, ready-pr first", () => {
    assert.equal(code, 0, stderr);
    assert.deepEqual(
      world.jenkins.builds.map((build) => [build.job, build.params.BRANCH_NAME]),
      [["Coder/executor", "3-pr"], ["Coder/executor", "2-feature"], ["Coder/executor", "main"]],
    );
  });

  await t.step("sends mcp_coder's job parameters with the log level in the script", () => {
    const plan = world.jenkins.builds[2].params;
    assert.equal(plan.REPO_URL, "https://github.com/acme/alpha.git");
    assert.equal(plan.GITHUB_CREDENTIALS_ID, "github-pat");
    assert.match(plan.COMMAND, /^git checkout main\n/);
    assert.match(
      plan.COMMAND,
      /mcp-coder --log-level DEBUG create-plan 1 --project-dir \/workspace\/repo/,
    );
    assert.match(world.jenkins.builds[0].params.COMMAND, /create-pr --project-dir/);
    assert.ok(plan.COORDINATOR_REQUEST_ID);
    const post = world.jenkins.requests.find((request) => request.method === "POST")!;
    assert.equal(post.search, "", "parameters travel in the form body, not the query string");
    assert.match(post.body, /COMMAND=/);
  });

  await t.step("moves each label to its busy status and keeps the other labels", () => {
    assert.deepEqual(world.labels("acme/alpha", 1).sort(), ["bug", PLANNING].sort());
    assert.deepEqual(world.labels("acme/alpha", 2), [IMPLEMENTING]);
    assert.deepEqual(
      world.labels("acme/alpha", 3).sort(),
      ["needs review/x y", PR_CREATING].sort(),
    );
    const writes = world.gh.requests.filter((request) =>
      request.method !== "GET" && !request.path.endsWith("graphql")
    );
    assert.ok(!writes.some((request) => request.method === "PUT"), "never replaces the label set");
  });

  await t.step("leaves skipped and ignored issues untouched, with reasons", () => {
    for (const number of [4, 5, 6, 7, 8, 9]) {
      assert.ok(
        !world.labels("acme/alpha", number).some((label) =>
          label.startsWith("status-0") && /0[369]:/.test(label)
        ),
      );
    }
    const skipped = Object.fromEntries(
      summary.repos[0].skipped.map((item) => [item.issue, item.reason]),
    );
    assert.match(skipped[5], /"Overview"/);
    assert.match(skipped[6], /no linked branch/);
    assert.match(skipped[7], /2 linked branches \(a, b\)/);
    assert.equal(skipped[4], undefined);
    assert.equal(summary.repos[0].eligible, 5);
  });

  await t.step("reports queue or build URLs in the JSON summary", () => {
    assert.equal(summary.ok, true);
    assert.equal(summary.repos[0].dispatched.length, 3);
    const first = summary.repos[0].dispatched[0];
    assert.equal(first.issue, 3);
    assert.equal(first.from, PR);
    assert.equal(first.to, PR_CREATING);
    assert.match(first.queueUrl ?? "", /\/queue\/item\/\d+\/$/);
  });
});

Deno.test("run --dry-run shows what would happen and writes nothing", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }, {
    number: 2,
    labels: [READY],
  }]);
  const result = await world.run(["--repo", "alpha", "--dry-run"]);
  assert.equal(result.code, 0, result.stderr);
  assert.match(
    result.stdout,
    /would dispatch create-plan for #1 on main: status-02:awaiting-planning -> status-03:planning/,
  );
  assert.match(result.stdout, /skipped #2: no linked branch/);
  assert.equal(world.jenkins.builds.length, 0);
  assert.deepEqual(world.labels("acme/alpha", 1), [PLAN]);
  assert.ok(
    world.gh.requests.every((request) =>
      request.method === "GET" || request.path.endsWith("graphql")
    ),
  );
  await assert.rejects(() => Deno.stat(world.kvPath), Deno.errors.NotFound, "no KV file made");
  assert.equal((await world.run(["--repo", "alpha"])).code, 0);
  const before = await kvEntries(world.kvPath);
  world.gh.setLabels("acme/alpha", 2, [PLAN]);
  const again = await world.run(["--repo", "alpha", "--dry-run"]);
  assert.match(again.stdout, /would dispatch create-plan for #2/);
  assert.deepEqual(await kvEntries(world.kvPath), before, "the KV is left as it was");
  assert.equal(world.jenkins.builds.length, 1);
});

Deno.test("run reads every page of a large repository, 100 issues per page", async () => {
  const issues = Array.from({ length: 250 }, (_, i) => ({ number: i + 1, labels: ["bug"] }));
  issues.push({ number: 251, labels: [PLAN] });
  await using world = await World.alpha(issues);
  const { code, summary } = await world.runJson(["--all"]);
  assert.equal(code, 0);
  assert.equal(world.jenkins.builds.length, 1);
  const lists = world.gh.requests.filter((request) =>
    request.method === "GET" && /\/issues$/.test(request.path)
  );
  assert.ok(
    lists.every((request) => new URLSearchParams(request.search).get("per_page") === "100"),
  );
  // Two probes (newest first, before and after) around three pages of open issues.
  assert.equal(lists.length, 5);
  assert.equal(summary.repos[0].read, "full");
});

Deno.test("run fails fast on a Jenkins error and leaves that issue's labels alone", async (t) => {
  const repos: WorldRepo[] = [
    {
      name: "alpha",
      fullName: "acme/alpha",
      jobPath: "Coder/missing",
      issues: [{ number: 1, labels: [PLAN] }, { number: 2, labels: [PLAN] }],
    },
    { name: "beta", fullName: "acme/beta", issues: [{ number: 5, labels: [PLAN] }] },
  ];
  await t.step("exit 1, `Failed to process issue #N`, the rest not processed", async () => {
    await using world = await World.create({ repos });
    world.jenkins.inject({
      method: "POST",
      path: /Coder\/(job\/)?missing/,
      status: 404,
      times: Infinity,
    });
    const result = await world.run(["--all"]);
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /Failed to process issue #2: Cannot trigger Jenkins job "Coder\/missing": 404 Not Found at http:\/\/127\.0\.0\.1:\d+\/job\/Coder\/job\/missing\/buildWithParameters: no such job/,
    );
    assert.deepEqual(world.labels("acme/alpha", 2), [PLAN]);
    assert.deepEqual(world.labels("acme/alpha", 1), [PLAN]);
    assert.deepEqual(world.labels("acme/beta", 5), [PLAN]);
    assert.equal(world.jenkins.builds.length, 0);
  });
  await t.step("--keep-going goes on with the other repositories", async () => {
    await using world = await World.create({ repos });
    world.jenkins.inject({ method: "POST", path: /missing/, status: 404, times: Infinity });
    const result = await world.run(["--all", "--keep-going"]);
    assert.equal(result.code, 1);
    assert.deepEqual(world.labels("acme/beta", 5), [PLANNING]);
    assert.equal(world.jenkins.builds.length, 1);
  });
});

Deno.test("run works against GitHub Enterprise paths and Jenkins with password auth and crumbs", async () => {
  await using world = await World.create({
    prefix: "/api/v3",
    jenkinsPassword: "hunter2-password",
    repos: [{
      name: "alpha",
      fullName: "acme/alpha",
      os: "windows",
      issues: [{ number: 4, labels: [READY], linkedBranches: ["4-win"] }],
    }],
  });
  const result = await world.run(["--all"]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(world.jenkins.builds.length, 1);
  const build = world.jenkins.builds[0];
  assert.equal(build.params.BRANCH_NAME, "4-win");
  assert.match(build.params.COMMAND, /^@echo ON/);
  assert.ok(world.jenkins.requests.some((request) => request.path === "/crumbIssuer/api/json"));
  assert.deepEqual(world.labels("acme/alpha", 4), [IMPLEMENTING]);
  assert.ok(world.gh.requests.some((request) => request.path.endsWith("graphql")));
});

/** Issue numbers of the builds Jenkins got, in order. */
function builtIssues(world: World): number[] {
  return world.jenkins.builds.map((build) => {
    const match = build.params.COMMAND.match(/create-plan (\d+)/);
    return match ? Number(match[1]) : Number(build.params.BRANCH_NAME.split("-")[0]);
  });
}

Deno.test("dispatchIssue() starts exactly one build per pickup", async (t) => {
  await t.step(
    "labels failing after Jenkins queued: the next run moves them, no second build",
    async () => {
      await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
      world.gh.inject({ method: "POST", path: /\/labels$/, status: 500, times: Infinity });
      const failed = await world.run(["--all"]);
      assert.equal(failed.code, 1);
      assert.match(
        failed.stderr,
        /Failed to process issue #1: the Jenkins build is queued .* but the labels were not moved; the next run moves them/,
      );
      assert.equal(world.jenkins.builds.length, 1);
      assert.deepEqual(world.labels("acme/alpha", 1), [PLAN]);
      world.gh.clearFaults();
      const next = await world.runJson(["--all"]);
      assert.equal(next.code, 0, next.stderr);
      assert.equal(world.jenkins.builds.length, 1);
      assert.deepEqual(world.labels("acme/alpha", 1), [PLANNING]);
      assert.equal(next.summary.repos[0].dispatched[0].note, "reconciled");
      assert.equal((await world.run(["--all"])).code, 0);
      assert.equal(world.jenkins.builds.length, 1);
    },
  );

  await t.step(
    "Jenkins refusing the build: claim released, labels untouched, next run retries",
    async () => {
      await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
      world.jenkins.inject({ method: "POST", status: 500 });
      assert.equal((await world.run(["--all"])).code, 1);
      assert.equal(world.jenkins.builds.length, 0);
      assert.deepEqual(world.labels("acme/alpha", 1), [PLAN]);
      assert.equal((await world.run(["--all"])).code, 0);
      assert.deepEqual(builtIssues(world), [1]);
      assert.deepEqual(world.labels("acme/alpha", 1), [PLANNING]);
    },
  );

  await t.step(
    "a trigger that timed out after Jenkins queued it is found, not repeated",
    async () => {
      await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
      world.jenkins.inject({ method: "POST", afterHandling: true, delayMs: 3_000 });
      const failed = await world.run(["--all"]);
      assert.equal(failed.code, 1);
      assert.match(failed.stderr, /no answer within 2 s .*the build may have been queued/);
      assert.equal(world.jenkins.builds.length, 1);
      const next = await world.run(["--all"]);
      assert.equal(next.code, 0, next.stderr);
      assert.equal(world.jenkins.builds.length, 1);
      assert.deepEqual(world.labels("acme/alpha", 1), [PLANNING]);
    },
  );

  await t.step(
    "a connection dropped after Jenkins queued the build is not sent again",
    async () => {
      // The second trigger would travel on the first one's pooled connection, which the
      // runtime silently resends on when it drops: the coordinator must not pool.
      await using world = await World.create({
        repos: [
          { name: "alpha", fullName: "acme/alpha", issues: [{ number: 1, labels: [PLAN] }] },
          {
            name: "beta",
            fullName: "acme/beta",
            jobPath: "Coder/other",
            issues: [{ number: 2, labels: [PLAN] }],
          },
        ],
      });
      world.jenkins.inject({ method: "POST", path: /other/, afterHandling: true, reset: true });
      assert.equal((await world.run(["--all"])).code, 1);
      assert.deepEqual(builtIssues(world), [1, 2]);
      assert.equal((await world.run(["--all"])).code, 0);
      assert.deepEqual(builtIssues(world), [1, 2]);
      assert.deepEqual(world.labels("acme/beta", 2), [PLANNING]);
    },
  );

  await t.step("a trigger that timed out before Jenkins queued it is retried once", async () => {
    await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
    world.jenkins.inject({ method: "POST", delayMs: 3_000, status: 500 });
    assert.equal((await world.run(["--all"])).code, 1);
    assert.equal(world.jenkins.builds.length, 0);
    assert.equal((await world.run(["--all"])).code, 0);
    assert.deepEqual(builtIssues(world), [1]);
  });

  await t.step(
    "a pickup label put back by a person is a new cycle; stale cache is not",
    async () => {
      await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
      assert.equal((await world.run(["--all"])).code, 0);
      assert.equal((await world.run(["--all"])).code, 0);
      // Make the cache claim the old label while GitHub answers 304: the record wins.
      const [entry] = await kvEntries(world.kvPath, "repo", REPO_ID, "issue");
      await kvSet(world.kvPath, ["repo", REPO_ID, "issue", 1], {
        ...entry.value as Issue,
        labels: [PLAN],
      });
      assert.equal((await world.run(["--all"])).code, 0);
      assert.equal(world.jenkins.builds.length, 1);
      world.gh.setLabels("acme/alpha", 1, [PLAN]);
      assert.equal((await world.run(["--all"])).code, 0);
      assert.deepEqual(builtIssues(world), [1, 1]);
      assert.deepEqual(world.labels("acme/alpha", 1), [PLANNING]);
    },
  );

  await t.step("concurrent runs on one KV dispatch each issue once", async () => {
    const issues = Array.from({ length: 6 }, (_, i) => ({ number: i + 1, labels: [PLAN] }));
    await using world = await World.alpha(issues);
    const results = await Promise.all(
      Array.from({ length: 4 }, () => world.run(["--repo", "alpha"])),
    );
    assert.ok(
      results.every((result) => result.code === 0),
      results.map((r) => r.stderr).join("\n"),
    );
    assert.deepEqual(builtIssues(world).sort(), [1, 2, 3, 4, 5, 6]);
  });
});

Deno.test("dispatchIssue() treats a pickup label put back after a half-done dispatch as a new cycle", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
  world.gh.inject({ method: "POST", path: /\/labels$/, status: 500, times: Infinity });
  assert.equal((await world.run(["--all"])).code, 1);
  world.gh.clearFaults();
  world.gh.setLabels("acme/alpha", 1, [PLANNING]); // a person finishes the move by hand
  assert.equal((await world.run(["--all"])).code, 0);
  assert.equal(world.jenkins.builds.length, 1);
  world.gh.setLabels("acme/alpha", 1, [PLAN]); // and later asks for a new plan
  assert.equal((await world.run(["--all"])).code, 0);
  assert.deepEqual(builtIssues(world), [1, 1]);
  assert.deepEqual(world.labels("acme/alpha", 1), [PLANNING]);
});

Deno.test("dispatchRepo() skips an issue GraphQL cannot answer for and goes on with the rest", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }, {
    number: 2,
    labels: [READY],
    linkedBranches: ["2-x"],
  }]);
  const body = JSON.stringify({
    data: { repository: null },
    errors: [{
      type: "NOT_FOUND",
      path: ["repository"],
      message: "Could not resolve to a Repository",
    }],
  });
  world.gh.inject({ method: "POST", path: /graphql/, status: 200, body, times: Infinity });
  for (let run = 0; run < 2; run++) {
    const result = await world.runJson(["--all"]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(
      result.summary.repos[0].skipped[0].reason,
      /^Cannot read linked branches of issue #2: GitHub GraphQL says: Could not resolve to a Repository$/,
    );
  }
  assert.deepEqual(builtIssues(world), [1]);
});

Deno.test("separate deno processes on one KV file dispatch each issue exactly once", async (t) => {
  const issues = Array.from({ length: 8 }, (_, i) => ({ number: i + 1, labels: [PLAN] }));
  await t.step("--repo runs race on the per-issue claims", async () => {
    await using world = await World.alpha(issues);
    const children = Array.from({ length: 4 }, () => spawnRun(world, ["--repo", "alpha"]));
    const results = await Promise.all(children.map(finished));
    assert.ok(
      results.every((result) => result.code === 0),
      results.map((r) => r.stderr).join("\n"),
    );
    assert.deepEqual(builtIssues(world).sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.ok(issues.every((item) => world.labels("acme/alpha", item.number)[0] === PLANNING));
  });
  await t.step("--all runs also meet the run lease: the losers exit 0 at once", async () => {
    await using world = await World.alpha(issues);
    const children = Array.from({ length: 4 }, () => spawnRun(world, ["--all"]));
    const results = await Promise.all(children.map(finished));
    assert.ok(
      results.every((result) => result.code === 0),
      results.map((r) => r.stderr).join("\n"),
    );
    assert.deepEqual(builtIssues(world).sort((a, b) => a - b), [1, 2, 3, 4, 5, 6, 7, 8]);
  });
});

// ---------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------

/** "repo#issue" of every build Jenkins got. */
function buildKeys(world: World): string[] {
  return world.jenkins.builds.map((build) => {
    const repo = build.params.REPO_URL.replace(/^.*\/(.*)\.git$/, "$1");
    const plan = build.params.COMMAND.match(/create-plan (\d+)/);
    return `${repo}#${plan ? plan[1] : build.params.BRANCH_NAME.split("-")[0]}`;
  });
}

/** Builds per issue once every fault has cleared: #1 is in its second pickup cycle. */
const EXPECTED_BUILDS: Record<string, number> = {
  "alpha#1": 2,
  "alpha#2": 1,
  "alpha#3": 1,
  "alpha#4": 1,
  "beta#10": 1,
};

const EXPECTED_LABELS: Record<string, string[]> = {
  "alpha#1": [PLANNING],
  "alpha#2": [IMPLEMENTING],
  "alpha#3": ["needs review/x y", PR_CREATING],
  "alpha#4": ["a:b c", "ünïcode ✓", PLANNING],
  "beta#10": [PLANNING],
};

/**
 * Two repositories whose next run touches every GitHub endpoint the coordinator uses:
 * the issue list, one issue (a pickup label put back after a finished cycle), linked
 * branches (GraphQL), adding and removing labels; with odd label names.
 */
async function faultWorld(): Promise<{ world: World; outputs: string[] }> {
  const world = await World.create({
    timeoutSeconds: 0.5,
    repos: [
      {
        name: "alpha",
        fullName: "acme/alpha",
        issues: [
          { number: 1, labels: [PLAN] },
          { number: 2, labels: ["status-04:plan-review"], linkedBranches: ["2-x"] },
          {
            number: 3,
            labels: ["status-07:code-review", "needs review/x y"],
            linkedBranches: ["3-y"],
          },
          { number: 4, labels: ["ünïcode ✓", "a:b c"] },
        ],
      },
      {
        name: "beta",
        fullName: "acme/beta",
        issues: [{ number: 10, labels: ["status-01:created"] }],
      },
    ],
  });
  const warm = await world.run(["--all", "--log-level", "DEBUG"]);
  assert.equal(warm.code, 0, warm.stderr);
  world.gh.setLabels("acme/alpha", 1, [PLAN]);
  world.gh.setLabels("acme/alpha", 2, [READY]);
  world.gh.setLabels("acme/alpha", 3, [PR, "needs review/x y"]);
  world.gh.setLabels("acme/alpha", 4, ["ünïcode ✓", "a:b c", PLAN]);
  world.gh.setLabels("acme/beta", 10, [PLAN]);
  return { world, outputs: [warm.stdout, warm.stderr] };
}

const GITHUB_ENDPOINTS: [string, Fault][] = [
  ["issue list", { method: "GET", path: /\/issues$/ }],
  ["single issue", { method: "GET", path: /\/issues\/\d+$/ }],
  ["GraphQL linked branches", { method: "POST", path: /graphql/ }],
  ["add label", { method: "POST", path: /\/labels$/ }],
  ["remove label", { method: "DELETE", path: /\/labels\// }],
];

const RESET_AT = String(Math.floor(Date.now() / 1000) + 3600);

const GITHUB_FAULTS: [string, Fault][] = [
  ["500", { status: 500 }],
  ["502", { status: 502 }],
  ["timeout", { delayMs: 1_500 }],
  ["403 secondary limit", { status: 403, headers: { "retry-after": "120" } }],
  ["403 primary limit", {
    status: 403,
    headers: { "x-ratelimit-remaining": "0", "x-ratelimit-reset": RESET_AT },
  }],
  ["401", { status: 401 }],
  ["malformed JSON", { status: 200, body: "{not json" }],
];

const JENKINS_FAULTS: [string, Fault | "refused"][] = [
  ["401", { method: "POST", status: 401 }],
  ["403", { method: "POST", status: 403 }],
  ["404", { method: "POST", status: 404 }],
  ["409", { method: "POST", status: 409 }],
  ["500", { method: "POST", status: 500 }],
  ["timeout after queueing", { method: "POST", afterHandling: true, delayMs: 1_500 }],
  ["connection refused", "refused"],
];

Deno.test("fault injection: nothing lost, nothing doubled, clear errors", async (t) => {
  const tally = { injected: 0, lost: 0, duplicated: 0 };
  const cases: [string, "github" | "jenkins", Fault | "refused"][] = [
    ...GITHUB_ENDPOINTS.flatMap(([endpoint, where]) =>
      GITHUB_FAULTS.map(([name, fault]): [string, "github", Fault] => [
        `GitHub ${endpoint}: ${name}`,
        "github",
        { ...where, ...fault, times: Infinity },
      ])
    ),
    ...JENKINS_FAULTS.map(([name, fault]): [string, "jenkins", Fault | "refused"] => [
      `Jenkins: ${name}`,
      "jenkins",
      fault === "refused" ? fault : { ...fault, times: Infinity },
    ]),
  ];
  for (const [name, service, fault] of cases) {
    await t.step(name, async () => {
      const { world, outputs } = await faultWorld();
      await using _ = world;
      tally.injected++;
      if (fault === "refused") await world.setJenkinsUrl(await closedPortUrl());
      else (service === "github" ? world.gh : world.jenkins).inject(fault);
      const faulty = await world.run(["--all", "--log-level", "DEBUG"]);
      outputs.push(faulty.stdout, faulty.stderr);
      assert.equal(faulty.code, 1, `the fault is reported with exit 1:\n${faulty.stderr}`);
      assert.match(faulty.stderr, /^ERROR +.*(Cannot|Failed|GitHub|Jenkins)/m);
      assert.doesNotMatch(faulty.stderr, /\n\s+at .*:\d+:\d+/, "no stack trace");

      world.gh.clearFaults();
      world.jenkins.clearFaults();
      if (fault === "refused") await world.setJenkinsUrl(world.jenkins.url);
      const healed = await world.run(["--all", "--log-level", "DEBUG"]);
      outputs.push(healed.stdout, healed.stderr);
      assert.equal(healed.code, 0, healed.stderr);

      const counts: Record<string, number> = {};
      for (const key of buildKeys(world)) counts[key] = (counts[key] ?? 0) + 1;
      for (const [key, expected] of Object.entries(EXPECTED_BUILDS)) {
        tally.lost += Math.max(0, expected - (counts[key] ?? 0));
        tally.duplicated += Math.max(0, (counts[key] ?? 0) - expected);
        assert.equal(counts[key] ?? 0, expected, `builds of ${key}`);
        const [repo, number] = key.split("#");
        assert.deepEqual(
          world.labels(`acme/${repo}`, Number(number)).sort(),
          EXPECTED_LABELS[key].sort(),
          `labels of ${key}`,
        );
      }
      for (const text of outputs) {
        assert.ok(!text.includes(world.gh.token), "GitHub token in output");
        assert.ok(!text.includes(world.jenkins.token), "Jenkins token in output");
      }
    });
  }
  console.log(
    `faults: ${tally.injected} injected, ${tally.lost} lost, ${tally.duplicated} duplicated`,
  );
  assert.deepEqual(tally, { injected: 42, lost: 0, duplicated: 0 });
});

/** Polls until `done()` holds; fails the test after `ms`. */
async function until(done: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) throw new Error("condition not reached in time");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

Deno.test("a coordinator killed (SIGKILL) at any step of a dispatch is finished by the next run", async (t) => {
  const steps: [string, (world: World) => Promise<void>][] = [
    ["after the claim, while Jenkins is being asked", async (world) => {
      world.jenkins.inject({ method: "POST", delayMs: 60_000 });
      await world.jenkins.waitForRequest({ method: "POST" });
    }],
    ["after Jenkins queued the build", async (world) => {
      world.jenkins.inject({ method: "POST", afterHandling: true, delayMs: 60_000 });
      await until(() => world.jenkins.builds.length === 1);
    }],
    ["after the first label write", async (world) => {
      world.gh.inject({ method: "POST", path: /\/labels$/, afterHandling: true, delayMs: 60_000 });
      await until(() => world.labels("acme/alpha", 1).includes(PLANNING));
    }],
  ];
  for (const [name, killPoint] of steps) {
    await t.step(name, async () => {
      await using world = await World.alpha([{ number: 1, labels: [PLAN] }], {
        timeoutSeconds: 60,
      });
      const child = spawnRun(world, ["--all"]);
      await killPoint(world);
      child.kill("SIGKILL");
      const { code, signal } = await child.status;
      assert.equal(signal, "SIGKILL", `exited on its own with ${code}`);
      await child.stdout.cancel();
      await child.stderr.cancel();
      world.gh.clearFaults();
      world.jenkins.clearFaults();
      // The dead run's lease lapses after 30 s; jump the clock instead of waiting.
      const later = { now: () => Date.now() + 31_000 };
      const next = await world.run(["--all"], later);
      assert.equal(next.code, 0, next.stderr);
      assert.equal(world.jenkins.builds.length, 1);
      assert.deepEqual(world.labels("acme/alpha", 1), [PLANNING]);
      const record = await kvGet(world.kvPath, ["repo", REPO_ID, "dispatch", 1]);
      assert.equal((record as DispatchRecord).state, "done");
      assert.equal((await world.run(["--all"], later)).code, 0);
      assert.equal(world.jenkins.builds.length, 1);
    });
  }
});

Deno.test("SIGTERM stops a run after the current dispatch; the next run goes on", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }, {
    number: 2,
    labels: [PLAN],
  }], { timeoutSeconds: 10 });
  world.jenkins.inject({ method: "POST", delayMs: 1_000 });
  const child = spawnRun(world, ["--all"]);
  await world.jenkins.waitForRequest({ method: "POST" });
  child.kill("SIGTERM");
  const result = await finished(child);
  assert.equal(result.code, 1);
  assert.match(result.stdout, /interrupted by a signal/);
  assert.deepEqual(builtIssues(world), [2]);
  assert.deepEqual(world.labels("acme/alpha", 2), [PLANNING]);
  assert.deepEqual(world.labels("acme/alpha", 1), [PLAN]);
  const next = await world.run(["--all"]);
  assert.equal(next.code, 0, next.stderr);
  assert.deepEqual(builtIssues(world), [2, 1]);
});

/** A URL on 127.0.0.1 where nothing listens. */
async function closedPortUrl(): Promise<string> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  await Promise.resolve();
  return `http://127.0.0.1:${port}`;
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

Deno.test("parseCli()", async (t) => {
  await t.step("takes run with --all or --repo and the documented flags", () => {
    const cli = parseCli(["run", "--repo", "alpha", "--dry-run", "--log-level", "debug", "--json"]);
    assert.equal(cli.command, "run");
    if (cli.command !== "run") return;
    assert.equal(cli.repo, "alpha");
    assert.equal(cli.logLevel, "DEBUG");
    assert.ok(cli.dryRun && cli.json && !cli.all);
  });
  await t.step("rejects missing, doubled and unknown selections", () => {
    for (
      const args of [
        ["run"],
        ["run", "--all", "--repo", "x"],
        ["run", "--all", "--frobnicate"],
        ["start", "--all"],
        [],
        ["run", "--all", "--log-level", "LOUD"],
        ["run", "--repo"],
      ]
    ) {
      assert.throws(() => parseCli(args), UsageError, args.join(" "));
    }
  });
});

Deno.test("main() without a config file creates one and exits 1", async () => {
  const dir = await Deno.makeTempDir();
  const { deps, output } = testDeps({ HOME: dir, XDG_CONFIG_HOME: `${dir}/xdg` });
  const code = await main(["run", "--all", "--kv", ":memory:"], deps);
  assert.equal(code, 1);
  const path = `${dir}/xdg/coordinator/config.toml`;
  assert.match(output.stdout, new RegExp(`Created config file ${path}`));
  assert.match(output.stdout, /update it with your Jenkins and repository information/);
  assert.equal(await Deno.readTextFile(path), CONFIG_TEMPLATE);
  assert.equal((await Deno.stat(path)).mode! & 0o077, 0, "created private: it will hold tokens");
  const again = testDeps({ HOME: dir, XDG_CONFIG_HOME: `${dir}/xdg` });
  assert.equal(await main(["run", "--all", "--kv", ":memory:"], again.deps), 1);
  assert.match(again.output.stderr, /token still holds the template placeholder/);
  assert.doesNotMatch(again.output.stderr, /\n\s+at /, "no stack trace");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("main() exit codes and messages for bad input", async (t) => {
  await using world = await World.create();
  await t.step("usage errors exit 2 with the usage line", async () => {
    for (const args of [[], ["--all", "--repo", "alpha"], ["--all", "--nope"]]) {
      const result = await world.run(args);
      assert.equal(result.code, 2, args.join(" "));
      assert.match(result.stderr, /^Error: .*\nUsage: /);
    }
  });
  await t.step("an unknown --repo exits 1 and lists the configured names", async () => {
    const result = await world.run(["--repo", "gamma"]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /Repository "gamma" is not in .*config\.toml; configured: alpha/);
  });
  await t.step("missing credentials name the env var that supplies each", async () => {
    const text = await Deno.readTextFile(world.configPath);
    await Deno.writeTextFile(
      world.configPath,
      text.replace(/^token = .*$/m, "").replace(/^api_token = .*$/m, ""),
    );
    const result = await world.run(["--all"]);
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /missing credentials: \[github\] token \(or set GITHUB_TOKEN\), \[jenkins\] api_token \(or set JENKINS_TOKEN\)/,
    );
    world.env.GITHUB_TOKEN = world.gh.token;
    world.env.JENKINS_TOKEN = world.jenkins.token;
    assert.equal((await world.run(["--all"])).code, 0);
  });
  await t.step("--help prints usage and exits 0", async () => {
    const { deps, output } = testDeps({});
    assert.equal(await main(["--help"], deps), 0);
    assert.match(output.stdout, /--dry-run/);
  });
});

Deno.test("secrets stay out of output and KV; a world-readable config is warned about", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
  await Deno.chmod(world.configPath, 0o644);
  world.gh.inject({ method: "GET", path: /\/issues$/, status: 401 });
  const failed = await world.run(["--all", "--log-level", "DEBUG"]);
  assert.equal(failed.code, 1);
  assert.match(failed.stderr, /readable by other users: run chmod 600/);
  assert.match(failed.stderr, /GitHub rejected the token \(401 Bad credentials\)/);
  const ok = await world.runJson(["--all", "--log-level", "DEBUG"]);
  assert.equal(ok.code, 0);
  const kv = JSON.stringify((await kvEntries(world.kvPath)).map((entry) => entry.value));
  for (const text of [failed.stdout, failed.stderr, ok.stdout, ok.stderr, kv]) {
    assert.ok(!text.includes(world.gh.token));
    assert.ok(!text.includes(world.jenkins.token));
  }
});

Deno.test("COORDINATOR_CONFIG_TOML supplies the config where there is no file (Deno Deploy)", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
  const { deps, output } = testDeps({
    COORDINATOR_CONFIG_TOML: await Deno.readTextFile(world.configPath),
    COORDINATOR_KV: world.kvPath,
  });
  const code = await main(["run", "--all"], deps);
  assert.equal(code, 0, output.stderr);
  assert.equal(world.jenkins.builds.length, 1);
});

Deno.test("main() refuses to dispatch without its KV store; a dry run goes on", async () => {
  await using world = await World.alpha([{ number: 1, labels: [PLAN] }]);
  const blocked = `${world.configPath}/kv.sqlite3`; // the config is a file, not a directory
  const { deps, output } = testDeps(world.env);
  const code = await main(["run", "--all", "--config", world.configPath, "--kv", blocked], deps);
  assert.equal(code, 1);
  assert.match(
    output.stderr,
    /^Error: Cannot open the KV store .*; it records every dispatch so that none is started twice/m,
  );
  assert.equal(world.jenkins.builds.length, 0);
  const dry = testDeps(world.env);
  const args = ["run", "--all", "--dry-run", "--config", world.configPath, "--kv", blocked];
  assert.equal(await main(args, dry.deps), 0);
  assert.match(dry.output.stdout, /would dispatch create-plan for #1/);
});

Deno.test("main() without --allow-env says which permissions to grant, in one line", async () => {
  await using world = await World.create();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-read",
      "--allow-write",
      COORDINATOR,
      "run",
      "--all",
      "--config",
      world.configPath,
    ],
    clearEnv: true,
    env: childEnv(),
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const result = await finished(child);
  assert.equal(result.code, 1);
  assert.match(
    result.stderr,
    /^Error: missing permission .*: run with --allow-net --allow-env --allow-read --allow-write\n$/,
  );
});

Deno.test("main() --json prints a JSON error when the run cannot start", async () => {
  await using world = await World.create();
  const result = await world.run(["--repo", "nope", "--json"]);
  assert.equal(result.code, 1);
  assert.deepEqual(JSON.parse(result.stdout).ok, false);
  assert.match(JSON.parse(result.stdout).error, /Repository "nope" is not in/);
});
