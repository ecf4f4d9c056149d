/**
 * Test doubles for the two services the coordinator talks to, served over real HTTP on 127.0.0.1:
 *
 * - {@link FakeGitHub}: the REST issue and label endpoints (api.github.com style, or GitHub
 *   Enterprise style under `/api/v3`), the repository with the token's `permissions`, repository
 *   labels (list, create, update), `GET /rate_limit`, an issue's events (each with its actor and
 *   app), its `issue_dependencies_summary` and `dependencies/blocked_by|blocking`, a
 *   collaborator's permission, GraphQL queries over `repository { issue { … } }` (linked
 *   branches, body edits, the timeline, dependencies; validated against that part of the schema,
 *   inline fragments included, answered with exactly the selected fields), token auth, rate-limit
 *   headers, ETag/304 conditional requests (the ETag a hash of the body sent) and `link`
 *   pagination. People, bots and apps act on it through `by`/`via` ({@link ActedBy}).
 * - {@link FakeJenkins}: `buildWithParameters`/`build` on (foldered, freestyle or Pipeline) jobs
 *   that define parameters (others sent are dropped), the queue item API, job JSON with its
 *   parameter definitions, build JSON with why a build was interrupted, `tree=` pruned as Stapler
 *   does, `whoAmI`, Basic auth with API tokens or passwords, and session-bound CSRF crumbs; builds
 *   that end NOT_BUILT or ABORTED, queue items cancelled or expired, builds deleted, restarts.
 *
 * Both follow the documented behaviour of the real services (see
 * shared/reference/github-jenkins-api.md) rather than being lenient, and both accept injected
 * {@link Fault}s: error statuses, delays, and dropped connections.
 *
 * {@link World} puts both fakes, a config file pointing at them and a KV file in a temp dir, and
 * runs the coordinator's `main()` against them: the tests and the demo are built on it.
 *
 * {@link MemoryGitHub} and {@link MemoryJenkins} are GitHub and Jenkins as a run sees them
 * (`GitHubApi`, `JenkinsApi`), in memory: {@link MemoryWorld} runs the coordinator's core on them
 * and a KV in memory, without HTTP, so the dispatch protocol's tests can stop a run at any step
 * (`at()` hooks, {@link Crash}) and take milliseconds.
 * Run as a program (`deno task demo`), this file is the demo: {@link demo}.
 *
 * Each fake is a `Deno.serve` server behind a tiny TCP relay on the public port. The relay exists
 * only so that a `reset` fault can cut the client's connection before any byte of an answer is
 * sent; `Deno.serve` itself always sends the status line first.
 *
 * @module
 */

import { createHash, randomBytes } from "node:crypto";
import {
  _internals,
  defaultDeps,
  type Deps,
  IGNORE_LABELS,
  type Internals,
  main,
  WORKFLOWS,
} from "./coordinator.ts";

const {
  COMMANDS,
  formatSummary,
  GitHubError,
  matchesDispatch,
  REQUEST_ID_PARAM,
  runContext,
  runLeaseName,
  STALE_TIMEOUT_MINUTES,
  Store,
} = _internals;
type BuildState = Internals["BuildState"];
type Config = Internals["Config"];
type Store = Internals["Store"];
type DispatchRecord = Internals["DispatchRecord"];
type GitHubApi = Internals["GitHubApi"];
type GitHubStats = Internals["GitHubStats"];
type CoordinatorIssue = Internals["Issue"];
type IssuePage = Internals["IssuePage"];
type JenkinsApi = Internals["JenkinsApi"];
type RepoConfig = Internals["RepoConfig"];
type RunContext = Internals["RunContext"];
type RunSummary = Internals["RunSummary"];

/** How a fake GitHub issue (or pull request) starts out. */
export interface FakeIssueInit {
  number: number;
  title?: string;
  body?: string | null;
  /** Who opened it (and put its first labels on): the token's account, octocat, by default. */
  author?: string;
  state?: "open" | "closed";
  labels?: string[];
  pullRequest?: boolean;
  linkedBranches?: string[];
  createdAt?: string;
  updatedAt?: string;
}

/**
 * Who does something on the fake GitHub: `by` a login (default: the token's account, octocat),
 * a person's or a GitHub App bot's (`slug[bot]`), known or not yet (then the fake adds it);
 * `via` the slug of a GitHub App a person acts through (a bot always acts through its own).
 */
export interface ActedBy {
  /** Who: "alice", or a bot, "renovate[bot]". */
  by?: string;
  /** Through which GitHub App, by its slug. */
  via?: string;
}

/** An issue of the fake GitHub by repository and number. */
export interface FakeIssueRef {
  /** "owner/name". */
  repo: string;
  /** The issue's number there. */
  number: number;
}

/** A snapshot of a fake issue, for assertions. */
export interface FakeIssueView {
  number: number;
  title: string;
  state: "open" | "closed";
  labels: string[];
  pullRequest: boolean;
  linkedBranches: string[];
  createdAt: string;
  updatedAt: string;
}

/** A fault injected into the next matching requests. */
export interface Fault {
  /** e.g. "POST"; any method when absent. */
  method?: string;
  /** Tested against the decoded path without the /api/v3 prefix (GraphQL is "/graphql"). */
  path?: RegExp;
  /** How many matching requests are affected (default 1; Infinity allowed). */
  times?: number;
  /** Answer with this status and the service's usual error body for it. */
  status?: number;
  /** Extra response headers, e.g. retry-after; they override the fake's own. */
  headers?: Record<string, string>;
  /** Replaces the error body, e.g. "{not json". */
  body?: string;
  /** Wait before answering; stops early when the client hangs up or the fake closes. */
  delayMs?: number;
  /** Do the real work first (label written, build queued), then apply delay/status/reset. */
  afterHandling?: boolean;
  /**
   * Close the TCP connection without any HTTP answer. Note: Deno's fetch silently resends a
   * request (POST included) once when a reused keep-alive connection closes before any response
   * byte, so a Deno client only sees the network error if the resend is dropped too (`times: 2`).
   */
  reset?: boolean;
}

/** One request as the fake saw it; `status` is 0 until answered, and stays 0 if dropped. */
export interface RecordedRequest {
  method: string;
  path: string;
  search: string;
  headers: Headers;
  body: string;
  status: number;
}

type RequestMatch = { method?: string; path?: RegExp };
type Json = Record<string, unknown>;

interface Route {
  path: string;
  segments: string[] | null;
  graphql?: boolean;
}

interface Ctx {
  request: Request;
  url: URL;
  route: Route;
  rec: RecordedRequest;
  /** False when the request must not use up the token's rate limit (e.g. it failed auth). */
  charge: boolean;
}

const JSON_TYPE = "application/json; charset=utf-8";
const HTML_TYPE = "text/html;charset=utf-8";
const MAX_TIMER_MS = 2 ** 31 - 1;
const REASONS: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  409: "Conflict",
  422: "Unprocessable Entity",
  429: "Too Many Requests",
  500: "Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

function randomHex(bytes: number): string {
  return randomBytes(bytes).toString("hex");
}

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** Splits first and decodes each segment after, so an encoded "/" inside a name stays in it. */
function decodeSegments(pathname: string): string[] {
  return pathname.split("/").slice(1).map(safeDecode);
}

function matches(match: RequestMatch, rec: RecordedRequest): boolean {
  if (match.method && match.method.toUpperCase() !== rec.method) return false;
  if (match.path) {
    match.path.lastIndex = 0; // a /g regex would otherwise remember where it stopped
    if (!match.path.test(rec.path)) return false;
  }
  return true;
}

/** Resolves true after `ms`, or false as soon as `signal` aborts; never leaves a timer behind. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const done = (finished: boolean) => {
      clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
      resolve(finished);
    };
    const onAbort = () => done(false);
    const timer = setTimeout(() => done(true), Math.min(ms, MAX_TIMER_MS));
    signal.addEventListener("abort", onAbort);
  });
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // already closed by the other direction of the relay
  }
}

function json(status: number, data: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(data), {
    status,
    headers: { "content-type": JSON_TYPE, ...headers },
  });
}

function secondsIso(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

function wholeSeconds(ms: number): number {
  return Math.floor(ms / 1000) * 1000;
}

/**
 * The HTTP plumbing both fakes share: the relay, recording, faults, latency and shutdown.
 * Subclasses supply routing, handling and the service's own error pages and headers.
 */
abstract class FakeService {
  /** Every request received, oldest first. */
  readonly requests: RecordedRequest[] = [];
  readonly url: string;
  #latencyMs: number;
  #faults: Array<{ fault: Fault; left: number }> = [];
  #waiters: Array<{ match: RequestMatch; resolve: (rec: RecordedRequest) => void }> = [];
  #closing = new AbortController();
  #server: Deno.HttpServer<Deno.NetAddr>;
  #listener: Deno.TcpListener;
  #links = new Map<number, { conns: Deno.TcpConn[]; gone: AbortController; used: boolean }>();
  #relays = new Set<Promise<void>>();
  #accepting: Promise<void>;
  #closed?: Promise<void>;

