"""Benchmark: jacrev, jacfwd, hessian, vmap(jacrev) and vmap(jacfwd): functorch_lite, torch.func, a loop.

The loop is torch.autograd.functional (one backward per output row, vectorize=False), and a
Python loop over the batch for vmap(jacrev) and vmap(jacfwd). Writes benchmarks/results/jacobians.{json,png}.
"""
import argparse
import sys

import torch
import torch.func

import functorch_lite._jacobians as jac
from common import progress, ratio_text, timed_row, write_results
from functorch_lite._vmap import vmap

# NOTE: [What bench_jacobians measures]
# Every case is a layer f(x) = tanh(W x + b), float32, with W (out, in) and x (in,):
#   jacrev / jacfwd  16->16, 32->2048 (tall: jacfwd's case), 2048->32 (wide: jacrev's case)
#   hessian 512->32  the Hessian (512 x 512) of the scalar x -> sum(tanh(W x + b)), W: 32 x 512,
#                    i.e. a 512-vector through a 32-wide layer (hessian is jacfwd(jacrev(.))).
#   vmap(jacrev)     per-sample Jacobians, 64 samples, 31->33,
#   vmap(jacfwd)     and the same by forward mode (one basis of tangents per sample).
# Times are medians over --repeat runs after --warmup runs, functorch_lite and torch.func
# taking turns so that load from other processes hits both alike. ratio = functorch_lite time /
# torch.func time, so below 1.0 means functorch_lite is faster.


def layer(generator, n_in, n_out):
    w = torch.randn(n_out, n_in, generator=generator) / n_in ** 0.5
    b = torch.randn(n_out, generator=generator)
    return w, b


def cases(generator):
    out = []
    for n_in, n_out in [(16, 16), (32, 2048), (2048, 32)]:
        w, b = layer(generator, n_in, n_out)
        x = torch.randn(n_in, generator=generator)

        def f(x, w=w, b=b):
            return torch.tanh(torch.mv(w, x) + b)

        for name in ("jacrev", "jacfwd"):
            out.append((f"{name} {n_in}->{n_out}", name, f, (x,)))
    w, b = layer(generator, 512, 32)

    def scalar(x):
        return torch.tanh(torch.mv(w, x) + b).sum()

    out.append(("hessian 512->32", "hessian", scalar, (torch.randn(512, generator=generator),)))
    w2, b2 = layer(generator, 31, 33)

    def f2(x):
        return torch.tanh(torch.mv(w2, x) + b2)

    xs = torch.randn(64, 31, generator=generator)
    out.append(("vmap(jacrev) B=64 31->33", "vmap_jacrev", f2, (xs,)))
    out.append(("vmap(jacfwd) B=64 31->33", "vmap_jacfwd", f2, (xs,)))
    return out


def build(module, vmap_fn, kind, f):
    if kind in ("vmap_jacrev", "vmap_jacfwd"):
        return vmap_fn(getattr(module, kind.removeprefix("vmap_"))(f))
    return getattr(module, kind)(f)


def loop_reference(kind, f):
    """The same Jacobian from torch.autograd.functional, one output row at a time."""
    functional = torch.autograd.functional
    if kind == "hessian":
        return lambda x: functional.hessian(f, x)
    if kind in ("vmap_jacrev", "vmap_jacfwd"):
        return lambda xs: torch.stack([functional.jacobian(f, x) for x in xs])
    return lambda x: functional.jacobian(f, x)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, "
          f"median of {args.repeat} runs")
    generator = torch.Generator().manual_seed(0)
    header = f"{'case':<26}{'functorch_lite':>14}{'torch.func':>14}{'loop':>14}  ratio (IQR)"
    print(header)
    print("-" * len(header))
    worst = 0.0
    rows = []
    for name, kind, f, inputs in cases(generator):
        progress(f"[{name}] checking agreement and timing")
        ours = build(jac, vmap, kind, f)
        ref = build(torch.func, torch.func.vmap, kind, f)
        loop = loop_reference(kind, f)
        torch.testing.assert_close(ours(*inputs), ref(*inputs), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours(*inputs), loop(*inputs), atol=1e-4, rtol=1e-4)
        variants = {"functorch_lite": ours, "torch.func": ref, "loop": loop}
        row = timed_row(name, variants, args.repeat, args.warmup, inputs)
        ratio = row["ratios"]["functorch_lite / torch.func"]
        worst = max(worst, ratio[1])
        rows.append(row)
        cells = "".join(f"{row[v] * 1e3:>11.3f} ms" for v in variants)
        print(f"{name:<26}{cells}  {ratio_text(ratio)}")
        sys.stdout.flush()
    print(f"medians; ratio = functorch_lite / torch.func per round, median (interquartile range), "
          f"≈1.0 when the range holds 1.0; below 1.0: functorch_lite is faster; worst median "
          f"{worst:.2f}")
    json_path, png = write_results("jacobians", rows, ["functorch_lite", "torch.func", "loop"])
    print(f"wrote {json_path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
