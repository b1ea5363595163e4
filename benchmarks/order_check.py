"""Does the order of the variants move a ratio? The per-sample-gradient benchmark, timed in
several orders.

For each model, per_sample_grads.py's variants are timed as every benchmark here times them (a
new seeded order each round, each call right after an untimed call of itself: NOTE: [Timing
that order cannot bias] in common.py) with three seeds, and then the old way: a fixed order,
each call timed right after the previous variant's, once with functorch_lite first and once
with torch.func first. A ratio that order cannot bias stays within its interquartile range
across the seeds. Run (record it with record_output.py for docs/benchmarks.md):
    python benchmarks/order_check.py [--repeats N] [--models embed]
"""
import argparse
import warnings

import torch

from common import progress, ratio_text, timed_row
from per_sample_grads import make_variants


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--models", default="embed")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"per-sample gradients, batch 64, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} rounds")
    print("ratio = functorch_lite / torch.func per round: median (interquartile range)")
    for name in args.models.split(","):
        variants = make_variants(name)
        variants.pop("no pool", None)  # the order in question is that of the four variants
        runs = [(f"shuffled, seed {seed}", variants, {"seed": seed}) for seed in range(3)]
        first_ours = dict(variants)
        first_theirs = {"torch.func": variants["torch.func"],
                        **{k: v for k, v in variants.items() if k != "torch.func"}}
        runs += [(f"fixed: {', '.join(first_ours)}", first_ours, {"reorder": False}),
                 (f"fixed: {', '.join(first_theirs)}", first_theirs, {"reorder": False})]
        for label, order, options in runs:
            progress(f"[{name}] {label}")
            row = timed_row(name, order, args.repeats, **options)
            ours, theirs = row["functorch_lite"], row["torch.func"]
            print(f"{name:<6} {label:<44} functorch_lite {ours * 1e3:7.2f} ms  "
                  f"torch.func {theirs * 1e3:7.2f} ms  ratio "
                  f"{ratio_text(row['ratios']['functorch_lite / torch.func'])}", flush=True)


if __name__ == "__main__":
    main()
