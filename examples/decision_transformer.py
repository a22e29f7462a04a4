"""LASER on a decision transformer (the paper's Table 3), through the public API only.

The paper trains a 6-layer Decision Transformer on optimal Sokoban episodes (gym-sokoban). gym-sokoban 0.0.6
(2019) is written for the old gym API and fails on a current one (`reset()` takes no `seed`), and it does not
support gymnasium; so this uses the closest maintained planning environment, Farama's minigrid DoorKey: pick
up the key, unlock the door, reach the goal, on a layout drawn per seed. A breadth-first search over
(position, direction, key held, door open) gives the optimal episode of each level, checked by replaying it in
the real environment, so training needs no download and no RL.

    python examples/decision_transformer.py -o runs/dt-doorkey            # train (a few minutes) + search
    python examples/decision_transformer.py --quick -o /tmp/dt-quick       # seconds: the test suite's run

The model is transformers' DecisionTransformerModel (GPT-2 blocks), trained on the optimal episodes of the
training levels; val and test are disjoint sets of level seeds. The objective rolls the model out on each
level of a split (conditioned on the best return of the training data) and reports the solved rate and the
mean return; the search selects on the return.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transformers.utils.logging import disable_progress_bar

import laserlm
from laserlm.search.sweep import PAPER_RHOS

ENV_ID = "MiniGrid-DoorKey-6x6-v0"
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
N_ACTIONS = 7
CONTEXT = 20  # steps of (return-to-go, state, action) the model sees
SPLIT_SEEDS = {"val": range(0, 100), "test": range(100, 200)}  # training levels start at 10_000
# Episodes end after 100 steps (the environment's default is 360): optimal ones take 10-30, and a lost agent
# would otherwise cost 3.6x more rollout time per candidate. Return = 1 - 0.9 * steps / MAX_STEPS when solved.
MAX_STEPS = 100


def make_env(max_steps: int = MAX_STEPS, env_id: str = ENV_ID):
    """The level as a full-grid observation."""
    import gymnasium as gym
    from minigrid.wrappers import FullyObsWrapper  # importing minigrid registers its environments

    return FullyObsWrapper(gym.make(env_id, max_steps=max_steps))


def encode(obs) -> np.ndarray:
    """The full grid, one-hot per cell: object type (11), colour (6), state (4; the agent's direction)."""
    image = obs["image"].astype(np.int64)
    out = np.zeros(image.shape[:2] + (21,), np.float32)
    ix, iy = np.indices(image.shape[:2])
    out[ix, iy, image[..., 0]] = 1
    out[ix, iy, 11 + image[..., 1]] = 1
    out[ix, iy, 17 + image[..., 2]] = 1
    return out.reshape(-1)


def solve(env) -> list[int]:
    """The shortest action sequence that reaches the goal, by BFS over (x, y, dir, key held, door open)."""
    from minigrid.core.constants import DIR_TO_VEC

    u = env.unwrapped
    start = (int(u.agent_pos[0]), int(u.agent_pos[1]), int(u.agent_dir), False, False)

    def cell(x, y, key, door):
        c = u.grid.get(x, y)
        if c is None or (c.type == "key" and key):
            return "empty"
        if c.type == "door":
            return "open" if (door or c.is_open) else ("locked" if c.is_locked else "closed")
        return c.type

    parents = {start: None}
    queue = deque([start])
    while queue:
        s = queue.popleft()
        x, y, d, key, door = s
        fx, fy = x + int(DIR_TO_VEC[d][0]), y + int(DIR_TO_VEC[d][1])
        front = cell(fx, fy, key, door)
        moves = [(LEFT, (x, y, (d - 1) % 4, key, door)), (RIGHT, (x, y, (d + 1) % 4, key, door))]
        if front in ("empty", "open", "goal"):
            moves.append((FORWARD, (fx, fy, d, key, door)))
        if front == "key" and not key:
            moves.append((PICKUP, (x, y, d, True, door)))
        if front in ("locked", "closed") and (key or front == "closed"):
            moves.append((TOGGLE, (x, y, d, key, True)))
        for action, nxt in moves:
            if nxt in parents:
                continue
            parents[nxt] = (s, action)
            if action == FORWARD and front == "goal":
                plan = []
                while parents[nxt] is not None:
                    nxt, a = parents[nxt]
                    plan.append(a)
                return plan[::-1]
            queue.append(nxt)
    raise RuntimeError("level has no solution")


def episode(env, seed: int) -> dict:
    """The optimal episode of level `seed`, replayed in the environment: states, actions, rewards."""
    obs, _ = env.reset(seed=seed)
    states, rewards = [encode(obs)], []
    plan = solve(env)
    for i, a in enumerate(plan):
        obs, r, terminated, truncated, _ = env.step(a)
        rewards.append(r)
        if terminated or truncated:
            if not (terminated and r > 0 and i == len(plan) - 1):
                raise RuntimeError(f"level {seed}: the BFS plan does not replay")
            break
        states.append(encode(obs))
    return {"states": np.stack(states), "actions": np.array(plan), "rewards": np.array(rewards, np.float32)}


def episodes(seeds, cache: Path | None, env_id: str = ENV_ID) -> list[dict]:
    if cache is not None and cache.is_file():
        data = np.load(cache, allow_pickle=True)
        return list(data["episodes"])
    env = make_env(env_id=env_id)
    out = [episode(env, s) for s in seeds]
    if cache is not None:
        np.savez(cache.with_suffix(".tmp.npz"), episodes=np.array(out, dtype=object))
        os.replace(cache.with_suffix(".tmp.npz"), cache)
    return out


def build_model(state_dim: int, quick: bool):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    torch.manual_seed(0)
    size = dict(hidden_size=32, n_layer=2, n_head=2) if quick else dict(hidden_size=64, n_layer=6, n_head=4)
    config = DecisionTransformerConfig(state_dim=state_dim, act_dim=N_ACTIONS, max_ep_len=400, action_tanh=False,
                                       n_positions=3 * CONTEXT, resid_pdrop=0.1, embd_pdrop=0.1,
                                       bos_token_id=None, eos_token_id=None, **size)
    return DecisionTransformerModel(config)


def _window(ep: dict, end: int, k: int = CONTEXT):
    """The k steps ending at `end` (inclusive), left-padded: (states, actions one-hot, rtg, timesteps, mask)."""
    lo = max(0, end + 1 - k)
    n = end + 1 - lo
    rtg = np.cumsum(ep["rewards"][::-1])[::-1]
    pad = k - n
    states = np.zeros((k, ep["states"].shape[1]), np.float32)
    states[pad:] = ep["states"][lo:end + 1]
    actions = np.zeros((k, N_ACTIONS), np.float32)
    actions[np.arange(pad, k), ep["actions"][lo:end + 1]] = 1
    returns = np.zeros((k, 1), np.float32)
    returns[pad:, 0] = rtg[lo:end + 1]
    steps = np.zeros(k, np.int64)
    steps[pad:] = np.arange(lo, end + 1)
    mask = np.zeros(k, np.int64)
    mask[pad:] = 1
    return states, actions, returns, steps, mask


def _forward(model, states, actions, returns, steps, mask):
    t = lambda a, dtype=torch.float32: torch.as_tensor(np.asarray(a), dtype=dtype)  # noqa: E731
    device = next(model.parameters()).device
    out = model(states=t(states).to(device), actions=t(actions).to(device), returns_to_go=t(returns).to(device),
                timesteps=t(steps, torch.long).to(device), attention_mask=t(mask, torch.long).to(device))
    return out.action_preds  # (B, k, N_ACTIONS): logits of the action at each state


def train(out: Path, data: list[dict], steps: int, quick: bool) -> tuple:
    """Action cross-entropy on random windows; resumes from the last checkpoint (every 500 steps)."""
    from transformers import DecisionTransformerModel

    folder = out / "model"
    if (folder / "config.json").is_file() and (out / "train.json").is_file():
        return DecisionTransformerModel.from_pretrained(folder).eval(), json.loads((out / "train.json").read_text())["seconds"]
    model = build_model(data[0]["states"].shape[1], quick)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=6e-4, total_steps=steps)
    start, spent, ckpt = 0, 0.0, out / "train_ckpt.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        start, spent = state["step"], state["seconds"]
    model.train()
    t0 = time.perf_counter()
    for step in range(start, steps):
        rng = np.random.default_rng(step)  # the same batches whether resumed or not
        picks = [(data[i], int(rng.integers(len(data[i]["actions"])))) for i in rng.integers(len(data), size=64)]
        s, a, r, ts, m = map(np.stack, zip(*(_window(ep, end) for ep, end in picks)))
        logits = _forward(model, s, a, r, ts, m)
        target = torch.as_tensor(a.argmax(-1))
        keep = torch.as_tensor(m).bool()
        loss = F.cross_entropy(logits[keep], target[keep])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        sched.step()
        if (step + 1) % 500 == 0 or step + 1 == steps:
            now = time.perf_counter()
            spent, t0 = spent + now - t0, now
            print(f"step {step + 1}/{steps}: loss {loss.item():.4f} ({spent:.0f} s)", file=sys.stderr)
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step + 1, "seconds": spent}, ckpt.with_suffix(".tmp"))
            os.replace(ckpt.with_suffix(".tmp"), ckpt)
    model.save_pretrained(folder)
    (out / "train.json").write_text(json.dumps({"steps": steps, "seconds": round(spent, 1), "levels": len(data)},
                                               indent=2) + "\n")
    ckpt.unlink(missing_ok=True)
    return model.eval(), spent