  constructor(latencyMs: number, urlSuffix: string) {
    this.#latencyMs = latencyMs;
    this.#server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (request, info) => this.#serve(request, info),
    );
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.url = `http://127.0.0.1:${this.#listener.addr.port}${urlSuffix}`;
    this.#accepting = this.#accept();
  }

  /** Applies `fault` to the next matching requests. */
  inject(fault: Fault): void {
    this.#faults.push({ fault, left: fault.times ?? 1 });
  }

  clearFaults(): void {
    this.#faults = [];
  }

  /** Resolves when a matching request arrives from now on, before it is answered. */
  waitForRequest(match: RequestMatch): Promise<RecordedRequest> {
    return new Promise((resolve) => this.#waiters.push({ match, resolve }));
  }

  /** Stops the server, cutting any request still held by a delay. */
  close(): Promise<void> {
    this.#closed ??= this.#shutdown();
    return this.#closed;
  }

  /** `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  protected abstract route(pathname: string): Route;
  protected abstract handle(ctx: Ctx): Response | Promise<Response>;
  protected abstract faultResponse(fault: Fault, ctx: Ctx): Response;
  /** Adds the service's own headers; `res` is null when the connection was dropped. */
  protected abstract finish(res: Response | null, ctx: Ctx): void;
  protected arrive(_ctx: Ctx): void {}

  async #shutdown(): Promise<void> {
    this.#closing.abort(); // wakes every delayed handler, which then drops its connection
    this.#listener.close();
    await this.#accepting;
    // A connection no request came on is a spare the client's pool opened while requests raced
    // for one (Deno 2.5 does): the graceful shutdown would wait for it until the server's
    // header-read timeout, 3 minutes. Nothing is lost by cutting it first.
    for (const link of this.#links.values()) if (!link.used) link.conns.forEach(closeQuietly);
    await this.#server.shutdown();
    for (const link of this.#links.values()) link.conns.forEach(closeQuietly);
    await Promise.all(this.#relays);
  }

  async #accept(): Promise<void> {
    try {
      for await (const client of this.#listener) {
        const relay = this.#relay(client);
        this.#relays.add(relay);
        relay.finally(() => this.#relays.delete(relay));
      }
    } catch {
      // the listener was closed
    }
  }

  async #relay(client: Deno.TcpConn): Promise<void> {
    let upstream: Deno.TcpConn | undefined;
    try {
      upstream = await Deno.connect({ hostname: "127.0.0.1", port: this.#server.addr.port });
      // Without this, Nagle plus delayed ACKs add ~40 ms to small writes through the relay.
      client.setNoDelay(true);
      upstream.setNoDelay(true);
      const key = upstream.localAddr.port; // what the handler sees as remoteAddr.port
      const link = { conns: [client, upstream], gone: new AbortController(), used: false };
      this.#links.set(key, link);
      await Promise.allSettled([
        // The client hanging up is how a delayed handler learns to stop waiting.
        client.readable.pipeTo(upstream.writable).finally(() => link.gone.abort()),
        upstream.readable.pipeTo(client.writable),
      ]);
      this.#links.delete(key);
    } catch {
      // the inner server is shutting down
    }
    closeQuietly(client);
    if (upstream) closeQuietly(upstream);
  }

  async #serve(request: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>): Promise<Response> {
    const link = this.#links.get(info.remoteAddr.port);
    if (link) link.used = true;
    const url = new URL(request.url);
    const route = this.route(url.pathname);
    const body = await request.text().catch(() => "");
    const rec: RecordedRequest = {
      method: request.method,
      path: route.path,
      search: url.search,
      headers: request.headers,
      body,
      status: 0,
    };
    this.requests.push(rec);
    const ctx: Ctx = { request, url, route, rec, charge: true };
    this.arrive(ctx);
    const [due, rest] = [this.#waiters.filter((w) => matches(w.match, rec)), this.#waiters];
    this.#waiters = rest.filter((w) => !due.includes(w));
    for (const waiter of due) waiter.resolve(rec);
    const signal = AbortSignal.any(
      link ? [this.#closing.signal, link.gone.signal] : [this.#closing.signal],
    );
    const fault = this.#takeFault(rec);
    let res = fault?.afterHandling ? await this.handle(ctx) : null;
    if (fault) {
      if (fault.delayMs && !(await sleep(fault.delayMs, signal))) return this.#drop(ctx, link);
      if (fault.reset) return this.#drop(ctx, link);
      if (fault.status !== undefined) res = this.faultResponse(fault, ctx);
    }
    res ??= await this.handle(ctx);
    if (this.#latencyMs > 0 && !(await sleep(this.#latencyMs, signal))) {
      return this.#drop(ctx, link);
    }
    this.finish(res, ctx);
    for (const [name, value] of Object.entries(fault?.headers ?? {})) res.headers.set(name, value);
    rec.status = res.status;
    return res;
  }

  #takeFault(rec: RecordedRequest): Fault | undefined {
    const entry = this.#faults.find((f) => f.left > 0 && matches(f.fault, rec));
    if (!entry) return undefined;
    entry.left--;
    this.#faults = this.#faults.filter((f) => f.left > 0);
    return entry.fault;
  }

  /** Cuts the client's TCP connection, so it gets no HTTP answer at all. */
  #drop(ctx: Ctx, link?: { conns: Deno.TcpConn[] }): Response {
    this.finish(null, ctx);
    ctx.rec.status = 0;
    link?.conns.forEach(closeQuietly);
    return new Response(null, { status: 500 }); // goes nowhere: the connection is gone
  }
}

// ---------------------------------------------------------------------------------------------
// GitHub

const DEFAULT_GITHUB_TOKEN = "ghp_faketoken000000000000000000000000000";
const DOCS = "https://docs.github.com/rest";
const GRAPHQL_DOCS =
  "https://docs.github.com/graphql/guides/forming-calls-with-graphql#authenticating-with-graphql";
const RATE_LIMITED = "API rate limit exceeded for user ID 1.";
const RATE_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
const REDIRECTS =
  "https://docs.github.com/rest/using-the-rest-api/best-practices-for-using-the-rest-api#follow-redirects";
const SECONDARY_LIMITED = "You have exceeded a secondary rate limit and have been temporarily " +
  "blocked from content creation. Please retry your request again later.";
const NO_USER_AGENT = "Request forbidden by administrative rules. Please make sure your request " +
  "has a User-Agent header (https://docs.github.com/rest/overview/resources-in-the-rest-api" +
  "#user-agent-required). Check https://developer.github.com for other possible causes.";
/** GitHub refuses to put more labels than this on one issue (422). */
const LABEL_LIMIT = 100;
/** "Link up to 50 issues for each relationship type" (GitHub changelog, 2025-08-21). */
const DEPENDENCY_LIMIT = 50;
const LOGIN = "octocat";
const REACTIONS = ["+1", "-1", "laugh", "hooray", "confused", "heart", "rocket", "eyes"];

interface Label {
  id: number;
  name: string;
  description: string | null;
  color: string;
}

interface Comment {
  id: number;
  body: string;
  createdAt: number;
  updatedAt: number;
}

/** A GitHub App: its bot account (`slug[bot]`) acts for it, and events name it. */
interface App {
  id: number;
  slug: string;
  name: string;
  createdAt: number;
}

/** An account the fake knows: a person, or a GitHub App's bot (REST login `slug[bot]`). */
interface Account {
  id: number;
  /** As REST spells it; a bot's GraphQL login has no `[bot]`. */
  login: string;
  type: "User" | "Bot";
  /** A bot's app. */
  app?: App;
}

/** The account that did something, and the app it did it through (a bot's own, or null). */
interface Doer {
  actor: Account;
  via: App | null;
}

type IssueEventKind =
  | "labeled"
  | "unlabeled"
  | "closed"
  | "reopened"
  | "renamed"
  | "blocked_by_added"
  | "blocked_by_removed"
  | "blocking_added"
  | "blocking_removed";

/** One entry of an issue's event list (`GET …/issues/N/events`), oldest first. */
interface IssueEvent extends Doer {
  id: number;
  event: IssueEventKind;
  /** The label's name and colour when it was added or removed. */
  label?: { name: string; color: string };
  /** The title before and after, for `renamed`. */
  rename?: { from: string; to: string };
  /** The other issue of a dependency event (the blocker, or the blocked issue). */
  other?: IssueRef;
  /** For `closed`: completed or not_planned. */
  stateReason?: string;
  createdAt: number;
}

/** One version of an issue's body, as GraphQL's `userContentEdits` lists them. */
interface BodyEdit {
  editedAt: number;
  editor: Account;
  body: string | null;
}

/** An issue of the fake, wherever it lives (dependencies may cross repositories). */
interface IssueRef {
  repo: Repo;
  issue: Issue;
}

interface Issue {
  id: number;
  number: number;
  title: string;
  body: string | null;
  state: "open" | "closed";
  stateReason: string | null;
  labels: string[]; // lower-cased keys into Repo.labels, in the order they were added
  pullRequest: boolean;
  linkedBranches: string[];
  comments: Comment[];
  /** What happened to it, oldest first, as `GET …/issues/N/events` lists it. */
  events: IssueEvent[];
  /** Who opened it (the token's account unless a test says otherwise). */
  author: Account;
  /**
   * Its body's versions, newest first, as GraphQL's `userContentEdits` gives them: empty until
   * the body is first edited, then the creation too (`includesCreatedEdit`).
   */
  edits: BodyEdit[];
  /** The issues blocking it and those it blocks, in the order the links were made. */
  blockedBy: IssueRef[];
  blocking: IssueRef[];
  createdAt: number;
  updatedAt: number;
  closedAt: number | null;
  /** Deleted (410) or transferred away / no longer visible to the token (404). */
  gone?: 404 | 410;
  /** Transferred to a repository the token can see: its old address answers 301 to there. */
  movedTo?: { repo: Repo; number: number; writeStatus: 301 | 307 };
}

interface Repo {
  id: number;
  fullName: string;
  issues: Map<number, Issue>;
  labels: Map<string, Label>; // GitHub label names are unique case-insensitively
  role: RepoRole;
  private: boolean;
  /** Collaborators' roles by lower-cased login: a base role name or a custom role's. */
  collaborators: Map<string, string>;
  /** When a role in it last changed: the permission answer's Last-Modified. */
  rolesChangedAt: number;
}

/** A repository role of the token's account, weakest first: each includes the ones before. */
export type RepoRole = "pull" | "triage" | "push" | "maintain" | "admin";
const ROLES: readonly RepoRole[] = ["pull", "triage", "push", "maintain", "admin"];
/**
 * A repository role as the collaborator-permission endpoint's `role_name` names it, weakest
 * first (the same order as RepoRole: read is pull, write is push).
 */
export type BaseRole = "read" | "triage" | "write" | "maintain" | "admin";
const BASE_ROLES: readonly BaseRole[] = ["read", "triage", "write", "maintain", "admin"];
/** Documented: `permission` is the legacy base role, maintain shown as write, triage as read. */
const LEGACY_PERMISSION: Record<BaseRole, string> = {
  read: "read",
  triage: "read",
  write: "write",
  maintain: "write",
  admin: "admin",
};
/** Third-party observation (rultor#1407): a token below push may not ask for a permission. */
const NO_PERMISSION_ACCESS = "Must have push access to view collaborator permission.";
const NO_ACCESS = "Resource not accessible by personal access token";
const HEX_COLOR = /^[0-9a-fA-F]{6}$/;

/**
 * The `link` header of page `page` of `lastPage` as GitHub writes it: absolute URLs under
 * `/repositories/ID/…` with the request's query, `prev`/`next`/`last`/`first` as they apply.
 * No header when everything fits on one page.
 */
function pageLinks(
  base: string,
  query: URLSearchParams,
  options: { page: number; lastPage: number },
): Record<string, string> {
  const { page, lastPage } = options;
  if (lastPage <= 1) return {};
  const params = new URLSearchParams(query);
  params.delete("page");
  const link = (n: number, rel: string) => {
    params.set("page", String(n));
    return `<${base}?${params}>; rel="${rel}"`;
  };
  const links = [];
  if (page > 1) links.push(link(Math.min(page - 1, lastPage), "prev"));
  if (page < lastPage) links.push(link(page + 1, "next"), link(lastPage, "last"));
  if (page > 1) links.push(link(1, "first"));
  return { link: links.join(", ") };
}

/** A user as GitHub's `simple-user` schema has it (the token's by default): `api` is the REST base. */
function userJson(api: string, web: string, login = LOGIN): Json {
  return accountJson(api, web, { id: 1, login, type: "User" });
}

/**
 * An account as the `simple-user` schema has it. A bot's is as GitHub gives it: login
 * `slug[bot]` (`%5Bbot%5D` in its URLs), type "Bot", its app's page as html_url and avatar.
 */
function accountJson(api: string, web: string, account: Account): Json {
  const { id, login, app } = account;
  const url = `${api}/users/${encodeURIComponent(login)}`;
  return {
    login,
    id,
    node_id: nodeId(account.type, id),
    avatar_url: `https://avatars.githubusercontent.com/${app ? `in/${app.id}` : `u/${id}`}?v=4`,
    gravatar_id: "",
    url,
    html_url: app ? `${web}/apps/${app.slug}` : `${web}/${login}`,
    followers_url: `${url}/followers`,
    following_url: `${url}/following{/other_user}`,
    gists_url: `${url}/gists{/gist_id}`,
    starred_url: `${url}/starred{/owner}{/repo}`,
    subscriptions_url: `${url}/subscriptions`,
    organizations_url: `${url}/orgs`,
    repos_url: `${url}/repos`,
    events_url: `${url}/events{/privacy}`,
    received_events_url: `${url}/received_events`,
    type: account.type,
    user_view_type: "public",
    site_admin: false,
  };
}

/** A GitHub App as the `integration` schema has it (`performed_via_github_app`). */
function appJson(api: string, web: string, app: App): Json {
  const at = secondsIso(app.createdAt);
  return {
    id: app.id,
    slug: app.slug,
    node_id: nodeId("Integration", app.id),
    client_id: `Iv1.${sha256(app.slug).slice(0, 16)}`,
    owner: userJson(api, web),
    name: app.name,
    description: null,
    external_url: `https://${app.slug}.example.com`,
    html_url: `${web}/apps/${app.slug}`,
    created_at: at,
    updated_at: at,
    permissions: { issues: "write", metadata: "read" },
    events: ["issues", "label"],
  };
}

/**
 * Page `page` of `all` at `per_page` (default 30, at most 100), as GitHub cuts its lists, and
 * the `link` header pointing at `base`.
 */
function listPage<T>(
  query: URLSearchParams,
  all: T[],
  base: string,
): { items: T[]; headers: Record<string, string> } {
  const perPageRaw = parseInt(query.get("per_page") ?? "", 10);
  const perPage = perPageRaw > 0 ? Math.min(perPageRaw, 100) : 30;
  const page = Math.max(1, parseInt(query.get("page") ?? "", 10) || 1);
  const lastPage = Math.max(1, Math.ceil(all.length / perPage));
  const items = all.slice((page - 1) * perPage, page * perPage);
  return { items, headers: pageLinks(base, query, { page, lastPage }) };
}

function ghError(status: number, message: string, extra: Json = {}): Response {
  return json(status, { message, ...extra, documentation_url: DOCS, status: String(status) });
}

/** GitHub's answer for a moved repository or issue: `location` and the same URL in the body. */
function redirect(status: 301 | 307, location: string): Response {
  const body = { message: "Moved Permanently", url: location, documentation_url: REDIRECTS };
  return json(status, body, { location });
}

function notFound(): Response {
  return ghError(404, "Not Found");
}

function validationFailed(resource: string, field: string, code: string): Response {
  return ghError(422, "Validation Failed", { errors: [{ resource, field, code }] });
}

function nodeId(type: string, id: number | string): string {
  return btoa(`0${String(type.length).padStart(2, "0")}:${type}${id}`);
}

/** The token from `token X`, `Bearer X` or `Basic base64(user:X)`; null when there is no header. */
function credential(header: string | null): string | null {
  if (header === null) return null;
  const match = /^(\S+)\s+(\S+)\s*$/.exec(header.trim());
  if (!match) return "";
  const scheme = match[1].toLowerCase();
  if (scheme === "token" || scheme === "bearer") return match[2];
  if (scheme !== "basic") return "";
  try {
    const decoded = atob(match[2]);
    return decoded.includes(":") ? decoded.slice(decoded.indexOf(":") + 1) : "";
  } catch {
    return "";
  }
}

function etagMatches(header: string, etag: string): boolean {
  const opaque = (tag: string) => tag.trim().replace(/^W\//, "");
  return header.split(",").some((tag) => tag.trim() === "*" || opaque(tag) === opaque(etag));
}

/** Label names from `{"labels":[...]}` or a bare array; items may be strings or `{name}`. */
function labelNames(value: unknown, required: boolean): string[] | Response {
  const list = Array.isArray(value) ? value : isObject(value) ? value.labels : undefined;
  if (list === undefined && !required) return [];
  if (!Array.isArray(list) || (required && list.length === 0)) {
    return validationFailed("Label", "labels", "invalid");
  }
  const names = list.map((item) =>
    typeof item === "string"
      ? item
      : isObject(item) && typeof item.name === "string"
      ? item.name
      : ""
  );
  return names.some((name) => name.trim() === "")
    ? validationFailed("Label", "name", "invalid")
    : names;
}

function parseBody(text: string): { value: unknown } | Response {
  if (text.trim() === "") return { value: undefined };
  try {
    return { value: JSON.parse(text) };
  } catch {
    return ghError(400, "Problems parsing JSON");
  }
}

/** An error that ends a GraphQL query: answered as HTTP 200 with `errors` and no `data`. */
class GraphqlError extends Error {
  constructor(readonly item: Json) {
    super(String(item.message));
  }
}

function location(query: string, index: number): { line: number; column: number } {
  const before = query.slice(0, index).split("\n");
  return { line: before.length, column: before[before.length - 1].length + 1 };
}

/**
 * One selected field, `alias: name(args) { selection }`, or an inline fragment
 * (`... on Type { selection }`: name "...", `on` its type); `at` is its offset in the query.
 */
interface GraphqlField {
  alias: string;
  name: string;
  args: Json;
  selection: GraphqlField[] | null;
  at: number;
  on?: string;
}

type GraphqlPath = (string | number)[];

/** What one query run collects besides its data. */
interface GraphqlRun {
  query: string;
  errors: Json[];
}

/** A field that takes arguments is answered by a function; the others are plain values. */
type GraphqlResolver = (field: GraphqlField, path: GraphqlPath, run: GraphqlRun) => unknown;

/**
 * The part of GitHub's GraphQL schema the fake serves: each type's fields with their type
 * (`[T]` a list) and arguments (`!` required; `?` GitHub has it, the fake does not). GitHub
 * rejects a query that selects a field its type lacks, and answers with exactly the fields
 * selected, under their aliases; so does the fake.
 */
const GRAPHQL_TYPES: Record<string, Record<string, string>> = {
  Query: { repository: "Repository(owner!, name!, followRenames?)" },
  Repository: {
    id: "ID",
    name: "String",
    nameWithOwner: "String",
    url: "URI",
    issue: "Issue(number!)",
  },
  Issue: {
    id: "ID",
    number: "Int",
    title: "String",
    state: "IssueState",
    closed: "Boolean",
    url: "URI",
    createdAt: "DateTime",
    updatedAt: "DateTime",
    linkedBranches: "LinkedBranchConnection(first, last?, after?, before?)",
    databaseId: "Int",
    body: "String",
    author: "Actor",
    repository: "Repository",
    // Body edits live only here: the REST API has no record of them.
    editor: "Actor",
    lastEditedAt: "DateTime",
    includesCreatedEdit: "Boolean",
    userContentEdits: "UserContentEditConnection(first, last, after?, before?)",
    timelineItems:
      "IssueTimelineItemsConnection(first, last, itemTypes, since, skip, after?, before?)",
    // In GitHub's schema since 2025 (the GraphQL reference; not yet in @octokit/graphql-schema).
    issueDependenciesSummary: "IssueDependenciesSummary",
    blockedBy: "IssueConnection(first, last, after?, before?, orderBy?)",
  },
  LinkedBranchConnection: { totalCount: "Int", nodes: "[LinkedBranch]" },
  LinkedBranch: { id: "ID", ref: "Ref" },
  Ref: { id: "ID", name: "String", prefix: "String" },
  IssueConnection: { totalCount: "Int", nodes: "[Issue]" },
  IssueDependenciesSummary: {
    blockedBy: "Int",
    blocking: "Int",
    totalBlockedBy: "Int",
    totalBlocking: "Int",
  },
  UserContentEditConnection: { totalCount: "Int", nodes: "[UserContentEdit]" },
  UserContentEdit: {
    id: "ID",
    createdAt: "DateTime",
    updatedAt: "DateTime",
    editedAt: "DateTime",
    editor: "Actor",
    diff: "String",
  },
  IssueTimelineItemsConnection: { totalCount: "Int", nodes: "[IssueTimelineItems]" },
  Label: { id: "ID", name: "String", color: "String", description: "String" },
  Actor: { login: "String", url: "URI", resourcePath: "URI", avatarUrl: "URI(size)" },
  User: {
    id: "ID",
    databaseId: "Int",
    login: "String",
    name: "String",
    url: "URI",
    resourcePath: "URI",
    avatarUrl: "URI(size)",
  },
  Bot: {
    id: "ID",
    databaseId: "Int",
    login: "String",
    url: "URI",
    resourcePath: "URI",
    avatarUrl: "URI(size)",
  },
  LabeledEvent: { id: "ID", createdAt: "DateTime", actor: "Actor", label: "Label" },
  UnlabeledEvent: { id: "ID", createdAt: "DateTime", actor: "Actor", label: "Label" },
  RenamedTitleEvent: {
    id: "ID",
    createdAt: "DateTime",
    actor: "Actor",
    previousTitle: "String",
    currentTitle: "String",
  },
  ClosedEvent: { id: "ID", createdAt: "DateTime", actor: "Actor", stateReason: "IssueStateReason" },
  ReopenedEvent: { id: "ID", createdAt: "DateTime", actor: "Actor" },
  IssueComment: { id: "ID", createdAt: "DateTime", author: "Actor", body: "String" },
  BlockedByAddedEvent: { id: "ID", createdAt: "DateTime", actor: "Actor", blockingIssue: "Issue" },
  BlockedByRemovedEvent: {
    id: "ID",
    createdAt: "DateTime",
    actor: "Actor",
    blockingIssue: "Issue",
  },
  BlockingAddedEvent: { id: "ID", createdAt: "DateTime", actor: "Actor", blockedIssue: "Issue" },
  BlockingRemovedEvent: { id: "ID", createdAt: "DateTime", actor: "Actor", blockedIssue: "Issue" },
};

/**
 * GitHub's interfaces and unions the fake serves, with the object types it serves of each
 * (GitHub has more: an `Actor` may also be an Organization or a Mannequin, and the timeline
 * has some thirty other kinds of item). Only `__typename` and inline fragments
 * (`... on LabeledEvent { … }`) may be selected on a union; an interface's own fields too.
 */
const GRAPHQL_ABSTRACT: Record<string, readonly string[]> = {
  Actor: ["User", "Bot"],
  IssueTimelineItems: [
    "LabeledEvent",
    "UnlabeledEvent",
    "RenamedTitleEvent",
    "ClosedEvent",
    "ReopenedEvent",
    "IssueComment",
    "BlockedByAddedEvent",
    "BlockedByRemovedEvent",
    "BlockingAddedEvent",
    "BlockingRemovedEvent",
  ],
};

/** GitHub's `IssueTimelineItemsItemType` enum (the dependency ones as the live schema has them). */
const TIMELINE_ITEM_TYPES = new Set(
  ("ADDED_TO_PROJECT_EVENT ASSIGNED_EVENT BLOCKED_BY_ADDED_EVENT BLOCKED_BY_REMOVED_EVENT " +
    "BLOCKING_ADDED_EVENT BLOCKING_REMOVED_EVENT CLOSED_EVENT COMMENT_DELETED_EVENT " +
    "CONNECTED_EVENT CONVERTED_NOTE_TO_ISSUE_EVENT CONVERTED_TO_DISCUSSION_EVENT " +
    "CROSS_REFERENCED_EVENT DEMILESTONED_EVENT DISCONNECTED_EVENT ISSUE_COMMENT LABELED_EVENT " +
    "LOCKED_EVENT MARKED_AS_DUPLICATE_EVENT MENTIONED_EVENT MILESTONED_EVENT " +
    "MOVED_COLUMNS_IN_PROJECT_EVENT PARENT_ISSUE_ADDED_EVENT PARENT_ISSUE_REMOVED_EVENT " +
    "PINNED_EVENT REFERENCED_EVENT REMOVED_FROM_PROJECT_EVENT RENAMED_TITLE_EVENT REOPENED_EVENT " +
    "SUBSCRIBED_EVENT SUB_ISSUE_ADDED_EVENT SUB_ISSUE_REMOVED_EVENT TRANSFERRED_EVENT " +
    "UNASSIGNED_EVENT UNLABELED_EVENT UNLOCKED_EVENT UNMARKED_AS_DUPLICATE_EVENT UNPINNED_EVENT " +
    "UNSUBSCRIBED_EVENT USER_BLOCKED_EVENT").split(" "),
);

/** The object types a type condition stands for: itself, or an abstract type's members. */
function possibleTypes(type: string): readonly string[] {
  return GRAPHQL_ABSTRACT[type] ?? [type];
}

/** Parses the selection of a `query` operation; `$variables` are taken from `variables`. */
function parseQuery(query: string, variables: Json): GraphqlField[] {
  const tokens = [...query.matchAll(/"(?:[^"\\]|\\.)*"|\.\.\.|-?\d+(?:\.\d+)?|\w+|[^\s,]/g)];
  let i = 0;
  const peek = () => tokens[i]?.[0];
  const fail = (what: string): never => {
    throw new GraphqlError({
      message: `Parse error on ${peek() ? JSON.stringify(peek()) : "end of query"}: ${what}`,
      locations: [location(query, tokens[i]?.index ?? query.length)],
    });
  };
  const name = (): string => /^\w+$/.test(peek() ?? "") ? tokens[i++][0] : fail("expected a name");
  const value = (): unknown => {
    const token = peek() ?? fail("expected a value");
    i++;
    if (token === "$") return variables[name()] ?? null;
    if (token === "[") {
      const list: unknown[] = [];
      while (peek() !== "]") list.push(value());
      i++;
      return list;
    }
    if (token === "{") {
      const object: Json = {};
      while (peek() !== "}") {
        const key = name();
        if (peek() !== ":") fail("expected :");
        i++;
        object[key] = value();
      }
      i++;
      return object;
    }
    if (token.startsWith('"') || /^-?\d/.test(token)) return JSON.parse(token);
    return token === "true" ? true : token === "false" ? false : token === "null" ? null : token;
  };
  const selection = (): GraphqlField[] => {
    if (peek() !== "{") fail("expected {");
    const fields: GraphqlField[] = [];
    for (i++; peek() !== "}"; fields.push(peek() === "..." ? fragment() : field())) {
      if (peek() === undefined) fail("expected }");
    }
    i++;
    return fields;
  };
  const fragment = (): GraphqlField => {
    const at = tokens[i++].index;
    if (peek() !== "on") throw new GraphqlError({ message: "FakeGitHub has no named fragments." });
    i++;
    const on = name();
    return { alias: "...", name: "...", args: {}, selection: selection(), at, on };
  };
  const field = (): GraphqlField => {
    const at = tokens[i]?.index ?? query.length;
    const alias = name();
    const result: GraphqlField = { alias, name: alias, args: {}, selection: null, at };
    if (peek() === ":") (i++, result.name = name());
    if (peek() === "(") {
      for (i++; peek() !== ")";) {
        const arg = name();
        if (peek() !== ":") fail("expected :");
        i++;
        result.args[arg] = value();
      }
      i++;
    }
    if (peek() === "{") result.selection = selection();
    return result;
  };
  if (peek() === "mutation" || peek() === "subscription") {
    throw new GraphqlError({ message: `FakeGitHub has no GraphQL ${peek()}s.` });
  }
  if (peek() === "query") {
    i++;
    if (peek() !== "(" && peek() !== "{") name();
    if (peek() === "(") { while (peek() !== ")") peek() === undefined ? fail("expected )") : i++; }
    if (peek() === ")") i++;
  }
  const fields = selection();
  if (i < tokens.length) fail("expected the end of the query");
  return fields;
}

/** Checks a selection against GRAPHQL_TYPES before running it, with GitHub's messages. */
function validate(fields: GraphqlField[], type: string, path: string[], query: string): void {
  for (const field of fields) {
    if (field.name === "__typename") continue;
    const here = [...path, field.on === undefined ? field.alias : `... on ${field.on}`];
    const reject = (code: string, message: string): never => {
      throw new GraphqlError({
        path: ["query", ...here],
        extensions: { code },
        locations: [location(query, field.at)],
        message,
      });
    };
    if (field.on !== undefined) {
      if (!(field.on in GRAPHQL_TYPES) && !(field.on in GRAPHQL_ABSTRACT)) {
        reject(
          "undefinedType",
          `No such type ${field.on}, so it can't be a fragment condition (or FakeGitHub lacks it)`,
        );
      }
      if (!possibleTypes(field.on).some((t) => possibleTypes(type).includes(t))) {
        reject(
          "fragmentSpreadTypeMismatch",
          `Fragment on ${field.on} can't be spread inside ${type}`,
        );
      }
      validate(field.selection!, field.on, here, query);
      continue;
    }
    if (!(type in GRAPHQL_TYPES)) {
      reject(
        "selectionMismatch",
        `Selections can't be made directly on unions (see selections on ${type})`,
      );
    }
    const spec = GRAPHQL_TYPES[type][field.name] ??
      reject(
        "undefinedField",
        `Field '${field.name}' doesn't exist on type '${type}' (or FakeGitHub lacks it)`,
      );
    const [, inner, argList = ""] = /^\[?(\w+)\]?(?:\((.*)\))?$/.exec(spec)!;
    const params = argList.split(", ").filter((param) => param !== "");
    for (const arg of Object.keys(field.args)) {
      if (params.includes(`${arg}?`)) {
        throw new GraphqlError({ message: `FakeGitHub lacks '${field.name}(${arg}:)'.` });
      }
      if (!params.includes(arg) && !params.includes(`${arg}!`)) {
        reject("argumentNotAccepted", `Field '${field.name}' doesn't accept argument '${arg}'`);
      }
    }
    const missing = params.filter((p) => p.endsWith("!") && field.args[p.slice(0, -1)] == null);
    if (missing.length > 0) {
      const names = missing.map((p) => p.slice(0, -1)).join(", ");
      reject(
        "missingRequiredArguments",
        `Field '${field.name}' is missing required arguments: ${names}`,
      );
    }
    const object = inner in GRAPHQL_TYPES || inner in GRAPHQL_ABSTRACT;
    if (object && !field.selection) {
      reject(
        "selectionMismatch",
        `Field must have selections (field '${field.name}' returns ${inner} but has no selections. Did you mean '${field.name} { ... }'?)`,
      );
    }
    if (!object && field.selection) {
      const selected = field.selection.map((f) => f.name).join(", ");
      reject(
        "selectionMismatch",
        `Selections can't be made on scalars (field '${field.name}' returns ${inner} but has selections [${selected}])`,
      );
    }
    if (field.selection) validate(field.selection, inner, here, query);
  }
}

/** Answers `fields` from `node`: exactly the selected fields, under their aliases. */
function execute(fields: GraphqlField[], node: Json, path: GraphqlPath, run: GraphqlRun): Json {
  const data: Json = {};
  for (const field of fields) {
    if (field.on !== undefined) {
      // An inline fragment answers only for a node of its type (or of one of its members).
      if (possibleTypes(field.on).includes(String(node.__typename))) {
        mergeInto(data, execute(field.selection!, node, path, run));
      }
      continue;
    }
    const here = [...path, field.alias];
    const raw = node[field.name];
    const value = typeof raw === "function" ? (raw as GraphqlResolver)(field, here, run) : raw;
    data[field.alias] = complete(value, field.selection, here, run);
  }
  return data;
}

/** Merges a fragment's answer into the fields already answered, objects field by field. */
function mergeInto(data: Json, more: Json): void {
  for (const [key, value] of Object.entries(more)) {
    const had = data[key];
    if (isObject(had) && isObject(value)) mergeInto(had, value);
    else data[key] = value;
  }
}

function complete(
  value: unknown,
  selection: GraphqlField[] | null,
  path: GraphqlPath,
  run: GraphqlRun,
): unknown {
  if (value === undefined || value === null || !selection) return value ?? null;
  if (!Array.isArray(value)) return execute(selection, value as Json, path, run);
  return value.map((item, i) => complete(item, selection, [...path, i], run));
}

/** Records a NOT_FOUND error beside the data, as GitHub does; the field answers null. */
function graphqlNotFound(
  run: GraphqlRun,
  field: GraphqlField,
  path: GraphqlPath,
  message: string,
): null {
  run.errors.push({ type: "NOT_FOUND", path, locations: [location(run.query, field.at)], message });
  return null;
}

/**
 * An account as GraphQL's `Actor` gives it: `User` or `Bot`; a bot's login has no `[bot]`
 * (REST's `renovate[bot]` is GraphQL's `renovate`).
 */
function actorNode(account: Account, origin: string): Json {
  const login = account.app ? account.app.slug : account.login;
  const resourcePath = account.app ? `/apps/${login}` : `/${login}`;
  return {
    __typename: account.type,
    id: nodeId(account.type, account.id),
    databaseId: account.id,
    login,
    name: null,
    url: `${origin}${resourcePath}`,
    resourcePath,
    avatarUrl: () =>
      `https://avatars.githubusercontent.com/${
        account.app ? `in/${account.app.id}` : `u/${account.id}`
      }?v=4`,
  };
}

/** The `linkedBranches(first:)` connection of an issue, within GitHub's limit of 100. */
function linkedBranches(issue: Issue, field: GraphqlField, path: GraphqlPath): Json {
  const first = field.args.first;
  if (first === undefined) {
    throw new GraphqlError({
      type: "MISSING_PAGINATION_BOUNDARIES",
      path,
      message:
        "You must provide a `first` or `last` value to properly paginate the `linkedBranches` connection.",
    });
  }
  if (!Number.isInteger(first) || (first as number) > 100) {
    throw new GraphqlError({
      type: "EXCESSIVE_PAGINATION",
      path,
      message:
        `Requesting ${first} records on the \`linkedBranches\` connection exceeds the \`first\` limit of 100 records.`,
    });
  }
  const nodes = issue.linkedBranches.slice(0, first as number).map((name) => ({
    __typename: "LinkedBranch",
    id: btoa(`LinkedBranch:${issue.id}:${name}`),
    ref: { __typename: "Ref", id: btoa(`Ref:${name}`), name, prefix: "refs/heads/" },
  }));
  return { __typename: "LinkedBranchConnection", totalCount: issue.linkedBranches.length, nodes };
}

/** The `node_id` type of each kind of issue event. */
const EVENT_NODE_TYPES: Record<IssueEventKind, string> = {
  labeled: "LabeledEvent",
  unlabeled: "UnlabeledEvent",
  closed: "ClosedEvent",
  reopened: "ReopenedEvent",
  renamed: "RenamedTitleEvent",
  blocked_by_added: "BlockedByAddedEvent",
  blocked_by_removed: "BlockedByRemovedEvent",
  blocking_added: "BlockingAddedEvent",
  blocking_removed: "BlockingRemovedEvent",
};

/** The `*_url` fields of `simple-repository`: the name before `_url`, then the path. */
const REPO_URL_TEMPLATES = [
  "archive /{archive_format}{/ref}",
  "assignees /assignees{/user}",
  "blobs /git/blobs{/sha}",
  "branches /branches{/branch}",
  "collaborators /collaborators{/collaborator}",
  "comments /comments{/number}",
  "commits /commits{/sha}",
  "compare /compare/{base}...{head}",
  "contents /contents/{+path}",
  "contributors /contributors",
  "deployments /deployments",
  "downloads /downloads",
  "events /events",
  "forks /forks",
  "git_commits /git/commits{/sha}",
  "git_refs /git/refs{/sha}",
  "git_tags /git/tags{/sha}",
  "hooks /hooks",
  "issue_comment /issues/comments{/number}",
  "issue_events /issues/events{/number}",
  "issues /issues{/number}",
  "keys /keys{/key_id}",
  "labels /labels{/name}",
  "languages /languages",
  "merges /merges",
  "milestones /milestones{/number}",
  "notifications /notifications{?since,all,participating}",
  "pulls /pulls{/number}",
  "releases /releases{/id}",
  "stargazers /stargazers",
  "statuses /statuses/{sha}",
  "subscribers /subscribers",
  "subscription /subscription",
  "tags /tags",
  "teams /teams",
  "trees /git/trees{/sha}",
];

/**
 * An issue's `issue_dependencies_summary`: `blocked_by` and `blocking` count the linked issues
 * still open, the totals count them all (GraphQL's `IssueDependenciesSummary` says so; seen live
 * too). A deleted issue is no longer linked; one hidden from the token still counts
 * (UNCONFIRMED: failing closed is the safe guess).
 */
function dependencySummary(issue: Issue): Json {
  const linked = (refs: IssueRef[]) => refs.filter((ref) => ref.issue.gone !== 410);
  const open = (refs: IssueRef[]) => linked(refs).filter((ref) => ref.issue.state === "open");
  return {
    blocked_by: open(issue.blockedBy).length,
    blocking: open(issue.blocking).length,
    total_blocked_by: linked(issue.blockedBy).length,
    total_blocking: linked(issue.blocking).length,
  };
}

/**
 * The `first`/`last` (one of them required, at most 100) and `skip` of a connection, applied to
 * `items`, with GitHub's errors for a missing or excessive bound.
 */
function paginate<T>(items: T[], field: GraphqlField, path: GraphqlPath, connection: string): T[] {
  const { first, last, skip } = field.args;
  if (first == null && last == null) {
    throw new GraphqlError({
      type: "MISSING_PAGINATION_BOUNDARIES",
      path,
      message:
        `You must provide a \`first\` or \`last\` value to properly paginate the \`${connection}\` connection.`,
    });
  }
  for (const [bound, value] of [["first", first], ["last", last]] as const) {
    if (value != null && (!Number.isInteger(value) || (value as number) > 100)) {
      throw new GraphqlError({
        type: "EXCESSIVE_PAGINATION",
        path,
        message:
          `Requesting ${value} records on the \`${connection}\` connection exceeds the \`${bound}\` limit of 100 records.`,
      });
    }
  }
  let out = items.slice(Number(skip ?? 0));
  if (first != null) out = out.slice(0, first as number);
  if (last != null) out = out.slice(Math.max(0, out.length - (last as number)));
  return out;
}

/** Each kind of issue event as GraphQL's timeline names it: its `itemTypes` value and type. */
const TIMELINE_KINDS: Record<IssueEventKind | "comment", [string, string]> = {
  labeled: ["LABELED_EVENT", "LabeledEvent"],
  unlabeled: ["UNLABELED_EVENT", "UnlabeledEvent"],
  renamed: ["RENAMED_TITLE_EVENT", "RenamedTitleEvent"],
  closed: ["CLOSED_EVENT", "ClosedEvent"],
  reopened: ["REOPENED_EVENT", "ReopenedEvent"],
  comment: ["ISSUE_COMMENT", "IssueComment"],
  blocked_by_added: ["BLOCKED_BY_ADDED_EVENT", "BlockedByAddedEvent"],
  blocked_by_removed: ["BLOCKED_BY_REMOVED_EVENT", "BlockedByRemovedEvent"],
  blocking_added: ["BLOCKING_ADDED_EVENT", "BlockingAddedEvent"],
  blocking_removed: ["BLOCKING_REMOVED_EVENT", "BlockingRemovedEvent"],
};

/** A fake GitHub REST + GraphQL API for one token, with rate limits and injectable faults. */
export class FakeGitHub extends FakeService {
  readonly token: string;
  /** Settable by tests; when <= 0 every costed request is refused as over the primary limit. */
  rateLimitRemaining: number;
  /**
   * requests: all; notModified: 304s; costed: every other outcome, errors, faults and drops
   * included; mutations: REST POST/PUT/PATCH/DELETE; graphql: GraphQL POSTs.
   */
  readonly counters = { requests: 0, notModified: 0, costed: 0, mutations: 0, graphql: 0 };
  /**
   * The fake's clock (epoch ms): what it stamps on issues, comments and events. Tests move it
   * to let hours pass between two things people do.
   */
  now: () => number = () => Date.now();
  #prefix: "" | "/api/v3";
  #limit: number;
  #resetAt = Math.floor(Date.now() / 1000) + 3600;
  #repos = new Map<string, Repo>();
  #reposById = new Map<number, Repo>();
  /** Renamed repositories by their old names (lower-cased "owner/name"). */
  #renamed = new Map<string, Repo>();
  #nextRepoId = 700_000_001;
  #nextIssueId = 2_000_000_001;
  #nextLabelId = 5_000_000_001;
  #nextCommentId = 9_000_000_001;
  #nextEventId = 12_000_000_001;
  #nextAccountId = 1001;
  #nextAppId = 300_001;
  /** Every account the fake knows, by lower-cased REST login; the token's is octocat (id 1). */
  #accounts = new Map<string, Account>([[LOGIN, { id: 1, login: LOGIN, type: "User" }]]);
  #apps = new Map<string, App>();
  /** Custom repository roles (an organisation defines them) by lower-cased name. */
  #customRoles = new Map<string, { name: string; base: Exclude<BaseRole, "admin"> }>();

  private constructor(options: Parameters<typeof FakeGitHub.start>[0] = {}) {
    super(options.latencyMs ?? 0, options.prefix ?? "");
    this.token = options.token ?? DEFAULT_GITHUB_TOKEN;
    this.#prefix = options.prefix ?? "";
    this.#limit = options.rateLimit ?? 5000;
    this.rateLimitRemaining = this.#limit;
  }

  /** Starts a fake on a free port of 127.0.0.1. */
  static start(options?: {
    token?: string;
    prefix?: "" | "/api/v3";
    latencyMs?: number;
    rateLimit?: number;
  }): Promise<FakeGitHub> {
    return Promise.resolve(new FakeGitHub(options));
  }

  /** Zeroes the counters and forgets the recorded requests. */
  resetCounters(): void {
    for (const key of Object.keys(this.counters) as Array<keyof FakeGitHub["counters"]>) {
      this.counters[key] = 0;
    }
    this.requests.length = 0;
  }

  /** Adds a repository ("owner/name") with its own numeric id, optionally with issues. */
  addRepo(fullName: string, issues: FakeIssueInit[] = []): void {
    if (this.#repos.has(fullName.toLowerCase())) throw new Error(`repo ${fullName} exists`);
    const repo: Repo = {
      id: this.#nextRepoId++,
      fullName,
      issues: new Map(),
      labels: new Map(),
      role: "admin",
      private: false,
      collaborators: new Map(),
      rolesChangedAt: wholeSeconds(this.now()),
    };
    this.#repos.set(fullName.toLowerCase(), repo);
    this.#reposById.set(repo.id, repo);
    for (const init of issues) this.addIssue(fullName, init);
  }

  /**
   * Renames a repository, as GitHub does: its old name answers every request with a redirect
   * to `/repositories/ID/…`, `301` for reads and `307` (method and body kept) for writes.
   */
  renameRepo(fullName: string, newName: string): void {
    const repo = this.#repo(fullName);
    this.#repos.delete(fullName.toLowerCase());
    this.#renamed.set(fullName.toLowerCase(), repo);
    repo.fullName = newName;
    this.#repos.set(newName.toLowerCase(), repo);
  }

  /** Sets the token's role in a repository (default admin): its `permissions` and what it may write. */
  setRole(fullName: string, role: RepoRole): void {
    this.#repo(fullName).role = role;
  }

  /** Adds a repository label as a person would in the web UI. */
  addLabel(fullName: string, label: { name: string; color?: string; description?: string }): void {
    const repo = this.#repo(fullName);
    if (repo.labels.has(label.name.toLowerCase())) throw new Error(`label ${label.name} exists`);
    repo.labels.set(label.name.toLowerCase(), {
      id: this.#nextLabelId++,
      name: label.name,
      color: label.color ?? "ededed",
      description: label.description ?? null,
    });
  }

  /** The repository's labels as they are now. */
  listLabels(fullName: string): Array<{ name: string; color: string; description: string | null }> {
    return [...this.#repo(fullName).labels.values()].map(({ name, color, description }) => ({
      name,
      color,
      description,
    }));
  }

  /** Adds an issue, or a pull request with `pullRequest: true`. */
  addIssue(fullName: string, init: FakeIssueInit): void {
    const repo = this.#repo(fullName);
    if (repo.issues.has(init.number)) throw new Error(`${fullName}#${init.number} exists`);
    const createdAt = init.createdAt
      ? Date.parse(init.createdAt)
      : wholeSeconds(this.now()) - (1_000_000 - init.number) * 1000;
    const state = init.state ?? "open";
    const updatedAt = init.updatedAt ? Date.parse(init.updatedAt) : createdAt;
    repo.issues.set(init.number, {
      id: this.#nextIssueId++,
      number: init.number,
      title: init.title ?? `Issue ${init.number}`,
      body: init.body ?? null,
      state,
      stateReason: state === "closed" ? "completed" : null,
      labels: [],
      pullRequest: init.pullRequest ?? false,
      linkedBranches: [...(init.linkedBranches ?? [])],
      comments: [],
      events: [],
      author: this.#account(init.author ?? LOGIN),
      edits: [],
      blockedBy: [],
      blocking: [],
      createdAt,
      updatedAt,
      closedAt: state === "closed" ? updatedAt : null,
    });
    const issue = repo.issues.get(init.number)!;
    this.#addLabels(repo, issue, init.labels ?? []);
    this.#checkLimit(issue);
    this.#labelEvents(
      repo,
      issue,
      [],
      { actor: issue.author, via: issue.author.app ?? null },
      createdAt,
    );
  }

  /** A snapshot of an issue as it is now. */
  getIssue(fullName: string, number: number): FakeIssueView {
    const repo = this.#repo(fullName);
    const issue = this.#issue(repo, number);
    return {
      number,
      title: issue.title,
      state: issue.state,
      labels: issue.labels.map((key) => repo.labels.get(key)!.name),
      pullRequest: issue.pullRequest,
      linkedBranches: [...issue.linkedBranches],
      createdAt: secondsIso(issue.createdAt),
      updatedAt: secondsIso(issue.updatedAt),
    };
  }

  /**
   * Replaces an issue's labels as a person would in the web UI (the token's account unless
   * `by` says who); bumps updated_at.
   */
  setLabels(fullName: string, number: number, labels: string[], options: ActedBy = {}): void {
    const repo = this.#repo(fullName);
    const issue = this.#issue(repo, number);
    const before = issue.labels;
    issue.labels = [];
    this.#addLabels(repo, issue, labels);
    this.#checkLimit(issue);
    issue.updatedAt = this.now();
    this.#labelEvents(repo, issue, before, this.#doer(options));
  }

  /**
   * Closes an issue (as completed unless `reason` says otherwise; by the token's account unless
   * `by` says who); bumps its updated_at, and no other issue's: not those it blocks.
   */
  closeIssue(
    fullName: string,
    number: number,
    options: ActedBy & { reason?: "completed" | "not_planned" } = {},
  ): void {
    const issue = this.#issue(this.#repo(fullName), number);
    issue.state = "closed";
    issue.stateReason = options.reason ?? "completed";
    issue.updatedAt = issue.closedAt = this.now();
    issue.events.push({
      id: this.#nextEventId++,
      event: "closed",
      stateReason: issue.stateReason,
      createdAt: issue.updatedAt,
      ...this.#doer(options),
    });
  }

  /** Deletes an issue: from now on GitHub answers `410 Gone` for it and lists it nowhere. */
  deleteIssue(fullName: string, number: number): void {
    this.#issue(this.#repo(fullName), number).gone = 410;
  }

  /**
   * Transfers an issue to repository `to`, as GitHub's "Transfer issue" does when the token can
   * see both: it becomes the next number there, with its labels; the old repository lists it
   * no more, GraphQL does not find it there, and every request to its old address, writes
   * too, answers `301 Moved Permanently` to the new one (`writeStatus` for writes). Returns the
   * new number.
   */
  transferIssue(
    fullName: string,
    number: number,
    to: string,
    options: { writeStatus?: 301 | 307 } = {},
  ): number {
    const from = this.#repo(fullName);
    const issue = this.#issue(from, number);
    const target = this.#repo(to);
    const moved = Math.max(0, ...target.issues.keys()) + 1;
    this.addIssue(to, {
      number: moved,
      title: issue.title,
      body: issue.body ?? undefined,
      author: issue.author.login,
      labels: issue.labels.map((key) => from.labels.get(key)!.name),
    });
    target.issues.get(moved)!.updatedAt = this.now();
    issue.movedTo = { repo: target, number: moved, writeStatus: options.writeStatus ?? 301 };
    return moved;
  }

  /**
   * Makes an issue invisible to the token, as a transfer to a repository the token cannot see
   * does: `404 Not Found` for it, and no listing shows it.
   */
  hideIssue(fullName: string, number: number): void {
    this.#issue(this.#repo(fullName), number).gone = 404;
  }

  /** The bodies of an issue's comments, oldest first. */
  comments(fullName: string, number: number): string[] {
    return this.#issue(this.#repo(fullName), number).comments.map((comment) => comment.body);
  }

  /** Adds a comment as a person would; bumps updated_at. */
  addComment(fullName: string, number: number, body: string): void {
    const issue = this.#issue(this.#repo(fullName), number);
    const now = this.now();
    issue.comments.push({ id: this.#nextCommentId++, body, createdAt: now, updatedAt: now });
    issue.updatedAt = now;
  }

  /** Sets the branches GraphQL reports in `Issue.linkedBranches`. */
  setLinkedBranches(fullName: string, number: number, branches: string[]): void {
    this.#issue(this.#repo(fullName), number).linkedBranches = [...branches];
  }

  /** Adds a person's GitHub account: known to GitHub, with no role in any repository. */
  addUser(login: string): void {
    if (this.#accounts.has(login.toLowerCase())) throw new Error(`account ${login} exists`);
    this.#accounts.set(login.toLowerCase(), { id: this.#nextAccountId++, login, type: "User" });
  }

  /** Adds a GitHub App and its bot account; returns the bot's login, `slug[bot]`. */
  addApp(slug: string, options: { name?: string } = {}): string {
    if (this.#apps.has(slug.toLowerCase())) throw new Error(`app ${slug} exists`);
    const app = {
      id: this.#nextAppId++,
      slug,
      name: options.name ?? slug,
      createdAt: wholeSeconds(this.now()),
    };
    this.#apps.set(slug.toLowerCase(), app);
    const login = `${slug}[bot]`;
    this.#accounts.set(login.toLowerCase(), {
      id: 41_000_000 + app.id,
      login,
      type: "Bot",
      app,
    });
    return login;
  }

  /**
   * Defines a custom repository role (as an organisation does) on top of a base role: the
   * permission endpoint names it in `role_name` and shows its base in `permission`.
   */
  addCustomRole(name: string, base: Exclude<BaseRole, "admin">): void {
    const key = name.toLowerCase();
    if (BASE_ROLES.includes(key as BaseRole) || this.#customRoles.has(key)) {
      throw new Error(`role ${name} exists`);
    }
    this.#customRoles.set(key, { name, base });
  }

  /**
   * Gives `login` (added as a person if unknown) a role in a repository: a base role or a
   * custom one; null takes every role away. The token's own role is `setRole()`'s.
   */
  setCollaborator(fullName: string, login: string, role: BaseRole | string | null): void {
    const repo = this.#repo(fullName);
    const account = this.#account(login);
    if (account.login === LOGIN) throw new Error("the token's role is setRole()'s");
    if (account.type === "Bot") throw new Error("a GitHub App's bot is never a collaborator");
    if (role !== null && !this.#roleBase(role)) throw new Error(`unknown role ${role}`);
    if (role === null) repo.collaborators.delete(account.login.toLowerCase());
    else repo.collaborators.set(account.login.toLowerCase(), role);
    repo.rolesChangedAt = wholeSeconds(this.now());
  }

  /** Makes a repository private or public (default public). */
  setPrivate(fullName: string, isPrivate: boolean): void {
    const repo = this.#repo(fullName);
    repo.private = isPrivate;
    repo.rolesChangedAt = wholeSeconds(this.now());
  }

  /**
   * Puts a label on an issue as `by` would in the web UI (a `labeled` event naming them);
   * bumps updated_at. Adding a label it already has does nothing, as on GitHub.
   */
  label(fullName: string, number: number, name: string, options: ActedBy = {}): void {
    const repo = this.#repo(fullName);
    const issue = this.#issue(repo, number);
    if (issue.labels.includes(name.toLowerCase())) return;
    const before = [...issue.labels];
    this.#addLabels(repo, issue, [name]);
    this.#checkLimit(issue);
    issue.updatedAt = this.now();
    this.#labelEvents(repo, issue, before, this.#doer(options));
  }

  /** Takes a label off an issue as `by` would (an `unlabeled` event); bumps updated_at. */
  unlabel(fullName: string, number: number, name: string, options: ActedBy = {}): void {
    const repo = this.#repo(fullName);
    const issue = this.#issue(repo, number);
    const key = name.toLowerCase();
    if (!issue.labels.includes(key)) throw new Error(`${fullName}#${number} has no label ${name}`);
    const before = issue.labels;
    issue.labels = issue.labels.filter((k) => k !== key);
    issue.updatedAt = this.now();
    this.#labelEvents(repo, issue, before, this.#doer(options));
  }

  /**
   * Edits an issue's title and/or body as `by` would; bumps updated_at. A new title is a
   * `renamed` event (REST and GraphQL); a new body is recorded only where GitHub records it,
   * in GraphQL's `lastEditedAt`, `editor` and `userContentEdits`.
   */
  editIssue(
    fullName: string,
    number: number,
    edit: ActedBy & { title?: string; body?: string | null },
  ): void {
    const issue = this.#issue(this.#repo(fullName), number);
    const doer = this.#doer(edit);
    const now = this.now();
    if (edit.title !== undefined && edit.title !== issue.title) {
      const rename = { from: issue.title, to: edit.title };
      issue.events.push({
        id: this.#nextEventId++,
        event: "renamed",
        rename,
        createdAt: now,
        ...doer,
      });
      issue.title = edit.title;
    }
    if (edit.body !== undefined && edit.body !== issue.body) {
      if (issue.edits.length === 0) {
        issue.edits.push({ editedAt: issue.createdAt, editor: issue.author, body: issue.body });
      }
      issue.edits.unshift({ editedAt: now, editor: doer.actor, body: edit.body });
      issue.body = edit.body;
    }
    issue.updatedAt = now;
  }

  /** Reopens a closed issue (by the token's account unless `by` says who); bumps updated_at. */
  reopenIssue(fullName: string, number: number, options: ActedBy = {}): void {
    const issue = this.#issue(this.#repo(fullName), number);
    if (issue.state !== "closed") throw new Error(`${fullName}#${number} is not closed`);
    issue.state = "open";
    issue.stateReason = "reopened";
    issue.closedAt = null;
    issue.updatedAt = this.now();
    issue.events.push({
      id: this.#nextEventId++,
      event: "reopened",
      createdAt: issue.updatedAt,
      ...this.#doer(options),
    });
  }

  /**
   * Records that `blocker` (any repository of the fake) blocks an issue, as "Mark as blocked
   * by" does: `blocked_by_added` on the issue and `blocking_added` on the blocker. As seen
   * live, neither issue's updated_at moves: only the issue's JSON changes (its summary).
   */
  addBlocker(fullName: string, number: number, blocker: FakeIssueRef, options: ActedBy = {}) {
    const blocked = this.#ref(fullName, number);
    const by = this.#ref(blocker.repo, blocker.number);
    if (blocked.issue === by.issue) throw new Error("an issue cannot block itself");
    if (blocked.issue.blockedBy.some((ref) => ref.issue === by.issue)) {
      throw new Error(`${blocker.repo}#${blocker.number} already blocks ${fullName}#${number}`);
    }
    if (blocked.issue.blockedBy.length >= DEPENDENCY_LIMIT) {
      throw new Error(`GitHub allows at most ${DEPENDENCY_LIMIT} blockers on an issue`);
    }
    blocked.issue.blockedBy.push(by);
    by.issue.blocking.push(blocked);
    this.#dependencyEvents(blocked, by, "added", this.#doer(options));
  }

  /** Removes a blocker: `…_removed` events, and again no updated_at moves. */
  removeBlocker(fullName: string, number: number, blocker: FakeIssueRef, options: ActedBy = {}) {
    const blocked = this.#ref(fullName, number);
    const by = this.#ref(blocker.repo, blocker.number);
    if (!blocked.issue.blockedBy.some((ref) => ref.issue === by.issue)) {
      throw new Error(`${blocker.repo}#${blocker.number} does not block ${fullName}#${number}`);
    }
    blocked.issue.blockedBy = blocked.issue.blockedBy.filter((ref) => ref.issue !== by.issue);
    by.issue.blocking = by.issue.blocking.filter((ref) => ref.issue !== blocked.issue);
    this.#dependencyEvents(blocked, by, "removed", this.#doer(options));
  }

  /** The `…/events` entries a dependency change adds to both issues, at the same moment. */
  #dependencyEvents(blocked: IssueRef, blocker: IssueRef, change: "added" | "removed", doer: Doer) {
    const createdAt = this.now();
    blocked.issue.events.push({
      id: this.#nextEventId++,
      event: `blocked_by_${change}`,
      other: blocker,
      createdAt,
      ...doer,
    });
    blocker.issue.events.push({
      id: this.#nextEventId++,
      event: `blocking_${change}`,
      other: blocked,
      createdAt,
      ...doer,
    });
  }

  #ref(fullName: string, number: number): IssueRef {
    const repo = this.#repo(fullName);
    return { repo, issue: this.#issue(repo, number) };
  }

  /** The account of `login`, added (a person, or `slug[bot]` with its app) when unknown. */
  #account(login: string): Account {
    const known = this.#accounts.get(login.toLowerCase());
    if (known) return known;
    const bot = /^(.+)\[bot\]$/i.exec(login);
    if (bot) this.addApp(bot[1]);
    else this.addUser(login);
    return this.#accounts.get(login.toLowerCase())!;
  }

  #doer(options: ActedBy): Doer {
    const actor = this.#account(options.by ?? LOGIN);
    if (options.via === undefined) return { actor, via: actor.app ?? null };
    if (!this.#apps.has(options.via.toLowerCase())) this.addApp(options.via);
    return { actor, via: this.#apps.get(options.via.toLowerCase())! };
  }

  /** The base role of a role name (a base role is its own), or undefined if there is none. */
  #roleBase(role: string): BaseRole | undefined {
    const key = role.toLowerCase();
    return BASE_ROLES.includes(key as BaseRole)
      ? key as BaseRole
      : this.#customRoles.get(key)?.base;
  }

  #repo(fullName: string): Repo {
    const repo = this.#repos.get(fullName.toLowerCase());
    if (!repo) throw new Error(`unknown repo ${fullName}`);
    return repo;
  }

  #issue(repo: Repo, number: number): Issue {
    const issue = repo.issues.get(number);
    if (!issue) throw new Error(`unknown issue ${repo.fullName}#${number}`);
    return issue;
  }

  #checkLimit(issue: Issue): void {
    if (issue.labels.length > LABEL_LIMIT) {
      throw new Error(`GitHub allows at most ${LABEL_LIMIT} labels on an issue`);
    }
  }

  /** Adds labels to an issue, creating unknown repository labels as GitHub does. */
  #addLabels(repo: Repo, issue: Issue, names: string[]): void {
    for (const name of names) {
      const key = name.toLowerCase();
      if (!repo.labels.has(key)) {
        repo.labels.set(key, { id: this.#nextLabelId++, name, description: null, color: "ededed" });
      }
      if (!issue.labels.includes(key)) issue.labels.push(key);
    }
  }

  /**
   * Records what changed in an issue's labels since `before` (label keys) as GitHub does: an
   * `unlabeled` event per label taken off, then a `labeled` event per label put on.
   */
  #labelEvents(
    repo: Repo,
    issue: Issue,
    before: string[],
    doer = this.#doer({}),
    at = this.now(),
  ): void {
    const event = (kind: "labeled" | "unlabeled", key: string): IssueEvent => {
      const { name, color } = repo.labels.get(key)!;
      return {
        id: this.#nextEventId++,
        event: kind,
        label: { name, color },
        createdAt: at,
        ...doer,
      };
    };
    issue.events.push(
      ...before.filter((key) => !issue.labels.includes(key)).map((key) => event("unlabeled", key)),
      ...issue.labels.filter((key) => !before.includes(key)).map((key) => event("labeled", key)),
    );
  }

  protected route(pathname: string): Route {
    if (pathname === (this.#prefix ? "/api/graphql" : "/graphql")) {
      return { path: "/graphql", segments: [], graphql: true };
    }
    if (!pathname.startsWith(this.#prefix + "/")) {
      return { path: decodeSegments(pathname).map((s) => "/" + s).join(""), segments: null };
    }
    const segments = decodeSegments(pathname.slice(this.#prefix.length));
    return { path: "/" + segments.join("/"), segments };
  }

  protected override arrive(ctx: Ctx): void {
    this.counters.requests++;
    if (ctx.route.graphql && ctx.request.method === "POST") this.counters.graphql++;
    if (!ctx.route.graphql && ["POST", "PUT", "PATCH", "DELETE"].includes(ctx.request.method)) {
      this.counters.mutations++;
    }
  }

  protected finish(res: Response | null, ctx: Ctx): void {
    if (res?.status === 304) {
      this.counters.notModified++; // documented: a 304 does not count against the rate limit
    } else {
      this.counters.costed++;
      if (ctx.charge && this.rateLimitRemaining > 0) this.rateLimitRemaining--;
    }
    if (!res) return;
    const nowSeconds = Math.floor(Date.now() / 1000);
    while (this.#resetAt <= nowSeconds) this.#resetAt += 3600;
    const remaining = Math.max(0, this.rateLimitRemaining);
    const headers = res.headers;
    headers.set("x-ratelimit-limit", String(this.#limit));
    headers.set("x-ratelimit-remaining", String(remaining));
    headers.set("x-ratelimit-used", String(Math.max(0, this.#limit - remaining)));
    headers.set("x-ratelimit-reset", String(this.#resetAt));
    headers.set("x-ratelimit-resource", ctx.route.graphql ? "graphql" : "core");
    headers.set("x-github-media-type", "github.v3; format=json");
    headers.set(
      "x-github-request-id",
      [4, 5, 7, 7, 8].map((n) => randomHex(4).slice(0, n).toUpperCase()).join(":"),
    );
  }

  protected faultResponse(fault: Fault): Response {
    const status = fault.status!;
    if (status === 204 || status === 304) return new Response(null, { status });
    if (fault.body !== undefined) {
      return new Response(fault.body, { status, headers: { "content-type": JSON_TYPE } });
    }
    if (status === 502) {
      return new Response("<html>Bad Gateway</html>", {
        status,
        headers: { "content-type": "text/html" },
      });
    }
    if (status === 500) return json(500, { message: "Server Error" });
    if (status === 401) return ghError(401, "Bad credentials");
    if ((status === 403 || status === 429) && fault.headers?.["x-ratelimit-remaining"] === "0") {
      return json(status, { message: RATE_LIMITED, documentation_url: RATE_DOCS }); // primary
    }
    if (status === 403 || status === 429) {
      return json(status, {
        message: SECONDARY_LIMITED,
        documentation_url: `${RATE_DOCS}#about-secondary-rate-limits`,
      });
    }
    if (status === 422) return ghError(422, "Validation Failed", { errors: [] });
    return ghError(status, REASONS[status] ?? "Error");
  }

  protected handle(ctx: Ctx): Response {
    const { request, route } = ctx;
    if (!request.headers.get("user-agent")) {
      ctx.charge = false;
      return new Response(NO_USER_AGENT, {
        status: 403,
        headers: { "content-type": "text/plain; charset=utf-8" },
      });
    }
    const token = credential(request.headers.get("authorization"));
    if (route.segments?.join("/") === "rate_limit" && request.method === "GET") {
      // Documented: it does not count against the primary rate limit, and answers when it is spent.
      ctx.charge = false;
      if (token !== null && token !== this.token) return ghError(401, "Bad credentials");
      return this.#rateLimit(token === null ? { limit: 60, remaining: 60 } : undefined);
    }
    if (token !== this.token) {
      ctx.charge = false; // counted against an IP or another token, not this one
      if (token !== null) return ghError(401, "Bad credentials");
      return route.graphql
        ? json(401, {
          message: "This endpoint requires you to be authenticated.",
          documentation_url: GRAPHQL_DOCS,
        })
        : ghError(401, "Requires authentication");
    }
    if (this.rateLimitRemaining <= 0) {
      // GraphQL reports an exhausted primary limit with HTTP 200 and an error (documented).
      return route.graphql
        ? json(200, { errors: [{ type: "RATE_LIMITED", message: RATE_LIMITED }] })
        : json(403, { message: RATE_LIMITED, documentation_url: RATE_DOCS });
    }
    if (route.graphql) return request.method === "POST" ? this.#graphql(ctx) : notFound();
    const segments = route.segments ?? [];
    let repo: Repo | undefined;
    let rest: string[];
    if (segments[0] === "repos" && segments.length >= 3) {
      const name = `${segments[1]}/${segments[2]}`.toLowerCase();
      repo = this.#repos.get(name);
      rest = segments.slice(3);
      const renamed = repo ? undefined : this.#renamed.get(name);
      if (renamed) {
        const tail = rest.map((segment) => "/" + encodeURIComponent(segment)).join("");
        const location = `${ctx.url.origin}${this.#prefix}/repositories/${renamed.id}${tail}` +
          ctx.url.search;
        const read = request.method === "GET" || request.method === "HEAD";
        return redirect(read ? 301 : 307, location);
      }
    } else if (segments[0] === "repositories" && /^\d+$/.test(segments[1] ?? "")) {
      repo = this.#reposById.get(Number(segments[1]));
      rest = segments.slice(2);
    } else {
      return notFound();
    }
    return repo ? this.#repoRoute(ctx, repo, rest) : notFound();
  }

  /** The `GET /rate_limit` answer; `anonymous` is what an unauthenticated caller's IP has. */
  #rateLimit(anonymous?: { limit: number; remaining: number }): Response {
    const limit = anonymous?.limit ?? this.#limit;
    const remaining = anonymous?.remaining ?? Math.max(0, this.rateLimitRemaining);
    const core = { limit, used: limit - remaining, remaining, reset: this.#resetAt };
    return json(200, {
      resources: {
        core,
        graphql: { ...core, resource: "graphql" },
        search: { limit: 30, used: 0, remaining: 30, reset: this.#resetAt },
      },
      rate: core,
    });
  }

  #may(repo: Repo, role: RepoRole): boolean {
    return ROLES.indexOf(repo.role) >= ROLES.indexOf(role);
  }

  #repoJson(ctx: Ctx, repo: Repo): Json {
    const api = `${ctx.url.origin}${this.#prefix}/repos/${repo.fullName}`;
    const [owner, name] = repo.fullName.split("/");
    return {
      id: repo.id,
      node_id: nodeId("Repository", repo.id),
      name,
      full_name: repo.fullName,
      private: repo.private,
      owner: userJson(ctx.url.origin + this.#prefix, ctx.url.origin, owner),
      html_url: `${ctx.url.origin}/${repo.fullName}`,
      url: api,
      labels_url: `${api}/labels{/name}`,
      issues_url: `${api}/issues{/number}`,
      default_branch: "main",
      has_issues: true,
      archived: false,
      disabled: false,
      open_issues_count: [...repo.issues.values()].filter((i) => i.state === "open").length,
      // Present when the caller is authenticated: the account's role, each including the weaker.
      permissions: Object.fromEntries(ROLES.map((role) => [role, this.#may(repo, role)])),
    };
  }

  #repoRoute(ctx: Ctx, repo: Repo, rest: string[]): Response {
    const method = ctx.request.method;
    const api = ctx.url.origin + this.#prefix;
    if (rest.length === 0 && method === "GET") {
      return this.#conditional(ctx, this.#repoJson(ctx, repo), Date.now());
    }
    if (rest[0] === "labels") return this.#labelsRoute(ctx, repo, rest.slice(1));
    if (rest[0] === "collaborators" && rest.length === 3 && rest[2] === "permission") {
      return method === "GET" ? this.#permission(ctx, repo, rest[1]) : notFound();
    }
    if (rest.length === 1 && rest[0] === "issues" && method === "GET") return this.#list(ctx, repo);
    if (rest[0] !== "issues" || !/^\d+$/.test(rest[1] ?? "")) return notFound();
    const issue = repo.issues.get(Number(rest[1]));
    if (!issue || issue.gone === 404) return notFound();
    if (issue.gone === 410) return ghError(410, "This issue was deleted");
    if (issue.movedTo) {
      const { repo: target, number, writeStatus } = issue.movedTo;
      const tail = rest.slice(2).map((segment) => "/" + encodeURIComponent(segment)).join("");
      const location = `${api}/repositories/${target.id}/issues/${number}${tail}${ctx.url.search}`;
      const read = method === "GET" || method === "HEAD";
      return redirect(read ? 301 : writeStatus, location);
    }
    const labels = () => issue.labels.map((key) => this.#labelJson(api, repo, key));
    const body = parseBody(ctx.rec.body);
    if (body instanceof Response && method !== "GET" && method !== "DELETE") return body;
    const value = body instanceof Response ? undefined : body.value;

    if (rest.length === 2 && method === "GET") {
      return this.#conditional(ctx, this.#issueJson(ctx, repo, issue), issue.updatedAt);
    }
    if (rest[2] === "comments" && rest.length === 3 && method === "POST") {
      if (!isObject(value) || typeof value.body !== "string") {
        return validationFailed("IssueComment", "body", "missing_field");
      }
      issue.updatedAt = this.now();
      const comment = {
        id: this.#nextCommentId++,
        body: value.body,
        createdAt: issue.updatedAt,
        updatedAt: issue.updatedAt,
      };
      issue.comments.push(comment);
      const data = this.#commentJson(ctx, repo, issue, comment);
      return json(201, data, { location: String(data.url) });
    }
    if (rest[2] === "comments" && rest.length === 3 && method === "GET") {
      return this.#listComments(ctx, repo, issue);
    }
    if (rest[2] === "events" && rest.length === 3 && method === "GET") {
      return this.#listEvents(ctx, repo, issue);
    }
    if (rest[2] === "dependencies" && rest.length === 4 && method === "GET") {
      if (rest[3] === "blocked_by" || rest[3] === "blocking") {
        return this.#listDependencies(ctx, repo, issue, rest[3]);
      }
    }
    if (rest[2] !== "labels") return notFound();
    if (method !== "GET" && !this.#may(repo, "triage")) return ghError(403, NO_ACCESS);
    if (rest.length === 4 && method === "DELETE") {
      const key = rest[3].toLowerCase();
      if (!issue.labels.includes(key)) return ghError(404, "Label does not exist");
      const before = issue.labels;
      issue.labels = issue.labels.filter((k) => k !== key);
      issue.updatedAt = this.now();
      this.#labelEvents(repo, issue, before);
      return json(200, labels());
    }
    if (rest.length !== 3) return notFound();
    if (method === "GET") return this.#conditional(ctx, labels(), issue.updatedAt);
    if (method === "DELETE") {
      const before = issue.labels;
      if (issue.labels.length > 0) issue.updatedAt = this.now();
      issue.labels = [];
      this.#labelEvents(repo, issue, before);
      return new Response(null, { status: 204 });
    }
    if (method !== "POST" && method !== "PUT") return notFound();
    const names = labelNames(value, method === "POST");
    if (names instanceof Response) return names;
    const before = [...issue.labels];
    const kept = method === "PUT" ? [] : issue.labels;
    const added = new Set(names.map((name) => name.toLowerCase()).filter((k) => !kept.includes(k)));
    if (kept.length + added.size > LABEL_LIMIT) {
      // The message GitHub gives, as integrations report it (e.g. actions/labeler#115).
      return ghError(422, "Validation Failed", {
        errors: [{
          resource: "Issue",
          field: "labels",
          code: "custom",
          message: `Issues cannot have more than ${LABEL_LIMIT} labels`,
        }],
      });
    }
    if (method === "PUT") issue.labels = [];
    this.#addLabels(repo, issue, names);
    if (issue.labels.join("\n") !== before.join("\n")) issue.updatedAt = this.now();
    this.#labelEvents(repo, issue, before);
    return json(200, labels());
  }

  /** `/repos/{owner}/{repo}/labels[/{name}]`: list (paginated), create, get and update. */
  #labelsRoute(ctx: Ctx, repo: Repo, rest: string[]): Response {
    const method = ctx.request.method;
    const api = ctx.url.origin + this.#prefix;
    if (rest.length === 0 && method === "GET") return this.#listLabels(ctx, repo);
    if (rest.length > 1 || (method !== "GET" && method !== "POST" && method !== "PATCH")) {
      return notFound();
    }
    const found = rest.length === 1 ? repo.labels.get(rest[0].toLowerCase()) : undefined;
    if (rest.length === 1 && !found) return notFound();
    if (method === "GET") return json(200, this.#labelJson(api, repo, found!.name.toLowerCase()));
    // Creating and editing repository labels takes the Write role; Triage may only apply them.
    if (!this.#may(repo, "push")) return ghError(403, NO_ACCESS);
    const body = parseBody(ctx.rec.body);
    if (body instanceof Response) return body;
    if (!isObject(body.value)) return ghError(400, "Body should be a JSON object");
    if (method === "POST" && rest.length === 0) return this.#createLabel(api, repo, body.value);
    if (method === "PATCH" && found) return this.#updateLabel(api, repo, found, body.value);
    return notFound();
  }

  /** A 422 for a label field GitHub would refuse, or null. */
  #invalidLabel(value: Json, repo: Repo, self?: Label): Response | null {
    const name = value.new_name ?? value.name;
    if (name !== undefined && (typeof name !== "string" || name.trim() === "")) {
      return validationFailed("Label", "name", "invalid");
    }
    if (
      value.color !== undefined && (typeof value.color !== "string" || !HEX_COLOR.test(value.color))
    ) {
      return validationFailed("Label", "color", "invalid");
    }
    const description = value.description;
    if (
      description !== undefined && description !== null &&
      (typeof description !== "string" || description.length > 100)
    ) {
      return validationFailed("Label", "description", "invalid");
    }
    const other = typeof name === "string" ? repo.labels.get(name.toLowerCase()) : undefined;
    return other && other !== self ? validationFailed("Label", "name", "already_exists") : null;
  }

  #createLabel(api: string, repo: Repo, value: Json): Response {
    if (value.name === undefined) return validationFailed("Label", "name", "missing_field");
    const invalid = this.#invalidLabel(value, repo);
    if (invalid) return invalid;
    const name = value.name as string;
    repo.labels.set(name.toLowerCase(), {
      id: this.#nextLabelId++,
      name,
      color: ((value.color as string | undefined) ?? "ededed").toLowerCase(),
      description: (value.description as string | null | undefined) ?? null,
    });
    const label = this.#labelJson(api, repo, name.toLowerCase());
    return json(201, label, { location: String(label.url) });
  }

  #updateLabel(api: string, repo: Repo, label: Label, value: Json): Response {
    const invalid = this.#invalidLabel(value, repo, label);
    if (invalid) return invalid;
    if (typeof value.color === "string") label.color = value.color.toLowerCase();
    if (value.description !== undefined) label.description = value.description as string | null;
    const oldKey = label.name.toLowerCase();
    if (typeof value.new_name === "string") label.name = value.new_name;
    const key = label.name.toLowerCase();
    if (key !== oldKey) {
      repo.labels.delete(oldKey);
      repo.labels.set(key, label);
      for (const issue of repo.issues.values()) {
        issue.labels = issue.labels.map((k) => (k === oldKey ? key : k));
      }
    }
    return json(200, this.#labelJson(api, repo, key));
  }

  #listLabels(ctx: Ctx, repo: Repo): Response {
    const api = ctx.url.origin + this.#prefix;
    const { items, headers } = listPage(
      ctx.url.searchParams,
      [...repo.labels.keys()],
      `${api}/repositories/${repo.id}/labels`,
    );
    return json(200, items.map((key) => this.#labelJson(api, repo, key)), headers);
  }

  #list(ctx: Ctx, repo: Repo): Response {
    const query = ctx.url.searchParams;
    const state = query.get("state") ?? "open";
    const sort = query.get("sort") ?? "created";
    const direction = query.get("direction") ?? "desc";
    const since = query.get("since");
    const sinceMs = since === null ? -Infinity : Date.parse(since);
    if (!["open", "closed", "all"].includes(state)) {
      return validationFailed("Issue", "state", "invalid");
    }
    if (!["created", "updated", "comments"].includes(sort)) {
      return validationFailed("Issue", "sort", "invalid");
    }
    if (direction !== "asc" && direction !== "desc") {
      return validationFailed("Issue", "direction", "invalid");
    }
    if (Number.isNaN(sinceMs)) return validationFailed("Issue", "since", "invalid");
    const wanted = (query.get("labels") ?? "").split(",").map((l) => l.trim().toLowerCase())
      .filter((l) => l !== "");
    const key = (i: Issue) =>
      sort === "updated" ? i.updatedAt : sort === "comments" ? i.comments.length : i.createdAt;
    const sign = direction === "asc" ? 1 : -1;
    const all = [...repo.issues.values()].filter((i) => i.gone === undefined && !i.movedTo);
    const found = all
      .filter((i) => state === "all" || i.state === state)
      .filter((i) => wanted.every((l) => i.labels.includes(l)))
      .filter((i) => wholeSeconds(i.updatedAt) >= sinceMs)
      .sort((a, b) => sign * (key(a) - key(b) || a.number - b.number));
    const base = `${ctx.url.origin}${this.#prefix}/repositories/${repo.id}/issues`;
    const { items, headers } = listPage(query, found, base);
    const lastModified = Math.max(0, ...all.map((i) => i.updatedAt));
    const data = items.map((i) => this.#issueJson(ctx, repo, i));
    return this.#conditional(ctx, data, lastModified, headers);
  }

  /** GET …/issues/N/comments: oldest first, `since` on updated_at, `per_page` ≤ 100, Link pages. */
  #listComments(ctx: Ctx, repo: Repo, issue: Issue): Response {
    const query = ctx.url.searchParams;
    const since = query.get("since");
    const sinceMs = since === null ? -Infinity : Date.parse(since);
    if (Number.isNaN(sinceMs)) return validationFailed("IssueComment", "since", "invalid");
    const found = issue.comments.filter((c) => wholeSeconds(c.updatedAt) >= sinceMs);
    const { items, headers } = listPage(query, found, this.#issueApi(ctx, repo, issue, "comments"));
    const lastModified = Math.max(issue.createdAt, ...issue.comments.map((c) => c.updatedAt));
    const data = items.map((comment) => this.#commentJson(ctx, repo, issue, comment));
    return this.#conditional(ctx, data, lastModified, headers);
  }

  /**
   * GET …/issues/N/events: oldest first, `per_page` ≤ 100 (default 30), Link pages; each event
   * as the `issue-event-for-issue` schema has it: its `actor` (a `simple-user`) and
   * `performed_via_github_app` (null, or the app whose bot or token did it), and per kind
   * `label`, `rename`, `state_reason`, or `blocked_by`/`blocking` (an `issue-reference`).
   */
  #listEvents(ctx: Ctx, repo: Repo, issue: Issue): Response {
    const base = this.#issueApi(ctx, repo, issue, "events");
    const { items, headers } = listPage(ctx.url.searchParams, issue.events, base);
    const lastModified = Math.max(issue.createdAt, ...issue.events.map((e) => e.createdAt));
    const data = items.map((event) => this.#eventJson(ctx, repo, event));
    return this.#conditional(ctx, data, lastModified, headers);
  }

  #eventJson(ctx: Ctx, repo: Repo, event: IssueEvent): Json {
    const api = ctx.url.origin + this.#prefix;
    const web = ctx.url.origin;
    const detail: Json = event.label
      ? { label: event.label }
      : event.rename
      ? { rename: event.rename }
      : event.other
      ? {
        [event.event.startsWith("blocked_by") ? "blocked_by" : "blocking"]: this.#issueReference(
          ctx,
          event.other,
        ),
      }
      : { state_reason: event.stateReason ?? null };
    return {
      id: event.id,
      node_id: nodeId(EVENT_NODE_TYPES[event.event], event.id),
      url: `${api}/repos/${repo.fullName}/issues/events/${event.id}`,
      actor: accountJson(api, web, event.actor),
      event: event.event,
      commit_id: null,
      commit_url: null,
      created_at: secondsIso(event.createdAt),
      ...detail,
      performed_via_github_app: event.via ? appJson(api, web, event.via) : null,
    };
  }

  /** The other issue of a dependency event, as the `issue-reference` schema has it. */
  #issueReference(ctx: Ctx, ref: IssueRef): Json {
    return {
      number: ref.issue.number,
      title: ref.issue.title,
      state: ref.issue.state,
      state_reason: ref.issue.stateReason,
      repository: this.#simpleRepoJson(ctx, ref.repo),
      issue_type: null,
    };
  }

  /**
   * GET …/collaborators/{username}/permission.
   *
   * Documented (OpenAPI `repos/get-collaborator-permission-level`): `permission` is the legacy
   * base role, admin, write, read or none, with maintain shown as write and triage as read (a
   * custom role as its base); `role_name` is the role itself, custom roles by their name;
   * `user` is a `collaborator` with `permissions {pull, triage, push, maintain, admin}` and
   * `role_name`; an unknown login is 404.
   *
   * Seen by others against the live API, not documented: anyone has `read` on a public
   * repository (aws-ia/cloudformation-github-resource-providers#14); a GitHub App's bot has
   * `none` (opencode#43532, claude-code-action#351) with `role_name: ""` (as third-party test
   * doubles record it); a token without push access gets 403 (rultor#1407).
   * UNCONFIRMED, chosen here: a non-collaborator of a private repository has `none` too.
   */
  #permission(ctx: Ctx, repo: Repo, login: string): Response {
    if (!this.#may(repo, "push")) return ghError(403, NO_PERMISSION_ACCESS);
    const account = this.#accounts.get(login.toLowerCase());
    if (!account) return notFound();
    const role = account.login === LOGIN
      ? BASE_ROLES[ROLES.indexOf(repo.role)]
      : account.type === "Bot"
      ? null
      : repo.collaborators.get(account.login.toLowerCase()) ?? (repo.private ? null : "read");
    const base = role === null ? null : this.#roleBase(role)!;
    const rank = base === null ? -1 : BASE_ROLES.indexOf(base);
    const roleName = role === null ? "" : this.#customRoles.get(role.toLowerCase())?.name ?? base!;
    const api = ctx.url.origin + this.#prefix;
    const data = {
      permission: base === null ? "none" : LEGACY_PERMISSION[base],
      role_name: roleName,
      user: {
        ...accountJson(api, ctx.url.origin, account),
        permissions: Object.fromEntries(ROLES.map((name, i) => [name, rank >= i])),
        role_name: roleName,
      },
    };
    return this.#conditional(ctx, data, repo.rolesChangedAt);
  }

  /**
   * GET …/issues/N/dependencies/blocked_by (or /blocking): each linked issue as the full
   * `issue` schema with its `repository`, closed ones included, newest link first (GitHub
   * promises no order: it is a set), `per_page` ≤ 100 (default 30), Link pages. A blocker the
   * token cannot see is left out of the list (it still counts in the summary).
   */
  #listDependencies(ctx: Ctx, repo: Repo, issue: Issue, which: "blocked_by" | "blocking") {
    const refs = which === "blocked_by" ? issue.blockedBy : issue.blocking;
    const visible = refs.filter((ref) => ref.issue.gone === undefined).toReversed();
    const base = this.#issueApi(ctx, repo, issue, `dependencies/${which}`);
    const { items, headers } = listPage(ctx.url.searchParams, visible, base);
    const data = items.map((ref) => ({
      ...this.#issueJson(ctx, ref.repo, ref.issue),
      repository: this.#repositoryJson(ctx, ref.repo),
    }));
    const lastModified = Math.max(0, ...visible.map((ref) => ref.issue.updatedAt));
    return this.#conditional(ctx, data, lastModified, headers);
  }

  /** The `/repositories/ID/issues/N/…` URL GitHub's `link` headers point at. */
  #issueApi(ctx: Ctx, repo: Repo, issue: Issue, tail: string): string {
    return `${ctx.url.origin}${this.#prefix}/repositories/${repo.id}/issues/${issue.number}/${tail}`;
  }

  #commentJson(ctx: Ctx, repo: Repo, issue: Issue, comment: Comment): Json {
    const api = `${ctx.url.origin}${this.#prefix}/repos/${repo.fullName}`;
    return {
      id: comment.id,
      node_id: nodeId("IssueComment", comment.id),
      url: `${api}/issues/comments/${comment.id}`,
      html_url:
        `${ctx.url.origin}/${repo.fullName}/issues/${issue.number}#issuecomment-${comment.id}`,
      body: comment.body,
      user: userJson(ctx.url.origin + this.#prefix, ctx.url.origin),
      created_at: secondsIso(comment.createdAt),
      updated_at: secondsIso(comment.updatedAt),
      issue_url: `${api}/issues/${issue.number}`,
      author_association: "OWNER",
    };
  }

  /** A 200 with ETag/Last-Modified, or a 304 when the client's validators still match. */
  #conditional(ctx: Ctx, data: unknown, modifiedMs: number, extra = {}): Response {
    const body = JSON.stringify(data);
    // Hashing the Authorization value too, as GitHub does, so two tokens never share an ETag.
    const etag = `W/"${sha256(`${ctx.request.headers.get("authorization")}\n${body}`)}"`;
    const headers = {
      etag,
      "last-modified": new Date(modifiedMs).toUTCString(),
      "cache-control": "private, max-age=60, s-maxage=60",
      vary: "Accept, Authorization, Cookie, X-GitHub-OTP",
    };
    const ifNoneMatch = ctx.request.headers.get("if-none-match");
    const ifModifiedSince = ctx.request.headers.get("if-modified-since");
    const fresh = ifNoneMatch !== null
      ? etagMatches(ifNoneMatch, etag)
      : ifModifiedSince !== null && wholeSeconds(modifiedMs) <= Date.parse(ifModifiedSince);
    if (fresh) return new Response(null, { status: 304, headers });
    return new Response(body, {
      status: 200,
      headers: { "content-type": JSON_TYPE, ...headers, ...extra },
    });
  }

  #labelJson(api: string, repo: Repo, key: string): Json {
    const label = repo.labels.get(key)!;
    return {
      id: label.id,
      node_id: nodeId("Label", label.id),
      url: `${api}/repos/${repo.fullName}/labels/${encodeURIComponent(label.name)}`,
      name: label.name,
      description: label.description,
      color: label.color,
      default: false,
    };
  }

  #issueJson(ctx: Ctx, repo: Repo, issue: Issue): Json {
    const api = `${ctx.url.origin}${this.#prefix}/repos/${repo.fullName}`;
    const html = `${ctx.url.origin}/${repo.fullName}`;
    const n = issue.number;
    return {
      url: `${api}/issues/${n}`,
      repository_url: api,
      labels_url: `${api}/issues/${n}/labels{/name}`,
      comments_url: `${api}/issues/${n}/comments`,
      events_url: `${api}/issues/${n}/events`,
      html_url: `${html}/${issue.pullRequest ? "pull" : "issues"}/${n}`,
      id: issue.id,
      node_id: nodeId(issue.pullRequest ? "PullRequest" : "Issue", issue.id),
      number: n,
      title: issue.title,
      user: accountJson(ctx.url.origin + this.#prefix, ctx.url.origin, issue.author),
      labels: issue.labels.map((key) => this.#labelJson(ctx.url.origin + this.#prefix, repo, key)),
      state: issue.state,
      locked: false,
      assignee: null,
      assignees: [],
      milestone: null,
      comments: issue.comments.length,
      created_at: secondsIso(issue.createdAt),
      updated_at: secondsIso(issue.updatedAt),
      closed_at: issue.closedAt === null ? null : secondsIso(issue.closedAt),
      author_association: "OWNER",
      active_lock_reason: null,
      ...(issue.pullRequest
        ? {
          draft: false,
          pull_request: {
            url: `${api}/pulls/${n}`,
            html_url: `${html}/pull/${n}`,
            diff_url: `${html}/pull/${n}.diff`,
            patch_url: `${html}/pull/${n}.patch`,
            merged_at: null,
          },
        }
        : {}),
      body: issue.body,
      reactions: {
        url: `${api}/issues/${n}/reactions`,
        total_count: 0,
        ...Object.fromEntries(REACTIONS.map((name) => [name, 0])),
      },
      timeline_url: `${api}/issues/${n}/timeline`,
      performed_via_github_app: null,
      state_reason: issue.stateReason,
      issue_dependencies_summary: dependencySummary(issue),
    };
  }

  /** A repository as the `simple-repository` schema has it (in `issue-reference`s). */
  #simpleRepoJson(ctx: Ctx, repo: Repo): Json {
    const api = `${ctx.url.origin}${this.#prefix}`;
    const url = `${api}/repos/${repo.fullName}`;
    const [owner, name] = repo.fullName.split("/");
    const urls = Object.fromEntries(
      REPO_URL_TEMPLATES.map((template) => {
        const [field, path] = template.split(" ");
        return [`${field}_url`, `${url}${path}`];
      }),
    );
    return {
      id: repo.id,
      node_id: nodeId("Repository", repo.id),
      name,
      full_name: repo.fullName,
      owner: userJson(api, ctx.url.origin, owner),
      private: repo.private,
      html_url: `${ctx.url.origin}/${repo.fullName}`,
      description: null,
      fork: false,
      url,
      ...urls,
    };
  }

  /** A repository as the full `repository` schema has it (an issue's `repository`). */
  #repositoryJson(ctx: Ctx, repo: Repo): Json {
    const host = new URL(ctx.url.origin).host;
    const open = [...repo.issues.values()].filter((i) => i.state === "open" && !i.gone).length;
    return {
      ...this.#simpleRepoJson(ctx, repo),
      clone_url: `${ctx.url.origin}/${repo.fullName}.git`,
      git_url: `git://${host}/${repo.fullName}.git`,
      ssh_url: `git@${host}:${repo.fullName}.git`,
      svn_url: `${ctx.url.origin}/${repo.fullName}`,
      mirror_url: null,
      homepage: null,
      language: null,
      license: null,
      size: 0,
      default_branch: "main",
      forks: 0,
      forks_count: 0,
      stargazers_count: 0,
      watchers: 0,
      watchers_count: 0,
      open_issues: open,
      open_issues_count: open,
      has_issues: true,
      has_projects: true,
      has_wiki: true,
      has_pages: false,
      has_downloads: true,
      archived: false,
      disabled: false,
      visibility: repo.private ? "private" : "public",
      created_at: "2024-01-02T03:04:05Z",
      updated_at: "2024-01-02T03:04:05Z",
      pushed_at: "2024-01-02T03:04:05Z",
    };
  }

  #graphql(ctx: Ctx): Response {
    let payload: unknown;
    try {
      payload = JSON.parse(ctx.rec.body);
    } catch {
      return ghError(400, "Problems parsing JSON");
    }
    const query = isObject(payload) ? payload.query : undefined;
    if (typeof query !== "string" || query.trim() === "") {
      return json(200, {
        errors: [{ message: "A query attribute must be specified and must be a string." }],
      });
    }
    const variables = isObject(payload) && isObject(payload.variables) ? payload.variables : {};
    try {
      // Comments are blanked rather than removed so that error locations stay right.
      const blanked = query.replace(/#[^\n]*/g, (c) => " ".repeat(c.length));
      return json(200, this.#runQuery(blanked, variables, ctx.url.origin));
    } catch (error) {
      if (error instanceof GraphqlError) return json(200, { errors: [error.item] });
      throw error;
    }
  }

  /** Answers a query over `repository(owner:, name:) { issue(number:) { linkedBranches } }`. */
  #runQuery(query: string, variables: Json, origin: string): Json {
    const fields = parseQuery(query, variables);
    validate(fields, "Query", [], query);
    const run: GraphqlRun = { query, errors: [] };
    const repository: GraphqlResolver = (field, path, run) => {
      const fullName = `${field.args.owner}/${field.args.name}`;
      const repo = this.#repos.get(fullName.toLowerCase());
      if (repo) return this.#repositoryNode(repo, origin);
      const message = `Could not resolve to a Repository with the name '${fullName}'.`;
      return graphqlNotFound(run, field, path, message);
    };
    const data = execute(fields, { __typename: "Query", repository }, [], run);
    return run.errors.length > 0 ? { data, errors: run.errors } : { data };
  }

  #repositoryNode(repo: Repo, origin: string): Json {
    const issue: GraphqlResolver = (field, path, run) => {
      const number = field.args.number;
      if (!Number.isInteger(number)) {
        throw new GraphqlError({
          message: `Argument 'number' on Field 'issue' has an invalid value (${
            JSON.stringify(number)
          }). Expected type 'Int!'.`,
          locations: [location(run.query, field.at)],
        });
      }
      const found = repo.issues.get(number as number);
      return found && !found.pullRequest && found.gone === undefined && !found.movedTo
        ? this.#issueNode(repo, found, origin)
        : graphqlNotFound(
          run,
          field,
          path,
          `Could not resolve to an Issue with the number of ${number}.`,
        );
    };
    return {
      __typename: "Repository",
      id: nodeId("Repository", repo.id),
      name: repo.fullName.split("/")[1],
      nameWithOwner: repo.fullName,
      url: `${origin}/${repo.fullName}`,
      issue,
    };
  }

  #issueNode(repo: Repo, issue: Issue, origin: string): Json {
    const branches: GraphqlResolver = (field, path) => linkedBranches(issue, field, path);
    const lastEdit = issue.edits[0];
    const summary = dependencySummary(issue);
    return {
      __typename: "Issue",
      id: nodeId("Issue", issue.id),
      databaseId: issue.id,
      number: issue.number,
      title: issue.title,
      body: issue.body ?? "",
      state: issue.state === "open" ? "OPEN" : "CLOSED",
      closed: issue.state === "closed",
      url: `${origin}/${repo.fullName}/issues/${issue.number}`,
      createdAt: secondsIso(issue.createdAt),
      updatedAt: secondsIso(issue.updatedAt),
      linkedBranches: branches,
      author: actorNode(issue.author, origin),
      repository: () => this.#repositoryNode(repo, origin),
      editor: lastEdit ? actorNode(lastEdit.editor, origin) : null,
      lastEditedAt: lastEdit ? secondsIso(lastEdit.editedAt) : null,
      includesCreatedEdit: issue.edits.length > 0,
      userContentEdits: ((field, path) => {
        const nodes = paginate(issue.edits, field, path, "userContentEdits").map((edit) => ({
          __typename: "UserContentEdit",
          id: nodeId("UserContentEdit", `${issue.id}:${edit.editedAt}`),
          createdAt: secondsIso(edit.editedAt),
          updatedAt: secondsIso(edit.editedAt),
          editedAt: secondsIso(edit.editedAt),
          editor: actorNode(edit.editor, origin),
          diff: edit.body ?? "",
        }));
        return { __typename: "UserContentEditConnection", totalCount: issue.edits.length, nodes };
      }) as GraphqlResolver,
      timelineItems:
        ((field, path, run) =>
          this.#timelineItems(repo, issue, origin, field, path, run)) as GraphqlResolver,
      issueDependenciesSummary: {
        __typename: "IssueDependenciesSummary",
        blockedBy: summary.blocked_by,
        blocking: summary.blocking,
        totalBlockedBy: summary.total_blocked_by,
        totalBlocking: summary.total_blocking,
      },
      // Newest link first, as GitHub's default order (DEPENDENCY_ADDED_AT, DESC) has it.
      blockedBy: ((field, path) => {
        const visible = issue.blockedBy.filter((ref) => ref.issue.gone === undefined).toReversed();
        const nodes = paginate(visible, field, path, "blockedBy")
          .map((ref) => this.#issueNode(ref.repo, ref.issue, origin));
        return { __typename: "IssueConnection", totalCount: visible.length, nodes };
      }) as GraphqlResolver,
    };
  }

  /**
   * `Issue.timelineItems`: the issue's events and comments, oldest first, `itemTypes` and
   * `since` filtering them before `first`/`last`/`skip` (as GitHub documents the arguments).
   */
  #timelineItems(
    repo: Repo,
    issue: Issue,
    origin: string,
    field: GraphqlField,
    path: GraphqlPath,
    run: GraphqlRun,
  ): Json {
    const { itemTypes, since } = field.args;
    const types = itemTypes == null ? null : Array.isArray(itemTypes) ? itemTypes : [itemTypes];
    if (types && !types.every((type) => TIMELINE_ITEM_TYPES.has(String(type)))) {
      throw new GraphqlError({
        message: `Argument 'itemTypes' on Field 'timelineItems' has an invalid value (${
          JSON.stringify(itemTypes)
        }). Expected type '[IssueTimelineItemsItemType!]'.`,
        locations: [location(run.query, field.at)],
      });
    }
    const sinceMs = since == null ? -Infinity : Date.parse(String(since));
    const items: Array<{ kind: IssueEventKind | "comment"; at: number; node: () => Json }> = [
      ...issue.events.map((event) => ({
        kind: event.event,
        at: event.createdAt,
        node: () => this.#timelineNode(repo, event, origin),
      })),
      ...issue.comments.map((comment) => ({
        kind: "comment" as const,
        at: comment.createdAt,
        node: () => ({
          __typename: "IssueComment",
          id: nodeId("IssueComment", comment.id),
          createdAt: secondsIso(comment.createdAt),
          author: actorNode(this.#account(LOGIN), origin),
          body: comment.body,
        }),
      })),
    ].sort((a, b) => a.at - b.at);
    const found = items.filter((item) =>
      (!types || types.includes(TIMELINE_KINDS[item.kind][0])) && item.at >= sinceMs
    );
    const nodes = paginate(found, field, path, "timelineItems").map((item) => item.node());
    return { __typename: "IssueTimelineItemsConnection", totalCount: found.length, nodes };
  }

  #timelineNode(repo: Repo, event: IssueEvent, origin: string): Json {
    const common = {
      __typename: TIMELINE_KINDS[event.event][1],
      id: nodeId(EVENT_NODE_TYPES[event.event], event.id),
      createdAt: secondsIso(event.createdAt),
      actor: actorNode(event.actor, origin),
    };
    if (event.label) {
      const label = repo.labels.get(event.label.name.toLowerCase());
      return {
        ...common,
        label: {
          __typename: "Label",
          id: nodeId("Label", label?.id ?? 0),
          name: event.label.name,
          color: event.label.color,
          description: label?.description ?? null,
        },
      };
    }
    if (event.rename) {
      return { ...common, previousTitle: event.rename.from, currentTitle: event.rename.to };
    }
    if (event.other) {
      const { repo: otherRepo, issue } = event.other;
      const key = event.event.startsWith("blocked_by") ? "blockingIssue" : "blockedIssue";
      return { ...common, [key]: () => this.#issueNode(otherRepo, issue, origin) };
    }
    if (event.event === "closed") {
      return { ...common, stateReason: (event.stateReason ?? "completed").toUpperCase() };
    }
    return common;
  }
}

// ---------------------------------------------------------------------------------------------
// Jenkins

const JENKINS_VERSION = "2.578";
const DEFAULT_JENKINS_TOKEN = "11aa22bb33cc44dd55ee66ff77889900aa";
const JENKINS_JSON_TYPE = "application/json;charset=utf-8";
/** Jenkins forgets a queue item this long after it left the queue (Queue.leftItems). */
const LEFT_ITEM_TTL_MS = 5 * 60_000;
/** Request parameters Jenkins consumes itself; they never become build parameters. */
const RESERVED_PARAMS = new Set(["token", "delay", "cause", "Jenkins-Crumb", "json"]);

/** The string parameters an mcp_coder executor job defines, plus the coordinator's request id. */
export const EXECUTOR_PARAMETERS: readonly string[] = [
  "REPO_URL",
  "BRANCH_NAME",
  "COMMAND",
  "GITHUB_CREDENTIALS_ID",
  "COORDINATOR_REQUEST_ID",
];

interface Job {
  path: string;
  names: string[];
  /** A Pipeline (WorkflowJob) rather than a freestyle project. */
  pipeline: boolean;
  parameterized: boolean;
  /** The string parameters it defines (all with default ""); others sent are dropped. */
  parameters: string[];
  disabled: boolean;
  nextBuildNumber: number;
  /** What becomes of its next builds (`endNextBuild()`), first to come first. */
  fates: NextBuildFate[];
}

/** A build result as Jenkins' `Result` class names it. */
export type BuildResult = "SUCCESS" | "UNSTABLE" | "FAILURE" | "NOT_BUILT" | "ABORTED";

/**
 * Why Jenkins interrupted a build, as the `causes` of its `jenkins.model.InterruptedBuildAction`
 * report it (each cause exports only `shortDescription`, and `_class`):
 * - `{ user }`: someone pressed Stop, or POSTed `…/stop` (the coordinator's own API user too):
 *   `jenkins.model.CauseOfInterruption$UserInterruption`, "Aborted by USER";
 * - `{ agent: "removed" }`: a Pipeline's agent went away (a cloud or one-shot agent at once,
 *   another after 5 minutes): `…ExecutorStepExecution$RemovedNodeCause`, "Agent was removed";
 *   `"timeout"`: it did not come back in time (`$RemovedNodeTimeoutCause`); `"queue-cancelled"`:
 *   the `node {}` block's queue item was cancelled (`$QueueTaskCancelled`). Jenkins itself
 *   classes these three as retryable agent errors (`retry(conditions: [agent()])`);
 * - `{ supersededBy: N }`: a newer build of a `disableConcurrentBuilds(abortPrevious: true)`
 *   Pipeline took over: `…DisableConcurrentBuildsJobProperty$CancelledCause`, "Superseded by
 *   #N", with `newerBuild`; that build ends NOT_BUILT.
 * The agent and superseded causes exist only for Pipeline jobs: a freestyle build whose agent
 * disconnects ends FAILURE ("Agent went offline during the build"), with no cause to tell.
 */
export type InterruptionCause =
  | { user: string }
  | { agent: "removed" | "timeout" | "queue-cancelled" }
  | { supersededBy: number };

/**
 * What becomes of the next build queued for a job: it starts (when its quiet period ends) and
 * at once ends with `result` (with an InterruptedBuildAction holding `cause`, if given), or its
 * queue item is cancelled instead (`cancelled: true`, no build ever).
 */
export type NextBuildFate =
  | { result: BuildResult; cause?: InterruptionCause }
  | { cancelledInQueue: true };

const PIPELINE_STEPS = "org.jenkinsci.plugins.workflow.support.steps.ExecutorStepExecution";
const AGENT_CAUSES = {
  removed: [`${PIPELINE_STEPS}$RemovedNodeCause`, "Agent was removed"],
  timeout: [`${PIPELINE_STEPS}$RemovedNodeTimeoutCause`, "Timeout waiting for agent to come back"],
  "queue-cancelled": [`${PIPELINE_STEPS}$QueueTaskCancelled`, "Queue task was cancelled"],
} as const;
const SUPERSEDED_CAUSE =
  "org.jenkinsci.plugins.workflow.job.properties.DisableConcurrentBuildsJobProperty$CancelledCause";

interface QueueItem {
  id: number;
  job: Job;
  params: Record<string, string>;
  queuedAt: number;
  startsAt: number;
  /** The build number, given when the build starts (0 before), as Jenkins does. */
  number: number;
  /** When the item was cancelled while it waited: it then never becomes a build. */
  cancelledAt?: number;
  /** Unset while the build runs. */
  result?: BuildResult;
  finishedAt?: number;
  /** Why it was interrupted: an InterruptedBuildAction with these causes, if any. */
  causes?: InterruptionCause[];
  /** The build was deleted: its URL answers 404 and job listings leave it out. */
  deleted?: boolean;
  /** What its job's script said becomes of it (`endNextBuild()`). */
  fate?: NextBuildFate;
  /** Jenkins restarted after it left the queue: the queue item answers 404. */
  forgotten?: boolean;
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The Jetty/Stapler error page Jenkins answers with: never JSON. */
function jettyError(
  status: number,
  message: string,
  uri: string,
  headers: Record<string, string> = {},
): Response {
  const m = escapeHtml(message);
  const page = `<html>
<head>
<meta http-equiv="Content-Type" content="${HTML_TYPE}"/>
` +
    `<title>Error ${status} ${m}</title>
</head>
<body><h2>HTTP ERROR ${status} ${m}</h2>
` +
    `<table>
<tr><th>URI:</th><td>${escapeHtml(uri)}</td></tr>
<tr><th>STATUS:</th><td>` +
    `${status}</td></tr>
<tr><th>MESSAGE:</th><td>${m}</td></tr>
<tr><th>SERVLET:</th>` +
    `<td>Stapler</td></tr>
</table>
</body>
</html>
`;
  return new Response(page, { status, headers: { "content-type": HTML_TYPE, ...headers } });
}

function authenticationRequired(uri: string): Response {
  const login = `/login?from=${encodeURIComponent(uri)}`;
  const page = `<html><head><meta http-equiv='refresh' content='1;url=${login}'/></head>` +
    `<body style='background-color:white; color:white;'>\nAuthentication required\n</body></html>`;
  return new Response(page, { status: 403, headers: { "content-type": HTML_TYPE } });
}

function jenkinsJson(data: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(data), {
    headers: { "content-type": JENKINS_JSON_TYPE, ...headers },
  });
}

/** Jenkins' Util.getTimeSpanString, as used in "In the quiet period. Expires in 4.9 sec". */
function timeSpan(ms: number): string {
  if (ms >= 60_000) return `${Math.floor(ms / 60_000)} min ${Math.floor(ms / 1000) % 60} sec`;
  if (ms >= 10_000) return `${Math.floor(ms / 1000)} sec`;
  return ms >= 100 ? `${(ms / 1000).toFixed(1)} sec` : `${Math.max(0, Math.round(ms))} ms`;
}

/** Query-string and form-body parameters together, as a servlet's getParameterValues sees them. */
async function requestParams(request: Request, body: string, url: URL): Promise<string[][]> {
  const pairs = [...url.searchParams];
  const type = request.headers.get("content-type") ?? "";
  if (body && /^(application\/x-www-form-urlencoded|multipart\/form-data)/i.test(type)) {
    try {
      const form = await new Response(body, { headers: { "content-type": type } }).formData();
      for (const [name, value] of form) if (typeof value === "string") pairs.push([name, value]);
    } catch {
      // a malformed form reads as no parameters, as in a servlet container
    }
  }
  return pairs;
}

/** `delay=` as TimeDuration.fromString reads it: "<n>sec", or a bare number of milliseconds. */
function parseDelay(raw: string | undefined): number | undefined {
  const match = raw === undefined ? null : /^\s*(\d+)\s*(secs?)?\s*$/.exec(raw);
  if (!match) return undefined;
  return Number(match[1]) * (match[2] ? 1000 : 1);
}

/** A parsed `tree=` expression: the properties kept at one level, and a list range. */
interface TreeSpec {
  children: Map<string, TreeSpec>;
  /** `{M,N}`: elements M (inclusive) to N (exclusive) of a list. */
  range: [number, number];
}

/**
 * Parses `tree=` as Stapler's NamedPathPruner does: `a,b[c,d]{M,N}`, with the ranges `{N}`,
 * `{M,}`, `{,N}` and `{M,N}`; throws with its messages ("expected name at 0") when malformed.
 */
function parseTree(text: string): TreeSpec {
  const tokens = text.match(/[,[\]{}]|[^,[\]{}]+/g) ?? [];
  let at = 0; // a character offset, as in Stapler's messages
  let i = 0;
  const peek = () => tokens[i];
  const advance = () => (at += tokens[i++].length);
  const expect = (token: string) => {
    if (peek() !== token) throw new Error(`expected ${TREE_TOKENS[token]} at ${at}`);
    advance();
  };
  const number = (): number => {
    if (!/^[0-9]+$/.test(peek() ?? "")) throw new Error(`expected number at ${at}`);
    const n = Number(peek());
    advance();
    return n;
  };
  const list = (tree: TreeSpec): void => {
    const name = peek();
    if (name === undefined || name in TREE_TOKENS) throw new Error(`expected name at ${at}`);
    advance();
    const child: TreeSpec = { children: new Map(), range: [0, Infinity] };
    tree.children.set(name, child);
    if (peek() === "[") {
      advance();
      list(child);
      expect("]");
    }
    if (peek() === "{") {
      advance();
      if (peek() === ",") {
        advance();
        child.range = [0, number()];
      } else {
        const min = number();
        if (peek() === "}") child.range = [min, min + 1];
        else {
          expect(",");
          child.range = [min, peek() === "}" ? Infinity : number()];
        }
      }
      expect("}");
    }
    if (peek() === ",") {
      advance();
      list(tree);
    }
  };
  const root: TreeSpec = { children: new Map(), range: [0, Infinity] };
  list(root);
  if (i < tokens.length) throw new Error(`expected EOF at ${at}`);
  return root;
}

const TREE_TOKENS: Record<string, string> = {
  ",": "COMMA",
  "[": "LBRACE",
  "]": "RBRACE",
  "{": "QLBRACE",
  "}": "QRBRACE",
};

/**
 * Keeps of `value` what `spec` names (`*` for any property), as Jenkins writes a pruned tree:
 * `_class` stays on every object that has one, a property named without `[…]` keeps no
 * children (an object shrinks to its `_class`, or `{}`), a range cuts a list. Functions are
 * nested objects built only when reached.
 */
function pruneTree(value: unknown, spec: TreeSpec): unknown {
  const node = typeof value === "function" ? value() : value;
  if (Array.isArray(node)) {
    return node.slice(spec.range[0], spec.range[1]).map((item) => pruneTree(item, spec));
  }
  if (!isObject(node)) return node;
  const kept: Json = {};
  for (const [key, child] of Object.entries(node)) {
    const sub = key === "_class" ? spec : spec.children.get(key) ?? spec.children.get("*");
    if (sub) kept[key] = key === "_class" ? child : pruneTree(child, sub);
  }
  return kept;
}

/** A fake Jenkins controller with foldered jobs, a build queue and CSRF crumbs. */
export class FakeJenkins extends FakeService {
  readonly user: string;
  readonly token: string;
  /**
   * Every build queued, in order; `job` is the full name ("Folder/Job"); `number` is 0 until
   * the build starts (a cancelled item never gets one).
   */
  readonly builds: Array<
    { job: string; params: Record<string, string>; queueId: number; number: number }
  > = [];
  /** The fake's clock (epoch ms); tests move it to age queue items and builds. */
  now: () => number = () => Date.now();
  /** How long a new item waits in the queue before its build starts; settable by tests. */
  quietPeriodMs: number;
  #password?: string;
  #leftItemTtlMs: number;
  #jobs = new Map<string, Job>();
  #queue = new Map<number, QueueItem>();
  #nextQueueId = 101; // unlike build numbers, so that mixing the two up shows in tests
  #cookieName = `JSESSIONID.${randomHex(4)}`;
  #instance = randomHex(4);
  #salt = randomHex(16);
  #crumbs = new Map<string, string>(); // session id -> crumb

  private constructor(options: Parameters<typeof FakeJenkins.start>[0] = {}) {
    super(options.latencyMs ?? 0, "");
    this.user = options.user ?? "bot";
    this.token = options.token ?? DEFAULT_JENKINS_TOKEN;
    this.#password = options.password;
    this.quietPeriodMs = options.quietPeriodMs ?? 0;
    this.#leftItemTtlMs = options.leftItemTtlMs ?? LEFT_ITEM_TTL_MS;
  }

  /**
   * Starts a fake on a free port of 127.0.0.1. `leftItemTtlMs` (default 5 minutes) is how long a
   * queue item stays readable after its build started.
   */
  static start(options?: {
    user?: string;
    token?: string;
    password?: string;
    latencyMs?: number;
    quietPeriodMs?: number;
    leftItemTtlMs?: number;
  }): Promise<FakeJenkins> {
    return Promise.resolve(new FakeJenkins(options));
  }

  /**
   * Adds (or replaces) a job by full name, e.g. "Coder/executor". It defines `parameters`
   * (default EXECUTOR_PARAMETERS) unless `parameterized: false`.
   */
  addJob(
    path: string,
    options: {
      parameterized?: boolean;
      disabled?: boolean;
      parameters?: readonly string[];
      /** A Pipeline job (WorkflowJob/WorkflowRun) instead of a freestyle project. */
      pipeline?: boolean;
    } = {},
  ): void {
    const names = path.split("/");
    this.#jobs.set(path, {
      path,
      names,
      pipeline: options.pipeline ?? false,
      parameterized: options.parameterized ?? true,
      parameters: options.parameterized === false ? [] : [
        ...(options.parameters ?? EXECUTOR_PARAMETERS),
      ],
      disabled: options.disabled ?? false,
      nextBuildNumber: 1,
      fates: [],
    });
  }

  /** Deletes a job, as if it had been renamed or never created. */
  removeJob(path: string): void {
    this.#jobs.delete(path);
  }

  /** Ends a running build with `result`, as its executor would. */
  finishBuild(queueId: number, result: BuildResult): void {
    this.#advance(this.now());
    const item = this.#item(queueId);
    if (!this.#started(item, this.now()) || item.result) {
      throw new Error(`queue item ${queueId} has no running build`);
    }
    item.result = result;
    item.finishedAt = this.now();
  }

  /** Cancels a waiting queue item (POST /queue/cancelItem); an item that left the queue cannot be. */
  cancelQueueItem(queueId: number): void {
    const item = this.#item(queueId);
    if (!this.#waiting(item, this.now())) throw new Error(`queue item ${queueId} is not waiting`);
    item.cancelledAt = this.now();
  }

  /** Deletes a started build, as a person or a build discarder does. */
  deleteBuild(queueId: number): void {
    this.#advance(this.now());
    const item = this.#item(queueId);
    if (!this.#started(item, this.now())) throw new Error(`queue item ${queueId} has no build`);
    item.deleted = true;
  }

  /**
   * Interrupts a running build: ABORTED (NOT_BUILT when superseded), with an
   * InterruptedBuildAction holding `cause`; with no cause, ABORTED and no such action, as when
   * the controller shuts down or a Pipeline is terminated or killed.
   */
  abortBuild(queueId: number, cause?: InterruptionCause): void {
    this.#advance(this.now());
    const item = this.#item(queueId);
    if (!this.#started(item, this.now()) || item.result) {
      throw new Error(`queue item ${queueId} has no running build`);
    }
    this.#checkCause(item.job, cause);
    item.result = cause && "supersededBy" in cause ? "NOT_BUILT" : "ABORTED";
    item.finishedAt = this.now();
    item.causes = cause ? [cause] : [];
  }

  /**
   * Says what becomes of the next build queued for `jobPath` (each call, the one after), e.g.
   * `{ result: "NOT_BUILT" }`, `{ result: "ABORTED", cause: { agent: "removed" } }` or
   * `{ cancelledInQueue: true }`. A request Jenkins folds into a waiting item queues nothing.
   */
  endNextBuild(jobPath: string, fate: NextBuildFate): void {
    const job = this.#jobs.get(jobPath);
    if (!job) throw new Error(`unknown job ${jobPath}`);
    if ("result" in fate) this.#checkCause(job, fate.cause);
    job.fates.push(fate);
  }

  /**
   * Restarts the controller: queue items that left the queue are forgotten (404), waiting ones
   * stay (the queue is saved); running freestyle builds end ABORTED with no cause (the shutdown
   * interrupts their executors without one) while Pipeline builds resume; sessions, and so
   * crumbs, are gone, and `X-Jenkins-Session` changes.
   */
  restart(): void {
    const now = this.now();
    this.#advance(now);
    for (const item of this.#queue.values()) {
      if (this.#waiting(item, now)) continue;
      item.forgotten = true;
      if (this.#started(item, now) && !item.result && !item.job.pipeline) {
        item.result = "ABORTED";
        item.finishedAt = now;
        item.causes = [];
      }
    }
    this.#crumbs.clear();
    this.#instance = randomHex(4);
  }

  #checkCause(job: Job, cause?: InterruptionCause): void {
    if (cause && !("user" in cause) && !job.pipeline) {
      throw new Error(
        `${job.path} is a freestyle job: only a Pipeline build is interrupted by its agent ` +
          "going away or by a newer build (a freestyle build whose agent goes away ends FAILURE)",
      );
    }
  }

  /**
   * Numbers the builds that have started since, in the order they started; an item whose fate
   * was to be cancelled is cancelled instead, and a build whose fate was a result ends at once.
   */
  #advance(now: number): void {
    const starting = [...this.#queue.values()]
      .filter((item) => item.number === 0 && item.cancelledAt === undefined && now >= item.startsAt)
      .sort((a, b) => a.startsAt - b.startsAt || a.id - b.id);
    for (const item of starting) {
      if (item.fate && "cancelledInQueue" in item.fate) {
        item.cancelledAt = item.startsAt;
        continue;
      }
      item.number = item.job.nextBuildNumber++;
      const build = this.builds.find((entry) => entry.queueId === item.id);
      if (build) build.number = item.number;
      if (item.fate) {
        item.result = item.fate.result;
        item.finishedAt = item.startsAt;
        item.causes = item.fate.cause ? [item.fate.cause] : undefined;
      }
    }
  }

  #item(queueId: number): QueueItem {
    const item = this.#queue.get(queueId);
    if (!item) throw new Error(`unknown queue item ${queueId}`);
    return item;
  }

  #waiting(item: QueueItem, now: number): boolean {
    return item.cancelledAt === undefined && now < item.startsAt;
  }

  #started(item: QueueItem, now: number): boolean {
    return item.cancelledAt === undefined && now >= item.startsAt && !item.deleted;
  }

  protected route(pathname: string): Route {
    const segments = decodeSegments(pathname);
    return { path: "/" + segments.join("/"), segments };
  }

  protected finish(res: Response | null): void {
    res?.headers.set("x-jenkins", JENKINS_VERSION);
    res?.headers.set("x-hudson", "1.395");
    res?.headers.set("x-jenkins-session", this.#instance);
  }

  protected faultResponse(fault: Fault, ctx: Ctx): Response {
    const status = fault.status!;
    if (status === 204 || status === 304) return new Response(null, { status });
    if (fault.body !== undefined) {
      return new Response(fault.body, { status, headers: { "content-type": HTML_TYPE } });
    }
    if (status === 502) {
      return new Response("<html>Bad Gateway</html>", {
        status,
        headers: { "content-type": "text/html" },
      });
    }
    const auth: Record<string, string> = status === 401
      ? { "www-authenticate": 'Basic realm="Jenkins"' }
      : {};
    return jettyError(status, REASONS[status] ?? "Error", ctx.url.pathname, auth);
  }

  #authenticate(header: string | null): "anonymous" | "bad" | "token" | "password" {
    // Jenkins ignores schemes it does not know, so such a request is simply anonymous.
    const match = header === null ? null : /^Basic\s+(\S+)\s*$/i.exec(header.trim());
    if (!match) return "anonymous";
    let decoded: string;
    try {
      decoded = atob(match[1]);
    } catch {
      return "bad";
    }
    const colon = decoded.indexOf(":");
    if (colon < 0 || decoded.slice(0, colon) !== this.user) return "bad";
    const secret = decoded.slice(colon + 1);
    if (secret === this.token) return "token";
    return this.#password !== undefined && secret === this.#password ? "password" : "bad";
  }

  #session(request: Request): string | undefined {
    for (const cookie of (request.headers.get("cookie") ?? "").split(";")) {
      const [name, ...value] = cookie.trim().split("=");
      if (name === this.#cookieName) return value.join("=");
    }
    return undefined;
  }

  protected async handle(ctx: Ctx): Promise<Response> {
    const { request, url } = ctx;
    const uri = url.pathname;
    const auth = this.#authenticate(request.headers.get("authorization"));
    // WhoAmI is an unprotected root action: anonymous callers see themselves as anonymous.
    if (auth === "anonymous" && uri.replace(/\/+$/, "") === "/whoAmI/api/json") {
      return this.#whoAmI(null);
    }
    if (auth === "anonymous") return authenticationRequired(uri);
    if (auth === "bad") {
      return jettyError(401, "Unauthorized", uri, { "www-authenticate": 'Basic realm="Jenkins"' });
    }
    const pairs = await requestParams(request, ctx.rec.body, url);
    // CrumbFilter runs before any URL is resolved; API-token callers are exempt since 2.96.
    if (request.method === "POST" && auth === "password") {
      const session = this.#session(request);
      const expected = session === undefined ? undefined : this.#crumbs.get(session);
      const given = request.headers.get("jenkins-crumb") ??
        pairs.find(([name]) => name === "Jenkins-Crumb")?.[1];
      if (expected === undefined || given !== expected) {
        return jettyError(403, "No valid crumb was included in the request", uri);
      }
    }
    const segments = (ctx.route.segments ?? []).filter((s) => s !== "");
    const now = this.now();
    this.#advance(now);
    const joined = segments.join("/");
    if (joined === "crumbIssuer/api/json") return this.#issueCrumb(request);
    if (joined === "whoAmI/api/json") return this.#whoAmI(this.user);
    if (joined === "queue/api/json") {
      const waiting = [...this.#queue.values()].filter((item) => this.#waiting(item, now));
      const queue = (json: (item: QueueItem) => Json) => ({
        _class: "hudson.model.Queue",
        discoverableItems: [],
        items: waiting.map(json),
      });
      return this.#exported(
        url,
        () => queue((item) => this.#itemJson(item, url.origin, now)),
        () => queue((item) => this.#itemBean(item, url.origin, now)),
      );
    }
    if (segments[0] === "queue" && segments[1] === "item" && /^\d+$/.test(segments[2] ?? "")) {
      const item = this.#queue.get(Number(segments[2]));
      // Jenkins forgets an item a while after it left the queue, started or cancelled, and
      // at once when it restarts.
      if (
        !item || item.forgotten ||
        now >= (item.cancelledAt ?? item.startsAt) + this.#leftItemTtlMs
      ) {
        return jettyError(404, "Not Found", uri);
      }
      if (segments.length === 3) {
        return new Response(
          "Queue item exists. For details check, for example, " +
            `${url.origin}/queue/item/${item.id}/api/json?tree=cancelled,executable[url]`,
          { headers: { "content-type": "text/plain;charset=utf-8" } },
        );
      }
      if (segments.slice(3).join("/") === "api/json") {
        return this.#exported(
          url,
          () => this.#itemJson(item, url.origin, now),
          () => this.#itemBean(item, url.origin, now),
        );
      }
      return jettyError(404, "Not Found", uri);
    }
    const names: string[] = [];
    let i = 0;
    for (; segments[i] === "job" && i + 1 < segments.length; i += 2) names.push(segments[i + 1]);
    const job = this.#jobs.get(names.join("/"));
    if (names.length === 0 || !job) return jettyError(404, "Not Found", uri);
    const rest = segments.slice(i);
    if (rest.length === 0) {
      const title = escapeHtml(job.names.join(" » "));
      return new Response(`<html><head><title>${title} [Jenkins]</title></head></html>`, {
        headers: { "content-type": HTML_TYPE },
      });
    }
    if (rest.join("/") === "api/json") {
      return this.#exported(
        url,
        () => this.#jobJson(job, url.origin, now),
        () => this.#jobBean(job, url.origin, now),
      );
    }
    if (rest.length === 1 && (rest[0] === "build" || rest[0] === "buildWithParameters")) {
      if (request.method !== "POST") {
        return jettyError(405, "Method Not Allowed", uri, { allow: "POST" });
      }
      return this.#schedule(job, pairs, rest[0] === "buildWithParameters", url.origin, uri);
    }
    if (rest.length === 3 && /^\d+$/.test(rest[0]) && rest[1] === "api" && rest[2] === "json") {
      const item = [...this.#queue.values()].find((q) =>
        q.job === job && q.number === Number(rest[0]) && this.#started(q, now)
      );
      if (item) {
        const build = () => this.#buildJson(item, url.origin, now);
        return this.#exported(url, build, build);
      }
    }
    return jettyError(404, "Not Found", uri);
  }

  /**
   * An `api/json` answer: `plain` without `tree=`; with it, `bean` (the whole object, its
   * nested objects as functions so that only what the tree reaches is built) pruned as
   * Stapler's NamedPathPruner does, and a malformed tree answered as Jenkins does (500).
   */
  #exported(url: URL, plain: () => Json, bean: () => Json): Response {
    const tree = url.searchParams.get("tree");
    if (tree === null) return jenkinsJson(plain());
    let spec: TreeSpec;
    try {
      spec = parseTree(tree);
    } catch (error) {
      const message = `Malformed tree expression: java.lang.IllegalArgumentException: ${
        (error as Error).message
      }`;
      return jettyError(500, message, url.pathname);
    }
    return jenkinsJson(pruneTree(bean(), spec));
  }

  #whoAmI(user: string | null): Response {
    return jenkinsJson({
      _class: "hudson.security.WhoAmI",
      anonymous: user === null,
      authenticated: user !== null,
      authorities: user === null ? [] : ["authenticated"],
      name: user ?? "anonymous",
    });
  }

  #issueCrumb(request: Request): Response {
    let session = this.#session(request);
    const headers: Record<string, string> = {};
    if (session === undefined || !this.#crumbs.has(session)) {
      session = `node0${randomHex(12)}.node0`;
      this.#crumbs.set(session, sha256(`${this.user};${session};${this.#salt}`));
      headers["set-cookie"] = `${this.#cookieName}=${session}; Path=/; HttpOnly`;
    }
    return jenkinsJson({
      _class: "hudson.security.csrf.DefaultCrumbIssuer",
      crumb: this.#crumbs.get(session),
      crumbRequestField: "Jenkins-Crumb",
    }, headers);
  }

  /** ParameterizedJobMixIn.doBuild / doBuildWithParameters, in Jenkins' order of checks. */
  #schedule(job: Job, pairs: string[][], withParameters: boolean, origin: string, uri: string) {
    if (job.disabled) return jettyError(409, `${job.path} is not buildable`, uri);
    if (withParameters && !job.parameterized) {
      return jettyError(400, `${job.path} is not parameterized`, uri);
    }
    // /build on a parameterized job reads only the web UI's `json` form, which this fake lacks.
    if (!withParameters && job.parameterized) {
      return jettyError(400, "This page expects a form submission", uri);
    }
    const given = withParameters ? pairs : [];
    const params: Record<string, string> = {};
    for (const name of job.parameters) params[name] = ""; // each one's default value
    const seen = new Set<string>();
    for (const [name, value] of given) {
      // Jenkins reads only the parameters the job defines and drops the rest without a word.
      if (RESERVED_PARAMS.has(name) || !job.parameters.includes(name)) continue;
      if (seen.has(name)) {
        const count = given.filter(([n]) => n === name).length;
        return jettyError(500, `Illegal number of parameter values for ${name}: ${count}`, uri);
      }
      seen.add(name);
      params[name] = value;
    }
    const now = this.now();
    const same = (item: QueueItem) =>
      item.job === job && this.#waiting(item, now) &&
      JSON.stringify(Object.entries(item.params).sort()) ===
        JSON.stringify(Object.entries(params).sort());
    const duplicate = [...this.#queue.values()].find(same);
    if (duplicate) {
      // Since 2.308 buildWithParameters answers 303 for an identical queued item; /build says 201.
      return new Response(null, {
        status: withParameters ? 303 : 201,
        headers: { location: `${origin}/queue/item/${duplicate.id}/` },
      });
    }
    const delay = parseDelay(pairs.find(([name]) => name === "delay")?.[1]);
    const item: QueueItem = {
      id: this.#nextQueueId++,
      job,
      params,
      queuedAt: now,
      startsAt: now + (delay ?? this.quietPeriodMs),
      number: 0,
      fate: job.fates.shift(),
    };
    this.#queue.set(item.id, item);
    this.builds.push({
      job: job.path,
      params: { ...params },
      queueId: item.id,
      number: item.number,
    });
    return new Response(null, {
      status: 201,
      headers: { location: `${origin}/queue/item/${item.id}/` },
    });
  }

  #jobUrl(job: Job, origin: string): string {
    return `${origin}/${job.names.map((n) => `job/${encodeURIComponent(n)}/`).join("")}`;
  }

  #buildUrl(item: QueueItem, origin: string): string {
    return `${this.#jobUrl(item.job, origin)}${item.number}/`;
  }

  /** The job's `_class`, and its builds'. */
  #classes(job: Job): { job: string; run: string } {
    return job.pipeline
      ? {
        job: "org.jenkinsci.plugins.workflow.job.WorkflowJob",
        run: "org.jenkinsci.plugins.workflow.job.WorkflowRun",
      }
      : { job: "hudson.model.FreeStyleProject", run: "hudson.model.FreeStyleBuild" };
  }

  /** A build's actions: its parameters and cause, then what Jenkins added when it ran. */
  #buildActions(item: QueueItem, origin: string): Json[] {
    const actions = this.#actions(item);
    if (item.causes && item.causes.length > 0) {
      actions.push({
        _class: "jenkins.model.InterruptedBuildAction",
        causes: item.causes.map((cause) => this.#causeJson(item.job, cause, origin)),
      });
    }
    // A Pipeline run carries more actions; some are not exported beans and show as {}.
    if (item.job.pipeline) {
      actions.push({}, { _class: "org.jenkinsci.plugins.workflow.job.views.FlowGraphAction" }, {});
    }
    return actions;
  }

  #causeJson(job: Job, cause: InterruptionCause, origin: string): Json {
    if ("user" in cause) {
      return {
        _class: "jenkins.model.CauseOfInterruption$UserInterruption",
        shortDescription: `Aborted by ${cause.user}`,
      };
    }
    if ("agent" in cause) {
      const [name, shortDescription] = AGENT_CAUSES[cause.agent];
      return { _class: name, shortDescription };
    }
    // newerBuild is exported; which of its fields come with it is UNCONFIRMED.
    return {
      _class: SUPERSEDED_CAUSE,
      shortDescription: `Superseded by #${cause.supersededBy}`,
      newerBuild: {
        _class: this.#classes(job).run,
        number: cause.supersededBy,
        url: `${this.#jobUrl(job, origin)}${cause.supersededBy}/`,
      },
    };
  }

  #actions(item: QueueItem): Json[] {
    const parameters = Object.entries(item.params).map(([name, value]) => ({
      _class: "hudson.model.StringParameterValue",
      name,
      value,
    }));
    const cause = {
      _class: "hudson.model.CauseAction",
      causes: [{
        _class: "hudson.model.Cause$UserIdCause",
        shortDescription: `Started by user ${this.user}`,
        userId: this.user,
        userName: this.user,
      }],
    };
    return item.job.parameterized
      ? [{ _class: "hudson.model.ParametersAction", parameters }, cause]
      : [cause];
  }

  #itemJson(item: QueueItem, origin: string, now: number): Json {
    const waiting = this.#waiting(item, now);
    const common = {
      _class: waiting ? "hudson.model.Queue$WaitingItem" : "hudson.model.Queue$LeftItem",
      actions: this.#actions(item),
      blocked: false,
      buildable: false,
      id: item.id,
      inQueueSince: item.queuedAt,
      params: Object.entries(item.params).map(([k, v]) => `\n${k}=${v}`).join(""),
      stuck: false,
      task: {
        _class: this.#classes(item.job).job,
        name: item.job.names[item.job.names.length - 1],
        url: this.#jobUrl(item.job, origin),
        color: "blue",
      },
      url: `queue/item/${item.id}/`,
      why: waiting ? `In the quiet period. Expires in ${timeSpan(item.startsAt - now)}` : null,
    };
    if (waiting) return { ...common, timestamp: item.startsAt };
    // A cancelled item leaves the queue without a build: executable is null.
    if (item.cancelledAt !== undefined) return { ...common, cancelled: true, executable: null };
    const executable = {
      _class: this.#classes(item.job).run,
      number: item.number,
      url: this.#buildUrl(item, origin),
    };
    return { ...common, cancelled: false, executable };
  }

  #buildJson(item: QueueItem, origin: string, now: number): Json {
    const running = item.result === undefined;
    return {
      _class: this.#classes(item.job).run,
      actions: this.#buildActions(item, origin),
      artifacts: [],
      building: running,
      description: null,
      displayName: `#${item.number}`,
      // Jenkins reports 0 until the build finishes.
      duration: running ? 0 : (item.finishedAt ?? now) - item.startsAt,
      estimatedDuration: 60_000,
      executor: null,
      fullDisplayName: `${item.job.names.join(" » ")} #${item.number}`,
      id: String(item.number),
      inProgress: running,
      keepLog: false,
      number: item.number,
      queueId: item.id,
      result: item.result ?? null,
      timestamp: item.startsAt,
      url: this.#buildUrl(item, origin),
    };
  }

  #jobJson(job: Job, origin: string, now: number): Json {
    const items = [...this.#queue.values()].filter((item) => item.job === job);
    const started = items.filter((item) => this.#started(item, now))
      .sort((a, b) => b.number - a.number);
    const ref = (item?: QueueItem) =>
      item
        ? {
          _class: this.#classes(job).run,
          number: item.number,
          url: this.#buildUrl(item, origin),
        }
        : null;
    const waiting = items.find((item) => this.#waiting(item, now));
    return {
      _class: this.#classes(job).job,
      name: job.names[job.names.length - 1],
      fullName: job.path,
      displayName: job.names[job.names.length - 1],
      fullDisplayName: job.names.join(" » "),
      url: this.#jobUrl(job, origin),
      buildable: !job.disabled,
      color: job.disabled ? "disabled" : started.length > 0 ? "blue" : "notbuilt",
      inQueue: waiting !== undefined,
      queueItem: waiting ? this.#itemJson(waiting, origin, now) : null,
      nextBuildNumber: job.nextBuildNumber,
      // Real Jenkins gives only {_class, number, url} here unless `tree=` asks for more.
      builds: started.map((item) => ({
        ...ref(item),
        queueId: item.id,
        actions: this.#buildActions(item, origin),
      })),
      firstBuild: ref(started.at(-1)),
      lastBuild: ref(started[0]),
      lastCompletedBuild: ref(started.find((item) => item.result !== undefined)),
      // What `tree=property[parameterDefinitions[name,type]]` reads; other properties lack it.
      property: job.parameterized
        ? [{
          _class: "hudson.model.ParametersDefinitionProperty",
          parameterDefinitions: job.parameters.map((name) => ({
            _class: "hudson.model.StringParameterDefinition",
            defaultParameterValue: { _class: "hudson.model.StringParameterValue", name, value: "" },
            description: "",
            name,
            type: "StringParameterDefinition",
          })),
        }]
        : [],
    };
  }

  /** A queue item as `tree=` sees it: its build and its job whole, when asked for. */
  #itemBean(item: QueueItem, origin: string, now: number): Json {
    const json = this.#itemJson(item, origin, now);
    const started = isObject(json.executable);
    return {
      ...json,
      task: () => this.#jobBean(item.job, origin, now),
      ...(started ? { executable: () => this.#buildJson(item, origin, now) } : {}),
    };
  }

  /** A job as `tree=` sees it: each build whole (`builds[number,result,…]{0,20}`). */
  #jobBean(job: Job, origin: string, now: number): Json {
    const started = [...this.#queue.values()]
      .filter((item) => item.job === job && this.#started(item, now))
      .sort((a, b) => b.number - a.number);
    const build = (item?: QueueItem) => () => item ? this.#buildJson(item, origin, now) : null;
    const waiting = [...this.#queue.values()]
      .find((item) => item.job === job && this.#waiting(item, now));
    return {
      ...this.#jobJson(job, origin, now),
      builds: () => started.map((item) => this.#buildJson(item, origin, now)),
      firstBuild: build(started.at(-1)),
      lastBuild: build(started[0]),
      lastCompletedBuild: build(started.find((item) => item.result !== undefined)),
      queueItem: () => waiting ? this.#itemBean(waiting, origin, now) : null,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Test world: both fakes, a config file pointing at them and a KV file, for tests and the demo

/** What one `main()` call printed and returned. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Deps for a test: real fetch, KV and files; captured output; short sleeps. */
export function testDeps(
  env: Record<string, string>,
  overrides: Partial<Deps> = {},
): { deps: Deps; output: { stdout: string; stderr: string } } {
  const output = { stdout: "", stderr: "" };
  const deps: Deps = {
    ...defaultDeps(),
    env: (name) => env[name] || undefined,
    stdout: (text) => void (output.stdout += text),
    stderr: (text) => void (output.stderr += text),
    stderrIsTerminal: () => false,
    // Retries and write pacing wait as asked, but tests need not sit through them.
    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, Math.min(ms, 5))),
    ...overrides,
  };
  return { deps, output };
}

/** A repository as the test world configures it. */
export interface WorldRepo {
  /** The `[coordinator.repos.NAME]` name. */
  name: string;
  /** "owner/name" on the fake GitHub. */
  fullName: string;
  /** The Jenkins executor job (default "Coder/executor"), created on the fake Jenkins. */
  jobPath?: string;
  /** The parameters that job defines (default EXECUTOR_PARAMETERS). */
  jobParameters?: string[];
  /** That job is a Pipeline (its builds can lose their agent), not a freestyle project. */
  jobPipeline?: boolean;
  os?: "linux" | "windows";
  issues?: FakeIssueInit[];
}

/** acme/NAME, configured as NAME, with these issues (and `extra` settings). */
export function acmeRepo(
  name: string,
  issues: FakeIssueInit[] = [],
  extra: Omit<WorldRepo, "name" | "fullName" | "issues"> = {},
): WorldRepo {
  return { name, fullName: `acme/${name}`, issues, ...extra };
}

/**
 * The issue a build on the fake Jenkins is for: the number its create-plan command names, else
 * the one its branch starts with (linked branches are `N-…` here).
 */
export function issueOfBuild(build: { params: Record<string, string> }): number {
  const plan = /create-plan (\d+)/.exec(build.params.COMMAND ?? "");
  return Number(plan ? plan[1] : (build.params.BRANCH_NAME ?? "").split("-")[0]);
}

/** Env for a child `deno` process: only what Deno needs to find its cache (and HOME). */
export function childEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of ["HOME", "PATH", "DENO_DIR", "XDG_CACHE_HOME", "NO_COLOR"]) {
    const value = Deno.env.get(name);
    if (value) env[name] = value;
  }
  return env;
}

/** The `[coordinator]` settings and credentials of a config written by `fakesConfig()`. */
export interface FakesConfigOptions {
  /** Jenkins' password instead of its API token. */
  jenkinsPassword?: string;
  /** `request_timeout_seconds`; left out (the default) when absent. */
  timeoutSeconds?: number;
  /** `github_write_interval_ms` (default 0: no pacing between label writes). */
  writeIntervalMs?: number;
  /** TOML appended to `[coordinator]`. */
  extraConfig?: string;
}

/**
 * The text of a config file pointing at these fakes, with a `[coordinator.repos.NAME]` section
 * per repository: what `World` writes, and the benchmark too.
 */
export function fakesConfig(
  fakes: { gh: FakeGitHub; jenkins: FakeJenkins },
  repos: readonly WorldRepo[],
  options: FakesConfigOptions = {},
): string {
  const sections = repos.map((repo) => `
[coordinator.repos.${repo.name}]
repo_url = "https://github.com/${repo.fullName}.git"
executor_job_path = "${repo.jobPath ?? "Coder/executor"}"
github_credentials_id = "github-pat"
executor_os = "${repo.os ?? "linux"}"
`);
  const timeout = options.timeoutSeconds === undefined
    ? ""
    : `request_timeout_seconds = ${options.timeoutSeconds}\n`;
  return `[github]
token = "${fakes.gh.token}"
api_url = "${fakes.gh.url}"

[jenkins]
server_url = "${fakes.jenkins.url}"
username = "${fakes.jenkins.user}"
api_token = "${options.jenkinsPassword ?? fakes.jenkins.token}"

[coordinator]
github_write_interval_ms = ${options.writeIntervalMs ?? 0}
${timeout}${options.extraConfig ?? ""}
${sections.join("")}`;
}

/**
 * Fake GitHub and Jenkins on 127.0.0.1, a config file pointing at them and a KV
 * file shared by every run, all in a temp dir removed on dispose (`await using`).
 */
export class World {
  gh!: FakeGitHub;
  jenkins!: FakeJenkins;
  dir!: string;
  configPath!: string;
  kvPath!: string;
  /** The environment `main()` sees: only HOME (the temp dir) unless a test adds more. */
  env: Record<string, string> = {};

  /** Starts the fakes with `repos` (default: acme/alpha, no issues) and writes the config. */
  static async create(
    options: FakesConfigOptions & { repos?: WorldRepo[]; prefix?: "" | "/api/v3" } = {},
  ): Promise<World> {
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
      world.jenkins.addJob(repo.jobPath ?? "Coder/executor", {
        parameters: repo.jobParameters,
        pipeline: repo.jobPipeline,
      });
    }
    // A short request timeout: the fault tests wait out a timeout several times.
    const config = fakesConfig(world, repos, {
      ...options,
      timeoutSeconds: options.timeoutSeconds ?? 2,
    });
    await Deno.writeTextFile(world.configPath, config, { mode: 0o600 });
    return world;
  }

  /** The usual world: one repository, acme/alpha, with these issues. */
  static alpha(
    issues: FakeIssueInit[],
    options: Omit<Parameters<typeof World.create>[0], "repos"> = {},
  ): Promise<World> {
    return World.create({ ...options, repos: [acmeRepo("alpha", issues)] });
  }

  /** Runs `main(args)` with this world's `--config` and, for commands that take it, `--kv`. */
  async main(args: string[], overrides: Partial<Deps> = {}): Promise<RunResult> {
    const { deps, output } = testDeps(this.env, overrides);
    const name = args[0] as keyof typeof COMMANDS;
    const flags: readonly string[] = Object.hasOwn(COMMANDS, name) ? COMMANDS[name].flags : [];
    const kv = flags.includes("kv") ? ["--kv", this.kvPath] : [];
    const code = await main([...args, "--config", this.configPath, ...kv], deps);
    return { code, ...output };
  }

  /** Runs `main(["run", ...args])` with this world's config and KV. */
  run(args: string[], overrides: Partial<Deps> = {}): Promise<RunResult> {
    return this.main(["run", ...args], overrides);
  }

  /** Runs with --json and returns the parsed summary too. */
  async runJson(
    args: string[],
    overrides: Partial<Deps> = {},
  ): Promise<RunResult & { summary: RunSummary }> {
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

  /** The labels of an issue on the fake GitHub now. */
  labels(fullName: string, number: number): string[] {
    return this.gh.getIssue(fullName, number).labels;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.gh.close();
    await this.jenkins.close();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// KV Connect: a remote Deno KV, as `Deno.openKv("http://…")` reaches one

/** How the fake KV Connect endpoint answers reads and writes (the metadata exchange always). */
export type KvConnectMode = "ok" | "fail" | "stall";

/** One entry of the fake KV: the key's bytes, the value as the client encoded it. */
interface KvCell {
  key: Uint8Array;
  value: Uint8Array;
  encoding: number;
  versionstamp: Uint8Array;
  /** Epoch ms after which it reads as absent; 0: never. */
  expireAt: number;
}

/**
 * A KV Connect endpoint on 127.0.0.1 (denokv's `proto/kv-connect.md`): the metadata exchange
 * (`POST /connect` with the access token, answered with protocol version 2 and a strong data
 * endpoint), then the data path's `snapshot_read` and `atomic_write`, protobuf in and out,
 * over keys and values kept as the bytes the client sends (checks, set, delete, expiry). In
 * `fail` mode every data request is answered 503, in `stall` mode none is answered until the
 * mode changes or the fake closes; the metadata exchange still succeeds, as a store whose
 * front door is up but whose data path is not.
 */
export class FakeKvConnect {
  readonly token = `kv_${randomHex(12)}`;
  /** Settable by tests at any moment; requests already stalled are answered 503 when it changes. */
  mode: KvConnectMode = "ok";
  /** Data path requests received (`snapshot_read`, `atomic_write`), answered or not. */
  dataRequests = 0;
  readonly url: string;
  #server: Deno.HttpServer<Deno.NetAddr>;
  #cells = new Map<string, KvCell>();
  #version = 0n;
  #dataToken = randomHex(16);
  #databaseId = crypto.randomUUID();
  #wake = new AbortController();

  constructor() {
    this.#server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (request) => this.#serve(request),
    );
    this.url = `http://127.0.0.1:${this.#server.addr.port}/connect`;
  }

  /** Changes the mode; requests stalled until now are answered 503. */
  set(mode: KvConnectMode): void {
    this.mode = mode;
    this.#wake.abort();
    this.#wake = new AbortController();
  }

  async close(): Promise<void> {
    this.#wake.abort();
    await this.#server.shutdown();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #serve(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const body = new Uint8Array(await request.arrayBuffer());
    if (url.pathname === "/connect" && request.method === "POST") {
      if (request.headers.get("authorization") !== `Bearer ${this.token}`) {
        return new Response("Unauthorized: invalid access token", { status: 401 });
      }
      return Response.json({
        version: 2,
        databaseId: this.#databaseId,
        endpoints: [{ url: "/data", consistency: "strong" }],
        token: this.#dataToken,
        expiresAt: new Date(Date.now() + 3600_000).toISOString(),
      });
    }
    const method = /^\/data\/(snapshot_read|atomic_write)$/.exec(url.pathname)?.[1];
    if (!method || request.method !== "POST") return new Response("Not Found", { status: 404 });
    this.dataRequests++;
    if (this.mode === "stall") {
      // Until the mode changes or the fake closes, even when the client gave up long ago.
      const wake = this.#wake.signal;
      await new Promise((resolve) => wake.addEventListener("abort", resolve, { once: true }));
    }
    if (this.mode !== "ok") return new Response("Service Unavailable", { status: 503 });
    if (
      request.headers.get("authorization") !== `Bearer ${this.#dataToken}` ||
      request.headers.get("x-denokv-database-id") !== this.#databaseId
    ) {
      return new Response("Unauthorized", { status: 401 });
    }
    const answer = method === "snapshot_read" ? this.#read(body) : this.#write(body);
    return new Response(answer, { headers: { "content-type": "application/x-protobuf" } });
  }

  /** SnapshotRead → SnapshotReadOutput: each range's live entries, in key order, up to its limit. */
  #read(body: Uint8Array): Uint8Array<ArrayBuffer> {
    const now = Date.now();
    const live = [...this.#cells.values()].filter((cell) => !cell.expireAt || cell.expireAt > now)
      .sort((a, b) => compareBytes(a.key, b.key));
    const ranges = pbFields(body).filter((field) => field.no === 1).map((field) => {
      const range = pbFields(field.bytes!);
      const start = pbBytes(range, 1);
      const end = pbBytes(range, 2);
      const limit = pbNumber(range, 3);
      const inRange = live.filter((cell) =>
        compareBytes(cell.key, start) >= 0 && compareBytes(cell.key, end) < 0
      );
      if (pbNumber(range, 4)) inRange.reverse();
      const entries = inRange.slice(0, limit || undefined).map((cell) =>
        pbMessage([
          [1, cell.key],
          [2, cell.value],
          [3, cell.encoding],
          [4, cell.versionstamp],
        ])
      );
      return pbMessage(entries.map((entry) => [1, entry]));
    });
    return pbMessage([...ranges.map((range): PbField => [1, range]), [4, 1], [8, 1]]);
  }

  /** AtomicWrite → AtomicWriteOutput: every check holds, then the set and delete mutations. */
  #write(body: Uint8Array): Uint8Array<ArrayBuffer> {
    const fields = pbFields(body);
    const now = Date.now();
    const failed = fields.filter((field) => field.no === 1).flatMap((field, index) => {
      const check = pbFields(field.bytes!);
      const cell = this.#cells.get(hex(pbBytes(check, 1)));
      const current = cell && (!cell.expireAt || cell.expireAt > now)
        ? cell.versionstamp
        : new Uint8Array();
      return compareBytes(current, pbBytes(check, 2)) === 0 ? [] : [index];
    });
    if (failed.length > 0) return pbMessage([[1, 2], ...failed.map((i): PbField => [4, i])]);
    const versionstamp = new Uint8Array(10);
    new DataView(versionstamp.buffer).setBigUint64(0, ++this.#version);
    for (const field of fields.filter((field) => field.no === 2)) {
      const mutation = pbFields(field.bytes!);
      const key = pbBytes(mutation, 1);
      const type = pbNumber(mutation, 3);
      if (type === 2) {
        this.#cells.delete(hex(key));
      } else if (type === 1) {
        const value = pbFields(pbBytes(mutation, 2));
        this.#cells.set(hex(key), {
          key,
          value: pbBytes(value, 1),
          encoding: pbNumber(value, 2),
          versionstamp,
          expireAt: pbNumber(mutation, 4),
        });
      } else {
        return pbMessage([[1, 0]]); // sum, min and max: not needed here
      }
    }
    return pbMessage([[1, 1], [2, versionstamp]]);
  }
}

/** One protobuf field as read: its number, and its value (varint) or its bytes (length-delimited). */
interface PbRead {
  no: number;
  value: number;
  bytes?: Uint8Array;
}

/** A field to write: number and value; a number is a varint, bytes are length-delimited. */
type PbField = [number, number | Uint8Array];

function pbVarint(value: number): number[] {
  const out: number[] = [];
  let rest = BigInt(value);
  do {
    const byte = Number(rest & 0x7fn);
    rest >>= 7n;
    out.push(rest > 0n ? byte | 0x80 : byte);
  } while (rest > 0n);
  return out;
}

function pbMessage(fields: PbField[]): Uint8Array<ArrayBuffer> {
  const out: number[] = [];
  for (const [no, value] of fields) {
    if (typeof value === "number") out.push(...pbVarint(no << 3), ...pbVarint(value));
    else out.push(...pbVarint((no << 3) | 2), ...pbVarint(value.length), ...value);
  }
  return new Uint8Array(out);
}

/** The fields of a message; varints (wire type 0) and length-delimited ones (2) only. */
function pbFields(bytes: Uint8Array): PbRead[] {
  const fields: PbRead[] = [];
  let at = 0;
  const varint = () => {
    let value = 0n;
    for (let shift = 0n;; shift += 7n) {
      const byte = bytes[at++];
      value |= BigInt(byte & 0x7f) << shift;
      if (byte < 0x80) return Number(value);
    }
  };
  while (at < bytes.length) {
    const tag = varint();
    const [no, wire] = [Math.floor(tag / 8), tag % 8];
    if (wire === 0) fields.push({ no, value: varint() });
    else if (wire === 2) {
      const length = varint();
      fields.push({ no, value: length, bytes: bytes.slice(at, at + length) });
      at += length;
    } else throw new Error(`protobuf wire type ${wire} is not used by KV Connect`);
  }
  return fields;
}

function pbBytes(fields: PbRead[], no: number): Uint8Array {
  return fields.find((field) => field.no === no)?.bytes ?? new Uint8Array();
}

function pbNumber(fields: PbRead[], no: number): number {
  return fields.find((field) => field.no === no)?.value ?? 0;
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (a[i] !== b[i]) return a[i] - b[i];
  }
  return a.length - b.length;
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------------------------
// In-memory doubles: GitHub and Jenkins through the interfaces a run uses, for fast protocol tests

/** Thrown by a double's hook to stand for the coordinator's process dying at that point. */
export class Crash extends Error {
  constructor(where: string) {
    super(`crashed ${where}`);
    this.name = "Crash";
  }
}

/** Something to do at the next call of a double's method: before it takes effect, or after. */
interface Hook {
  method: string;
  after: boolean;
  action: () => void | Promise<void>;
}

/** The calls of a double, and the hooks waiting for them. */
class Calls {
  /** Every call, in order: method name and first arguments. */
  readonly log: string[] = [];
  #hooks: Hook[] = [];

  at(method: string, action: Hook["action"], after: boolean): void {
    this.#hooks.push({ method, action, after });
  }

  /** Runs `body` as the call `name`, with the hooks due before and after it (each once). */
  async run<T>(name: string, args: unknown[], body: () => T): Promise<T> {
    this.log.push(`${name} ${args.map((arg) => JSON.stringify(arg)).join(" ")}`.trim());
    await this.#fire(name, false);
    const result = body();
    await this.#fire(name, true);
    return result;
  }

  async #fire(method: string, after: boolean): Promise<void> {
    const index = this.#hooks.findIndex((hook) => hook.method === method && hook.after === after);
    if (index === -1) return;
    const [hook] = this.#hooks.splice(index, 1);
    await hook.action();
  }
}

/** How an in-memory issue starts out: open, with these labels and linked branches. */
export interface MemoryIssueInit {
  number: number;
  labels: string[];
  linkedBranches?: string[];
}

interface MemoryIssue extends CoordinatorIssue {
  branches: string[];
  comments: string[];
  /** GitHub answers this status for it: deleted (410) or gone from view (404). */
  gone?: 404 | 410;
}

/**
 * GitHub as a run sees it (`GitHubApi`), in memory: issues with labels, linked branches and
 * comments; every issue on the first page of the probe. Label writes behave as the `GitHub`
 * class promises: adding a label keeps the others, removing an absent one is fine.
 */
export class MemoryGitHub implements GitHubApi {
  readonly stats: GitHubStats = {
    requests: 0,
    notModified: 0,
    costed: 0,
    rateLimitRemaining: null,
  };
  #calls = new Calls();
  #issues = new Map<string, MemoryIssue>();
  /** Every label taken off an issue ("owner/name#N"), and when (the real clock, as runs have). */
  #removals: { issue: string; label: string; at: number }[] = [];
  #clock = Date.parse("2026-01-01T00:00:00Z");

  /** Every call so far, in order, e.g. `addLabel 1 "status-03:planning"`. */
  get calls(): readonly string[] {
    return this.#calls.log;
  }

  /** Runs `action` at the next call of `method`: before it takes effect, or `after` it. */
  at(method: keyof GitHubApi, action: () => void | Promise<void>, options = { after: false }) {
    this.#calls.at(method, action, options.after);
  }

  /** Adds an open issue to `repo` ("owner/name"). */
  add(repo: string, init: MemoryIssueInit): void {
    const at = this.#tick();
    this.#issues.set(`${repo}#${init.number}`, {
      number: init.number,
      title: `Issue ${init.number}`,
      state: "open",
      labels: [...init.labels],
      pullRequest: false,
      createdAt: at,
      updatedAt: at,
      branches: init.linkedBranches ?? [],
      comments: [],
    });
  }

  /** The labels of an issue now. */
  labels(repo: string, number: number): string[] {
    return [...this.#issue(repo, number).labels];
  }

  /** Sets an issue's labels, as a person would. */
  setLabels(repo: string, number: number, labels: string[]): void {
    const issue = this.#issue(repo, number);
    for (const label of issue.labels.filter((name) => !labels.includes(name))) {
      this.#removals.push({ issue: `${repo}#${number}`, label, at: Date.now() });
    }
    issue.labels = [...labels];
    issue.updatedAt = this.#tick();
  }

  /** Makes GitHub answer `status` for an issue: 410 deleted, 404 transferred or hidden. */
  remove(repo: string, number: number, status: 404 | 410): void {
    this.#issue(repo, number).gone = status;
  }

  probe(repo: RepoConfig, etag: string | null): ReturnType<GitHubApi["probe"]> {
    return this.#calls.run("probe", [], () => {
      this.stats.requests++;
      const issues = this.#list(repo).sort((a, b) => b.updatedAt.localeCompare(a.updatedAt));
      const tag = `"${issues.map((issue) => `${issue.number}@${issue.updatedAt}`).join(",")}"`;
      if (etag === tag) {
        this.stats.notModified++;
        return null;
      }
      this.stats.costed++;
      return { issues: issues.map(toPlain), next: null, etag: tag };
    });
  }

  /** Every issue is on the first page here: the pages after it are none. */
  async *pages(_repo: RepoConfig, first: IssuePage): AsyncGenerator<CoordinatorIssue[]> {
    yield await Promise.resolve(first.issues);
  }

  listOpen(
    repo: RepoConfig,
    keep: (issue: CoordinatorIssue) => boolean,
  ): Promise<CoordinatorIssue[]> {
    return this.#calls.run("listOpen", [], () => {
      this.stats.requests++;
      this.stats.costed++;
      return this.#list(repo).filter((issue) => issue.state === "open").map(toPlain).filter(keep);
    });
  }

  getIssue(repo: RepoConfig, number: number): Promise<CoordinatorIssue> {
    return this.#calls.run("getIssue", [number], () => toPlain(this.#visible(repo, number)));
  }

  /** The issue (it has no ETag here: always "changed"). */
  issueIfChanged(
    repo: RepoConfig,
    number: number,
    _etag: string | null,
  ): ReturnType<GitHubApi["issueIfChanged"]> {
    return this.#calls.run("issueIfChanged", [number], () => ({
      issue: toPlain(this.#visible(repo, number)),
      etag: null,
    }));
  }

  /** Not modelled: the verified trigger is tested against FakeGitHub. */
  labelEvent(): ReturnType<GitHubApi["labelEvent"]> {
    return Promise.reject(new Error("MemoryGitHub does not model issue events"));
  }

  /** Not modelled: the verified trigger is tested against FakeGitHub. */
  bodyEdits(): ReturnType<GitHubApi["bodyEdits"]> {
    return Promise.reject(new Error("MemoryGitHub does not model body edits"));
  }

  /** Not modelled: the verified trigger is tested against FakeGitHub. */
  collaboratorRole(): ReturnType<GitHubApi["collaboratorRole"]> {
    return Promise.reject(new Error("MemoryGitHub does not model roles"));
  }

  linkedBranches(repo: RepoConfig, number: number): Promise<string[]> {
    return this.#calls.run("linkedBranches", [number], () => [
      ...this.#visible(repo, number).branches,
    ]);
  }

  addLabel(repo: RepoConfig, number: number, label: string): Promise<void> {
    return this.#calls.run("addLabel", [number, label], () => {
      const issue = this.#visible(repo, number);
      if (!issue.labels.includes(label)) issue.labels.push(label);
      issue.updatedAt = this.#tick();
    });
  }

  removeLabel(repo: RepoConfig, number: number, label: string): Promise<void> {
    return this.#calls.run("removeLabel", [number, label], () => {
      const issue = this.#visible(repo, number);
      if (!issue.labels.includes(label)) return;
      issue.labels = issue.labels.filter((name) => name !== label);
      issue.updatedAt = this.#tick();
      this.#removals.push({ issue: `${repo.owner}/${repo.repo}#${number}`, label, at: Date.now() });
    });
  }

  labelRemovedSince(
    repo: RepoConfig,
    number: number,
    label: string,
    since: number,
  ): Promise<string | null> {
    return this.#calls.run("labelRemovedSince", [number, label], () => {
      this.#visible(repo, number);
      const key = `${repo.owner}/${repo.repo}#${number}`;
      const from = Math.floor(since / 1000) * 1000;
      const removal = this.#removals.findLast((item) =>
        item.issue === key && item.label === label && item.at >= from
      );
      return removal ? new Date(removal.at).toISOString() : null;
    });
  }

  hasComment(repo: RepoConfig, number: number, marker: string): Promise<boolean> {
    return this.#calls.run(
      "hasComment",
      [number],
      () => this.#visible(repo, number).comments.some((body) => body.includes(marker)),
    );
  }

  addComment(repo: RepoConfig, number: number, body: string): Promise<void> {
    return this.#calls.run("addComment", [number], () => {
      this.#visible(repo, number).comments.push(body);
    });
  }

  #issue(repo: string, number: number): MemoryIssue {
    const issue = this.#issues.get(`${repo}#${number}`);
    if (!issue) throw new Error(`MemoryGitHub has no issue ${repo}#${number}`);
    return issue;
  }

  /** The issue as the `GitHub` class gives it, or the error it throws for a gone one. */
  #visible(repo: RepoConfig, number: number): MemoryIssue {
    const issue = this.#issue(`${repo.owner}/${repo.repo}`, number);
    if (issue.gone) {
      const what = issue.gone === 410 ? "was deleted (410)" : "not found on GitHub (404)";
      throw new GitHubError(`Cannot read issue #${number}: ${what}`, {
        kind: issue.gone === 404 ? "not-found" : "other",
        status: issue.gone,
      });
    }
    return issue;
  }

  #list(repo: RepoConfig): MemoryIssue[] {
    const prefix = `${repo.owner}/${repo.repo}#`;
    return [...this.#issues.entries()]
      .filter(([key, issue]) => key.startsWith(prefix) && !issue.gone)
      .map(([, issue]) => issue);
  }

  /** A later `updated_at` for every change, as GitHub keeps it. */
  #tick(): string {
    this.#clock += 1000;
    return new Date(this.#clock).toISOString();
  }
}

