"""Per-op overhead of small pointwise ops under functorch_lite.vmap vs torch.func.vmap.

A chain of 10 pointwise ops (y = y * c + d, five times) on an 8x16 per-sample tensor, batch 64,
one thread. Both vmaps run in the same process on the same inputs; figures are microseconds per
op:
- "chain of 10": the whole vmapped call divided by its 10 ops (includes vmap's per-call cost);
- "marginal": the extra time per op of a 40-op chain over the 10-op one, i.e. what one more
  op costs inside vmap (the router, the rule, the kernel), without the per-call cost;
- "one-op call": a whole vmapped call of one op, in microseconds per call: vmap's fixed cost
  (in_dims/out_dims, the level, wrapping and unwrapping); target at most 10 us above torch.func.
Each figure is the median of the rounds, with its interquartile range; the ratios pair the two
vmaps' samples of the same round.

    python benchmarks/bench_pointwise_overhead.py [--repeats N] [--iters N]
"""
import argparse
import random
import statistics
import timeit

import torch

import functorch_lite
from common import quartiles, ratio_stats, ratio_text, write_results

SHORT, LONG = 10, 40
CASES = ("chain of 10", "marginal", "one-op call")


def make_chain(num_ops):
    def chain(x, c, d):
        y = x
        for _ in range(num_ops // 2):
            y = y * c + d
        return y
    return chain


def per_op_us(fn, args, iters, num_ops):
    """Microseconds per op of one timing sample: `iters` calls of fn."""
    return timeit.timeit(lambda: fn(*args), number=iters) / iters / num_ops * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--iters", type=int, default=500)
    opts = parser.parse_args()
    torch.set_num_threads(1)

    x = torch.randn(64, 8, 16)
    c = torch.randn(8, 16)
    d = torch.randn(8, 16)
    impls = {"torch.func": torch.func.vmap, "functorch_lite": functorch_lite.vmap}
    chains = {}
    for name, vmap in impls.items():
        short = vmap(make_chain(SHORT), in_dims=(0, None, None))
        long = vmap(make_chain(LONG), in_dims=(0, None, None))
        torch.testing.assert_close(short(x, c, d), make_chain(SHORT)(x, c, d))
        chains[name] = (short, long, vmap(lambda x, c, d: x * c, in_dims=(0, None, None)))
    # Rounds in a new (seeded) order each time; each sample follows a warm-up call of the same
    # function (NOTE: [Timing that order cannot bias] in common.py).
    samples = {name: {"chain of 10": [], "marginal": [], "one-op call": []} for name in impls}
    order = list(impls)
    rng = random.Random(0)
    for round_ in range(opts.repeats + 1):
        rng.shuffle(order)
        for name in order:
            short, long, one_op = chains[name]
            short(x, c, d)
            t_short = per_op_us(short, (x, c, d), opts.iters, SHORT)
            long(x, c, d)
            t_long = per_op_us(long, (x, c, d), opts.iters // 4, LONG)
            if round_:  # the first round warms up the rule caches and the allocator
                samples[name]["chain of 10"].append(t_short)
                samples[name]["marginal"].append((t_long * LONG - t_short * SHORT) / (LONG - SHORT))
            one_op(x, c, d)
            t_call = per_op_us(one_op, (x, c, d), opts.iters, 1)
            if round_:
                samples[name]["one-op call"].append(t_call)
    eager = statistics.median(per_op_us(make_chain(SHORT), (x, c, d), opts.iters, SHORT)
                              for _ in range(opts.repeats))

    print(f"torch {torch.__version__}, 1 thread, per-sample 8x16, batch 64, {opts.repeats} rounds")
    print(f"{'':26s} {'chain of 10':>20s} {'marginal':>20s} {'one-op call':>20s}   "
          "(us/op; one-op call: us/call; median (IQR))")
    print(f"{'eager on the whole batch':26s} {eager:20.2f}")
    for name in impls:
        cells = ""
        for case in CASES:
            q1, median, q3 = quartiles(samples[name][case])
            cells += f" {f'{median:.2f} ({q1:.2f}-{q3:.2f})':>20s}"
        print(f"{name + '.vmap':26s}{cells}")
    rows = []
    for case in CASES:
        ours, theirs = samples["functorch_lite"][case], samples["torch.func"][case]
        ratio = ratio_stats(ours, theirs)
        print(f"ratio functorch_lite / torch.func, {case}: {ratio_text(ratio)}; target <= 1.0")
        # seconds per op, as the other benchmarks' JSON and charts use seconds
        rows.append({"case": case, "functorch_lite": statistics.median(ours) * 1e-6,
                     "torch.func": statistics.median(theirs) * 1e-6, "eager": eager * 1e-6,
                     "ratios": {"functorch_lite / torch.func": list(ratio)}})
    extra = statistics.median(a - b for a, b in zip(samples["functorch_lite"]["one-op call"],
                                                    samples["torch.func"]["one-op call"]))
    print(f"one-op call: functorch_lite {extra:+.1f} us a call against torch.func (median of the "
          "rounds); target <= +10 us")
    json_path, png = write_results("pointwise_overhead", rows,
                                   ["functorch_lite", "torch.func", "eager"])
    print(f"wrote {json_path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
