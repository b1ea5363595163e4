"""Per-op overhead of small pointwise ops under functorch_lite.vmap vs torch.func.vmap.

A chain of 10 pointwise ops (y = y * c + d, five times) on an 8x16 per-sample tensor, batch 64,
one thread. Both vmaps run in the same process on the same inputs; figures are microseconds per
op, best of several repeats:
- "chain of 10": the whole vmapped call divided by its 10 ops (includes vmap's per-call cost);
- "marginal": the extra time per op of a 40-op chain over the 10-op one, i.e. what one more
  op costs inside vmap (the router, the rule, the kernel), without the per-call cost;
- "one-op call": a whole vmapped call of one op, in microseconds per call: vmap's fixed cost
  (in_dims/out_dims, the level, wrapping and unwrapping); target at most 10 us above torch.func.

    python benchmarks/bench_pointwise_overhead.py [--repeats N] [--iters N]
"""
import argparse
import os
import timeit

import torch

import functorch_lite
from common import write_results

SHORT, LONG = 10, 40


def make_chain(num_ops):
    def chain(x, c, d):
        y = x
        for _ in range(num_ops // 2):
            y = y * c + d
        return y
    return chain


def measure(fn, args, iters, repeats, num_ops):
    fn(*args)  # warm up (rule lookup caches, allocator)
    times = timeit.repeat(lambda: fn(*args), number=iters, repeat=repeats)
    return min(times) / iters / num_ops * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iters", type=int, default=1000)
    opts = parser.parse_args()
    torch.set_num_threads(1)

    x = torch.randn(64, 8, 16)
    c = torch.randn(8, 16)
    d = torch.randn(8, 16)
    impls = {"torch.func": torch.func.vmap, "functorch_lite": functorch_lite.vmap}
    results = {}
    for name, vmap in impls.items():
        short = vmap(make_chain(SHORT), in_dims=(0, None, None))
        long = vmap(make_chain(LONG), in_dims=(0, None, None))
        torch.testing.assert_close(short(x, c, d), make_chain(SHORT)(x, c, d))
        results[name] = [short, long]
    best = {name: [float("inf"), float("inf")] for name in impls}
    for _ in range(2):  # interleaved, so drift favours neither
        for name, (short, long) in results.items():
            t_short = measure(short, (x, c, d), opts.iters, opts.repeats, SHORT)
            t_long = measure(long, (x, c, d), opts.iters // 4, opts.repeats, LONG)
            best[name][0] = min(best[name][0], t_short)
            best[name][1] = min(best[name][1], t_long)
    eager = measure(make_chain(SHORT), (x, c, d), opts.iters, opts.repeats, SHORT)

    # per call: vmap of a one-op function on small inputs, so what is measured is vmap's own
    # cost per call (in_dims/out_dims, levels, wrapping and unwrapping), in microseconds
    one_op = {name: vmap(lambda x, c, d: x * c, in_dims=(0, None, None)) for name, vmap in
              (("torch.func", torch.func.vmap), ("functorch_lite", functorch_lite.vmap))}
    per_call = {name: float("inf") for name in impls}
    for _ in range(2):
        for name, fn in one_op.items():
            per_call[name] = min(per_call[name], measure(fn, (x, c, d), opts.iters, opts.repeats, 1))

    def marginal(name):
        t_short, t_long = best[name]
        return (t_long * LONG - t_short * SHORT) / (LONG - SHORT)

    print(f"torch {torch.__version__}, 1 thread, per-sample 8x16, batch 64")
    print(f"{'':26s} {'chain of 10':>12s} {'marginal':>10s}   (us/op)")
    print(f"{'eager on the whole batch':26s} {eager:12.2f}")
    for name in impls:
        print(f"{name + '.vmap':26s} {best[name][0]:12.2f} {marginal(name):10.2f}")
    ratio = best["functorch_lite"][0] / best["torch.func"][0]
    ratio_marginal = marginal("functorch_lite") / marginal("torch.func")
    print(f"ratio functorch_lite / torch.func: {ratio:.2f} (chain of 10), "
          f"{ratio_marginal:.2f} (marginal); target <= 1.0")
    extra = per_call["functorch_lite"] - per_call["torch.func"]
    print(f"one-op vmap call: torch.func {per_call['torch.func']:.1f} us, functorch_lite "
          f"{per_call['functorch_lite']:.1f} us ({extra:+.1f} us a call; target <= +10 us); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    # seconds per op, as the other benchmarks' JSON and charts use seconds
    rows = [{"case": "chain of 10", "functorch_lite": best["functorch_lite"][0] * 1e-6,
             "torch.func": best["torch.func"][0] * 1e-6, "eager": eager * 1e-6},
            {"case": "marginal", "functorch_lite": marginal("functorch_lite") * 1e-6,
             "torch.func": marginal("torch.func") * 1e-6, "eager": eager * 1e-6},
            {"case": "one-op call", "functorch_lite": per_call["functorch_lite"] * 1e-6,
             "torch.func": per_call["torch.func"] * 1e-6, "eager": eager * 1e-6}]
    json_path, png = write_results("pointwise_overhead", rows,
                                   ["functorch_lite", "torch.func", "eager"])
    print(f"wrote {json_path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
