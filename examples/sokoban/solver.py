"""Optimal Sokoban solutions: breadth-first search over (player cell, box cells), fewest steps first.

Every env step counts (a move as much as a push), so the search is over player steps, not pushes. Boxes are a
bit mask of cells. A box pushed onto a dead square (a non-target cell from which no sequence of pushes, other
boxes ignored, brings a box to any target) can never be part of a solution, so such pushes are pruned. Moves
are labelled with the move actions (5-8) and pushes with the push actions (1-4), as gym-sokoban names them.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .env import BOX, BOX_ON_TARGET, MOVES, PLAYER, TARGET, WALL


def live_cells(fixed: np.ndarray) -> set[int]:
    """Cells (flat indices) from which a lone box can be pushed to some target: backwards from the targets, a box
    at x reaches y = x + d when the player can stand at x - d."""
    width = fixed.shape[1]
    open_ = {i for i, v in enumerate(fixed.ravel().tolist()) if v != WALL}
    live = {i for i, v in enumerate(fixed.ravel().tolist()) if v == TARGET}
    queue = deque(live)
    while queue:
        y = queue.popleft()
        for dr, dc in MOVES:
            d = dr * width + dc
            x = y - d
            if x in open_ and x - d in open_ and x not in live:
                live.add(x)
                queue.append(x)
    return live


def solve(fixed: np.ndarray, state: np.ndarray, max_states: int = 5_000_000) -> list[int] | None:
    """The shortest action list that puts every box on a target, or None if there is none (within max_states)."""
    width = fixed.shape[1]
    flat_fixed, flat_state = fixed.ravel().tolist(), state.ravel().tolist()
    open_ = [v != WALL for v in flat_fixed]
    live = live_cells(fixed)
    goal = sum(1 << i for i, v in enumerate(flat_fixed) if v == TARGET)
    boxes = sum(1 << i for i, v in enumerate(flat_state) if v in (BOX, BOX_ON_TARGET))
    start = (flat_state.index(PLAYER), boxes)
    if boxes == goal:
        return []
    steps = [dr * width + dc for dr, dc in MOVES]
    parents: dict[tuple[int, int], tuple[tuple[int, int], int] | None] = {start: None}
    queue = deque([start])
    while queue and len(parents) < max_states:
        node = queue.popleft()
        player, boxes = node
        for direction, d in enumerate(steps):
            nxt = player + d
            if not open_[nxt]:
                continue
            if boxes >> nxt & 1:
                beyond = nxt + d
                if not open_[beyond] or boxes >> beyond & 1 or beyond not in live:
                    continue
                child, action = (nxt, boxes ^ (1 << nxt) ^ (1 << beyond)), 1 + direction
            else:
                child, action = (nxt, boxes), 5 + direction
            if child in parents:
                continue
            parents[child] = (node, action)
            if child[1] == goal:
                plan = []
                while parents[child] is not None:
                    child, a = parents[child]
                    plan.append(a)
                return plan[::-1]
            queue.append(child)
    return None
