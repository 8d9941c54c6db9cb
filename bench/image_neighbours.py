"""Do the item vectors carry the next item? A content-only check of each modality (issue 12).

    python bench/image_neighbours.py runs/toys [--part test|valid]

For each evaluation user, every item is ranked by the cosine similarity of its image vector (and,
separately, its text vector, and both together as the content prior reads them) to the vector of
the user's last history item; that item itself is
never recommended, nor (with evaluation.mask_history, as in the paper's protocol) any earlier one.
HR@K / NDCG@K of "the next item is a content neighbour of the last one" say how much sequential
signal a modality holds on its own, next to chance (K / items). The ranking runs through the same
protocol as every model (cemg.evaluation.protocol.evaluate), so the numbers are comparable with the
run's own evaluation.

The vectors are the features stage's (after PCA to features.dim, centred): the stage keeps no raw
encoder outputs. A user whose last item lacks the modality gets no list (a miss), and items lacking
it are never ranked; both are counted in the output.

"overlap" says whether the image finds next items the text does not: per K, how many users each
single-modality list hits, how many both hit, and HR@K of "either list hits" (an upper bound on
what any way of combining the two neighbour lists could reach).

Writes bench/results/image_neighbours_<run folder name>.json, with the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.data.dataset import InteractionDataset  # noqa: E402
from cemg.data.split import leave_one_out  # noqa: E402
from cemg.evaluation.protocol import evaluate  # noqa: E402
from cemg.features.artifact import ItemFeatures  # noqa: E402
from cemg.run_folder import RunFolder, load_run_config  # noqa: E402

RESULTS = ROOT / "bench" / "results"


class ContentNeighbours:
    """Recommends the items whose vectors are closest (cosine) to the last history item's."""

    def __init__(self, vectors: np.ndarray, mask: np.ndarray):
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.unit = np.where(mask[:, None] & (norms > 0), vectors / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
        self.mask = mask & (norms[:, 0] > 0)

    def recommend(self, histories: list[np.ndarray], k: int, exclude: list[np.ndarray] | None = None) -> np.ndarray:
        last = np.array([h[-1] for h in histories])
        scores = self.unit[last] @ self.unit.T  # (batch, n_items)
        scores[:, ~self.mask] = -np.inf  # an item without the modality has no neighbours
        scores[~self.mask[last]] = -np.inf  # nor does a user whose last item lacks it
        scores[np.arange(len(last)), last] = -np.inf
        for row, items in enumerate(exclude or []):
            scores[row, items] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.where(np.isfinite(np.take_along_axis(scores, top, 1)), top, -1)


MODALITIES = ("image", "text", "content")


def neighbour_metrics(run_dir: Path, part: str = "test", modalities=MODALITIES) -> dict:
    cfg = load_run_config(run_dir)
    folder = RunFolder(Path(run_dir))
    dataset = InteractionDataset.load(folder.stage("data"))
    features = ItemFeatures.load(folder.stage("features"))
    split = leave_one_out(dataset, cfg.data.max_history)
    examples = split.part(part)
    last = np.array([h[-1] for h in examples.histories])
    out = {
        "part": part,
        "users": len(examples),
        "items": dataset.n_items,
        "mask_history": cfg.evaluation.mask_history,
        "chance": {f"HR@{k}": round(k / dataset.n_items, 5) for k in cfg.evaluation.ks},
        "modalities": {},
    }
    ranks = {}
    for name in modalities:
        if name == "content":
            # What a content-reading generator and the content prior see (ItemFeatures.content_matrix:
            # both modalities' unit blocks side by side, so the cosine averages the two).
            encoded = [m for m in ("text", "image") if getattr(features, m) is not None]
            if len(encoded) < 2:
                out["modalities"][name] = {"skipped": "needs both modalities"}
                continue
            vectors, mask = features.content_matrix(encoded), features.text_mask | features.image_mask
            info = {"model": "text + image (unit blocks)"}
        else:
            vectors, mask = getattr(features, name), getattr(features, f"{name}_mask")
            info = features.info.get(name, {})
            if vectors is None:
                out["modalities"][name] = {"skipped": info.get("skipped", f"the run has no {name} vectors")}
                continue
        start = time.perf_counter()
        result = evaluate(ContentNeighbours(vectors, mask), split, part, cfg.evaluation)
        ranks[name] = result.ranks
        out["modalities"][name] = {
            "encoder": info.get("model"),
            "dim": int(vectors.shape[1]),
            "metrics": {k: round(v, 5) for k, v in result.metrics.items()},
            "cold_start": {k: round(v, 5) for k, v in result.cold_start.items()},
            "n_cold": result.n_cold,
            "items_with_vector": int(mask.sum()),
            "users_whose_last_item_lacks_it": int((~mask[last]).sum()),
            "targets_lacking_it": int((~mask[examples.targets]).sum()),
            "seconds": round(time.perf_counter() - start, 2),
        }
    if "image" in ranks and "text" in ranks:
        out["overlap"] = modality_overlap(ranks["image"], ranks["text"], cfg.evaluation.ks)
    return out


def modality_overlap(image_ranks: np.ndarray, text_ranks: np.ndarray, ks) -> dict:
    """Per K: users whose target the image list / the text list / both / either hit (ranks are
    0-based, NOT_RANKED beyond the list), and HR@K of the either-hit union."""
    out = {}
    for k in ks:
        image, text = image_ranks < k, text_ranks < k
        out[f"@{k}"] = {"image_hits": int(image.sum()), "text_hits": int(text.sum()),
                        "both": int((image & text).sum()), "image_only": int((image & ~text).sum()),
                        "either_HR": round(float((image | text).mean()), 5)}
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder finished through the features stage")
    parser.add_argument("--part", choices=("test", "valid"), default="test")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/image_neighbours_<run>.json")
    parser.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES),
                        help="which rankings to score (e.g. image content, to compare image encoders: "
                             "the text ranking does not depend on them)")
    args = parser.parse_args(argv)
    result = neighbour_metrics(args.run_dir, args.part, args.modalities)
    command = f"python bench/image_neighbours.py {args.run_dir}"
    if args.part != "test":
        command += f" --part {args.part}"
    if list(args.modalities) != list(MODALITIES):
        command += " --modalities " + " ".join(args.modalities)
    record = {"command": command, "run": str(args.run_dir), **result}
    out = args.out or RESULTS / f"image_neighbours_{Path(args.run_dir).resolve().name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    for name, row in result["modalities"].items():
        print(f"{name:6s}", json.dumps(row.get("metrics", row)))
    if "overlap" in result:
        print("overlap", json.dumps(result["overlap"]))
    print(f"chance {json.dumps(result['chance'])}; written to {out}")
    return out


if __name__ == "__main__":
    main()
