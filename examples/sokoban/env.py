"""gym-sokoban's SokobanEnv rules as a small gymnasium environment, with one-hot grid observations.

The rules are gym-sokoban's (envs/sokoban_env.py), step for step:
- 9 actions: 0 no-op, 1-4 push up/down/left/right (a push with no box to push moves the player, if it can),
  5-8 move up/down/left/right;
- a push needs a box next to the player and a free cell (floor or target) behind it, inside the grid;
- reward -0.1 per step, +1 when a step puts a box on a target, -1 when it takes one off, +10 when every target
  holds a box (a player standing on a target counts as an empty target);
- the episode ends when all boxes are on targets, or is truncated after `max_steps` steps (120 by default).

The observation is the grid, one-hot per cell over 7 kinds: gym-sokoban's codes 0-5 and a 6th for the player
standing on a target (which gym-sokoban's room_state cannot tell from the player on floor). No rendering.
A level is given as (room_fixed, room_state) through `reset(options={"level": ...})`, or drawn from the seed.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from .generator import DIM, level

WALL, FLOOR, TARGET, BOX_ON_TARGET, BOX, PLAYER = range(6)
KINDS = 7
N_ACTIONS = 9
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right: CHANGE_COORDINATES
MAX_STEPS = 120  # gym-sokoban's default
STEP_PENALTY, BOX_ON, BOX_OFF, SOLVED = -0.1, 1.0, -1.0, 10.0


def observe(fixed: np.ndarray, state: np.ndarray) -> np.ndarray:
    """The grid one-hot over 7 kinds, flattened (rows, columns, kind)."""
    kind = state.astype(np.int64)
    kind[(state == PLAYER) & (fixed == TARGET)] = 6
    out = np.zeros(kind.shape + (KINDS,), np.float32)
    np.put_along_axis(out, kind[..., None], 1.0, axis=-1)
    return out.reshape(-1)


class SokobanEnv(gym.Env):
    """One Sokoban level per reset; see the module's docstring for the rules."""

    metadata = {"render_modes": []}

    def __init__(self, num_boxes: int = 3, dim=DIM, max_steps: int = MAX_STEPS):
        self.num_boxes, self.dim, self.max_steps = num_boxes, tuple(dim), max_steps
        self.action_space = gym.spaces.Discrete(N_ACTIONS)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.dim[0] * self.dim[1] * KINDS,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "level" in options:
            fixed, state = options["level"]
        else:
            if seed is None:
                seed = int(self.np_random.integers(2**31))
            fixed, state = level(seed, self.num_boxes, self.dim)
        self.fixed, self.state = np.array(fixed, np.int8), np.array(state, np.int8)
        self.player = np.argwhere(self.state == PLAYER)[0]
        self.boxes = int((self.fixed == TARGET).sum())  # as many boxes as targets
        self.steps = 0
        self.on_target = 0
        return observe(self.fixed, self.state), {}

    def _free(self, pos) -> bool:
        return self.state[pos[0], pos[1]] in (FLOOR, TARGET)

    def _move_to(self, pos) -> None:
        old = self.player
        self.state[pos[0], pos[1]] = PLAYER
        self.state[old[0], old[1]] = self.fixed[old[0], old[1]]
        self.player = pos

    def _push(self, change) -> bool:
        pos = self.player + change
        beyond = pos + change
        if beyond[0] >= self.dim[0] or beyond[1] >= self.dim[1]:
            return False  # gym-sokoban checks only this edge; walls guard the others
        if self.state[pos[0], pos[1]] in (BOX_ON_TARGET, BOX) and self._free(beyond):
            self._move_to(pos)
            self.state[beyond[0], beyond[1]] = BOX_ON_TARGET if self.fixed[beyond[0], beyond[1]] == TARGET else BOX
            return True
        return self._move(change)

    def _move(self, change) -> bool:
        pos = self.player + change
        if self._free(pos):
            self._move_to(pos)
            return True
        return False

    def solved(self) -> bool:
        return not ((self.state == TARGET) | ((self.fixed == TARGET) & (self.state == PLAYER))).any()

    def step(self, action: int):
        if not 0 <= int(action) < N_ACTIONS:
            raise ValueError(f"action {action} is not in 0..{N_ACTIONS - 1}")
        action = int(action)
        self.steps += 1
        if 1 <= action <= 4:
            self._push(np.array(MOVES[action - 1]))
        elif action >= 5:
            self._move(np.array(MOVES[action - 5]))
        reward = STEP_PENALTY
        empty = (self.state == TARGET) | ((self.fixed == TARGET) & (self.state == PLAYER))
        on_target = self.boxes - int(empty.sum())
        if on_target > self.on_target:
            reward += BOX_ON
        elif on_target < self.on_target:
            reward += BOX_OFF
        done = not empty.any()
        if done:
            reward += SOLVED
        self.on_target = on_target
        truncated = not done and self.steps >= self.max_steps
        return observe(self.fixed, self.state), reward, done, truncated, {"solved": done}
