"""DP-SGD step time: functorch_lite.dp vs Opacus on one model, and ours over 1 and 2 processes.

A step is the whole of DP-SGD with plain SGD on a batch of 64: per-sample gradients, clipping
at norm 1, noise (multiplier 1) and the parameter update. Models: the MLP and the CNN of
per_sample_grads.py. Opacus (GradSampleModule + DPOptimizer) is checked to reach the same
parameters as ours from the same start and noise seed before it is timed. The two take turns
in a new order every round, each timed right after an untimed call of itself (NOTE: [Timing
that order cannot bias] in common.py); the ratio is paired by round, given as its median and
interquartile range. Then ours runs on torch.distributed (gloo, spawned workers on this
machine) with the batch split over 1 and 2 processes, each with its share of the torch
threads: rank 0's median step, with its interquartile range. `--repeats 2` is a quick smoke
run. Run:
    python benchmarks/bench_dp_sgd.py [--repeats N] [--models mlp,cnn] [--seed N]
"""
import argparse
import copy
import datetime
import os
import socket
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from common import (
    assert_trees_close,
    format_table,
    progress,
    quartiles,
    ratio_stats,
    timed_row,
    write_results,
)
from functorch_lite import dp
from workloads import make_case

BATCH = 64  # make_case's default batch

MAX_NORM, NOISE, LR, SEED = 1.0, 1.0, 0.05, 0


def ours_step(model, params, x, y):
    """One DP-SGD step in place on `params`, with functorch_lite.dp."""
    generator = torch.Generator().manual_seed(SEED)

    def step():
        grads = dp.dp_grads(model, F.cross_entropy, params, x, y, max_norm=MAX_NORM,
                            noise_multiplier=NOISE, generator=generator)
        for k, p in params.items():
            p.sub_(grads[k], alpha=LR)

    return step


def opacus_step(model, x, y):
    """One DP-SGD step with Opacus's hooks and optimizer, or None when it is not installed."""
    try:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
    except ImportError:
        return None, None
    wrapped = GradSampleModule(copy.deepcopy(model))
    optimizer = DPOptimizer(torch.optim.SGD(wrapped.parameters(), lr=LR),
                            noise_multiplier=NOISE, max_grad_norm=MAX_NORM,
                            expected_batch_size=len(x),
                            generator=torch.Generator().manual_seed(SEED))

    def step():
        optimizer.zero_grad()
        F.cross_entropy(wrapped(x), y).backward()
        optimizer.step()

    return step, wrapped._module


def compare(name, repeats, seed):
    """timed_row's row of ours and Opacus's step (ours alone when Opacus is not installed)."""
    model, x, y = make_case(name)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    ours = ours_step(model, params, x, y)
    theirs, their_model = opacus_step(model, x, y)
    variants = {"functorch_lite": ours}
    if theirs is None:
        progress(f"[{name}] opacus is not installed: timing ours alone")
    else:
        progress(f"[{name}] checking that one step of each reaches the same parameters")
        ours()
        theirs()
        assert_trees_close(params, {k: v.detach() for k, v in their_model.named_parameters()},
                           atol=1e-5, rtol=1e-4)
        variants["opacus"] = theirs
    progress(f"[{name}] timing {', '.join(variants)}, taking turns")
    return timed_row(name, variants, repeats, ratios=(("functorch_lite", "opacus"),), seed=seed)


# --- across processes --------------------------------------------------------------------------

def _worker(rank, world, port, name, repeats, threads, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        model, x, y = make_case(name)
        x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        step = ours_step(model, params, x, y)
        times = []
        for round_ in range(2 + repeats):  # two untimed rounds first
            dist.barrier()  # every rank starts the step together; rank 0 waits for the slowest
            start = time.perf_counter()
            step()
            if round_ >= 2:
                times.append(time.perf_counter() - start)
        if rank == 0:
            out.put(times)
    finally:
        dist.destroy_process_group()


def distributed_times(name, world, repeats):
    """Rank 0's step times with the batch split over `world` gloo processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threads = max(1, torch.get_num_threads() // world)
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    mp.spawn(_worker, args=(world, port, name, repeats, threads, out), nprocs=world)
    return out.get()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--seed", type=int, default=0, help="seeds the order of the variants")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Opacus's hook warnings would clutter the table

    rows = []
    for name in args.models.split(","):
        row = compare(name, args.repeats, args.seed)
        times = {}
        for world in (1, 2):
            progress(f"[{name}] functorch_lite on {world} process(es)")
            label = f"functorch_lite {world}p"
            times[label] = distributed_times(name, world, args.repeats)
            low, row[label], high = quartiles(times[label])
            row["spread"][label] = [low, high]
        # the two runs are not interleaved: round i of one with round i of the other
        row["ratios"]["functorch_lite 2p / functorch_lite 1p"] = list(
            ratio_stats(times["functorch_lite 2p"], times["functorch_lite 1p"]))
        rows.append(row)

    columns = [c for c in ("functorch_lite", "opacus", "functorch_lite 1p", "functorch_lite 2p")
               if c in rows[0]]
    ratio = ("functorch_lite", "opacus") if "opacus" in rows[0] else (
        "functorch_lite 2p", "functorch_lite 1p")
    output = (f"DP-SGD step, batch {BATCH}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {args.repeats} rounds; functorch_lite Np: "
              f"the batch split over N gloo processes (rank 0's step)\n\n"
              + format_table(rows, columns, *ratio))
    print("\n" + output)
    json_path, png = write_results("dp_sgd", rows, columns, output=output)
    print(f"\nwrote {json_path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
