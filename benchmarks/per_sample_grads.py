"""Per-sample gradients: functorch_lite vs torch.func vs a per-example loop, in one process.

Workloads (benchmarks/workloads.py; batch 64 unless named): an MLP 784-512-256-10, the classic
MNIST CNN (also at batch 256: cnn256), a small embedding + layer-norm model, a transformer block
(embedding, 2-head attention, layer norms, MLP; seq 32, dim 64), and an ensemble of 10 MLPs
784-128-10 with vmap over stacked parameters (forward and grad). Variants:
  functorch_lite   vmap(grad(loss)): eager, large allocations from the memory pool (default)
  no pool          the same with set_memory_pool_enabled(False, "transforms")
  torch.func       torch.func.vmap(torch.func.grad(loss))
  loop             a per-example loop of autograd.grad (the ensemble: a loop over models)
  opacus           Opacus' hooks, when it is installed (not for the ensemble)
Each is checked for agreement before it is timed; the variants take turns in a new order every
round, each timed right after an untimed call of itself (NOTE: [Timing that order cannot bias]
in common.py); the ratios pair the variants' times of one round: median (interquartile range). Peak resident memory
(VmHWM) is measured in a fresh subprocess per variant over --rss-steps calls that each replace
the previous result (g = f(...)), as a training loop does. Run:
    python benchmarks/per_sample_grads.py [--repeats N] [--models mlp,cnn,...] [--rss-steps N]
    python benchmarks/per_sample_grads.py --profile transformer   # where the time goes
"""
import argparse
import json
import os
import subprocess
import sys
import warnings

import torch
import torch.nn.functional as F

import functorch_lite
from common import (
    assert_trees_close,
    format_table,
    progress,
    ratio_text,
    timed_row,
    write_results,
)
from workloads import ENSEMBLE, ensemble_loss, make_case, make_ensemble, sample_loss

MODELS = "mlp,cnn,cnn256,embed,transformer,ensemble"
RSS_VARIANTS = ("functorch_lite", "no pool", "torch.func")


def without_pool(fn):
    def call():
        functorch_lite.set_memory_pool_enabled(False, "transforms")
        try:
            return fn()
        finally:
            functorch_lite.set_memory_pool_enabled(True, "transforms")

    return call


def loop(model, params, x, y):
    def run():
        grads = []
        for xi, yi in zip(x, y):
            out = torch.func.functional_call(model, params, (xi.unsqueeze(0),))
            loss = F.cross_entropy(out, yi.unsqueeze(0))
            grads.append(torch.autograd.grad(loss, list(params.values())))
        return {k: torch.stack([g[i] for g in grads]) for i, k in enumerate(params)}

    return run


def opacus(model, x, y):
    """Opacus' per-sample gradients (hooks on every layer), or None when it is not installed."""
    try:
        from opacus import GradSampleModule
    except ImportError:
        return None
    import copy

    wrapped = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    prefix = "_module."

    def run():
        wrapped.zero_grad(set_to_none=True)
        for p in wrapped.parameters():
            p.grad_sample = None
        # the sum of per-sample losses: each sample's gradient is its own loss's gradient
        F.cross_entropy(wrapped(x), y, reduction="sum").backward()
        return {n[len(prefix):] if n.startswith(prefix) else n: p.grad_sample
                for n, p in wrapped.named_parameters()}

    return run


def sample_variants(name):
    model, x, y = make_case(name)
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}

    def per_sample(lib):
        fn = lib.vmap(lib.grad(sample_loss(lib, model)), in_dims=(None, 0, 0))
        return lambda: fn(params, x, y)

    ours = per_sample(functorch_lite)
    variants = {"functorch_lite": ours, "no pool": without_pool(ours),
                "torch.func": per_sample(torch.func), "loop": loop(model, params, x, y)}
    hooks = opacus(model, x, y)
    if hooks is not None:
        variants["opacus"] = hooks
    return variants


def ensemble_variants():
    models, x, y = make_ensemble()
    base = models[0]
    stacked = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models])
               for k, _ in base.named_parameters()}

    def vmapped(lib):
        fn = lib.vmap(lib.grad_and_value(ensemble_loss(lib, base)), in_dims=(0, None, None))
        return lambda: fn(stacked, x, y)

    def run_loop():
        grads, losses = [], []
        for i in range(ENSEMBLE):
            p = {k: v[i].requires_grad_() for k, v in stacked.items()}
            loss = F.cross_entropy(torch.func.functional_call(base, p, (x,)), y)
            grads.append(torch.autograd.grad(loss, list(p.values())))
            losses.append(loss.detach())
        return ({k: torch.stack([g[j] for g in grads]) for j, k in enumerate(stacked)},
                torch.stack(losses))

    ours = vmapped(functorch_lite)
    return {"functorch_lite": ours, "no pool": without_pool(ours),
            "torch.func": vmapped(torch.func), "loop": run_loop}


