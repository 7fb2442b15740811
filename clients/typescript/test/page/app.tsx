// The test page: the onboarding wizard as a React app over the JSON API, with the browser's
// session cookie (and CSRF token) as its credentials. Its form is generated from each step's
// JSON Schema; its types come from `npm run gen` (../wizard.gen.ts).
import { StrictMode, useMemo, useState, type FormEvent } from "react";
import { createRoot } from "react-dom/client";

import { createClient, RequestError, type RunOut } from "../../src/index.js";
import { useRun, useTaskTree } from "../../src/react.js";
import type { Computations } from "../wizard.gen.js";

type Schema = {
  properties?: Record<string, { title?: string; enum?: string[]; description?: string }>;
  required?: string[];
};

function StepForm({ run, onAnswer }: { run: RunOut; onAnswer(value: object): Promise<void> }) {
  const prompt = run.prompt!;
  const schema = (prompt.input ?? {}) as Schema;
  const [errors, setErrors] = useState<string[]>([]);
  async function submit(event: FormEvent<HTMLFormElement>) {
    event.preventDefault();
    const data = new FormData(event.currentTarget);
    const value: Record<string, string> = {};
    for (const [name, field] of data.entries()) value[name] = String(field);
    try {
      await onAnswer(value);
      setErrors([]);
    } catch (err) {
      if (err instanceof RequestError && err.status === 422) {
        setErrors(err.errors.map((e) => `${e.loc.join(".")}: ${e.msg}`));
      } else throw err;
    }
  }
  return (
    <form onSubmit={submit} key={run.revision}>
      <h1>{prompt.title}</h1>
      {prompt.text ? <p>{prompt.text}</p> : null}
      {Object.entries(schema.properties ?? {}).map(([name, field]) =>
        field.enum ? (
          <fieldset key={name}>
            <legend>{field.title ?? name}</legend>
            {field.enum.map((choice) => (
              <label key={choice}>
                <input type="radio" name={name} value={choice} /> {choice}
              </label>
            ))}
          </fieldset>
        ) : (
          <label key={name}>
            {field.title ?? name} <input type="text" name={name} />
          </label>
        ),
      )}
      {errors.length ? (
        <ul role="alert">
          {errors.map((e) => (
            <li key={e}>{e}</li>
          ))}
        </ul>
      ) : null}
      <button type="submit">{prompt.submit}</button>
    </form>
  );
}

function Wizard() {
  const client = useMemo(() => createClient<Computations>({ baseUrl: "/api" }), []);
  const [runId, setRunId] = useState<string | null>(null);
  const run = useRun(client, runId);
  const tree = useTaskTree(client, runId);
  if (runId === null) {
    return (
      <button type="button" onClick={async () => setRunId((await client.start("onboarding", {})).id)}>
        Start
      </button>
    );
  }
  const current = run.run;
  return (
    <main data-run-id={runId} data-connected={String(run.connected)}>
      {current === null ? <p>Loading…</p> : null}
      {current?.status === "suspended" ? (
        <StepForm run={current} onAnswer={async (value) => void (await run.answer(value))} />
      ) : null}
      {current?.status === "running" ? <p role="status">Working…</p> : null}
      {current?.status === "done" ? (
        <h1>
          Welcome {String((current.result as { name?: string }).name)} (
          {String((current.result as { plan?: string }).plan)})
        </h1>
      ) : null}
      <p data-testid="tree">{tree ? `${tree.title || "run"}: ${tree.status}` : "no tasks"}</p>
    </main>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <Wizard />
  </StrictMode>,
);
