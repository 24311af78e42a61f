"""One PNG of a COCO evaluation: precision-recall curves and the per-class AP, sorted."""
from pathlib import Path

from worldtune.outputs import write_figure

MAX_CLASS_BARS = 60  # beyond this, the best and the worst half of it are drawn


def plot_eval(metrics: dict, png_path: str | Path, title: str = "") -> Path:
    """Draw `coco_evaluate`'s `pr_curves` and `per_class` into `png_path`.

    Returns:
        the path written. Classes without GT (AP None) are left out of the bars and counted in the
        bar panel's title.
    """
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    scored = sorted(((ap, name) for name, ap in (metrics.get("per_class") or {}).items() if ap is not None),
                    reverse=True)
    no_gt = len(metrics.get("per_class") or {}) - len(scored)
    shown = scored
    if len(scored) > MAX_CLASS_BARS:  # a gap row between the best and the worst
        half = MAX_CLASS_BARS // 2
        shown = scored[:half] + [(None, "...")] + scored[-half:]
    height = max(4.0, 0.2 * len(shown) + 1.2)
    fig, (ax_pr, ax_cls) = plt.subplots(1, 2, figsize=(12, height))

    curves = metrics.get("pr_curves") or {}
    for key, style in (("AP", "-"), ("AP50", "--"), ("AP75", ":")):
        points = [(r, p) for r, p in zip(curves.get("recall", []), curves.get(key, [])) if p is not None]
        if points:
            value = metrics.get(key)
            label = f"{key} {100 * value:.1f}" if value is not None else key
            ax_pr.plot(*zip(*points), style, label=label)
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
              title="precision-recall, mean over classes (area all, 100 dets)")
    ax_pr.set_aspect("equal", adjustable="box", anchor="N")  # square, at the top beside a tall bar panel
    ax_pr.grid(alpha=0.3)
    if ax_pr.lines:
        ax_pr.legend(loc="best")

    rows = list(range(len(shown)))
    ax_cls.barh(rows, [100 * ap if ap is not None else 0 for ap, _ in shown], color="tab:blue")
    ax_cls.set_yticks(rows, [name for _, name in shown], fontsize=8)
    ax_cls.invert_yaxis()  # best on top
    ax_cls.set_xlim(0, 100)
    ax_cls.set_xlabel("AP@[.50:.95], %")
    what = f"{len(scored)} classes" if len(shown) == len(scored) else \
        f"best and worst {MAX_CLASS_BARS // 2} of {len(scored)} classes"
    ax_cls.set_title(f"per-class AP, {what}" + (f" ({no_gt} without GT left out)" if no_gt else ""))
    ax_cls.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        write_figure(fig, png_path)  # whole or not at all: a failed write leaves no cut-short picture
    finally:
        plt.close(fig)
    return Path(png_path)
