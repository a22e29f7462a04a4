"""LASER on a decision transformer in 10x10 Sokoban (the paper's Table 3), through the public API only.

The paper trains a 6-layer Decision Transformer on optimal episodes of gym-sokoban's 10x10 levels; its base
agent solves about half of them. Here the levels come from gym-sokoban's own generator (vendored, seeded per
level, see sokoban/generator.py), the rules are gym-sokoban's (sokoban/env.py, a gymnasium environment), and
each training level's optimal episode comes from a breadth-first search (sokoban/solver.py), replayed in the
environment as a check. So training needs no download and no RL.

    python examples/decision_transformer.py -o runs/dt-sokoban        # levels, training, search: 1-2 hours
    python examples/decision_transformer.py --quick -o /tmp/dt-quick   # seconds: the test suite's run

The model is transformers' DecisionTransformerModel (GPT-2 blocks) with discrete actions; val and test are
disjoint sets of level seeds, apart from the training seeds. The objective plays every level of a split greedily
(conditioned on the best return of the training episodes) and reports the solved rate and the mean return per
level; the search selects on the solved rate (ties broken by the return), composes, and reports test with a
paired bootstrap interval and an exact sign test over levels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sokoban package beside this file

from transformers.utils.logging import disable_progress_bar  # noqa: E402

import laserlm  # noqa: E402
from laserlm import PAPER_RHOS  # noqa: E402
from sokoban.env import N_ACTIONS, SokobanEnv  # noqa: E402
from sokoban.generator import level  # noqa: E402
from sokoban.solver import solve  # noqa: E402

CONTEXT = 10  # steps of (return-to-go, state, action) the model sees: the grid is the whole state
SPLIT_SEEDS = {"val": range(0, 300), "test": range(300, 600)}
TRAIN_SEED = 100_000  # training levels are seeds TRAIN_SEED, TRAIN_SEED + 1, ...
CHUNK = 250  # levels per cached file: a killed generation keeps its finished chunks
MAX_STEPS = 120  # gym-sokoban's step limit


def _make(job: tuple[int, int, bool]):
    seed, boxes, with_plan = job
    fixed, state = level(seed, boxes)
    plan = solve(fixed, state) if with_plan else None
    if with_plan and plan is None:
        raise RuntimeError(f"level {seed} has no solution")
    return fixed, state, plan


def levels(folder: Path, seeds: range, boxes: int, with_plan: bool, workers: int = 2) -> dict:
    """The levels of `seeds` (and their optimal plans), generated with `workers` processes in chunks of CHUNK,
    each chunk cached as .npz: a rerun, or a run killed midway, regenerates nothing that was finished."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for lo in range(seeds.start, seeds.stop, CHUNK):
        hi = min(lo + CHUNK, seeds.stop)
        path = folder / f"sokoban_{boxes}b_{lo}-{hi}{'_plans' if with_plan else ''}.npz"
        if not path.is_file():
            jobs = [(s, boxes, with_plan) for s in range(lo, hi)]
            if workers > 1:
                import multiprocessing as mp

                # fork where there is one: spawn would import this script, torch and all, in every worker.
                ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
                with ctx.Pool(workers) as pool:
                    made = pool.map(_make, jobs, chunksize=8)
            else:
                made = [_make(j) for j in jobs]
            plans = np.array([np.array(p if p is not None else [], np.int8) for _, _, p in made], dtype=object)
            np.savez(path.with_suffix(".tmp.npz"), fixed=np.stack([m[0] for m in made]),
                     state=np.stack([m[1] for m in made]), plans=plans)
            os.replace(path.with_suffix(".tmp.npz"), path)
        with np.load(path, allow_pickle=True) as data:
            parts.append({k: data[k] for k in ("fixed", "state", "plans")})
    return {k: np.concatenate([p[k] for p in parts]) for k in ("fixed", "state", "plans")}


def episodes(data: dict) -> list[dict]:
    """Each level's optimal plan replayed in the environment, which must solve it on the plan's last step."""
    env, out = SokobanEnv(max_steps=10_000), []
    for fixed, state, plan in zip(data["fixed"], data["state"], data["plans"]):
        obs, _ = env.reset(options={"level": (fixed, state)})
        states, rewards = [obs], []
        for i, a in enumerate(plan):
            obs, r, done, _, _ = env.step(int(a))
            rewards.append(r)
            if done != (i == len(plan) - 1):
                raise RuntimeError("an optimal plan does not replay: the solver and the environment disagree")
            if not done:
                states.append(obs)
        out.append({"states": np.stack(states), "actions": np.asarray(plan, np.int64),
                    "rewards": np.array(rewards, np.float32)})
    return out


