// Copyright the coordinator authors. MIT license.
/**
 * Tests of fakes.ts: that the fake GitHub and Jenkins answer as the real services do (a fake
 * kinder than the service hides bugs), and that the demo runs. The coordinator's own tests are
 * in coordinator_test.ts; `deno task test` runs both files in one `deno test`.
 */

import assert from "node:assert/strict";
import { IGNORE_LABELS, WORKFLOWS } from "./coordinator.ts";
import { childEnv, FakeGitHub, World } from "./fakes.ts";

// ---------------------------------------------------------------------------
// # FakeGitHub
// ---------------------------------------------------------------------------

Deno.test("FakeGitHub: answers for gone issues, comments and the label limit as GitHub does", async () => {
  await using world = await World.alpha([
    { number: 1, labels: Array.from({ length: 99 }, (_, i) => `l${i}`) },
    { number: 2 },
    { number: 3 },
  ]);
  const api = (path: string, init: RequestInit = {}) =>
    fetch(`${world.gh.url}/repos/acme/alpha${path}`, {
      ...init,
      headers: { authorization: `token ${world.gh.token}`, "user-agent": "test" },
    });
  const addLabels = (labels: string[]) =>
    api("/issues/1/labels", { method: "POST", body: JSON.stringify({ labels }) });
  const added = await addLabels(["l0", "new"]);
  await added.body?.cancel();
  assert.equal(added.status, 200, "up to 100");
  const refused = await addLabels(["one-more"]);
  assert.equal(refused.status, 422);
  assert.match((await refused.json()).errors[0].message, /cannot have more than 100 labels/);
  for (let i = 0; i < 150; i++) world.gh.addComment("acme/alpha", 2, `c${i}`);
  const page = await api("/issues/2/comments?per_page=100");
  assert.equal((await page.json()).length, 100);
  const last = /<([^>]+)>; rel="last"/.exec(page.headers.get("link") ?? "")![1];
  assert.match(last, /\/repositories\/\d+\/issues\/2\/comments\?per_page=100&page=2$/);
  const created = await api("/issues/2/comments", {
    method: "POST",
    body: JSON.stringify({ body: "hello" }),
  });
  assert.equal(created.status, 201);
  assert.match(created.headers.get("location") ?? "", /\/issues\/comments\/\d+$/);
  await created.body?.cancel();
  world.gh.deleteIssue("acme/alpha", 2);
  world.gh.hideIssue("acme/alpha", 3);
  const deleted = await api("/issues/2");
  assert.equal(deleted.status, 410);
  assert.equal((await deleted.json()).message, "This issue was deleted");
  const hidden = await api("/issues/3/labels", { method: "POST", body: '{"labels":["x"]}' });
  assert.equal(hidden.status, 404);
  await hidden.body?.cancel();
  const listed = await (await api("/issues?state=all")).json();
  assert.deepEqual(listed.map((item: { number: number }) => item.number), [1]);
});

