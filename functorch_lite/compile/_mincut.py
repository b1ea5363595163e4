"""A small max-flow / min-cut solver (Dinic's algorithm) for the rematerialization partitioner."""

import collections
from typing import Hashable

# NOTE: [Max-flow without networkx]
# The rematerialization partitioner needs one s-t min cut over a graph with a few thousand
# vertices at most (two per FX node). Dinic's algorithm (BFS levels, then blocking flows by
# DFS) is O(V^2 E) in the worst case and fast in practice on these DAG-shaped networks.
# Capacities are Python ints; "infinite" edges use INF, far above any sum of finite costs the
# partitioner builds, so a cut is finite exactly when finite edges separate source from sink.

INF = 1 << 256


class FlowNetwork:
    """A directed graph with integer capacities; vertices are any hashable values."""

    def __init__(self) -> None:
        self._index: dict = {}
        self._adj: list[list[int]] = []  # vertex -> edge ids
        self._to: list[int] = []
        self._cap: list[int] = []

    def _vertex(self, v: Hashable) -> int:
        i = self._index.get(v)
        if i is None:
            i = self._index[v] = len(self._adj)
            self._adj.append([])
        return i

    def add_edge(self, u: Hashable, v: Hashable, capacity: int) -> None:
        a, b = self._vertex(u), self._vertex(v)
        self._adj[a].append(len(self._to))
        self._to.append(b)
        self._cap.append(capacity)
        self._adj[b].append(len(self._to))  # the residual edge is always id ^ 1
        self._to.append(a)
        self._cap.append(0)

    def _levels(self, s: int, t: int) -> list[int]:
        level = [-1] * len(self._adj)
        level[s] = 0
        queue = collections.deque([s])
        while queue:
            u = queue.popleft()
            for e in self._adj[u]:
                v = self._to[e]
                if self._cap[e] > 0 and level[v] < 0:
                    level[v] = level[u] + 1
                    queue.append(v)
        return level if level[t] >= 0 else []

    def _blocking_flow(self, s: int, t: int, level: list[int]) -> int:
        # Iterative DFS with per-vertex edge pointers: deep graphs cannot hit the recursion limit.
        ptr = [0] * len(self._adj)
        total = 0
        while True:
            path: list[int] = []  # edge ids from s
            u = s
            while u != t:
                adj = self._adj[u]
                while ptr[u] < len(adj):
                    e = adj[ptr[u]]
                    v = self._to[e]
                    if self._cap[e] > 0 and level[v] == level[u] + 1:
                        break
                    ptr[u] += 1
                else:
                    if u == s:
                        return total
                    level[u] = -1  # dead end: never enter it again in this phase
                    e = path.pop()
                    u = self._to[e ^ 1]
                    ptr[u] += 1
                    continue
                path.append(e)
                u = v
            pushed = min(self._cap[e] for e in path)
            for e in path:
                self._cap[e] -= pushed
                self._cap[e ^ 1] += pushed
            total += pushed

    def min_cut(self, source: Hashable, sink: Hashable) -> tuple[int, set]:
        """Returns (cut value, vertices on the source side)."""
        s, t = self._vertex(source), self._vertex(sink)
        flow = 0
        while True:
            level = self._levels(s, t)
            if not level:
                break
            flow += self._blocking_flow(s, t, level)
            if flow >= INF:
                break
        seen = {s}
        queue = collections.deque([s])
        while queue:
            u = queue.popleft()
            for e in self._adj[u]:
                v = self._to[e]
                if self._cap[e] > 0 and v not in seen:
                    seen.add(v)
                    queue.append(v)
        names = {i: v for v, i in self._index.items()}
        return flow, {names[i] for i in seen}