@torch.inference_mode()
def rollout(model, seeds, target_return: float, max_steps: int = MAX_STEPS, env_id: str = ENV_ID) -> dict:
    """Every level of `seeds` played at once, greedy actions, until each is solved or out of steps: solved
    rate and mean return."""
    envs = [make_env(max_steps, env_id) for _ in seeds]
    eps = []
    for env, seed in zip(envs, seeds):
        obs, _ = env.reset(seed=int(seed))
        eps.append({"states": [encode(obs)], "actions": [], "rewards": [], "done": False})
    while not all(e["done"] for e in eps):
        live = [i for i, e in enumerate(eps) if not e["done"]]
        windows = []
        for i in live:
            e = eps[i]
            # The return still to come at step j is the target less what was earned before j: a last
            # "reward" of target - earned makes _window's reverse sums say exactly that.
            play = {"states": np.stack(e["states"]), "actions": np.array(e["actions"] + [0]),
                    "rewards": np.array(e["rewards"] + [target_return - sum(e["rewards"])], np.float32)}
            windows.append(_window(play, len(e["states"]) - 1))
        s, a, r, ts, m = map(np.stack, zip(*windows))
        actions = _forward(model, s, a, r, ts, m)[:, -1].argmax(-1).tolist()
        for i, act in zip(live, actions):
            e = eps[i]
            obs, rew, terminated, truncated, _ = envs[i].step(act)
            e["actions"].append(act)
            e["rewards"].append(float(rew))
            e["done"] = terminated or truncated
            if not e["done"]:
                e["states"].append(encode(obs))
    returns = [sum(e["rewards"]) for e in eps]
    return {"return": float(np.mean(returns)), "solved": float(np.mean([r > 0 for r in returns])), "n": len(eps)}