function toPlain(issue: MemoryIssue): CoordinatorIssue {
  const { branches: _branches, comments: _comments, gone: _gone, ...plain } = issue;
  return { ...plain, labels: [...plain.labels] };
}

/** A build the in-memory Jenkins was asked for. */
export interface MemoryBuild {
  jobPath: string;
  params: Record<string, string>;
  queueUrl: string;
  /** Null while it waits in the queue. */
  buildUrl: string | null;
  /** Jenkins' word once it finished, e.g. SUCCESS or FAILURE. */
  result: BuildResult | null;
  queuedAt: number;
}

/**
 * Jenkins as a run sees it (`JenkinsApi`), in memory: every trigger queues a build, which
 * starts at once unless `startBuilds` is false; a trigger with a request id already queued
 * answers as Jenkins' 303 does. `find()` matches as the `Jenkins` class does.
 */
export class MemoryJenkins implements JenkinsApi {
  /** Builds queued through this double (the `Jenkins` class counts per run). */
  builds = 0;
  /** Every build queued, in order. */
  readonly queued: MemoryBuild[] = [];
  startBuilds = true;
  #calls = new Calls();

  /** Every call so far, in order. */
  get calls(): readonly string[] {
    return this.#calls.log;
  }

  /** Runs `action` at the next call of `method`: before it takes effect, or `after` it. */
  at(method: keyof JenkinsApi, action: () => void | Promise<void>, options = { after: false }) {
    this.#calls.at(method, action, options.after);
  }

