"""Turn a run's content into report.md (figures beside it) and report.html (self-contained: the PNGs
are embedded as data URIs, so the one file can be mailed or attached)."""

from __future__ import annotations

import base64
import html
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cemg.artifacts import atomic_dir
from cemg.generator.recommender import describe_generator
from cemg.report.content import LEARNED_FUSIONS, Example, ExampleItem, RunContent, fusion_by_popularity

log = logging.getLogger(__name__)

SECTIONS = ("Overview", "Dataset", "Training curves", "Codebook utilisation", "Fusion attention",
            "Fusion weights by popularity", "Items by image weight", "Results", "Example recommendations")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str  # figures/<name>.png
    caption: str


@dataclass
class Examples:
    examples: list[Example]


@dataclass
class ItemCards:
    label: str
    items: list[ExampleItem]  # each with its image weight and training interactions


Block = str | Table | Figure | Examples | ItemCards


@dataclass
class Section:
    title: str
    blocks: list[Block]

    @property
    def anchor(self) -> str:
        return self.title.lower().replace(" ", "-")


def _f(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}f}"


# --- sections -------------------------------------------------------------------------------------


def _overview(c: RunContent) -> Section:
    cfg = c.config
    present = [s for s, ok in c.stages.items() if ok]
    missing = [s for s, ok in c.stages.items() if not ok]
    rows = [
        ["run directory", str(c.run_dir)],
        ["dataset", f"{cfg.data.name} ({cfg.data.format})"],
        ["stages present", ", ".join(present) or "none"],
    ]
    if missing:
        rows.append(["stages missing", ", ".join(missing)])
    if c.tokenizer_report:
        ids = c.tokenizer_report["semantic_ids"]
        learned = len(c.tokenizer_report["levels"])
        extra = " + 1 disambiguation level" if ids["levels"] > learned else ""
        if "source" in c.tokenizer_report:  # published ids (tokenizer.ids_file): nothing was trained
            sizes = sorted(set(ids["codebook_sizes"][:learned]))
            rows.append(["semantic ids", f"{learned} levels x {'/'.join(map(str, sizes))} codes{extra} "
                                         f"(read from {c.tokenizer_report['source']['ids_file']})"])
        else:
            inputs = c.tokenizer_report["inputs"]
            rows.append(["semantic ids", f"{learned} levels x {cfg.tokenizer.codebook_size} codes{extra} "
                                         f"(modalities: {', '.join(inputs['modalities'])}; "
                                         f"fusion: {inputs.get('fusion', 'attention')})"])
    if c.generator_info:
        g = c.generator_info
        prior = cfg.generator.content_prior
        image_weight = prior.image_weight if "image" in cfg.tokenizer.content_modalities else 1.0
        rows.append(["generator", describe_generator(g, g.get("reads_content", False),
                                                     {**prior.model_dump(), "image_weight": image_weight})
                     + f", beam {cfg.generator.beams}"])
    rows.append(["report written", time.strftime("%Y-%m-%d %H:%M")])
    return Section("Overview", [Table(["", ""], rows)])


def _dataset(c: RunContent) -> Section:
    if c.dataset is None:
        return Section("Dataset", ["The data stage is missing."])
    s = c.dataset.stats()
    rows = [
        ["users", f"{s['users']:,}"], ["items", f"{s['items']:,}"], ["interactions", f"{s['interactions']:,}"],
        ["average sequence length", f"{s['avg_length']:.1f}"], ["sparsity", f"{100 * s['sparsity']:.2f}%"],
    ]
    names = {"with_title": "items with a title", "with_image_ref": "items with an image reference",
             "text_encoded": "items with encoded text", "image_encoded": "items with an encoded image"}
    rows += [[names[k], f"{v:,}"] for k, v in c.modality_counts.items() if k in names]
    blocks: list[Block] = [
        f"After {c.config.data.min_core}-core filtering; histories are capped at "
        f"{c.config.data.max_history} items for training and evaluation.",
        Table(["", c.dataset.name], rows),
    ]
    if c.image_note:
        blocks.append(c.image_note)
    return Section("Dataset", [*blocks, Figure("dataset", "Sequence lengths and item popularity.")])