Deno.test("FakeGitHub: answers as GitHub does: the selected GraphQL fields, complete users", async () => {
  const gh = await FakeGitHub.start();
  gh.addRepo("acme/alpha", [{ number: 2, linkedBranches: ["2-x"] }]);
  const headers = { authorization: `bearer ${gh.token}`, "user-agent": "coordinator-test" };
  const ask = async (query: string) => {
    const body = JSON.stringify({ query });
    return await (await fetch(`${gh.url}/graphql`, { method: "POST", headers, body })).json();
  };
  try {
    const selected = await ask(`{ r: repository(owner: "acme", name: "alpha") {
      issue(number: 2) { n: number linkedBranches(first: 5) { nodes { ref { name } } } } } }`);
    assert.deepEqual(selected, {
      data: { r: { issue: { n: 2, linkedBranches: { nodes: [{ ref: { name: "2-x" } }] } } } },
    });
    const unknown = await ask(`{ repository(owner: "acme", name: "alpha") { issue(number: 2) {
      labels } } }`);
    assert.equal(unknown.data, undefined);
    assert.match(unknown.errors[0].message, /^Field 'labels' doesn't exist on type 'Issue'/);
    const issue = await (await fetch(`${gh.url}/repos/acme/alpha/issues/2`, { headers })).json();
    // GitHub's simple-user schema: every one of these is required.
    for (
      const key of [
        "login",
        "id",
        "node_id",
        "avatar_url",
        "gravatar_id",
        "url",
        "html_url",
        "followers_url",
        "following_url",
        "gists_url",
        "starred_url",
        "subscriptions_url",
        "organizations_url",
        "repos_url",
        "events_url",
        "received_events_url",
        "type",
        "site_admin",
      ]
    ) {
      assert.ok(key in issue.user, `user.${key}`);
    }
  } finally {
    await gh.close();
  }
});

// ---------------------------------------------------------------------------
// # FakeJenkins
// ---------------------------------------------------------------------------

Deno.test("FakeJenkins: answers about queue items and builds as Jenkins does", async () => {
  await using world = await World.alpha([]);
  const { jenkins } = world;
  const get = async (path: string) => {
    const response = await fetch(`${jenkins.url}${path}`, {
      headers: { authorization: "Basic " + btoa(`${jenkins.user}:${jenkins.token}`) },
    });
    if (!response.ok) await response.body?.cancel();
    return { status: response.status, json: response.ok ? await response.json() : null };
  };
  const trigger = async () => {
    const response = await fetch(`${jenkins.url}/job/Coder/job/executor/buildWithParameters`, {
      method: "POST",
      headers: { authorization: "Basic " + btoa(`${jenkins.user}:${jenkins.token}`) },
      body: new URLSearchParams({ COMMAND: String(Math.random()) }),
    });
    await response.body?.cancel();
    return Number(/\/queue\/item\/(\d+)\/$/.exec(response.headers.get("location")!)![1]);
  };
  jenkins.quietPeriodMs = 60_000;
  const waiting = await trigger();
  let item = (await get(`/queue/item/${waiting}/api/json`)).json;
  assert.equal(item._class, "hudson.model.Queue$WaitingItem");
  assert.ok(!("cancelled" in item) && !("executable" in item), "only a LeftItem has them");
  jenkins.cancelQueueItem(waiting);
  item = (await get(`/queue/item/${waiting}/api/json`)).json;
  assert.deepEqual([item._class, item.cancelled, item.executable], [
    "hudson.model.Queue$LeftItem",
    true,
    null,
  ]);
  jenkins.quietPeriodMs = 0;
  const started = await trigger();
  item = (await get(`/queue/item/${started}/api/json`)).json;
  assert.equal(item.cancelled, false);
  assert.match(item.executable.url, /\/job\/Coder\/job\/executor\/1\/$/, "numbered at start");
  const build = () => get("/job/Coder/job/executor/1/api/json");
  assert.deepEqual([(await build()).json.building, (await build()).json.result], [true, null]);
  jenkins.finishBuild(started, "ABORTED");
  assert.deepEqual([(await build()).json.building, (await build()).json.result], [
    false,
    "ABORTED",
  ]);
  jenkins.now = () => Date.now() + 5 * 60_000 + 1;
  assert.equal((await get(`/queue/item/${started}/api/json`)).status, 404, "forgotten after 5 min");
  assert.equal((await build()).status, 200);
  jenkins.deleteBuild(started);
  assert.equal((await build()).status, 404);
  assert.throws(() => jenkins.cancelQueueItem(started), /not waiting/);
});

// ---------------------------------------------------------------------------
// # The demo
// ---------------------------------------------------------------------------

Deno.test("demo: deno task demo runs the real CLI against the fakes and exits 0", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "demo"],
    cwd: new URL(".", import.meta.url).pathname,
    clearEnv: true,
    env: childEnv(),
  }).output();
  const [code, stdout, stderr] = [
    output.code,
    new TextDecoder().decode(output.stdout),
    new TextDecoder().decode(output.stderr),
  ];
  assert.equal(code, 0, stdout + stderr);
  for (const spec of WORKFLOWS) {
    assert.match(
      stdout,
      new RegExp(`dispatched ${spec.workflow} for #\\d+ .*${spec.pickup} -> ${spec.busy}`),
    );
  }
  for (const label of IGNORE_LABELS) {
    assert.match(stdout, new RegExp(`skipped #\\d+: held back by the "${label}" label`));
  }
  for (
    const reason of [/pickup labels/, /bot-busy label/, /no linked branch/, /2 linked branches/]
  ) assert.match(stdout, new RegExp(`skipped #\\d+: .*${reason.source}`));
  assert.match(
    stdout,
    /^ {8}mcp-coder --log-level INFO create-plan \d+ --project-dir/m,
    "script excerpt",
  );
  assert.match(stdout, /All \d+ checks passed/);
  assert.match(stdout, /2 requests: 2 answered 304 Not Modified/);
  assert.match(stdout, /Jenkins received 4 builds for 4 issues: each issue exactly once/);
  assert.match(
    stdout,
    /^ {6}moved #\d+ at status-03:planning .*ended FAILURE: moved to "status-03f/m,
  );
  assert.match(stdout, /^ {4}acme\/webapp \(webapp\): \d+ active, \d+ stuck; last run /m);
  assert.doesNotMatch(stdout + stderr, /unexpected/);
});
