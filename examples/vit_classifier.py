"""LASER on a vision transformer (the paper's Table 2), through the public API only.

Trains transformers' ViTForImageClassification with fixed seeds, then runs `laserlm.search` over its MLP
matrices on validation accuracy and reports test accuracy.

    python examples/vit_classifier.py --patch 4 -o runs/vit-digits-p4          # scikit-learn digits, offline
    python examples/vit_classifier.py --patch 2 -o runs/vit-digits-p2
    python examples/vit_classifier.py --dataset cifar10 --data-dir ~/data --augment -o runs/vit-cifar10
    python examples/vit_classifier.py --dataset svhn --data-dir ~/data -o runs/vit-svhn
    python examples/vit_classifier.py --quick -o /tmp/vit-quick                # seconds: the test suite's run

The digits data (8x8 grey images, 1,797 rows) ships with scikit-learn. CIFAR-10 and SVHN are read by
torchvision's datasets from --data-dir as their official files (cifar-10-batches-py/, train_32x32.mat and
test_32x32.mat), or by the same reading in numpy where torchvision cannot be imported; nothing is
downloaded. Training checkpoints every epoch and resumes after a kill; the search
resumes from its run folder. The trained model is RUN/model, an HF folder, so the CLI can search it too:

    laser search runs/vit-digits-p4/model --objective examples/vit_classifier.py:objective --types mlp \\
        -o runs/vit-digits-p4/cli-search
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transformers.utils.logging import disable_progress_bar

import laserlm
from laserlm import PAPER_RHOS

SEED = 0


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SEED))
    x, y = (x - 0.5) / 0.5, y
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {k: (x[i], y[i]) for k, i in parts.items()}


def _with_torchvision(name: str, root: str):
    from torchvision import datasets

    if name == "cifar10":
        parts = [datasets.CIFAR10(root, train=t, download=False) for t in (True, False)]
        return [(torch.tensor(d.data).permute(0, 3, 1, 2), torch.tensor(d.targets)) for d in parts]
    parts = [datasets.SVHN(root, split=s, download=False) for s in ("train", "test")]
    return [(torch.tensor(d.data), torch.tensor(d.labels)) for d in parts]


def _without_torchvision(name: str, root: str):
    """The same files read the way torchvision reads them. PyPI's torchvision wheels are CUDA builds, which
    cannot be imported beside a CPU-only torch; on such machines this reader stands in."""
    root = Path(root)
    if name == "cifar10":
        def read(files):
            rows = [pickle.loads((root / "cifar-10-batches-py" / f).read_bytes(), encoding="latin1") for f in files]
            x = np.vstack([r["data"] for r in rows]).reshape(-1, 3, 32, 32)
            return torch.tensor(x), torch.tensor([label for r in rows for label in r["labels"]])
        return [read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"])]
    from scipy.io import loadmat

    out = []
    for split in ("train", "test"):
        mat = loadmat(root / f"{split}_32x32.mat")
        y = mat["y"].astype(np.int64).squeeze()
        y[y == 10] = 0  # SVHN writes the digit 0 as label 10
        out.append((torch.tensor(np.transpose(mat["X"], (3, 2, 0, 1))), torch.tensor(y)))
    return out


def _official(name: str, root: str, val_fraction: float = 0.1):
    """Official train/test files; val is a fixed slice of train (the test set is never used to select)."""
    root = os.path.expanduser(root)
    try:
        importlib.import_module("torchvision")
        reader = _with_torchvision
    except (ImportError, RuntimeError, OSError):
        reader = _without_torchvision
    try:
        (x_train, y_train), (x_test, y_test) = reader(name, root)
    except (RuntimeError, OSError, KeyError, ValueError) as e:  # torchvision: "Dataset not found or corrupted"
        files = "cifar-10-batches-py/" if name == "cifar10" else "train_32x32.mat and test_32x32.mat"
        raise SystemExit(f"vit_classifier: no readable {name} under --data-dir {root} ({str(e).splitlines()[0]}): "
                         f"put {files} there")
    x_train, x_test = [(x.float() / 255.0 - 0.5) / 0.5 for x in (x_train, x_test)]
    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(SEED))
    n_val = max(1, int(val_fraction * len(order)))
    val, train_idx = order[:n_val], order[n_val:]
    return {"train": (x_train[train_idx], y_train[train_idx].long()), "val": (x_train[val], y_train[val].long()),
            "test": (x_test, y_test.long())}


def load_data(dataset: str = "digits", data_dir: str | None = None) -> dict:
    if dataset == "digits":
        return _digits()
    if not data_dir:
        raise SystemExit(f"vit_classifier: --dataset {dataset} reads local files: give --data-dir")
    return _official(dataset, data_dir)


def augment(x: torch.Tensor, g: torch.Generator, flip: bool) -> torch.Tensor:
    """Random crop with 4-pixel padding (1 for 8x8 images) and, for natural images, a horizontal flip."""
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    out = torch.empty_like(x)
    for i in range(len(x)):
        dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
        out[i] = padded[i, :, dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
        if flip and torch.rand((), generator=g) < 0.5:
            out[i] = out[i].flip(-1)
    return out


def build_model(image_size: int, channels: int, patch: int, quick: bool = False):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(SEED)
    size = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32) if quick else \
        dict(hidden_size=64, num_hidden_layers=6, num_attention_heads=4, intermediate_size=256)
    config = ViTConfig(image_size=image_size, patch_size=patch, num_channels=channels, num_labels=10,
                       hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, **size)
    return ViTForImageClassification(config)


@torch.inference_mode()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> dict:
    device = next(model.parameters()).device
    right, losses = [], []
    for i in range(0, len(y), batch):
        logits = model(pixel_values=x[i:i + batch].to(device)).logits.float()
        target = y[i:i + batch].to(device)
        right += (logits.argmax(-1) == target).float().tolist()
        losses += F.cross_entropy(logits, target, reduction="none").tolist()
    # per image too: the search's best.json then carries paired intervals of the test change
    return {"acc": sum(right) / len(y), "loss": sum(losses) / len(y), "n": len(y),
            "per_row": {"acc": right, "loss": losses}}


def train(out: Path, data: dict, patch: int, epochs: int, augment_on: bool, quick: bool, flip: bool) -> tuple:
    """Train, or resume from the last epoch's checkpoint; returns (model, seconds of training)."""
    from transformers import ViTForImageClassification

    folder = out / "model"
    if (folder / "config.json").is_file() and (out / "train.json").is_file():
        return ViTForImageClassification.from_pretrained(folder).eval(), json.loads((out / "train.json").read_text())["seconds"]
    x, y = data["train"]
    model = build_model(x.shape[-1], x.shape[1], patch, quick)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps_per_epoch = (len(y) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * steps_per_epoch)
    start, spent, ckpt = 0, 0.0, out / "train_ckpt.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        start, spent = state["epoch"], state["seconds"]
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(SEED * 1000 + epoch)  # the same batches whether resumed or not
        torch.manual_seed(SEED * 1000 + epoch)  # and the same dropout masks
        model.train()
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 64):
            idx = order[i:i + 64]
            xb = augment(x[idx], g, flip) if augment_on else x[idx]
            loss = F.cross_entropy(model(pixel_values=xb).logits, y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        spent += time.perf_counter() - t0
        model.eval()
        val = accuracy(model, *data["val"])
        print(f"epoch {epoch + 1}/{epochs}: val acc {val['acc']:.4f} ({spent:.0f} s)", file=sys.stderr)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": epoch + 1, "seconds": spent}, tmp)
        os.replace(tmp, ckpt)
    model.save_pretrained(folder)
    (out / "train.json").write_text(json.dumps({"epochs": epochs, "seconds": round(spent, 1), "patch": patch,
                                                "augment": augment_on}, indent=2) + "\n")
    ckpt.unlink(missing_ok=True)
    return model.eval(), spent


_DATA: dict = {}


def make_objective(data: dict, name: str) -> laserlm.Objective:
    def evaluate(model, split):
        return accuracy(model, *data[split])

    return laserlm.Objective(evaluate, metric="acc", name=f"vit_classifier.accuracy[{name}]", version="1")


def _digits_accuracy(model, split):
    if "digits" not in _DATA:
        _DATA["digits"] = _digits()
    return accuracy(model, *_DATA["digits"][split])


# For `laser search MODEL --objective examples/vit_classifier.py:objective`: digits accuracy on the training
# script's val/test split (seed 0).
objective = laserlm.Objective(_digits_accuracy, metric="acc", name="vit_classifier.digits_accuracy", version="1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["digits", "cifar10", "svhn"], default="digits")
    p.add_argument("--data-dir", help="folder with the official CIFAR-10 / SVHN files (not for digits)")
    p.add_argument("--patch", type=int, default=4, help="patch size in pixels (default 4)")
    p.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    p.add_argument("--augment", action="store_true", help="random crops (and flips for CIFAR-10) in training")
    p.add_argument("--layers", default="all", help="layers to search (default all)")
    p.add_argument("--quick", action="store_true", help="a tiny model, 2 epochs on 300 rows, 2 rhos: seconds")
    p.add_argument("-o", "--output", required=True, help="run folder: model/, train.json, search/")
    args = p.parse_args(argv)
    disable_progress_bar()
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args.dataset, args.data_dir)
    epochs, rhos = args.epochs, PAPER_RHOS
    if args.quick:
        data = {k: (x[:300], y[:300]) if k == "train" else (x[:100], y[:100]) for k, (x, y) in data.items()}
        epochs, rhos = 2, (0.5, 0.1)
    model, train_secs = train(out, data, args.patch, epochs, args.augment, args.quick, flip=args.dataset == "cifar10")
    name = f"{args.dataset}{'-aug' if args.augment else ''}-p{args.patch}{'-quick' if args.quick else ''}"
    t0 = time.perf_counter()
    result = laserlm.search(model, make_objective(data, name), run_dir=out / "search", types="mlp",
                            layers=args.layers, rhos=rhos, compose=True, model_id=str(out / "model"),
                            progress=not args.quick)
    secs = time.perf_counter() - t0
    summary = {"dataset": args.dataset, "patch": args.patch, "augment": args.augment, "train_seconds": round(train_secs, 1),
               "search_seconds": round(secs, 1), "base": {s: result["base"][s] for s in ("val", "test")},
               "best": {s: result["best"][s] for s in ("val", "test")}, "best_edits": result["best"]["edits"],
               "composed": {s: result["composed"][s] for s in ("val", "test")},
               "composed_edits": result["composed"]["edits"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except laserlm.UserError as e:  # a bad run folder or option: one line, exit 2, as the CLI does
        print(f"vit_classifier: {e}", file=sys.stderr)
        sys.exit(2)