def _training(c: RunContent) -> Section:
    blocks: list[Block] = []
    if c.collab_info:
        i = c.collab_info
        blocks.append(f"LightGCN: {i.get('epochs_run', '?')} epochs, best valid Recall@{i.get('k', 20)} "
                      f"{_f(i.get('best_valid_recall', float('nan')))} at epoch {i.get('best_epoch', '?')} "
                      f"(popularity {_f(i.get('pop_valid_recall', float('nan')))}).")
    if c.tokenizer_report and "source" in c.tokenizer_report:
        blocks.append(f"Tokenizer: not trained; semantic ids read from {c.tokenizer_report['source']['ids_file']}.")
    elif c.tokenizer_report:
        t = c.tokenizer_report["training"]
        blocks.append(f"Tokenizer (fusion + RQ-VAE): {t['epochs']} epochs, {t['steps']:,} steps, {t['seconds']:.1f} s; "
                      f"final reconstruction MSE {_f(c.tokenizer_report['reconstruction']['mse'])}.")
    if c.generator_info:
        g = c.generator_info
        blocks.append(f"Generator ({g['kind']}, {g.get('mode', 'semantic')} mode): {g.get('epochs_run', '?')} epochs in {g.get('seconds', 0):.0f} s, "
                      f"best valid NDCG@10 {_f(g.get('best_valid_ndcg10', float('nan')))} at epoch "
                      f"{g.get('best_epoch', '?')} (the model kept).")
    if not blocks:
        return Section("Training curves", ["No trained stage recorded a curve."])
    caption = "Training loss (blue, left axis) and the validation measure each stage selects on (orange, right axis)."
    curve = ((c.tokenizer_report or {}).get("training") or {}).get("curve") or []
    if any(row.get("loss", 0) < 0 for row in curve):
        caption += (" The RQ-VAE loss adds gamma times the diversity term, a negative entropy of code use, "
                    "so it falls below zero.")
    blocks.append(Figure("training", caption))
    return Section("Training curves", blocks)


def _codebooks(c: RunContent) -> Section:
    r = c.tokenizer_report
    if r is None:
        return Section("Codebook utilisation", ["The tokenizer stage is missing."])
    rows = []
    for lvl in r["levels"]:
        size = r["semantic_ids"]["codebook_sizes"][lvl["level"] - 1]
        rows.append([str(lvl["level"]), f"{lvl['used_codes']}/{size}",
                     f"{100 * lvl['utilisation']:.1f}%", f"{lvl['perplexity']:.1f}",
                     f"{100 * lvl['prefix_shared_rate']:.1f}%", _f(lvl.get("relative_latent_error", float("nan")), 3)])
    col = r["collisions"]
    note = (f"{100 * col['rate_before_fix']:.1f}% of items ({col['colliding_items']:,}) shared all learned codes "
            f"with another item (largest group {col['max_group_size']}); ")
    note += ("a last level numbering the items within each group makes every id unique."
             if col["extra_level"] else "no disambiguation level was needed.")
    return Section("Codebook utilisation", [
        Table(["level", "codes used", "utilisation", "perplexity", "items sharing the prefix to this level",
               "relative latent error"], rows),
        note,
        Figure("codebooks", "Items per code at each level, codes sorted by use (grey: unused)."),
    ])


