"""10x10 Sokoban levels from gym-sokoban's own generator, seeded per level, with a faster reverse-play search.

gym-sokoban draws a room topology by a random walk, places the player and the boxes (on their targets), then
plays backwards (the player pulls boxes) by a depth-first search and keeps the state whose boxes are furthest
from their targets. Its search copies numpy arrays at every node, which costs 0.3 s (2 boxes) to 4 s (4 boxes)
per room. `reverse_playing` below walks the very same search (same order, same depth limit, same cap on explored
states, same score, the original's quirks kept) on a flat list with do/undo, and returns the same room; the
random draws come from the vendored code unchanged, so a seed gives gym-sokoban's room exactly (tested).

Codes (gym-sokoban's): 0 wall, 1 floor, 2 target, 3 box on target, 4 box, 5 player.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np

from . import room_utils

DIM = (10, 10)
MAX_EXPLORED = 300_000  # room_utils.depth_first_search's cap
TTL = 300  # and its depth limit


def num_gen_steps(dim=DIM) -> int:
    """gym-sokoban's default length of the topology's random walk."""
    return int(1.7 * (dim[0] + dim[1]))


def reverse_playing(room_state: np.ndarray, room_structure: np.ndarray):
    """room_utils.reverse_playing, node for node: (best room, its score, its box mapping)."""
    width = room_state.shape[1]
    struct = room_structure.ravel().tolist()
    cells = room_state.ravel().tolist()
    targets = [r * width + c for r, c in zip(*np.where(room_structure == 2))]
    mapping = {t: t for t in targets}  # target -> where its box is now
    n_boxes = len(targets)
    steps = (-width, width, -1, 1)  # up, down, left, right, as CHANGE_COORDINATES
    explored: set[bytes] = set()
    best = [-1, None, None]

    def displacement() -> int:
        return sum(abs(t // width - b // width) + abs(t % width - b % width) for t, b in mapping.items())

    def search(player: int, swaps: int, ttl: int) -> None:
        ttl -= 1
        if ttl <= 0 or len(explored) >= MAX_EXPLORED:
            return
        key = bytes(cells)
        if key in explored:
            return
        score = swaps * displacement() if cells.count(2) == n_boxes else 0
        if score > best[0]:
            best[:] = [score, list(cells), dict(mapping)]
        explored.add(key)
        for action in range(8):
            step = steps[action % 4]
            nxt = player + step
            old_next = cells[nxt]
            if old_next not in (1, 2):
                continue  # the original recurses into the unchanged, explored state: a no-op
            cells[player], cells[nxt] = struct[player], 5
            behind = player - step
            old_behind, pulled = cells[behind], None
            if action < 4 and old_behind in (3, 4):
                cells[player], cells[behind] = 3, struct[behind]
                pulled = next(t for t, b in mapping.items() if b == behind)
                mapping[pulled] = player
            # The original hands its children the *initial* last_pull, so every pull counts as a box swap.
            search(nxt, swaps + (pulled is not None), ttl)
            if pulled is not None:
                mapping[pulled] = behind
                cells[behind] = old_behind
            cells[player], cells[nxt] = 5, old_next

    search(cells.index(5), 0, TTL)
    room = np.array(best[1], dtype=room_state.dtype).reshape(room_state.shape)
    box_mapping = {divmod(t, width): divmod(b, width) for t, b in best[2].items()}
    return room, best[0], box_mapping


def generate_room(dim=DIM, p_change_directions=0.35, num_steps=25, num_boxes=3, tries=4):
    """room_utils.generate_room (one player) with the faster search: (room_fixed, room_state, box_mapping)."""
    for _ in range(tries):
        room = room_utils.room_topology_generation(dim, p_change_directions, num_steps)
        room = room_utils.place_boxes_and_player(room, num_boxes=num_boxes, second_player=False)
        room_structure = np.copy(room)
        room_structure[room_structure == 5] = 1
        room_state = room.copy()
        room_state[room_state == 2] = 4
        room_state, score, box_mapping = reverse_playing(room_state, room_structure)
        room_state[room_state == 3] = 4
        if score > 0:
            break
    if score == 0:
        raise RuntimeWarning("Generated Model with score == 0")
    return room_structure, room_state, box_mapping


@contextmanager
def seeded(seed: int):
    """The global `random` and `np.random` seeded with `seed` (gym-sokoban draws from both), then put back."""
    py, nps = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(nps)


def level(seed: int, num_boxes: int, dim=DIM, generate=None) -> tuple[np.ndarray, np.ndarray]:
    """Level `seed`: (room_fixed, room_state) as gym-sokoban's reset() makes them, retrying a failed room with
    the random streams where they stand, as reset() does. `generate` defaults to the faster generate_room."""
    generate = generate or generate_room
    with seeded(seed):
        while True:
            try:
                fixed, state, _ = generate(dim=dim, num_steps=num_gen_steps(dim), num_boxes=num_boxes)
                return fixed.astype(np.int8), state.astype(np.int8)
            except (RuntimeError, RuntimeWarning):
                continue
