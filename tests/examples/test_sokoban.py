"""Sokoban for the decision-transformer example: gym-sokoban's rules on hand-made 5x5 levels (each rule, each
reward, the step limit), its generator (the vendored search and the faster one give identical rooms), and the
breadth-first solver against an exhaustive search over the environment's own states."""

from __future__ import annotations

import random
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from sokoban import room_utils  # noqa: E402
from sokoban.env import KINDS, SokobanEnv, observe  # noqa: E402
from sokoban.generator import level  # noqa: E402
from sokoban.solver import live_cells, solve  # noqa: E402

# '#' wall, ' ' floor, '.' target, '*' box on target, '$' box, '@' player, '+' player on target
CODES = {"#": (0, 0), " ": (1, 1), ".": (2, 2), "*": (2, 3), "$": (1, 4), "@": (1, 5), "+": (2, 5)}


def parse(rows: list[str]) -> tuple[np.ndarray, np.ndarray]:
    fixed = np.array([[CODES[c][0] for c in r] for r in rows], np.int8)
    state = np.array([[CODES[c][1] for c in r] for r in rows], np.int8)
    return fixed, state


def start(rows, max_steps=120):
    env = SokobanEnv(max_steps=max_steps, dim=(len(rows), len(rows[0])))
    env.reset(options={"level": parse(rows)})
    return env


UP, DOWN, LEFT, RIGHT = 1, 2, 3, 4  # pushes; +4 for the plain moves


def test_a_push_onto_the_last_target_solves_the_level():
    env = start(["#####", "#@$.#", "#   #", "#   #", "#####"])
    obs, reward, done, truncated, _ = env.step(RIGHT)
    assert reward == pytest.approx(-0.1 + 1 + 10) and done and not truncated
    assert env.state[1, 3] == 3 and env.state[1, 2] == 5 and env.state[1, 1] == 1


def test_walls_boxes_and_moves():
    env = start(["#####", "#@$ #", "#  .#", "#   #", "#####"])
    before = env.state.copy()
    for action in (UP, LEFT, UP + 4, 0):  # into walls, and the no-op: nothing moves, each step costs 0.1
        assert env.step(action)[1] == pytest.approx(-0.1)
        assert (env.state == before).all()
    assert env.step(RIGHT + 4)[1] == pytest.approx(-0.1)  # a plain move never pushes
    assert (env.state == before).all()
    assert env.step(DOWN)[1] == pytest.approx(-0.1)  # a push with no box in the way moves the player
    assert env.state[2, 1] == 5 and env.state[1, 1] == 1
    env.step(RIGHT + 4)
    env.step(UP)  # the box at (1, 2) hits the wall: no push, and the player cannot enter its cell
    assert env.state[1, 2] == 4 and env.state[2, 2] == 5


def test_a_box_pushed_off_its_target_costs_one_and_a_box_blocks_a_box():
    # gym-sokoban counts boxes on targets from 0 at reset (its levels start with none): set what an episode that
    # had put this box there would have counted.
    env = start(["######", "#@*$.#", "#    #", "######"])
    env.on_target = 1
    _, reward, done, _, _ = env.step(RIGHT)  # the box on its target is blocked by the next box
    assert reward == pytest.approx(-0.1) and env.state[1, 1] == 5 and env.state[1, 2] == 3 and not done
    env = start(["######", "#@*  #", "#    #", "######"])
    env.on_target = 1
    _, reward, _, _, _ = env.step(RIGHT)
    assert reward == pytest.approx(-0.1 - 1) and env.state[1, 3] == 4 and env.state[1, 2] == 5


def test_a_player_on_a_target_leaves_it_empty_and_is_its_own_kind():
    env = start(["#####", "#+$ #", "#  *#", "#   #", "#####"])
    env.on_target = 1
    assert not env.solved()
    obs = observe(env.fixed, env.state).reshape(5, 5, KINDS)
    assert obs[1, 1].argmax() == 6 and obs[1, 2].argmax() == 4 and obs[2, 3].argmax() == 3 and obs.sum() == 25
    assert env.step(RIGHT)[1] == pytest.approx(-0.1)  # box onto floor: no target gained or lost


def test_the_step_limit_truncates():
    env = start(["#####", "#@$.#", "#   #", "#   #", "#####"], max_steps=3)
    flags = [env.step(0)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_the_generator_gives_gym_sokobans_rooms_and_leaves_the_global_generators_alone():
    random.seed(123)
    np.random.seed(123)
    py, nps = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(123)
    for boxes, seeds in ((1, range(6)), (2, range(3))):
        for seed in seeds:
            ours = level(seed, boxes)
            theirs = level(seed, boxes, generate=room_utils.generate_room)
            assert (ours[0] == theirs[0]).all() and (ours[1] == theirs[1]).all(), (boxes, seed)
            assert (ours[0] == 2).sum() == boxes and ((ours[1] == 4).sum()) == boxes and (ours[1] == 5).sum() == 1
    assert random.random() == py and np.random.random() == nps
    rooms = {level(seed, 2)[1].tobytes() for seed in range(5)}
    assert len(rooms) == 5


def _exhaustive(fixed, state) -> int:
    """The fewest env steps to solve, by breadth-first search over the environment's own states, all 9 actions,
    no pruning."""
    env = SokobanEnv(dim=fixed.shape)
    seen = {state.tobytes()}
    queue = deque([(state, 0)])
    while queue:
        s, depth = queue.popleft()
        for action in range(9):
            env.reset(options={"level": (fixed, s)})
            _, _, done, _, _ = env.step(action)
            if done:
                return depth + 1
            key = env.state.tobytes()
            if key not in seen:
                seen.add(key)
                queue.append((env.state.copy(), depth + 1))
    raise AssertionError("unsolvable")


def test_bfs_plans_are_optimal_and_replay():
    levels = [level(seed, boxes, dim=(7, 7)) for seed in range(4) for boxes in (1, 2)]
    levels.append(parse(["######", "#@$ .#", "# $ .#", "#    #", "######"]))
    for fixed, state in levels:
        plan = solve(fixed, state)
        assert len(plan) == _exhaustive(fixed, state)
        env = SokobanEnv(dim=fixed.shape)
        env.reset(options={"level": (fixed, state)})
        dones = [env.step(a)[2] for a in plan]
        assert dones[-1] and not any(dones[:-1])
        assert set(plan) <= set(range(1, 9))


def test_dead_squares_are_the_corners_and_walls_without_targets():
    fixed, _ = parse(["#####", "#@$.#", "#   #", "#   #", "#####"])
    live = live_cells(fixed)  # flat indices of a 5-wide grid
    assert 5 * 1 + 3 in live and 5 * 1 + 2 in live
    assert 5 * 3 + 1 not in live and 5 * 3 + 3 not in live  # bottom corners
    assert 5 * 2 + 1 not in live  # the left wall, with no target along it