def _fusion(c: RunContent) -> Section:
    f = c.fusion
    if f is None and c.tokenizer_report and "source" in c.tokenizer_report:
        return Section("Fusion attention", [f"No fusion layer: the semantic ids were read from "
                                            f"{c.tokenizer_report['source']['ids_file']} (tokenizer.ids_file)."])
    if f is None:
        return Section("Fusion attention", ["The fusion weights cannot be rebuilt: the run lacks the tokenizer "
                                            "model, the features or the collaborative embeddings."])
    both = f.has_image & f.has_text
    kind = ((c.tokenizer_report or {}).get("inputs") or {}).get("fusion", "attention")
    if kind in ("mean", "concat"):
        how = ("averages the present modalities" if kind == "mean"
               else "puts the image and text vectors side by side, unweighted")
        return Section("Fusion attention", [(
            f"No attention: this tokenizer's fusion (tokenizer.fusion: {kind}) {how}. Its weights are fixed, "
            f"not learned: 1/2 each for the {int(both.sum()):,} items with image and text, 1 for an item's only "
            "modality, 0 for a missing one. The paper's collaborative-guided attention is tokenizer.fusion: "
            "attention.")])
    if not f.has_image.any():
        return Section("Fusion attention", [(
            f"No item has an image, so the fusion layer has one modality to weigh: every one of the "
            f"{int(f.has_text.sum()):,} items with text gets text weight exactly 1, and there is no attention "
            "histogram to show. (Paper 4.2.2.3 weighs image against text; here it reduces to the text vector "
            "guided by the collaborative embedding.)")])
    rows = [
        ["image and text", f"{int(both.sum()):,}",
         _f(float(f.alphas[both, 0].mean()), 3) if both.any() else "-",
         _f(float(f.alphas[both, 1].mean()), 3) if both.any() else "-"],
        ["image only", f"{int((f.has_image & ~f.has_text).sum()):,}", "1", "0"],
        ["text only", f"{int((f.has_text & ~f.has_image).sum()):,}", "0", "1"],
        ["neither", f"{int((~f.has_image & ~f.has_text).sum()):,}", "0", "0"],
    ]
    query = ("Paper 4.2.2.3: each item's collaborative embedding queries" if kind == "attention" else
             "tokenizer.fusion: content_attention (not the paper's query): each item's own content, W_Q [v; t], "
             "queries")
    blocks: list[Block] = [
        f"{query} its image and text vectors; the softmax weights mix them. A missing modality gets weight "
        "exactly 0.",
        Table(["items with", "items", "mean image weight", "mean text weight"], rows),
    ]
    if both.any():
        q = [float(x) for x in np.percentile(f.alphas[both, 1], [5, 50, 95])]
        blocks.append(f"Text weight over items with both modalities: 5th percentile {q[0]:.3f}, median {q[1]:.3f}, "
                      f"95th percentile {q[2]:.3f}.")
        blocks.append(Figure("fusion", "Items with both modalities by their image weight (bottom axis); the text "
                                       "weight is one minus it (top axis)."))
    return Section("Fusion attention", blocks)


def _learned_weights_note(c: RunContent) -> str | None:
    """Why the image weights cannot be broken down by item (None when they can); the same reasons as the
    Fusion attention section's, said once more so that each section stands on its own."""
    f = c.fusion
    if f is None and c.tokenizer_report and "source" in c.tokenizer_report:
        reason = f"no fusion layer (the semantic ids were read from {c.tokenizer_report['source']['ids_file']})"
    elif f is None:
        reason = ("the fusion weights cannot be rebuilt (the run lacks the tokenizer model, the features or the "
                  "collaborative embeddings)")
    elif c.fusion_kind not in LEARNED_FUSIONS:
        reason = (f"with tokenizer.fusion: {c.fusion_kind} the image weight is fixed by construction, not learned "
                  "(1/2 for every item with image and text, whatever its popularity)")
    elif c.train_item_counts is None:
        reason = "the data stage is missing, so items' training interactions are unknown"
    elif len(c.train_item_counts) != len(f.alphas):
        reason = (f"the fusion view covers {len(f.alphas):,} items and the data stage {len(c.train_item_counts):,}, "
                  "so they do not belong to the same run")
    elif not f.has_image.any():
        reason = "no item has an image, so every item's image weight is 0 (text weight 1) by construction"
    elif not (f.has_image & f.has_text).any():
        reason = "no item has both an image and text, so every weight is 0 or 1 by construction"
    else:
        return None
    return f"Not shown: {reason}."


