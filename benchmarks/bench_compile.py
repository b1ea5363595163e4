"""Benchmark: per-sample gradients compiled by functorch_lite.compile vs torch.func eager.

Run: python benchmarks/bench_compile.py [--threads 1] [--cold] [--transforms torch.func]
     [--models mlp,cnn,cnn256,embed,transformer,ensemble]
"""

import argparse
import os
import time

import torch
import torch.func

import functorch_lite
from common import assert_trees_close, progress, ratio_text, timed_row, write_results
from workloads import vmapped_grads
from functorch_lite.compile import aot_function, inductor_compile, nop, set_memory_pool_enabled

# A graph inductor cannot compile must fail the run, not be timed uncompiled under the
# "aot inductor" label (NOTE: [Inductor failures] in functorch_lite/compile/_compilers.py).
os.environ.setdefault("FUNCTORCH_LITE_INDUCTOR_STRICT", "1")

# NOTE: [What bench_compile measures]
# For each workload of per_sample_grads.py (benchmarks/workloads.py: the MLP, the MNIST CNN at
# batch 64 and 256, the embedding model, the transformer block), per-sample gradients of the
# loss w.r.t. the parameters (for the ensemble of 10 MLPs: each model's gradient and loss, vmap
# over the stacked parameters):
#   torch.func eager   torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
#   aot nop            aot_function(vmap(grad(loss)), nop): the traced aten graph run eagerly
#   aot inductor       aot_function(vmap(grad(loss)), inductor_compile)
#   inductor no pool   the same compiled function with the memory pool off
#                      (NOTE: [The memory pool of compiled graphs]), to show what it adds
# vmap / grad are functorch_lite's by default (--transforms torch.func traces torch.func's
# instead, to measure the compiler alone). The parameters do not require grad, so each
# compiled function is ONE forward (inference) graph computing all per-sample gradients.
# Times are medians over --repeats runs after --warmup runs, the variants taking turns so that
# load from other processes hits them alike (on a shared machine, --threads 1 also helps:
# inductor's OpenMP kernels suffer most from oversubscription). The first call (trace +
# compile) is timed separately as the compile time. Speedups are torch.func eager time /
# compiled time, so above 1 means faster than torch.func.


MODELS = ("mlp", "cnn", "cnn256", "embed", "transformer", "ensemble")  # as per_sample_grads.py


def without_pool(fn):
    def call(*args):
        set_memory_pool_enabled(False)
        try:
            return fn(*args)
        finally:
            set_memory_pool_enabled(True)

    return call


def first_call_s(fn, args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def print_ratio_table(rows, columns):
    """Median times, speedups over torch.func eager (above 1: faster), compile times."""
    compiled = columns[1:]
    for r in rows:
        print(f"{r['case']}")
        for c in columns:
            low, high = r["spread"][c]
            line = f"  {c:<20}{r[c] * 1e3:>9.2f} ms ({low * 1e3:.2f}-{high * 1e3:.2f})"
            if c in compiled:
                line += f"  speedup {ratio_text(r['ratios'][f'{columns[0]} / {c}'])}"
                line += f"  compile {r[f'{c} compile s']:.2f} s"
            print(line)
    print(f"median (interquartile range); speedup = {columns[0]} time / compiled time per "
          "round, median (interquartile range), above 1.0: the compiled one is faster")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: as is)")
    parser.add_argument(
        "--transforms",
        choices=["functorch_lite", "torch.func"],
        default="functorch_lite",
        help="whose vmap/grad the compiled functions trace",
    )
    parser.add_argument("--no-inductor", action="store_true", help="skip the inductor column")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="disable inductor's on-disk caches, so the compile time includes code generation",
    )
    args = parser.parse_args()
    if args.cold:
        from torch._inductor import config as inductor_config

        inductor_config.force_disable_caches = True
    if args.threads:
        torch.set_num_threads(args.threads)
    lib = functorch_lite if args.transforms == "functorch_lite" else torch.func
    compilers = [("aot nop", nop)] + (
        [] if args.no_inductor else [("aot inductor", inductor_compile)]
    )
    columns = ["torch.func eager"] + [label for label, _ in compilers]
    if not args.no_inductor:
        columns.append("inductor no pool")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median "
        f"of {args.repeats} runs; traced transforms: {args.transforms}; inductor caches "
        f"{'off' if args.cold else 'on'}"
    )

    rows = []
    for case in args.models.split(","):
        traced, inputs = vmapped_grads(lib, case, args.batch)
        reference, _ = vmapped_grads(torch.func, case, args.batch)
        expected = reference(*inputs)
        variants = {"torch.func eager": reference}
        row = {"case": case, "transforms": args.transforms}
        for label, compiler in compilers:
            progress(f"[{case}] compiling with {label}")
            compiled = aot_function(traced, compiler)
            row[f"{label} compile s"] = first_call_s(compiled, inputs)
            assert_trees_close(compiled(*inputs), expected)
            variants[label] = compiled
            if label == "aot inductor":
                variants["inductor no pool"] = without_pool(compiled)
                row["inductor no pool compile s"] = row[f"{label} compile s"]
        progress(f"[{case}] timing")
        ratios = [("torch.func eager", label) for label in variants if label != "torch.func eager"]
        row.update(timed_row(case, variants, args.repeats, args.warmup, inputs, ratios))
        rows.append(row)

    print_ratio_table(rows, columns)
    json_path, png = write_results("bench_compile", rows, columns)
    print(f"results: {json_path}" + (f", {png}" if png else ""))


if __name__ == "__main__":
    main()