def build_model(state_dim: int, quick: bool):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    torch.manual_seed(0)
    size = dict(hidden_size=32, n_layer=2, n_head=2) if quick else dict(hidden_size=64, n_layer=6, n_head=4)
    config = DecisionTransformerConfig(state_dim=state_dim, act_dim=N_ACTIONS, max_ep_len=MAX_STEPS + 1,
                                       action_tanh=False, n_positions=3 * CONTEXT, resid_pdrop=0.1, embd_pdrop=0.1,
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
    device = next(model.parameters()).device

    def t(a, dtype=torch.float32):
        return torch.as_tensor(np.asarray(a), dtype=dtype).to(device)

    out = model(states=t(states), actions=t(actions), returns_to_go=t(returns), timesteps=t(steps, torch.long),
                attention_mask=t(mask, torch.long))
    return out.action_preds  # (B, k, N_ACTIONS): logits of the action at each state


def train(out: Path, data: list[dict], steps: int, quick: bool, batch: int = 64) -> tuple:
    """Action cross-entropy on random windows; resumes from the last checkpoint (every 500 steps)."""
    from transformers import DecisionTransformerModel

    folder = out / "model"
    out.mkdir(parents=True, exist_ok=True)
    if (folder / "config.json").is_file() and (out / "train.json").is_file():
        return DecisionTransformerModel.from_pretrained(folder).eval(), json.loads((out / "train.json").read_text())
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
        rng = np.random.default_rng(step)  # the same batches, and dropout masks, whether resumed or not
        torch.manual_seed(step)
        picks = [(data[i], int(rng.integers(len(data[i]["actions"])))) for i in rng.integers(len(data), size=batch)]
        s, a, r, ts, m = map(np.stack, zip(*(_window(ep, end) for ep, end in picks)))
        logits = _forward(model, s, a, r, ts, m)
        keep = torch.as_tensor(m).bool()
        loss = F.cross_entropy(logits[keep], torch.as_tensor(a.argmax(-1))[keep])
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
    info = {"steps": steps, "batch": batch, "seconds": round(spent, 1), "levels": len(data)}
    (out / "train.json").write_text(json.dumps(info, indent=2) + "\n")
    ckpt.unlink(missing_ok=True)
    return model.eval(), info


@torch.inference_mode()
def rollout(model, data: dict, target_return: float, max_steps: int = MAX_STEPS) -> dict:
    """Every level of `data` played at once, greedy actions, until solved or out of steps. Per level: solved
    (0/1) and return; and their means."""
    envs = [SokobanEnv(max_steps=max_steps) for _ in data["fixed"]]
    eps = []
    for env, fixed, state in zip(envs, data["fixed"], data["state"]):
        obs, _ = env.reset(options={"level": (fixed, state)})
        eps.append({"states": [obs], "actions": [], "rewards": [], "done": False, "solved": False})
    while not all(e["done"] for e in eps):
        live = [i for i, e in enumerate(eps) if not e["done"]]
        windows = []
        for i in live:
            e = eps[i]
            # The return still to come at step j is the target less what was earned before j: a last "reward" of
            # target - earned makes _window's reverse sums say exactly that.
            play = {"states": np.stack(e["states"][-CONTEXT:]), "actions": np.array((e["actions"] + [0])[-CONTEXT:]),
                    "rewards": np.array(e["rewards"] + [target_return - sum(e["rewards"])], np.float32)[-CONTEXT:]}
            w = _window(play, len(play["states"]) - 1)
            w[3][w[4] == 1] += len(e["states"]) - len(play["states"])  # timesteps count from the episode's start
            windows.append(w)
        s, a, r, ts, m = map(np.stack, zip(*windows))
        actions = _forward(model, s, a, r, ts, m)[:, -1].argmax(-1).tolist()
        for i, act in zip(live, actions):
            e = eps[i]
            obs, rew, done, truncated, _ = envs[i].step(act)
            e["actions"].append(act)
            e["rewards"].append(float(rew))
            e["done"], e["solved"] = done or truncated, done
            if not e["done"]:
                e["states"].append(obs)
    solved = [float(e["solved"]) for e in eps]
    returns = [float(sum(e["rewards"])) for e in eps]
    return {"solved": float(np.mean(solved)), "return": float(np.mean(returns)), "n": len(eps),
            "per_row": {"solved": solved, "return": returns}}


def make_objective(model_levels: dict, target_return: float, name: str, max_steps: int = MAX_STEPS):
    """The solved rate (selected on; ties broken by the mean return) of greedy play on a split's levels."""
    def evaluate(model, split):
        return rollout(model, model_levels[split], target_return, max_steps)

    return laserlm.Objective(evaluate, metric="solved", name=f"decision_transformer.{name}", version="2")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--boxes", type=int, default=2, help="boxes per level (default 2)")
    p.add_argument("--levels", type=int, default=10000, help="training levels, one optimal episode each (default 10000)")
    p.add_argument("--steps", type=int, default=20000, help="training steps of 64 windows (default 20000)")
    p.add_argument("--layers", default="all", help="layers to search (default all)")
    p.add_argument("--workers", type=int, default=2, help="processes generating levels (default 2)")
    p.add_argument("--quick", action="store_true", help="a tiny model, 1-box levels, 100 steps, 2 rhos: seconds")
    p.add_argument("-o", "--output", required=True, help="run folder: levels/, model/, train.json, search/, summary")
    args = p.parse_args(argv)
    for flag in ("boxes", "levels", "steps", "workers"):
        if getattr(args, flag) < 1:
            raise laserlm.UserError(f"--{flag} must be at least 1, not {getattr(args, flag)}")
    disable_progress_bar()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:  # the pipeline, not the numbers: 1-box levels, few and short rollouts
        boxes, n_train, steps, rhos, seeds = 1, 40, 100, (0.5, 0.1), {"val": range(8), "test": range(8, 16)}
        args.workers = 1
    else:
        boxes, n_train, steps, rhos, seeds = args.boxes, args.levels, args.steps, PAPER_RHOS, SPLIT_SEEDS
    t0 = time.perf_counter()
    train_levels = levels(out / "levels", range(TRAIN_SEED, TRAIN_SEED + n_train), boxes, True, args.workers)
    split_levels = {s: levels(out / "levels", r, boxes, False, args.workers) for s, r in seeds.items()}
    data = episodes(train_levels)
    levels_secs = time.perf_counter() - t0
    model, trained = train(out, data, steps, args.quick)
    target = float(max(ep["rewards"].sum() for ep in data))
    objective = make_objective(split_levels, target, f"sokoban{boxes}" + ("-quick" if args.quick else ""),
                               40 if args.quick else MAX_STEPS)
    t0 = time.perf_counter()
    result = laserlm.search(model, objective, run_dir=out / "search", types="mlp", layers=args.layers, rhos=rhos,
                            compose=True, model_id=str(out / "model"), progress=not args.quick)
    secs = time.perf_counter() - t0

    def pick(r):
        return {f"{s}_{m}": r[f"{s}_metrics"][m] for s in ("val", "test") for m in ("solved", "return")}

    summary = {"env": f"gym-sokoban 10x10, {boxes} boxes, {MAX_STEPS}-step limit", "train_levels": n_train,
               "val_levels": len(seeds["val"]), "test_levels": len(seeds["test"]),
               "mean_optimal_steps": float(np.mean([len(ep["actions"]) for ep in data])),
               "shortest_training_episode": min(len(ep["actions"]) for ep in data), "target_return": target,
               "levels_seconds": round(levels_secs, 1), "train": trained, "search_seconds": round(secs, 1),
               "candidates": result["swept"], "base": pick(result["base"]), "best": pick(result["best"]),
               "best_edits": result["best"]["edits"], "composed": pick(result["composed"]),
               "composed_edits": result["composed"]["edits"],
               "test_change": {k: result[k].get("test_paired") for k in ("best", "composed")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except laserlm.UserError as e:  # a bad run folder or option: one line, exit 2, as the CLI does
        print(f"decision_transformer: {e}", file=sys.stderr)
        sys.exit(2)