  jobUrl(jobPath: string): string {
    return `http://jenkins.test/job/${jobPath.split("/").map(encodeURIComponent).join("/job/")}`;
  }

  trigger(
    jobPath: string,
    params: Record<string, string>,
  ): Promise<{ queueUrl: string | null; existing: boolean }> {
    return this.#calls.run("trigger", [params[REQUEST_ID_PARAM]], () => {
      const waiting = this.queued.find((build) =>
        build.buildUrl === null && build.params[REQUEST_ID_PARAM] === params[REQUEST_ID_PARAM]
      );
      if (waiting) return { queueUrl: waiting.queueUrl, existing: true };
      const number = this.queued.length + 1;
      this.queued.push({
        jobPath,
        params: { ...params },
        queueUrl: `http://jenkins.test/queue/item/${number}/`,
        buildUrl: this.startBuilds ? `${this.jobUrl(jobPath)}/${number}/` : null,
        result: null,
        queuedAt: Date.now(),
      });
      this.builds++;
      return { queueUrl: `http://jenkins.test/queue/item/${number}/`, existing: false };
    });
  }

  buildUrl(queueUrl: string | null): Promise<string | null> {
    return this.#calls.run(
      "buildUrl",
      [],
      () => this.queued.find((build) => build.queueUrl === queueUrl)?.buildUrl ?? null,
    );
  }

  find(record: DispatchRecord): Promise<{ url: string; queued: boolean } | null> {
    return this.#calls.run("find", [record.requestId], () => {
      const build = this.queued.find((build) => matchesDispatch(workOf(build), record));
      if (!build) return null;
      return { url: build.buildUrl ?? build.queueUrl, queued: build.buildUrl === null };
    });
  }

  buildState(record: DispatchRecord): Promise<BuildState> {
    return this.#calls.run("buildState", [record.requestId], () => {
      const build = this.queued.find((build) => matchesDispatch(workOf(build), record));
      if (!build) return { result: "MISSING", buildUrl: null, queueUrl: record.queueUrl ?? null };
      const result = build.result ?? (build.buildUrl ? "RUNNING" : "QUEUED");
      return { result, buildUrl: build.buildUrl, queueUrl: build.queueUrl };
    });
  }

  sameWork(record: DispatchRecord, buildUrl: string): Promise<boolean | null> {
    return this.#calls.run("sameWork", [record.requestId], () => {
      const build = this.queued.find((build) => build.buildUrl === buildUrl);
      if (!build) return null;
      return build.params.REPO_URL === record.params.REPO_URL &&
        build.params.COMMAND === record.params.COMMAND;
    });
  }
}

