"""The analyses' plots (PNG), drawn from their tables: `laser analyze` writes them beside analysis_<name>.json."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars(out: Path, name: str, labels: list[str], values: list[float], ylabel: str, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.bar(labels, values, color="tab:blue")
    for i, v in enumerate(values):
        ax.annotate(f"{v:g}", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)


def similarity(out: Path, rows: list[dict], edit, n: int) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for key, label in (("top", "only the top components (kept)"), ("bottom", "only the removed components")):
        ax.plot(range(len(rows)), [r[key] for r in rows], marker="o", ms=3, label=label)
    ax.set_xticks(range(len(rows)), [f"{r['rho']:g}" for r in rows])  # the grid's rho, evenly spaced
    ax.set_xlabel("fraction of the rank kept, rho")
    ax.set_ylabel("cosine(prediction, answer)")
    ax.set_title(f"{n} rows corrected by {edit}: similarity of the predicted token to the answer\n"
                 "(cosine of the model's own input embeddings)", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "components_similarity.png", dpi=110)
    plt.close(fig)


def seeds(out: Path, table: dict) -> None:
    plt = pyplot()
    metric = table["metric"]
    values = [r["metrics"][metric] for r in table["seeds"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(range(len(values)), values, "o", label="authors' svd_lowrank, one seed each")
    ax.axhline(table["exact"][metric], color="tab:green", label="exact SVD")
    ax.axhline(table["base"][metric], color="black", ls="--", label="base model")
    ax.set_xlabel("seed")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.set_title(f"{table['split']}: {' '.join(str(e['type']) + ':' + str(e['layer']) for e in table['edits'])}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "seeds.png", dpi=110)
    plt.close(fig)
