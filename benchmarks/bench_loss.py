"""How much of a 2D SPOCO training step the loss takes, and how its time grows with objects.

Prints (no assertions; timings are noisy on shared machines):

1. the loss forward+backward time as a share of a whole training step (f forward, g forward,
   loss, backward) for batch 2, 256², E = 16, sparse labels with 50 labeled objects;
2. the loss time for 10 ... 500 labeled objects, with time per object normalised to 10 objects
   (a ratio <= 1 means the loss grows at most linearly with the number of objects).

Labels look like painted blobs: Voronoi cells of twice as many seeds as objects, half of the
cells set to 0 (unlabeled). Run: ``python benchmarks/bench_loss.py [--threads 2] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from scipy.spatial import cKDTree
from timing import median_time

from napari_spoco.core.loss import SpocoLoss

BATCH, SIZE, EMB = 2, 256, 16


def voronoi_labels(num_objects: int, seed: int) -> torch.Tensor:
    """``(BATCH, SIZE, SIZE)`` int64 labels with ``num_objects`` labeled cells per image."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij"), -1)
    images = []
    for _ in range(BATCH):
        seeds = rng.uniform(0, SIZE, size=(2 * num_objects, 2))
        _, cell = cKDTree(seeds).query(grid.reshape(-1, 2))
        ids = rng.permutation(2 * num_objects) + 1
        ids[rng.permutation(2 * num_objects)[:num_objects]] = 0  # half the cells unlabeled
        images.append(ids[cell].reshape(SIZE, SIZE))
    return torch.from_numpy(np.stack(images)).long()




def loss_step(loss, emb_f, emb_g, labels, seed=0):
    emb = emb_f.detach().requires_grad_()
    total, _ = loss(emb, emb_g, labels, generator=torch.Generator().manual_seed(seed))
    total.backward()


def training_step_share(repeats: int, features: tuple[int, ...]) -> None:
    from napari_spoco.core.model.unet import UNet

    torch.manual_seed(0)
    model = UNet(in_channels=1, out_channels=EMB, ndim=2, features=features)
    momentum = copy.deepcopy(model).requires_grad_(False)
    loss = SpocoLoss()
    labels = voronoi_labels(50, seed=1)
    x_f = torch.randn(BATCH, 1, SIZE, SIZE)
    x_g = x_f + 0.1 * torch.randn_like(x_f)

    def step():
        model.zero_grad(set_to_none=True)
        emb_f = model(x_f)
        with torch.no_grad():
            emb_g = momentum(x_g)
        total, _ = loss(emb_f, emb_g, labels, generator=torch.Generator().manual_seed(0))
        total.backward()

    step_time = median_time(step, repeats)
    with torch.no_grad():
        emb_f, emb_g = model(x_f), momentum(x_g)
    loss_time = median_time(lambda: loss_step(loss, emb_f, emb_g, labels), repeats)
    # random embeddings: every anchor covers ~1 pixel, so all 20 consistency anchors are drawn
    rand_f, rand_g = torch.randn_like(emb_f), torch.randn_like(emb_g)
    worst_time = median_time(lambda: loss_step(loss, rand_f, rand_g, labels), repeats)

    print(f"training step, batch {BATCH}, {SIZE}x{SIZE}, E={EMB}, 50 labeled objects, "
          f"UNet features {features} ({sum(p.numel() for p in model.parameters()):,} parameters), {torch.get_num_threads()} threads")
    print(f"  whole step (f fwd + g fwd + loss + backward): {step_time * 1e3:8.1f} ms")
    print(f"  loss fwd+bwd on the UNet's embeddings:        {loss_time * 1e3:8.1f} ms"
          f"  = {100 * loss_time / step_time:5.1f} % of the step")
    print(f"  loss fwd+bwd on random embeddings (20 anchors): {worst_time * 1e3:6.1f} ms"
          f"  = {100 * worst_time / step_time:5.1f} % of the step")


def object_scaling(repeats: int) -> None:
    loss = SpocoLoss()
    gen = torch.Generator().manual_seed(2)
    emb_f = torch.randn(BATCH, EMB, SIZE, SIZE, generator=gen)
    emb_g = emb_f + 0.3 * torch.randn(emb_f.shape, generator=gen)
    print(f"\nloss fwd+bwd vs labeled objects (random embeddings, batch {BATCH}, {SIZE}x{SIZE})")
    print("  objects   time [ms]   (time/objects) / (time/objects at 10)")
    base = None
    for num in (10, 50, 100, 200, 500):
        labels = voronoi_labels(num, seed=num)
        seconds = median_time(lambda: loss_step(loss, emb_f, emb_g, labels), repeats)
        per_object = seconds / num
        base = base or per_object
        print(f"  {num:7d}   {seconds * 1e3:9.1f}   {per_object / base:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-step", action="store_true", help="only the object table")
    parser.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                        help="U-Net widths of the training step; the default is the ~2 M-parameter "
                             "network of the developers' reference CPU step, 16 32 64 128 the "
                             "smaller default of TrainingConfig")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.skip_step:
        training_step_share(args.repeats, tuple(args.features))
    object_scaling(args.repeats)


if __name__ == "__main__":
    main()
