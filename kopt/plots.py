"""PNG plots for `kopt compare --report`. matplotlib is imported inside each function (Agg backend, no
display needed) so that importing kopt stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"oracle": "#333333", "random": "#8c8c8c", "confidence": "#d62728", "surprisal": "#1f77b4",
          "surprisal-top-m": "#2ca02c", "ttt": "#9467bd"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_scaling(result: Any, path: Path) -> Path:
    """The Best-of-N fast_1 curve (pass@k, k on a log2 axis) with each strategy at its equivalent K
    (Barnes 2026's scaling figure). Strategies off the curve's ends are drawn at the end with an arrow."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    try:
        ks = [k for k, _ in result.curve]
        ys = [v for _, v in result.curve]
        if ks:
            ax.plot(ks, ys, "-o", color="#444444", label="Best-of-N (pass@k of fast_1)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks)
            ax.set_xticklabels([str(k) for k in ks])
        placed = [s for s in result.strategies if s.fast_1.mean is not None and s.equivalent_k is not None]
        for s in placed:
            x = s.equivalent_k.k
            # Strategies on the same point (common: several reach the oracle) are fanned out sideways by a
            # small factor on the log axis, so every marker stays visible; the legend keeps the exact K.
            same = [t for t in placed if t.equivalent_k.k == x and t.fast_1.mean == s.fast_1.mean]
            if len(same) > 1:
                x = x * 2 ** (0.12 * (same.index(s) - (len(same) - 1) / 2))
            marker = {"<": "<", ">": ">"}.get(s.equivalent_k.relation, "D")
            ax.scatter([x], [s.fast_1.mean], marker=marker, s=70, zorder=3, color=COLORS.get(s.strategy, "#17becf"),
                       edgecolors="white", linewidths=0.8,
                       label=f"{s.strategy} (K{'≈' if s.equivalent_k.relation == '=' else ' '}{s.equivalent_k})")
        ax.set_xlabel("k (samples)")
        ax.set_ylabel("fast_1")
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"Best-of-N scaling, K={result.k}, {len(result.tasks)} task(s) x {len(result.seeds)} seed(s)")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plot_strategies(result: Any, path: Path) -> Path:
    """fast_1 (with per-seed spread) and mean selected speedup per strategy, side by side."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 3.8), dpi=110)
    try:
        names = [s.strategy for s in result.strategies]
        colors = [COLORS.get(n, "#17becf") for n in names]
        f1 = [s.fast_1.mean or 0.0 for s in result.strategies]
        err = [s.fast_1.seed_std or 0.0 for s in result.strategies]
        a1.bar(names, f1, yerr=err, color=colors, capsize=3)
        a1.set_ylim(0, 1.05)
        a1.set_ylabel("fast_1 (selected kernel)")
        sp = [s.mean_speedup.mean or 0.0 for s in result.strategies]
        a2.bar(names, sp, color=colors)
        a2.axhline(1.0, color="#444444", lw=0.8, ls="--")
        a2.set_ylabel("mean selected speedup (x)")
        for ax in (a1, a2):
            ax.tick_params(axis="x", labelrotation=30, labelsize=8)
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