def _fusion_popularity(c: RunContent) -> Section:
    title = "Fusion weights by popularity"
    note = _learned_weights_note(c)
    if note:
        return Section(title, [note])
    f, cold = c.fusion, c.config.evaluation.cold_start_max_train
    buckets = fusion_by_popularity(f, c.train_item_counts, cold)
    rows = []
    for b in buckets:
        if len(b.weights):
            q25, q50, q75 = (float(x) for x in np.percentile(b.weights, [25, 50, 75]))
            stats = [_f(q50, 3), f"{q25:.3f} - {q75:.3f}"]
        else:
            stats = ["-", "-"]
        rows.append([b.label + (" (cold start)" if b.low == 0 else ""), f"{b.items:,}", f"{len(b.weights):,}", *stats])
    blocks: list[Block] = [
        f"Items by their training interactions (the leave-one-out training split, as the cold-start results count "
        f"them) and, for those with image and text, their image weight α_v. The first bucket is the cold-start "
        f"subset (at most {cold}); the edges are fixed rather than quantiles so that a bucket means the same "
        "count in every run and dataset. Items with one modality are left out: their weight is 0 or 1 by "
        "construction.",
        Table(["training interactions", "items", "with image and text", "median image weight",
               "interquartile range"], rows),
    ]
    both = f.has_image & f.has_text
    weights, counts = f.alphas[both, 0], c.train_item_counts[both]
    if len(weights) > 2 and np.ptp(weights) > 0 and np.ptp(counts) > 0:
        from scipy import stats

        rho, p = stats.spearmanr(counts, weights)
        blocks.append(f"Spearman rank correlation between training interactions and image weight over the "
                      f"{len(weights):,} items: {rho:+.3f} (p = {p:.2g}; positive: popular items lean on the image).")
    blocks.append(Figure("fusion_popularity", "Image weight per popularity bucket: box from the 25th to the 75th "
                                              "percentile, line at the median, whiskers at the 5th and 95th "
                                              "percentiles; the dotted line is an even split."))
    return Section(title, blocks)


def _weight_extremes(c: RunContent) -> Section:
    title = "Items by image weight"
    note = _learned_weights_note(c)
    if note:
        return Section(title, [note])
    n = len(c.highest_image_weight)
    blocks: list[Block] = [
        f"The {n} items (of those with image and text) whose fusion weight leans most on the image, and the {n} "
        "that lean most on the text (α_t = 1 − α_v), with their training interactions."]
    if c.image_note:
        blocks.append(c.image_note)
    return Section(title, [*blocks, ItemCards("highest image weight", c.highest_image_weight),
                           ItemCards("lowest image weight (most text)", c.lowest_image_weight)])


def _results(c: RunContent) -> Section:
    if not c.evaluation:
        return Section("Results", ["The evaluation stage is missing."])
    names = list(c.evaluation["test"].metrics)
    rows = []
    for part, result in c.evaluation.items():
        rows.append([f"{part}, all users ({result.n_users:,})"] + [_f(result.metrics[m]) for m in names])
        rows.append([f"{part}, cold start ({result.n_cold:,})"] + [_f(result.cold_start[m]) for m in names])
    paper = c.paper
    blocks: list[Block] = [
        "Full-catalogue ranking, leave-one-out; cold start: targets with at most "
        f"{c.config.evaluation.cold_start_max_train} training interactions (paper Table 3)."
        + (" History items are removed from the ranking." if c.config.evaluation.mask_history else ""),
    ]
    if paper:
        rows.append(["paper's CEMG, test (Table 2)"] + [_f(paper[m]) if m in paper else "" for m in names])
        blocks.append(f"The last row is the paper's result on {c.config.data.name}; empty cells are values our copy "
                      "of the paper does not keep.")
    else:
        blocks.append(f"The paper reports no results on {c.config.data.name!r}, so there is nothing to compare with.")
    blocks.insert(1, Table(["split", *names], rows))
    if c.seeds:
        blocks += _seed_spread(c, names)
    return Section("Results", blocks)


