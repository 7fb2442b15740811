// React hooks over a client's subscriptions (`effects-live-client/react`; React is a peer
// dependency, imported only by this entry point).

import { useCallback, useEffect, useRef, useState } from "react";

import type { Client, ComputationTypes, RunState } from "./index.js";
import type { RunOut, TaskNode, TaskSnapshot } from "./types.gen.js";

const EMPTY: RunState = { run: null, tasks: null, ended: false, connected: false, error: null };

export interface UseRun extends RunState {
  /** Answer the step the run shows now (its revision is sent along: an answer to a step
   * that is no longer current is refused, never applied to the next one). */
  answer(value: unknown): Promise<RunOut>;
  /** Cancel the run. */
  cancel(reason?: string): Promise<RunOut>;
}

/** Follow run `runId` (none while null): its state, task tree and connection, kept current
 * by `client.subscribe` (snapshot on connect, reconnects with backoff), plus `answer` and
 * `cancel`. The subscription is closed when the component unmounts or `runId` changes. */
export function useRun<C extends ComputationTypes>(
  client: Client<C>,
  runId: string | null | undefined,
): UseRun {
  const [state, setState] = useState<RunState>(EMPTY);
  const latest = useRef<RunState>(EMPTY);

  useEffect(() => {
    latest.current = EMPTY;
    setState(EMPTY);
    if (!runId) return undefined;
    const subscription = client.subscribe(runId, {
      onChange(next) {
        latest.current = next;
        setState(next);
      },
    });
    return () => subscription.close();
  }, [client, runId]);

  const answer = useCallback(
    async (value: unknown) => {
      const run = latest.current.run;
      if (!runId || run === null) throw new Error("no run to answer yet");
      return client.answer(runId, run.revision, value);
    },
    [client, runId],
  );
  const cancel = useCallback(
    async (reason?: string) => {
      if (!runId) throw new Error("no run to cancel");
      return client.cancel(runId, reason);
    },
    [client, runId],
  );
  return { ...state, answer, cancel };
}

/** A node of a task tree with its children, for rendering. */
export interface TaskTreeNode extends TaskNode {
  children: TaskTreeNode[];
  /** Progress in [0, 1], or null while the total is unknown. */
  fraction: number | null;
}

/** Nest a snapshot's nodes under their parents; returns the root (the run itself). */
export function nestTasks(snapshot: TaskSnapshot): TaskTreeNode | null {
  const nodes = new Map<number, TaskTreeNode>();
  for (const node of snapshot.nodes) {
    const fraction = node.total ? Math.max(0, Math.min(1, node.current / node.total)) : null;
    nodes.set(node.id, { ...node, children: [], fraction });
  }
  let root: TaskTreeNode | null = null;
  for (const node of nodes.values()) {
    const parent = node.parent === null ? undefined : nodes.get(node.parent);
    if (parent) parent.children.push(node);
    else root ??= node;
  }
  return root;
}

/** Follow run `runId`'s task tree (tasks, progress, output): the root node with nested
 * children, or null while the run has reported none. */
export function useTaskTree<C extends ComputationTypes>(
  client: Client<C>,
  runId: string | null | undefined,
): TaskTreeNode | null {
  const [tree, setTree] = useState<TaskTreeNode | null>(null);
  useEffect(() => {
    setTree(null);
    if (!runId) return undefined;
    const subscription = client.subscribe(runId, {
      onChange(next) {
        setTree(next.tasks ? nestTasks(next.tasks) : null);
      },
    });
    return () => subscription.close();
  }, [client, runId]);
  return tree;
}
