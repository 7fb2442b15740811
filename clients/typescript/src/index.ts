// A typed client for the JSON API of effects' durable runs (Python: bridges.api).
//
// `createClient({ baseUrl })` talks to the API mounted at `baseUrl`: `start`, `get`, `list`,
// `answer`, `cancel`, and `subscribe(runId, handlers)`, which follows a run's event stream
// (a snapshot, then its changes) and reconnects with backoff, resuming from the last event.
// Callers are the browser's session cookie (the client fetches the CSRF token once from
// `GET /session` and sends it with every POST) or a bearer `token`.
//
// No runtime dependencies: `fetch`, `ReadableStream`, `TextDecoder` and `AbortController`,
// which browsers and Node (18+) have.

import { EventParser, type ServerSentEvent } from "./sse.js";
import type {
  ApiError,
  ComputationList,
  JsonValue,
  RunOut,
  SessionOut,
  SnapshotEvent,
  StreamEvent,
  TaskSnapshot,
} from "./types.gen.js";

export type * from "./types.gen.js";
export { EventParser, type ServerSentEvent } from "./sse.js";

/** A generated `Computations` type (each computation's `input` and `prompts` by name), or
 * any computation with any input by default. */
export type ComputationTypes = object;

/** Any computation's input, when no generated types are given. */
export type AnyComputations = Record<string, { input: Record<string, unknown>; prompts: object }>;

/** The start input type of computation `N` of `C`. */
export type InputOf<C, N extends keyof C> = C[N] extends { input: infer I } ? I : never;

/** How `subscribe` retries: delays double from `initialDelay` up to `maxDelay` (ms), with jitter. */
export interface RetryOptions {
  initialDelay?: number;
  maxDelay?: number;
}

export interface ClientOptions {
  /** Where the API is mounted: `"/api"` in a page of the same site, or an absolute URL. */
  baseUrl: string;
  /** A bearer token (or a function giving one, called per request). Without it, the
   * browser's session cookie is used, with the CSRF token from `GET /session`. */
  token?: string | (() => string | Promise<string>);
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Reconnection delays of `subscribe`. */
  retry?: RetryOptions;
}

/** A request the API refused: its HTTP `status` and the `ApiError` body. */
export class RequestError extends Error {
  readonly status: number;
  readonly body: ApiError;

  constructor(status: number, body: ApiError) {
    super(`${status} ${body.error}: ${body.message}`);
    this.name = "RequestError";
    this.status = status;
    this.body = body;
  }

  /** Validation errors (`loc`, `msg`, `type`) of a 422. */
  get errors(): { loc: (string | number)[]; msg: string; type: string }[] {
    return this.body.errors as never;
  }
}

/** What `subscribe` knows of a run: the latest state, kept from the events. */
export interface RunState {
  run: RunOut | null;
  tasks: TaskSnapshot | null;
  /** The stream ended: the run finished and its last state was received. */
  ended: boolean;
  /** A stream is open right now. */
  connected: boolean;
  /** The last connection error (cleared by the next snapshot). */
  error: unknown;
}

export interface Handlers {
  /** Every new state (after each event, and on connection changes). */
  onChange?(state: RunState): void;
  onSnapshot?(event: SnapshotEvent): void;
  onRun?(run: RunOut): void;
  onTasks?(tasks: TaskSnapshot): void;
  /** The run finished; the subscription is over. */
  onEnd?(run: RunOut): void;
  /** A connection failed; `retrying` says whether it will be tried again (not after a 4xx
   * such as 404: the run is not the caller's, or does not exist). */
  onError?(error: unknown, retrying: boolean): void;
}

export interface Subscription {
  /** Stop following the run (closes the stream; no more handlers are called). */
  close(): void;
  /** Resolves when the subscription is over (ended, closed, or given up). */
  readonly done: Promise<void>;
  /** The state now. */
  readonly state: RunState;
}

export interface Client<C extends ComputationTypes = AnyComputations> {
  readonly baseUrl: string;
  session(): Promise<SessionOut>;
  computations(): Promise<ComputationList>;
  start<N extends keyof C & string>(
    computation: N,
    input?: InputOf<C, N>,
    options?: { key?: string },
  ): Promise<RunOut>;
  get(runId: string): Promise<RunOut>;
  list(options?: { computation?: string; limit?: number }): Promise<RunOut[]>;
  answer(runId: string, revision: number, value: unknown): Promise<RunOut>;
  cancel(runId: string, reason?: string): Promise<RunOut>;
  subscribe(runId: string, handlers?: Handlers): Subscription;
}

const JSON_HEADERS = { "Content-Type": "application/json", Accept: "application/json" };

/** A client of the API at `options.baseUrl`. Type it with generated computation types:
 * `createClient<Computations>({ baseUrl: "/api" })`. */