def _seed_spread(c: RunContent, names: list[str]) -> list[Block]:
    """Mean ± std over the seeds of a run made with `--seeds`, then every seed's test values."""
    record = c.seeds or {}
    seeds = [str(s) for s in record["seeds"]]
    results = record["results"]
    subsets = (("all", "all users"), ("cold_start", "cold start"))

    def cell(entry: dict) -> str:
        return _f(entry["mean"]) + ("" if entry["std"] is None else f" ± {_f(entry['std'])}")

    spread_rows = []
    for part, entry in results.items():
        for subset, label in subsets:
            spread_rows.append([f"{part}, {label}"] + [cell(entry[subset][m]) if m in entry[subset] else ""
                                                      for m in names])
    seed_rows = []
    test = results.get("test", {})
    for subset, label in subsets:
        for seed in seeds:
            seed_rows.append([f"seed {seed}, test, {label}"]
                             + [_f(test[subset][m]["per_seed"][seed]) if m in test.get(subset, {}) else ""
                                for m in names])
    return [
        f"Over {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(seeds)}): the data, features and LightGCN are shared (seed "
        f"{record['config_seed']}); the tokenizer, generator and evaluation were re-run per seed. The table above and "
        f"the other sections show seed {c.seed_shown}. Mean ± sample standard deviation over the seeds:",
        Table(["split (over seeds)", *names], spread_rows),
        "Every seed's test values (per-user ranks for paired tests are listed in seeds.json; compare two runs "
        "with `cemg compare RUN_A RUN_B`):",
        Table(["seed", *names], seed_rows),
    ]


def _examples(c: RunContent) -> Section:
    if not c.examples:
        return Section("Example recommendations", [c.examples_note or "No examples."])
    weight = c.config.generator.content_prior.weight
    scores = (f"scores are log p + {weight:g} x cosine to the last item's content, the content prior"
              if weight else "scores are log-probabilities")
    blocks: list[Block] = [(
        "Test users (evenly spaced through the dataset): their last items, the held-out next item, and the "
        f"generator's top items ({scores}; the held-out item is marked).")]
    if c.image_note:
        blocks.append(c.image_note)
    return Section("Example recommendations", [*blocks, Examples(c.examples)])


def build_sections(c: RunContent) -> list[Section]:
    return [_overview(c), _dataset(c), _training(c), _codebooks(c), _fusion(c), _fusion_popularity(c),
            _weight_extremes(c), _results(c), _examples(c)]


# --- markdown -------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_thumb(item: ExampleItem) -> str:
    return f"![{_md_cell(item.title)}](images/item-{item.item}.png)" if item.image else ""


