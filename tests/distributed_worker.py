"""One rank of the 2-process gloo run of tests/test_distributed.py (started by torchrun).

Usage: ``python -m torch.distributed.run --standalone --nproc-per-node 2
tests/distributed_worker.py OUT_DIR``. Each rank autosaves to ``OUT_DIR/rank<r>.pt`` (only
rank 0 may write) and rank 0 writes ``OUT_DIR/result.json``: the loss curve and the largest
difference of f's and g's parameters between the ranks.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from training_support import blobs  # noqa: E402

from napari_spoco.core.training import (
    Trainer,  # noqa: E402
    distributed,  # noqa: E402
)


def exact_config(**changes):
    """Tiny settings whose loss has no random anchor draw and no per-batch class balancing,
    so a 2-rank run must equal one process with the combined batch."""
    from training_support import tiny

    settings = dict(foreground=False, iterations=5, batch_size=1, augment=True,
                    autosave_seconds=None,
                    loss={"anchor_at_mean": True, "w_ucon": 0.0})
    settings.update(changes)
    return tiny(**settings)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    context = distributed.init_from_environment("cpu")
    out = Path(out_dir)
    trainer = Trainer([blobs()], exact_config(), autosave_path=out / f"rank{context.rank}.pt")
    losses = [report.loss for report in trainer.steps()]
    spread = {}
    for name, model in (("f", trainer.model), ("g", trainer.momentum_model)):
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(context.world_size)]
        dist.all_gather(gathered, flat)
        spread[name] = max(float((g - gathered[0]).abs().max()) for g in gathered)
    if context.is_main:
        result = {"losses": losses, "spread": spread, "world_size": context.world_size,
                  "backend": context.backend}
        (out / "result.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