export function createClient<C extends ComputationTypes = AnyComputations>(
  options: ClientOptions,
): Client<C> {
  const base = options.baseUrl.replace(/\/+$/, "");
  const doFetch: typeof fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const initialDelay = options.retry?.initialDelay ?? 500;
  const maxDelay = options.retry?.maxDelay ?? 15_000;
  let csrf: Promise<string | null> | null = null;

  async function auth(): Promise<Record<string, string>> {
    const { token } = options;
    if (token === undefined) return {};
    const value = typeof token === "function" ? await token() : token;
    return { Authorization: `Bearer ${value}` };
  }

  async function fail(response: Response): Promise<never> {
    let body: ApiError;
    try {
      body = (await response.json()) as ApiError;
    } catch {
      body = { error: "http", message: response.statusText, errors: [], run: null };
    }
    throw new RequestError(response.status, body);
  }

  async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { ...JSON_HEADERS, ...(await auth()) };
    const unsafe = method !== "GET";
    if (unsafe && options.token === undefined) {
      const token = await csrfToken();
      if (token) headers["X-CSRF-Token"] = token;
    }
    const init: RequestInit = {
      method,
      headers,
      credentials: "same-origin",
      cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    };
    let response = await doFetch(base + path, init);
    if (response.status === 403 && unsafe && options.token === undefined) {
      // The session changed (a new cookie, another tab logged in): fetch the token again, once.
      csrf = null;
      const token = await csrfToken();
      if (token) headers["X-CSRF-Token"] = token;
      response = await doFetch(base + path, init);
    }
    if (!response.ok) return fail(response);
    return (await response.json()) as T;
  }

  function csrfToken(): Promise<string | null> {
    csrf ??= session().then(
      (s) => s.csrf,
      (err: unknown) => {
        csrf = null;
        throw err;
      },
    );
    return csrf;
  }

  async function session(): Promise<SessionOut> {
    const response = await doFetch(`${base}/session`, {
      headers: { Accept: "application/json", ...(await auth()) },
      credentials: "same-origin",
      cache: "no-store",
    });
    if (!response.ok) return fail(response);
    return (await response.json()) as SessionOut;
  }

  const enc = encodeURIComponent;

  function subscribe(runId: string, handlers: Handlers = {}): Subscription {
    const state: RunState = { run: null, tasks: null, ended: false, connected: false, error: null };
    const controller = new AbortController();
    let lastEventId: string | null = null;
    let closed = false;

    const changed = () => {
      if (!closed) handlers.onChange?.({ ...state });
    };

    const apply = (event: StreamEvent) => {
      switch (event.type) {
        case "snapshot":
          state.run = event.run;
          if (!event.tasks_unchanged) state.tasks = event.tasks;
          state.error = null;
          handlers.onSnapshot?.(event);
          break;
        case "run":
          state.run = event.run;
          handlers.onRun?.(event.run);
          break;
        case "tasks":
          state.tasks = event.tasks;
          handlers.onTasks?.(event.tasks);
          break;
        case "end":
          state.run = event.run;
          state.ended = true;
          handlers.onEnd?.(event.run);
          break;
        case "ping":
          return;
      }
      changed();
    };

    async function connectOnce(): Promise<"ended" | "dropped"> {
      const headers: Record<string, string> = { Accept: "text/event-stream", ...(await auth()) };
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      const response = await doFetch(`${base}/runs/${enc(runId)}/events`, {
        headers,
        credentials: "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
      if (!response.ok) return fail(response);
      if (!response.body) throw new Error("the event stream has no body");
      state.connected = true;
      changed();
      const parser = new EventParser();
      const decoder = new TextDecoder();
      const reader = response.body.getReader();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return "dropped";
          for (const message of parser.push(decoder.decode(value, { stream: true }))) {
            if (message.id !== null) lastEventId = message.id;
            apply(JSON.parse(message.data) as StreamEvent);
            if (state.ended) return "ended";
          }
        }
      } finally {
        reader.cancel().catch(() => {});
        state.connected = false;
      }
    }

    async function loop(): Promise<void> {
      let attempt = 0;
      while (!closed) {
        let wait: number | null = null;
        try {
          if ((await connectOnce()) === "ended") return;
          attempt = 0; // a stream that was open, then dropped: reconnect soon
        } catch (err) {
          if (closed) return;
          state.error = err;
          const status = err instanceof RequestError ? err.status : 0;
          const retrying = status === 0 || status === 429 || status >= 500;
          handlers.onError?.(err, retrying);
          changed();
          if (!retrying) return;
          attempt += 1;
        }
        wait = Math.min(maxDelay, initialDelay * 2 ** Math.min(attempt, 20));
        wait = wait / 2 + (Math.random() * wait) / 2;
        if (attempt === 0) wait = Math.min(wait, initialDelay);
        changed();
        await sleep(wait, controller.signal);
      }
    }

    const done = loop().finally(() => {
      state.connected = false;
      changed();
      closed = true;
    });
    return {
      close() {
        closed = true;
        controller.abort();
      },
      done,
      get state() {
        return { ...state };
      },
    };
  }

  return {
    baseUrl: base,
    session,
    computations: () => request<ComputationList>("GET", "/computations"),
    start: (computation, input, opts) =>
      request<RunOut>("POST", "/runs", {
        computation,
        input: (input ?? {}) as JsonValue,
        ...(opts?.key ? { key: opts.key } : {}),
      }),
    get: (runId) => request<RunOut>("GET", `/runs/${enc(runId)}`),
    list: async (opts) => {
      const query = new URLSearchParams();
      if (opts?.computation) query.set("computation", opts.computation);
      if (opts?.limit) query.set("limit", String(opts.limit));
      const text = query.toString();
      const suffix = text ? `?${text}` : "";
      return (await request<{ runs: RunOut[] }>("GET", `/runs${suffix}`)).runs;
    },
    answer: (runId, revision, value) =>
      request<RunOut>("POST", `/runs/${enc(runId)}/answer`, { revision, value }),
    cancel: (runId, reason) =>
      request<RunOut>("POST", `/runs/${enc(runId)}/cancel`, reason ? { reason } : {}),
    subscribe,
  };
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });
}
