"""Seconds per default 2D training step with 1 thread, 2 threads and the load-based default.

Project issue 13: on a busy machine two torch threads were 1.3-1.7x slower than one; the
default (``napari_spoco.core.run_defaults.default_torch_threads``) should never be slower
than one thread. This script trains the default 2D run (``resolve_run_settings`` for one
synthetic nuclei image on the CPU: patch 128², batch 4, the default U-Net) and times its
steps with 1 thread, with 2 threads and with the count the default picks, interleaved in one
process (``torch.set_num_threads`` between chunks of steps, so slow phases of the machine hit
every setting alike), in two cases:

(a) the machine as it is;
(b) with a competing CPU-bound load started here: ``--hogs`` processes running
    ``while True: pass`` (default one per core but one), stopped at the end.

For each case it prints the 1-minute load average, the thread count the default chose at the
start of the case (from the load rule alone: ``OMP_NUM_THREADS`` is ignored, so the script can
run under ``OMP_NUM_THREADS=1``), the median seconds per step of each setting and its ratio to
1 thread (above 1: slower than 1 thread). The load average lags by about a minute, so case (b)
waits ``--settle`` seconds after starting the load before deciding.

Run: ``python benchmarks/bench_threads.py [--steps 4] [--rounds 4] [--hogs N] [--settle 30]``.
Timings are noisy on shared machines; no assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from napari_spoco.core import run_defaults as rd
from napari_spoco.core.synthetic.nuclei import make_nuclei
from napari_spoco.core.training import Trainer, TrainingConfig

SHAPE = (256, 256)


def make_trainer() -> Trainer:
    """A trainer of the default 2D CPU run on a synthetic nuclei image (long run: never ends)."""
    image, labels = make_nuclei(SHAPE, seed=0)
    settings = rd.resolve_run_settings([SHAPE], "cpu").as_dict()
    settings["iterations"] = 10**9
    config = TrainingConfig(device="cpu", autosave_seconds=None, **settings)
    return Trainer([(image, labels)], config)


def time_case(steps, settings: dict[str, int], n_steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each named thread count, chunks of steps interleaved."""
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, threads in settings.items():
            torch.set_num_threads(threads)
            next(steps)  # the first step after a change warms the new thread team up
            start = time.perf_counter()
            for _ in range(n_steps):
                next(steps)
            times[name].append((time.perf_counter() - start) / n_steps)
    return {name: statistics.median(values) for name, values in times.items()}


def start_hogs(count: int) -> list[subprocess.Popen]:
    """``count`` CPU-bound processes (they inherit this process's niceness)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


def report(case: str, load: float | None, chosen: int, result: dict[str, float]) -> None:
    one = result["1 thread"]
    load_text = "n/a" if load is None else f"{load:.2f}"
    print(f"\n{case}: load average {load_text} on {rd.available_cores()} cores, "
          f"default chose {chosen} thread(s)")
    print(f"  {'setting':<22}{'s/step':>8}{'vs 1 thread':>13}")
    for name, seconds in result.items():
        print(f"  {name:<22}{seconds:8.3f}{seconds / one:12.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per chunk")
    parser.add_argument("--rounds", type=int, default=4, help="chunks per setting and case")
    parser.add_argument("--hogs", type=int, default=max(rd.available_cores() - 1, 1),
                        help="competing CPU-bound processes in case (b)")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds case (b) waits for the load average to see the load")
    args = parser.parse_args()

    trainer = make_trainer()
    steps = trainer.steps()
    torch.set_num_threads(2)
    for _ in range(2):  # first steps allocate and tune kernels
        next(steps)
    print(f"default 2D CPU run: patch {list(trainer.config.patch_shape)} x "
          f"{trainer.config.batch_size}, U-Net {list(trainer.config.features)}, "
          f"{args.steps} timed steps x {args.rounds} rounds per setting")

    cases = [("(a) machine as it is", 0), (f"(b) + {args.hogs} CPU-bound process(es)",
                                           args.hogs)]
    for case, hog_count in cases:
        hogs = start_hogs(hog_count)
        try:
            if hogs:
                time.sleep(args.settle)
            load = rd.one_minute_load()
            chosen = rd.default_torch_threads(environ={})
            result = time_case(steps, {"1 thread": 1, "2 threads": 2,
                                       f"default ({chosen})": chosen},
                               args.steps, args.rounds)
        finally:
            stop_hogs(hogs)
        report(case, load, chosen, result)
    sys.stdout.flush()
    os._exit(0)  # the endless training generator needs no clean-up


if __name__ == "__main__":
    main()
