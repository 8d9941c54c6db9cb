"""The report's figures: matplotlib (Agg, no display) rendered to PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: a report is written on servers without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cemg.report.content import LEARNED_FUSIONS, RunContent, fusion_by_popularity  # noqa: E402

BLUE, ORANGE, GREEN, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#7f7f7f"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def dataset_figure(content: RunContent) -> bytes | None:
    if content.sequence_lengths is None or content.item_counts is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    lengths = content.sequence_lengths
    # A few very long histories (Beauty: 99% of users under 40, the longest 200) would squeeze the
    # rest into one bar, so the axis ends at the 99th percentile and longer ones pile into the last bin.
    cap = max(int(np.percentile(lengths, 99)), int(lengths.min()) + 1)
    clipped = np.minimum(lengths, cap)
    left.hist(clipped, bins=min(50, max(5, cap - int(lengths.min()) + 1)), color=BLUE)
    title = "interactions per user" + (f" (last bin: {cap} or more; longest {lengths.max()})"
                                       if lengths.max() > cap else "")
    left.set(title=title, xlabel="sequence length", ylabel="users")
    counts = np.sort(content.item_counts)[::-1]
    right.plot(np.arange(1, len(counts) + 1), counts, color=ORANGE)
    right.set(title="interactions per item (long tail)", xlabel="item rank by popularity", ylabel="interactions")
    if counts.max() > 50 * max(counts.min(), 1):
        right.set_yscale("log")
    fig.tight_layout()
    return _png(fig)


def training_figure(content: RunContent) -> bytes | None:
    """One panel per trained stage that recorded a curve: LightGCN, RQ-VAE, generator."""
    panels = []
    collab = (content.collab_info or {}).get("curve") or []
    if collab:
        panels.append(("LightGCN", collab, "loss", "valid_recall",
                       f"valid Recall@{(content.collab_info or {}).get('k', 20)}"))
    tok = ((content.tokenizer_report or {}).get("training") or {}).get("curve") or []
    if tok:
        panels.append(("RQ-VAE (fusion + quantiser)", tok, "loss", "recon", "reconstruction MSE"))
    gen = (content.generator_info or {}).get("history") or []
    if gen:
        rows = [dict(r, valid_ndcg10=r["valid"]["NDCG@10"]) if "valid" in r else r for r in gen]
        panels.append((f"generator ({content.generator_info.get('kind', '')})", rows, "loss",
                       "valid_ndcg10", "valid NDCG@10"))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.3), squeeze=False)
    for ax, (title, rows, left_key, right_key, right_label) in zip(axes[0], panels):
        epochs = [r["epoch"] for r in rows if left_key in r]
        marker = "." if len(epochs) < 30 else None
        ax.plot(epochs, [r[left_key] for r in rows if left_key in r], color=BLUE, marker=marker)
        ax.set(title=title, xlabel="epoch")
        ax.set_ylabel("training loss", color=BLUE)
        points = [(r["epoch"], r[right_key]) for r in rows if right_key in r]
        if points:
            twin = ax.twinx()
            x, y = zip(*points)
            twin.plot(x, y, color=ORANGE, marker="o", markersize=3)
            twin.set_ylabel(right_label, color=ORANGE)
    fig.tight_layout(w_pad=3.0)  # room for each panel's right-hand axis label
    return _png(fig)


def codebook_figure(content: RunContent) -> bytes | None:
    """Items per code at each level, codes sorted by use: a flat profile is a well-used codebook."""
    if content.codes is None or content.tokenizer_report is None:
        return None
    sizes = content.tokenizer_report["semantic_ids"]["codebook_sizes"]
    levels = len(content.tokenizer_report["levels"])  # learned levels; a disambiguation level is not plotted
    fig, axes = plt.subplots(1, levels, figsize=(3.3 * levels, 2.9), squeeze=False, sharey=True)
    for level, ax in enumerate(axes[0]):
        counts = np.sort(np.bincount(content.codes[:, level], minlength=sizes[level]))[::-1]
        used = int((counts > 0).sum())
        ax.bar(np.arange(len(counts)), counts, width=1.0, color=np.where(counts > 0, BLUE, GREY))
        ax.set(title=f"level {level + 1}: {used}/{len(counts)} codes used", xlabel="code (sorted by use)")
        if level == 0:
            ax.set_ylabel("items")
    fig.tight_layout()
    return _png(fig)


def fusion_figure(content: RunContent) -> bytes | None:
    """Histogram of the image weight over items that have both modalities (for the others the weight is
    exactly 0 or 1 by construction). The two softmax weights sum to 1, so one histogram shows both:
    the top axis reads the same bars as text weight; two overlaid mirror-image histograms were muddier."""
    fusion = content.fusion
    if fusion is None:
        return None
    both = fusion.has_image & fusion.has_text
    if not both.any():
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    image_weight = fusion.alphas[both, 0]
    ax.hist(image_weight, bins=np.linspace(0, 1, 41), color=BLUE)
    ax.axvline(0.5, color=GREY, linestyle=":", linewidth=1)
    ax.axvline(float(np.median(image_weight)), color=ORANGE, linewidth=1.5,
               label=f"median image weight {np.median(image_weight):.2f}")
    ax.set(xlabel="image weight α_v  (more image →)", ylabel="items", xlim=(0, 1),
           title=f"fusion weights of {int(both.sum()):,} items with image and text")
    top = ax.secondary_xaxis("top", functions=(lambda a: 1 - a, lambda a: 1 - a))
    top.set_xlabel("text weight α_t = 1 − α_v  (← more text)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def fusion_popularity_figure(content: RunContent) -> bytes | None:
    """Image weight by training-interaction bucket, items with both modalities: boxes are the quartiles,
    the line the median, whiskers the 5th and 95th percentiles (no outlier dots: Beauty has thousands of
    items per bucket). Only for learned weights; "mean" and "concat" fix them at 1/2."""
    fusion, counts = content.fusion, content.train_item_counts
    if fusion is None or counts is None or content.fusion_kind not in LEARNED_FUSIONS:
        return None
    if len(counts) != len(fusion.alphas):
        return None
    if not (fusion.has_image & fusion.has_text).any():
        return None
    buckets = fusion_by_popularity(fusion, counts, content.config.evaluation.cold_start_max_train)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    filled = [(pos, b) for pos, b in enumerate(buckets, 1) if len(b.weights)]
    ax.boxplot([b.weights for _, b in filled], positions=[pos for pos, _ in filled], widths=0.55, whis=(5, 95),
               showfliers=False, patch_artist=True, boxprops={"facecolor": "#c6dbef", "edgecolor": BLUE},
               medianprops={"color": ORANGE, "linewidth": 2}, whiskerprops={"color": BLUE},
               capprops={"color": BLUE})
    ax.axhline(0.5, color=GREY, linestyle=":", linewidth=1)
    ax.set_xticks(range(1, len(buckets) + 1),
                  [f"{b.label}{' (cold start)' if b.low == 0 else ''}\n{len(b.weights):,} items" for b in buckets])
    ax.set(xlim=(0.4, len(buckets) + 0.6), ylim=(0, 1), ylabel="image weight α_v",
           xlabel="training interactions per item", title="image weight by item popularity (items with image and text)")
    ax.get_xticklabels()[0].set_fontweight("bold")  # the cold-start bucket
    fig.tight_layout()
    return _png(fig)


def all_figures(content: RunContent) -> dict[str, bytes]:
    made = {
        "dataset": dataset_figure(content),
        "training": training_figure(content),
        "codebooks": codebook_figure(content),
        "fusion": fusion_figure(content),
        "fusion_popularity": fusion_popularity_figure(content),
    }
    return {name: png for name, png in made.items() if png is not None}