/** A build as Jenkins' JSON API lists it, for `matchesDispatch()`. */
function workOf(build: MemoryBuild) {
  const parameters = Object.entries(build.params).map(([name, value]) => ({ name, value }));
  return {
    url: build.buildUrl ?? build.queueUrl,
    inQueueSince: build.queuedAt,
    actions: [{ parameters }],
  };
}

/**
 * One repository (acme/alpha) on in-memory doubles and a KV in memory: each `context()` is a
 * new coordinator run of the core, without HTTP. Close it with `await using`.
 */
export class MemoryWorld {
  readonly github = new MemoryGitHub();
  readonly jenkins = new MemoryJenkins();
  /** What the runs logged, one line each. */
  readonly log: string[] = [];
  readonly repo: RepoConfig = {
    name: "alpha",
    repoUrl: "https://github.com/acme/alpha.git",
    id: "github.com/acme/alpha",
    owner: "acme",
    repo: "alpha",
    executorJobPath: "Coder/executor",
    githubCredentialsId: "github-pat",
    executorOs: "linux",
    maxActiveJobs: null,
  };
  readonly kv: Deno.Kv;
  readonly deps: Deps;

  constructor(kv: Deno.Kv) {
    this.kv = kv;
    this.deps = testDeps({}).deps;
  }