def to_markdown(title: str, sections: list[Section], figures: dict[str, bytes]) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                out += [block, ""]
            elif isinstance(block, Table):
                out.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                out.append("|" + "---|" * len(block.header))
                out += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in block.rows]
                out.append("")
            elif isinstance(block, Figure):
                if block.name in figures:
                    out += [f"![{block.caption}](figures/{block.name}.png)", "", f"*{block.caption}*", ""]
            elif isinstance(block, ItemCards):
                pictures = any(i.image for i in block.items)
                out += [f"**{block.label}**", ""]
                out.append("| rank | item | title | image weight | training interactions |"
                           + (" image |" if pictures else ""))
                out.append("|---|---|---|---|---|" + ("---|" if pictures else ""))
                for rank, item in enumerate(block.items, 1):
                    out.append(f"| {rank} | `{_md_cell(item.key)}` | {_md_cell(item.title)} | "
                               f"{item.image_weight:.3f} | {item.train_interactions:,} |"
                               + (f" {_md_thumb(item)} |" if pictures else ""))
                out.append("")
            elif isinstance(block, Examples):
                pictures = any(i.image for ex in block.examples for i in [*ex.history, ex.target, *ex.recommended])
                for ex in block.examples:
                    out += [f"**user {ex.user}**: last items "
                            + " | ".join(f"{i.title} (`{i.key}`)" for i in ex.history)
                            + f"; held out: **{ex.target.title}** (`{ex.target.key}`)", ""]
                    out += (["| rank | item | title | score | image |", "|---|---|---|---|---|"] if pictures
                            else ["| rank | item | title | score |", "|---|---|---|---|"])
                    for rank, item in enumerate(ex.recommended, 1):
                        mark = " **(held out)**" if item.is_target else ""
                        out.append(f"| {rank} | `{_md_cell(item.key)}` | {_md_cell(item.title)}{mark} | "
                                   f"{item.score:.2f} |" + (f" {_md_thumb(item)} |" if pictures else ""))
                    out.append("")
    return "\n".join(out)


# --- html -----------------------------------------------------------------------------------------

_CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222; margin: 0; background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #e3e6ea; padding-bottom: 4px; margin-top: 1.8em; }
nav { font-size: 0.9em; margin-bottom: 1em; }
nav a { margin-right: 1em; color: #1f5fa8; text-decoration: none; }
p { line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #d9dde2; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #eef1f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.88em; color: #555; margin-top: 4px; }
.example { border: 1px solid #e3e6ea; border-radius: 6px; padding: 10px 14px; margin: 14px 0; }
.example h3 { font-size: 1.0em; margin: 0 0 8px; }
.strip { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; margin-bottom: 8px; }
.card { width: 128px; font-size: 0.78em; line-height: 1.25; }
.card img { display: block; max-width: 128px; max-height: 120px; margin-bottom: 3px; border: 1px solid #ddd; }
.card .noimg { width: 120px; height: 60px; background: #f0f0f0; color: #999; display: flex;
               align-items: center; justify-content: center; margin-bottom: 3px; }
.card.text { width: 176px; }
.card.weighted { width: 160px; }
.card.weighted .score { white-space: nowrap; }
.card.target { outline: 3px solid #2ca02c; outline-offset: 2px; }
.arrow { font-size: 2em; color: #888; align-self: center; padding: 0 4px; }
.label { font-size: 0.82em; color: #555; font-weight: bold; margin: 6px 0 4px; }
.score { color: #777; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _inline_code(escaped: str) -> str:
    """`x` -> <code>x</code>, so one paragraph text serves both the markdown and the HTML."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("%"))
        return True
    except ValueError:
        return False


def _short(title: str, limit: int = 80) -> str:
    # Amazon titles run to 800 characters of keywords (Beauty); the full title stays in the card's tooltip.
    return title if len(title) <= limit else title[: limit - 1].rstrip() + "\u2026"


def _html_card(item: ExampleItem, rank: int | None = None, pictures: bool = True) -> str:
    e = html.escape
    img = ""
    if item.image:
        img = f'<img src="{_data_uri(item.image)}" alt="{e(item.title)}">'
    elif pictures:  # some items of the example have a picture: mark the ones that lack it
        img = '<div class="noimg">no image</div>'
    head = f"{rank}. " if rank is not None else ""
    score = f'<br><span class="score">score {item.score:.2f}</span>' if item.score is not None else ""
    if item.image_weight is not None:
        score += (f'<br><span class="score">image weight <b>{item.image_weight:.3f}</b><br>'
                  f"{item.train_interactions:,} training interactions</span>")
    cls = ("card" + ("" if pictures else " text") + (" target" if item.is_target else "")
           + (" weighted" if item.image_weight is not None else ""))
    return (f'<div class="{cls}" title="{e(item.title)}">{img}{head}{e(_short(item.title))} '
            f"<code>{e(item.key)}</code>{score}</div>")


def to_html(title: str, sections: list[Section], figures: dict[str, bytes]) -> str:
    e = html.escape
    nav = " ".join(f'<a href="#{s.anchor}">{e(s.title)}</a>' for s in sections)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body><main>",
           f"<h1>{e(title)}</h1>", f"<nav>{nav}</nav>"]
    for section in sections:
        out.append(f'<section id="{section.anchor}"><h2>{e(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, str):
                out.append(f"<p>{_inline_code(e(block))}</p>")
            elif isinstance(block, Table):
                out.append("<table>")
                if any(block.header):
                    out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in block.header) + "</tr>")
                for row in block.rows:
                    cells = [f"<th>{e(row[0])}</th>"] + [
                        f'<td class="num">{e(v)}</td>' if _is_number(v) else f"<td>{e(v)}</td>" for v in row[1:]
                    ]
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</table>")
            elif isinstance(block, Figure):
                if block.name in figures:
                    out.append(f'<figure><img src="{_data_uri(figures[block.name])}" alt="{e(block.caption)}">'
                               f"<figcaption>{e(block.caption)}</figcaption></figure>")
            elif isinstance(block, ItemCards):
                pictures = any(i.image for i in block.items)
                out.append(f'<div class="label">{e(block.label)}</div>')
                out.append('<div class="strip">' + "".join(_html_card(i, r, pictures) for r, i in
                                                           enumerate(block.items, 1)) + "</div>")
            elif isinstance(block, Examples):
                pictures = any(i.image for ex in block.examples for i in [*ex.history, ex.target, *ex.recommended])
                for ex in block.examples:
                    out.append(f'<div class="example"><h3>user {e(ex.user)}</h3>')
                    out.append('<div class="label">last items (oldest first), then the held-out next item</div>')
                    out.append('<div class="strip">' + "".join(_html_card(i, None, pictures) for i in ex.history)
                               + '<div class="arrow">&rarr;</div>' + _html_card(ex.target, None, pictures) + "</div>")
                    out.append('<div class="label">recommended</div>')
                    out.append('<div class="strip">' + "".join(_html_card(i, r, pictures) for r, i in
                                                               enumerate(ex.recommended, 1)) + "</div></div>")
        out.append("</section>")
    out.append("</main></body></html>")
    return "\n".join(out)


# --- files ----------------------------------------------------------------------------------------


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    figures: list[Path]


def write_files(content: RunContent, figures: dict[str, bytes], out_dir: Path) -> ReportFiles:
    """Write report.md, report.html, figures/ and images/ into `out_dir`, replacing it whole (no stale
    thumbnails from an earlier report survive)."""
    out_dir = Path(out_dir)
    name, data = content.run_dir.name, content.config.data.name
    title = f"cemg run report: {name}" + ("" if data == name else f" ({data})")
    sections = build_sections(content)
    shown = [i for ex in content.examples for i in [*ex.history, ex.target, *ex.recommended]]
    shown += [*content.highest_image_weight, *content.lowest_image_weight]
    thumbs = {i.item: i.image for i in shown if i.image}
    with atomic_dir(out_dir) as tmp:
        (tmp / "figures").mkdir()
        for fig, png in figures.items():
            (tmp / "figures" / f"{fig}.png").write_bytes(png)
        if thumbs:
            (tmp / "images").mkdir()
            for item, png in thumbs.items():
                (tmp / "images" / f"item-{item}.png").write_bytes(png)
        (tmp / "report.md").write_text(to_markdown(title, sections, figures), encoding="utf-8")
        (tmp / "report.html").write_text(to_html(title, sections, figures), encoding="utf-8")
    log.info("report: wrote %s (report.html, report.md, %d figures, %d thumbnails)", out_dir, len(figures), len(thumbs))
    pngs = [out_dir / "figures" / f"{f}.png" for f in figures]
    return ReportFiles(out_dir / "report.html", out_dir / "report.md", pngs)