def make_variants(name):
    return ensemble_variants() if name == "ensemble" else sample_variants(name)


def peak_rss_child(name, variant, steps):
    """Runs in a fresh process: VmHWM after `steps` calls of one variant, and VmRSS before."""
    warnings.simplefilter("ignore")
    fn = make_variants(name)[variant]

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    before = status("VmRSS:")
    result = None
    for _ in range(steps):
        result = fn()  # the previous result dies once this one exists, as in a training loop
    del result
    print(json.dumps({"peak": status("VmHWM:"), "before": before}))


def peak_rss(name, variant, steps):
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", name, variant,
           "--rss-steps", str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def profile_case(name, calls=5):
    """Where the time of functorch_lite and torch.func goes on one workload: operators by self
    CPU time over `calls` calls (for a workload that misses its target)."""
    warnings.simplefilter("ignore")
    variants = make_variants(name)
    for label in ("functorch_lite", "torch.func"):
        variants[label]()
        with torch.profiler.profile() as prof:
            for _ in range(calls):
                variants[label]()
        print(f"\n{name}, {label}: operators by self CPU time over {calls} calls, load average "
              f"{os.getloadavg()[0]:.1f}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--seed", type=int, default=0, help="seeds the order of the variants")
    parser.add_argument("--no-loop", action="store_true", help="skip the per-example loop")
    parser.add_argument("--rss-steps", type=int, default=100,
                        help="calls per peak-RSS subprocess (0: do not measure memory)")
    parser.add_argument("--profile", metavar="MODEL",
                        help="print where functorch_lite's and torch.func's time goes, then exit")
    parser.add_argument("--rss-child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return peak_rss_child(*args.rss_child, args.rss_steps)
    if args.profile:
        return profile_case(args.profile)
    warnings.simplefilter("ignore")  # fallback performance warnings would clutter the table

    rows = []
    for name in args.models.split(","):
        variants = make_variants(name)
        if args.no_loop:
            variants.pop("loop")
        progress(f"[{name}] checking agreement")
        expected = variants["torch.func"]()
        for label, fn in variants.items():
            assert_trees_close(fn(), expected)
        progress(f"[{name}] timing {', '.join(variants)}, taking turns")
        ratios = [(label, "torch.func") for label in variants if label != "torch.func"]
        row = timed_row(name, variants, args.repeats, seed=args.seed, ratios=ratios)
        if args.rss_steps:
            for label in RSS_VARIANTS:
                progress(f"[{name}] peak RSS of {args.rss_steps} calls of {label}")
                row[f"{label} peak RSS"] = peak_rss(name, label, args.rss_steps)["peak"]
        rows.append(row)
        progress(row_lines(row, args.rss_steps))

    columns = [c for c in ("functorch_lite", "no pool", "torch.func", "loop", "opacus")
               if all(c in r for r in rows)]
    output = (f"per-sample gradients, torch {torch.__version__}, {torch.get_num_threads()} "
              f"threads, {args.repeats} rounds\n\n"
              + format_table(rows, columns, "functorch_lite", "torch.func") + "\n\n"
              + "\n".join(row_lines(row, args.rss_steps) for row in rows))
    print("\n" + output)
    json_path, png = write_results("per_sample_grads", rows, columns, output=output)
    print(f"\nwrote {json_path}" + (f" and {png}" if png else ""))


def row_lines(row, rss_steps):
    """Every paired ratio against torch.func and, when measured, the peak RSS of each variant."""
    lines = [f"{row['case']:<12} " + "  ".join(
        f"{label}: {ratio_text(stats)}" for label, stats in row["ratios"].items())]
    if rss_steps:
        ref = row["torch.func peak RSS"]
        lines.append(f"{'':12} peak RSS over {rss_steps} calls: " + "  ".join(
            f"{label} {row[f'{label} peak RSS'] / 2**20:.0f} MiB "
            f"({row[f'{label} peak RSS'] / ref:.2f}x)" for label in RSS_VARIANTS))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