  /** A world whose repository has these open issues. */
  static async create(issues: MemoryIssueInit[] = []): Promise<MemoryWorld> {
    const world = new MemoryWorld(await Deno.openKv(":memory:"));
    for (const issue of issues) world.github.add("acme/alpha", issue);
    return world;
  }

  /** The store on this world's KV, as a run opens it. */
  store(): Store {
    return Store.over(this.kv, this.deps);
  }

  /** A new run: its own id and tally; `store` replaces the store (e.g. one that crashes). */
  context(options: { dryRun?: boolean; store?: Store } = {}): RunContext {
    const line = (level: string) => (message: string) => void this.log.push(`${level} ${message}`);
    const run: RunContext["options"] = {
      repo: undefined,
      config: undefined,
      kv: undefined,
      all: true,
      dryRun: options.dryRun ?? false,
      forceRefresh: false,
      keepGoing: false,
      logLevel: "INFO",
      json: false,
    };
    return runContext({
      deps: this.deps,
      config: memoryConfig(this.repo),
      log: {
        debug: line("DEBUG"),
        info: line("INFO"),
        warn: line("WARNING"),
        error: line("ERROR"),
      },
      store: options.store ?? this.store(),
      github: this.github,
      jenkins: this.jenkins,
      options: run,
      runId: crypto.randomUUID(),
      tokenId: "memory",
    });
  }

