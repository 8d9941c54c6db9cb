"""Do the semantic ids encode how cold an item is? (issue 13, point 3)

    python bench/cold_ids.py runs/beauty runs/beauty-unit runs/beauty-content

For each run folder (finished through the tokenizer) it reports, from the training split only:
- the mean norm of LightGCN's item vectors by the item's number of training interactions
  (LightGCN's norms grow with popularity, and an item the graph barely saw keeps a small vector);
- for the test targets, the share of all training interactions that falls on their level-1 code,
  cold targets (<= 5 training interactions, the paper's Table 3) against warm ones (uniform
  would be 1 / K): a generator that learns which first codes are popular avoids the cold ones
  when those are grouped apart;
- the share of cold items in each used level-1 group (10th, 50th, 90th percentile).
Writes bench/results/cold_ids.json (merged by run folder), with the tokenizer settings of each run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cemg.artifacts import atomic_write_text  # noqa: E402
from cemg.tokenizer.semantic_ids import SemanticIds  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cold_ids.json"
COLD_MAX = 5
BUCKETS = [(0, 0), (1, 2), (3, 5), (6, 10), (11, 30), (31, None)]


def analyse(run: Path) -> dict:
    arrays = np.load(run / "data" / "sequences.npz")
    sequences = np.split(arrays["items"], np.cumsum(arrays["lengths"])[:-1])
    ids = SemanticIds.load(run / "tokenizer" / "semantic_ids")
    n_items = ids.n_items
    counts = np.zeros(n_items, np.int64)
    for seq in sequences:  # leave-one-out: the last two items are validation and test
        np.add.at(counts, seq[:-2], 1)
    targets = np.array([seq[-1] for seq in sequences])
    cold_item = counts <= COLD_MAX
    norms = np.linalg.norm(np.load(run / "collab" / "collab.npz")["items"], axis=1)
    by_count = []
    for lo, hi in BUCKETS:
        rows = (counts >= lo) & (counts <= (hi if hi is not None else counts.max()))
        by_count.append({"train_interactions": f"{lo}-{hi}" if hi is not None else f">={lo}",
                         "items": int(rows.sum()), "mean_norm": round(float(norms[rows].mean()), 3)})
    first = ids.codes[:, 0]
    k = ids.codebook_sizes[0]
    share = np.bincount(first, weights=counts, minlength=k) / counts.sum()
    cold_target = cold_item[targets]
    group_size = np.bincount(first, minlength=k)
    cold_share = np.bincount(first, weights=cold_item, minlength=k)[group_size > 0] / group_size[group_size > 0]
    tokenizer = json.loads((run / "tokenizer" / "manifest.json").read_text())["config"]
    return {
        "tokenizer": {key: tokenizer.get(key) for key in ("collab_calibration", "collab_prior_weight", "use_collab")},
        "collab_norm_by_train_interactions": by_count,
        "level1_interaction_share": {
            "cold_test_targets": round(float(share[first[targets[cold_target]]].mean()), 5),
            "warm_test_targets": round(float(share[first[targets[~cold_target]]].mean()), 5),
            "uniform": round(1 / k, 5),
        },
        "cold_share_of_level1_groups_p10_p50_p90": [round(float(x), 3) for x in np.percentile(cold_share, [10, 50, 90])],
        "cold_items": round(float(cold_item.mean()), 4),
    }


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for run in map(Path, sys.argv[1:]):
        results[str(run)] = {"command": f"python bench/cold_ids.py {run}", **analyse(run)}
        print(run, json.dumps(results[str(run)]["level1_interaction_share"]),
              results[str(run)]["cold_share_of_level1_groups_p10_p50_p90"])
    atomic_write_text(RESULTS, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
