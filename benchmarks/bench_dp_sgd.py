"""DP-SGD step time: functorch_lite.dp vs Opacus on one model, and ours over 1 and 2 processes.

A step is the whole of DP-SGD with plain SGD on a batch of 64: per-sample gradients, clipping
at norm 1, noise (multiplier 1) and the parameter update. Models: the MLP and the CNN of
per_sample_grads.py. Opacus (GradSampleModule + DPOptimizer) is checked to reach the same
parameters as ours from the same start and noise seed before it is timed. The single-process
comparison is `--runs` interleaved measurements (each the median of `--repeats` steps, the two
variants taking turns, the first one alternating between runs); the ratio is given as the
median over runs and its spread as the lowest and highest run. Then ours runs on torch.distributed
(gloo, `spawn`ed workers on this machine) with the batch split over 1 and 2 processes, each
with its share of the torch threads; the time is rank 0's median step. Run:
    python benchmarks/bench_dp_sgd.py [--repeats N] [--runs R] [--models mlp,cnn]
"""
import argparse
import copy
import datetime
import os
import socket
import statistics
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from common import (
    assert_trees_close,
    interleaved_median_seconds,
    median_seconds,
    progress,
    write_results,
)
from functorch_lite import dp
from per_sample_grads import BATCH, make_case

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


def compare(name, runs, repeats):
    """{"case", medians of both, the ratio's median, lowest and highest over runs}."""
    model, x, y = make_case(name)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    ours = ours_step(model, params, x, y)
    theirs, their_model = opacus_step(model, x, y)
    if theirs is None:
        progress(f"[{name}] opacus is not installed: timing ours alone")
        return {"case": name, "functorch_lite": median_seconds(ours, repeats)}
    progress(f"[{name}] checking that one step of each reaches the same parameters")
    ours()
    theirs()
    assert_trees_close(params, {k: v.detach() for k, v in their_model.named_parameters()},
                       atol=1e-5, rtol=1e-4)
    variants = {"functorch_lite": ours, "opacus": theirs}
    measured = []
    for run in range(runs):
        order = list(variants)[::1 if run % 2 == 0 else -1]
        progress(f"[{name}] run {run + 1}/{runs}: {', '.join(order)}, taking turns")
        measured.append(interleaved_median_seconds({k: variants[k] for k in order}, repeats))
    ratios = [m["functorch_lite"] / m["opacus"] for m in measured]
    return {
        "case": name,
        "functorch_lite": statistics.median(m["functorch_lite"] for m in measured),
        "opacus": statistics.median(m["opacus"] for m in measured),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


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

        def synchronized_step():
            dist.barrier()  # every rank starts the step together; rank 0 times the slowest
            step()

        seconds = median_seconds(synchronized_step, repeats)
        if rank == 0:
            out.put(seconds)
    finally:
        dist.destroy_process_group()


def distributed_seconds(name, world, repeats):
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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Opacus's hook warnings would clutter the table

    rows = []
    for name in args.models.split(","):
        row = compare(name, args.runs, args.repeats)
        for world in (1, 2):
            progress(f"[{name}] functorch_lite on {world} process(es)")
            row[f"functorch_lite {world}p"] = distributed_seconds(name, world, args.repeats)
        rows.append(row)

    print(f"\nDP-SGD step (batch {BATCH}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs\n")
    header = (f"{'case':<6}{'ours (ms)':>11}{'opacus (ms)':>13}{'ours/opacus':>13}"
              f"{'spread':>15}{'ours 1p (ms)':>14}{'ours 2p (ms)':>14}")
    print(header)
    print("-" * len(header))
    for r in rows:
        theirs = f"{r['opacus'] * 1e3:>13.2f}" if "opacus" in r else f"{'-':>13}"
        ratio = f"{r['ratio']:>13.3f}" if "ratio" in r else f"{'-':>13}"
        spread = (f"{r['ratio_min']:>8.3f}-{r['ratio_max']:.3f}" if "ratio" in r
                  else f"{'-':>15}")
        print(f"{r['case']:<6}{r['functorch_lite'] * 1e3:>11.2f}{theirs}{ratio}{spread}"
              f"{r['functorch_lite 1p'] * 1e3:>14.2f}{r['functorch_lite 2p'] * 1e3:>14.2f}")
    print("ours/opacus: median over runs, spread: lowest-highest run (below 1.0: ours is faster)")
    print("ours Np: rank 0's median step with the batch split over N gloo processes")
    columns = [c for c in ("functorch_lite", "opacus", "functorch_lite 1p", "functorch_lite 2p")
               if c in rows[0]]
    json_path, png = write_results("dp_sgd", rows, columns)
    print(f"\nwrote {json_path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
