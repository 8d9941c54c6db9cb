"""Data-parallel training: `torchrun --nproc_per_node=2` (Gloo, CPU) trains the RQ-VAE, the causal,
the T5 and the T5-decoder generator to what one process trains with the same global batches.

Both runs draw the same batches; under DDP each rank takes half of every batch and the gradients
are averaged, weighted so that they equal the gradient of the whole batch's mean loss. What is left
is float summation order: parameters agree to 1e-4 (measured: at most 4e-6, causal), semantic ids
and validation metrics exactly. Dropout is off and dead-code re-seeding is off, since those draw
random numbers per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


def _launch(args: list[str], out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out.parent.mkdir(parents=True)
    with open(out.with_name("log.txt"), "w") as log:
        return subprocess.Popen([*args, str(WORKER), str(out)], env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, out: Path) -> dict:
    try:
        proc.wait(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, out.with_name("log.txt").read_text()[-4000:]
    return json.loads(out.read_text())


def test_torchrun_two_processes_match_one(tmp_path):
    import ddp_worker

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    ddp_out = tmp_path / "ddp" / "out.json"
    ddp = _launch([str(torchrun), "--standalone", "--nproc_per_node=2"], ddp_out)
    # The one-process reference runs here meanwhile: most of the launched run is importing torch.
    one = {"world_size": 1, "tokenizer": ddp_worker.tokenizer_run(), "causal": ddp_worker.causal_run(),
           "t5": ddp_worker.t5_run(tmp_path), "t5_decoder": ddp_worker.t5_decoder_run()}
    two = _finish(ddp, ddp_out)

    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["tokenizer"]["codes"] == two["tokenizer"]["codes"]
    assert abs(one["tokenizer"]["recon"] - two["tokenizer"]["recon"]) < 1e-5
    for name in ("tokenizer", "causal", "t5", "t5_decoder"):
        a, b = np.array(one[name]["params"]), np.array(two[name]["params"])
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4, err_msg=name)
    for name in ("causal", "t5", "t5_decoder"):
        np.testing.assert_allclose(two[name]["valid"], one[name]["valid"], rtol=0, atol=1e-6, err_msg=name)
    assert one["causal"]["best_epoch"] == two["causal"]["best_epoch"]
