// The client against a real server: tests/api/wizard_api.py (the onboarding wizard with the
// JSON API), started by tests/api/test_typescript_client.py, which passes its URL in API_URL.
import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient, EventParser, RequestError } from "../dist/index.js";

const API_URL = process.env.API_URL;
if (!API_URL) throw new Error("API_URL is not set: run these tests through pytest");

const ada = createClient({ baseUrl: API_URL, token: "token-ada", retry: { initialDelay: 20 } });
const bob = createClient({ baseUrl: API_URL, token: () => Promise.resolve("token-bob") });

/** Resolves with the first state for which `predicate` holds. */
function until(subscription, states, predicate) {
  return new Promise((resolve, reject) => {
    const check = () => {
      const hit = states.find(predicate);
      if (hit) resolve(hit);
    };
    states.onPush = check;
    check();
    subscription.done.then(() => {
      check();
      reject(new Error(`the subscription ended first: ${JSON.stringify(states.at(-1))}`));
    });
  });
}

function follow(client, runId, extra = {}) {
  const states = [];
  const subscription = client.subscribe(runId, {
    ...extra,
    onChange(state) {
      states.push(state);
      states.onPush?.();
    },
  });
  return { states, subscription };
}

const WIZARD_KEY = `node-wizard-${Date.now()}`;
const atStep = (title) => (s) => s.run?.status === "suspended" && s.run.prompt?.title === title;

test("the whole wizard: start, follow, a refused answer, answers, the end", async () => {
  const computations = await ada.computations();
  assert.deepEqual(
    Object.keys(computations.computations[0].prompts),
    ["Name", "Contact", "PlanChoice"],
  );
  const started = await ada.start("onboarding", {}, { key: WIZARD_KEY });
  assert.equal(started.computation, "onboarding");
  const again = await ada.start("onboarding", {}, { key: WIZARD_KEY });
  assert.equal(again.id, started.id);

  let ended = null;
  const { states, subscription } = follow(ada, started.id, { onEnd: (run) => (ended = run) });
  let state = await until(subscription, states, atStep("Welcome! What is your name?"));
  assert.equal(state.run.prompt.input_name, "Name");
  assert.deepEqual(state.run.prompt.input.required, ["name"]);
  await ada.answer(started.id, state.run.revision, { name: "Ada" });

  state = await until(subscription, states, atStep("Hello Ada! What is your email address?"));
  await assert.rejects(
    ada.answer(started.id, state.run.revision, { email: "not an address" }),
    (err) => {
      assert.ok(err instanceof RequestError);
      assert.equal(err.status, 422);
      assert.deepEqual(err.errors.map((e) => e.loc), [["email"]]);
      return true;
    },
  );
  await assert.rejects(
    ada.answer(started.id, state.run.revision - 1, { email: "ada@example.com" }),
    (err) => err.status === 409 && err.body.error === "stale" && err.body.run.id === started.id,
  );
  await ada.answer(started.id, state.run.revision, { email: "ada@example.com" });

  state = await until(subscription, states, atStep("Choose a plan"));
  assert.equal(state.run.prompt.submit, "Create my account");
  await ada.answer(started.id, state.run.revision, { plan: "pro" });
  await subscription.done;
  assert.equal(ended?.status, "done");
  assert.equal(ended.result.email, "ada@example.com");
  assert.equal(ended.result.plan, "pro");
  assert.equal(states.at(-1).ended, true);

  const mine = await ada.list({ computation: "onboarding" });
  assert.ok(mine.some((run) => run.id === started.id));
});

test("another user's run is a 404 everywhere, and the subscription gives up", async () => {
  const run = await ada.start("onboarding");
  await assert.rejects(bob.get(run.id), (err) => err.status === 404);
  await assert.rejects(bob.cancel(run.id), (err) => err.status === 404);
  assert.deepEqual((await bob.list()).map((r) => r.id), []);
  const errors = [];
  const subscription = bob.subscribe(run.id, {
    onError: (err, retrying) => errors.push([err.status, retrying]),
  });
  await subscription.done;
  assert.deepEqual(errors, [[404, false]]);
  await ada.cancel(run.id);
});

test("cancel ends the stream", async () => {
  const run = await ada.start("onboarding");
  const { states, subscription } = follow(ada, run.id);
  await until(subscription, states, atStep("Welcome! What is your name?"));
  const cancelled = await ada.cancel(run.id, "changed my mind");
  assert.equal(cancelled.status, "cancelled");
  await subscription.done;
  assert.equal(states.at(-1).run.status, "cancelled");
  assert.equal(states.at(-1).ended, true);
});

test("reconnects after failures and dropped streams, resuming from the last event", async () => {
  const run = await ada.start("onboarding");
  const seen = [];
  let failures = 2;
  let drops = 1;
  const flaky = async (url, init) => {
    if (String(url).endsWith("/events")) {
      seen.push(new Headers(init.headers).get("last-event-id"));
      if (failures > 0) {
        failures -= 1;
        throw new TypeError("fetch failed (a test's network error)");
      }
      const response = await fetch(url, init);
      if (drops > 0) {
        // Cut the stream after its snapshot, as a proxy dropping the connection would.
        drops -= 1;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        const chunks = [];
        let text = "";
        while (!/event: snapshot\ndata: .*\n\n/.test(text)) {
          const { value, done } = await reader.read();
          if (done) break;
          chunks.push(value);
          text += decoder.decode(value, { stream: true });
        }
        reader.cancel();
        const body = new ReadableStream({
          start(controller) {
            for (const chunk of chunks) controller.enqueue(chunk);
            controller.close();
          },
        });
        return new Response(body, { status: 200, headers: response.headers });
      }
      return response;
    }
    return fetch(url, init);
  };
  const client = createClient({
    baseUrl: API_URL,
    token: "token-ada",
    fetch: flaky,
    retry: { initialDelay: 10, maxDelay: 50 },
  });
  const retries = [];
  const states = [];
  const subscription = client.subscribe(run.id, {
    onError: (err, retrying) => retries.push(retrying),
    onChange(state) {
      states.push(state);
      states.onPush?.();
    },
  });
  await until(subscription, states, (s) => s.run?.status === "suspended" && seen.length >= 4);
  assert.deepEqual(retries, [true, true]);
  assert.equal(seen[0], null);
  assert.equal(seen[1], null);
  assert.equal(seen[2], null);
  assert.match(seen[3], /^\d+\.\w+$/, "the reconnect names the last event it got");
  subscription.close();
  await subscription.done;
  await ada.cancel(run.id);
});

test("the event parser: chunks split anywhere, CRLF, comments, multi-line data", () => {
  const parser = new EventParser();
  const text = ": hi\r\nid: 1.a\r\nevent: run\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nretry: 5\n\ndata: x\r\r";
  const events = [];
  for (let i = 0; i < text.length; i += 3) events.push(...parser.push(text.slice(i, i + 3)));
  assert.deepEqual(events, [
    { event: "run", data: '{"a":\n1}', id: "1.a" },
    { event: "message", data: "x", id: "1.a" },
  ]);
});