  /** Makes a run count as alive for the others: takes its lease as `run` does. */
  async keepAlive(ctx: RunContext): Promise<void> {
    assertNull(await this.store().leases.acquire(runLeaseName(ctx.runId), ctx.runId));
  }

  /** The issue's labels on the in-memory GitHub now. */
  labels(number: number): string[] {
    return this.github.labels("acme/alpha", number);
  }

  [Symbol.dispose](): void {
    this.kv.close();
  }
}

function assertNull(value: unknown): void {
  if (value !== null) throw new Error(`expected null, got ${JSON.stringify(value)}`);
}

function memoryConfig(repo: RepoConfig): Config {
  return {
    source: "memory",
    github: {
      token: "ghp_memorytoken0000000000000000000000000",
      apiUrl: "https://api.github.test",
    },
    jenkins: {
      serverUrl: "http://jenkins.test",
      username: "bot",
      apiToken: "memory-jenkins-token",
    },
    coordinator: {
      cacheRefreshMinutes: 1440,
      requestTimeoutMs: 1000,
      kvTimeoutMs: 10_000,
      githubWriteIntervalMs: 0,
      maxParallelRepos: 1,
      maxActiveJobs: null,
      maxDispatchesPerRun: null,
      issueComments: false,
      maxRetries: 0,
      retryBackoffMs: 5 * 60_000,
      jobLogLevel: "INFO",
      staleTimeoutMinutes: { ...STALE_TIMEOUT_MINUTES },
      gates: {
        triggerMinRole: null,
        trustedActors: [],
        removeUntrustedLabel: false,
        respectIssueDependencies: true,
      },
    },
    repos: [repo],
    warnings: [],
    credentialsFrom: {
      githubToken: "[github] token in memory",
      jenkinsUsername: "[jenkins] username in memory",
      jenkinsApiToken: "[jenkins] api_token in memory",
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Demo: `deno task demo` runs the real CLI against the fakes and narrates what it sees

/** The demo's issues: one per workflow, then one per reason to skip, all from WORKFLOWS. */
function demoIssues(): { dispatch: FakeIssueInit[]; skip: FakeIssueInit[] } {
  let number = 0;
  const issue = (title: string, labels: string[], branches: string[] | "own" = "own") => {
    number++;
    const linkedBranches = branches === "own"
      ? [`${number}-${title.toLowerCase().replaceAll(/\W+/g, "-")}`]
      : branches;
    return { number, title, labels, linkedBranches };
  };
  const dispatch = WORKFLOWS.map((spec) => issue(`Ready for ${spec.workflow}`, [spec.pickup]));
  const [first, second = first] = WORKFLOWS;
  const linked = WORKFLOWS.find((spec) => spec.branch === "linked");
  const skip = [
    ...(WORKFLOWS.length > 1
      ? [issue("Two pickup labels at once", [first.pickup, second.pickup])]
      : []),
    ...IGNORE_LABELS.map((label) => issue(`Held back with "${label}"`, [first.pickup, label])),
    issue("Pickup label while a bot is busy on it", [first.pickup, second.busy]),
    ...(linked
      ? [
        issue("No branch linked yet", [linked.pickup], []),
        issue("Two branches linked", [linked.pickup], ["feature-a", "feature-b"]),
      ]
      : []),
  ];
  return { dispatch, skip };
}

/** The lines of a job script that say what it runs: checkout, mcp-coder and the watchdog. */
function scriptExcerpt(command: string): string[] {
  return command.split("\n").filter((line) => /^(git checkout|mcp-coder )/.test(line));
}

/**
 * `deno task demo`: the coordinator's real `labels`, `check` and `run --all` against fake
 * GitHub and Jenkins on 127.0.0.1, with a throwaway config and KV file. Prints what happens
 * and returns 0, or 1 if anything did not go as the coordinator promises.
 */
export async function demo(print: (line: string) => void = console.log): Promise<number> {
  const started = performance.now();
  const { dispatch, skip } = demoIssues();
  const windowsPickup = WORKFLOWS.find((spec) => spec.branch === "main") ?? WORKFLOWS[0];
  await using world = await World.create({
    repos: [
      { name: "webapp", fullName: "acme/webapp", issues: [...dispatch, ...skip] },
      {
        name: "docs",
        fullName: "acme/docs",
        jobPath: "Coder/executor-windows",
        os: "windows",
        issues: [{
          number: 1,
          title: "Plan the docs site",
          labels: [windowsPickup.pickup],
          linkedBranches: ["1-docs"],
        }],
      },
    ],
  });
  const problems: string[] = [];
  const expect = (ok: boolean, what: string) => void (ok || problems.push(what));
  const show = (text: string) => text.trimEnd().split("\n").forEach((line) => print(`    ${line}`));
  const heading = (text: string) => print(`\n${text}\n${"-".repeat(Math.min(text.length, 96))}`);
  print(`coordinator demo: the real CLI against fake GitHub and Jenkins on 127.0.0.1`);
  print(`Config and KV file in ${world.dir} (removed at the end); no credentials, no network.`);
  print(`Repositories: acme/webapp (linux executor), acme/docs (windows executor).`);

  heading("1. labels --all: create mcp_coder's workflow labels on GitHub");
  const labels = await world.main(["labels", "--all"]);
  expect(labels.code === 0, `labels exited ${labels.code}: ${labels.stderr}`);
  show(labels.stdout.trimEnd().split("\n").filter((line) => !line.startsWith("  ")).join("\n"));

  heading("2. check --all: the read-only preflight");
  const check = await world.main(["check", "--all"]);
  expect(check.code === 0, `check exited ${check.code}`);
  show(check.stdout);

  await demoFirstRun(world, { print, show, heading, expect }, { dispatch, skip });
  await demoIdleRuns(world, { print, show, heading, expect });
  await demoRace(world, { print, show, heading, expect });
  await demoStuckJob(world, { print, show, heading, expect }, dispatch);

  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  if (problems.length > 0) {
    for (const problem of problems) print(`demo: unexpected: ${problem}`);
    return 1;
  }
  print(`\nDone in ${seconds} s. Run the tests with: deno task test`);
  return 0;
}

interface DemoOut {
  print: (line: string) => void;
  show: (text: string) => void;
  heading: (text: string) => void;
  expect: (ok: boolean, what: string) => void;
}

/** A build fails; past its busy label's stale timeout a run moves the issue on; then `status`. */
async function demoStuckJob(
  world: World,
  out: DemoOut,
  dispatched: FakeIssueInit[],
): Promise<void> {
  const { print, show, heading, expect } = out;
  const spec = WORKFLOWS.find((candidate) => candidate.branch === "main") ?? WORKFLOWS[0];
  const number = dispatched.find((issue) => issue.labels?.includes(spec.pickup))!.number;
  const build = world.jenkins.builds.find((entry) =>
    entry.job === "Coder/executor" && entry.params.COMMAND.includes(` ${spec.workflow} ${number} `)
  );
  const minutes = STALE_TIMEOUT_MINUTES[spec.busy] + 1;
  heading(
    `7. The build of #${number} fails and nothing moves its label; ${minutes} minutes later ` +
      `(past ${spec.busy}'s stale timeout) a run asks Jenkins`,
  );
  // Both clocks jump ahead instead of waiting: the coordinator's through Deps.now.
  const later = () => Date.now() + minutes * 60_000;
  world.jenkins.now = later;
  if (build) world.jenkins.finishBuild(build.queueId, "FAILURE");
  const run = await world.main(["run", "--all"], { now: later });
  show(
    run.stdout.split("\n").filter((line) => / \w+: (moved|stuck) #|Dispatched/.test(line))
      .join("\n"),
  );
  const labels = world.labels("acme/webapp", number);
  print(`    labels of #${number} on GitHub now: ${labels.join(", ")}`);
  expect(run.code === 0, `the run after the failed build exited ${run.code}: ${run.stderr}`);
  expect(labels.includes(spec.failed), `#${number} did not move to ${spec.failed}`);

  heading("8. status --all: active jobs, stuck issues and the last run's skips, from KV alone");
  const requests = world.gh.requests.length;
  const status = await world.main(["status", "--all"], { now: later });
  show(status.stdout);
  expect(status.code === 0, `status exited ${status.code}: ${status.stderr}`);
  expect(world.gh.requests.length === requests, "status asked GitHub");
}

/** Which issue each build of `summary` is for, by the request id it carries. */
function buildsOf(world: World, summary: RunSummary) {
  return summary.repos.flatMap((repo) =>
    repo.dispatched.map((item) => ({
      repository: repo.repository,
      item,
      build: world.jenkins.builds.find((build) =>
        build.params.COORDINATOR_REQUEST_ID === item.requestId
      ),
    }))
  );
}

async function demoFirstRun(
  world: World,
  out: DemoOut,
  issues: { dispatch: FakeIssueInit[]; skip: FakeIssueInit[] },
): Promise<void> {
  const { print, show, heading, expect } = out;
  heading(
    `3. run --all: one issue per workflow is dispatched, ${issues.skip.length} are skipped with the reason`,
  );
  const run = await world.main(["run", "--all", "--json"]);
  expect(run.code === 0, `the first run exited ${run.code}: ${run.stderr}`);
  const summary = JSON.parse(run.stdout) as RunSummary;
  show(formatSummary(summary));
  print("\n  What Jenkins received (BRANCH_NAME and an excerpt of COMMAND) and the labels now:");
  for (const { repository, item, build } of buildsOf(world, summary)) {
    print(
      `    ${repository}#${item.issue}: ${build?.job} #${build?.number}, BRANCH_NAME=${item.branch}`,
    );
    for (const line of scriptExcerpt(build?.params.COMMAND ?? "")) print(`        ${line}`);
    print(`      labels on GitHub: ${world.labels(repository, item.issue).join(", ")}`);
  }
  expect(
    world.jenkins.builds.length === issues.dispatch.length + 1,
    `${world.jenkins.builds.length} builds after the first run`,
  );
  for (const [index, spec] of WORKFLOWS.entries()) {
    const labels = world.labels("acme/webapp", issues.dispatch[index].number);
    expect(
      labels.includes(spec.busy) && !labels.includes(spec.pickup),
      `${spec.workflow} labels: ${labels}`,
    );
  }
  const skipped = summary.repos.reduce((sum, repo) => sum + repo.skipped.length, 0);
  expect(skipped === issues.skip.length, `${skipped} skipped, expected ${issues.skip.length}`);
}

async function demoIdleRuns(world: World, out: DemoOut): Promise<void> {
  const { print, show, heading, expect } = out;
  heading("4. run --all again: it reads only what changed since (its own label moves)");
  // Skips unchanged since the last run are one line of the report, not repeated.
  const again = await world.main(["run", "--all"]);
  show(again.stdout);
  heading("5. run --all while nothing changes: one conditional request per repository");
  world.gh.resetCounters();
  const idle = await world.main(["run", "--all"]);
  show(idle.stdout);
  const { requests, notModified, costed } = world.gh.counters;
  print(
    `    The fake GitHub saw ${requests} requests: ${notModified} answered 304 Not Modified, ` +
      `which GitHub does not count against the rate limit; ${costed} counted.`,
  );
  expect(again.code === 0 && idle.code === 0, "a later run failed");
  expect(notModified === 2 && costed === 0, `idle run: ${JSON.stringify(world.gh.counters)}`);
}

async function demoRace(world: World, out: DemoOut): Promise<void> {
  const { print, show, heading, expect } = out;
  const spec = WORKFLOWS.find((candidate) => candidate.branch === "main") ?? WORKFLOWS[0];
  const numbers = [101, 102, 103, 104];
  for (const number of numbers) {
    world.gh.addIssue("acme/webapp", {
      number,
      title: `New work ${number}`,
      labels: [spec.pickup],
      linkedBranches: [`${number}-new-work`],
    });
  }
  heading(
    `6. Two runs start at once on the same KV file; ${numbers.length} new issues ask for ${spec.workflow}`,
  );
  print(
    "    Both are `run --repo webapp`: a second `run --all` would not even start while one runs",
  );
  print('    (it exits 0 with "another run is in progress"), so these two race for each claim.');
  const before = world.jenkins.builds.length;
  const runs = await Promise.all(["A", "B"].map(async (name) => {
    const result = await world.main(["run", "--repo", "webapp", "--json"]);
    return { name, code: result.code, summary: JSON.parse(result.stdout) as RunSummary };
  }));
  for (const { name, code, summary } of runs) {
    print(`    run ${name} (exit ${code}):`);
    const lines = formatSummary(summary).split("\n")
      .filter((line) => /dispatched|another coordinator run|Dispatched/.test(line));
    show(lines.map((line) => `  ${line}`).join("\n"));
  }
  const built = world.jenkins.builds.slice(before);
  const issuesBuilt = runs.flatMap(({ summary }) => buildsOf(world, summary))
    .filter(({ build }) => build !== undefined).map(({ item }) => item.issue);
  const once = built.length === numbers.length &&
    numbers.every((number) => issuesBuilt.filter((issue) => issue === number).length === 1);
  print(
    `    Jenkins received ${built.length} builds for ${numbers.length} issues: ${
      once ? "each issue exactly once" : "NOT once each"
    }.`,
  );
  expect(runs.every(({ code }) => code === 0), "a racing run failed");
  expect(once, `race: ${built.length} builds for issues ${issuesBuilt}`);
}

if (import.meta.main) Deno.exitCode = await demo();