def make_objective(target_return: float, name: str, seeds: dict = SPLIT_SEEDS, max_steps: int = MAX_STEPS,
                   env_id: str = ENV_ID) -> laserlm.Objective:
    def evaluate(model, split):
        return rollout(model, seeds[split], target_return, max_steps, env_id)

    return laserlm.Objective(evaluate, metric="return", name=f"decision_transformer.{name}", version="1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", type=int, default=2000, help="training levels, each one optimal episode (default 2000)")
    p.add_argument("--steps", type=int, default=2000, help="training steps of 64 windows (default 2000)")
    p.add_argument("--layers", default="all", help="layers to search (default all)")
    p.add_argument("--env", default=ENV_ID, help=f"a minigrid DoorKey environment (default {ENV_ID})")
    p.add_argument("--quick", action="store_true", help="a tiny model, 60 levels, 100 steps, 2 rhos: seconds")
    p.add_argument("-o", "--output", required=True, help="run folder: episodes, model/, train.json, search/")
    args = p.parse_args(argv)
    disable_progress_bar()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    levels, steps, rhos = (60, 100, (0.5, 0.1)) if args.quick else (args.levels, args.steps, PAPER_RHOS)
    t0 = time.perf_counter()
    if "DoorKey" not in args.env:
        raise SystemExit(f"decision_transformer: --env {args.env}: the BFS solver knows DoorKey levels only")
    data = episodes(range(10_000, 10_000 + levels), out / f"episodes_{levels}_max{MAX_STEPS}.npz", args.env)
    solve_secs = time.perf_counter() - t0
    model, train_secs = train(out, data, steps, args.quick)
    target = float(max(ep["rewards"].sum() for ep in data))
    # The quick run checks the pipeline, not the numbers: fewer and shorter rollouts.
    name = args.env.removeprefix("MiniGrid-").lower()
    objective = make_objective(target, f"{name}-quick", {"val": range(8), "test": range(100, 108)}, 40, args.env) \
        if args.quick else make_objective(target, name, env_id=args.env)
    t0 = time.perf_counter()
    result = laserlm.search(model, objective,
                            run_dir=out / "search", types="mlp", layers=args.layers, rhos=rhos, compose=True,
                            model_id=str(out / "model"), progress=not args.quick)
    secs = time.perf_counter() - t0
    pick = lambda r: {s: r[s] for s in ("val", "test")} | {f"{s}_solved": r[f"{s}_metrics"]["solved"] for s in ("val", "test")}  # noqa: E731
    summary = {"env": args.env, "levels": levels, "target_return": target, "solve_seconds": round(solve_secs, 1),
               "train_seconds": round(train_secs, 1), "search_seconds": round(secs, 1), "base": pick(result["base"]),
               "best": pick(result["best"]), "best_edits": result["best"]["edits"],
               "composed": pick(result["composed"]), "composed_edits": result["composed"]["edits"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except laserlm.UserError as e:  # a bad run folder or option: one line, exit 2, as the CLI does
        print(f"decision_transformer: {e}", file=sys.stderr)
        sys.exit(2)
