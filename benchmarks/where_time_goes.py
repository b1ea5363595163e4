"""Where the time of the per-sample-gradient workloads goes: a profile per variant.

    python benchmarks/where_time_goes.py [--models embed,transformer,...] [--calls 20]

For each workload of benchmarks/workloads.py, three variants run under torch.profiler:
functorch_lite eager, torch.func eager, and aot_function(vmap(grad(loss)), inductor_compile)
(functorch_lite's transforms traced into one graph and compiled). For each: its median time per
call (the variants taking turns, NOTE: [Timing that order cannot bias] in common.py), the time
of its matrix-multiply and convolution kernels (NOTE: [Dense kernels]) and the operators that
take most of its time, both from the profiler (self CPU time per call), and then the bounds
these kernels set on the targets of docs/benchmarks.md. The profiler adds a cost to every
operator it records, so its times are above the medians; the dense kernels are few and long,
and lose little to it.
"""
import argparse
import collections
import os
import warnings

import torch

import functorch_lite
import statistics

from common import assert_trees_close, interleaved_timings, progress
from functorch_lite.compile import aot_function, inductor_compile
from workloads import vmapped_grads

MODELS = "mlp,cnn,cnn256,embed,transformer,ensemble"

# NOTE: [Dense kernels]
# The matrix multiplies and convolutions of a per-sample gradient are the same arithmetic in
# every variant: vmap turns the per-sample linear layers into one mm or bmm over the batch,
# and neither eager transform nor compiler can make that arithmetic cheaper (inductor calls
# the same BLAS and oneDNN kernels). What a transform or a compiler can remove is everything
# else: the per-operator dispatch, the copies, the pointwise operators (which inductor fuses),
# and the first-touch page faults of freshly allocated outputs (which the memory pool avoids).
# So a variant cannot be faster than torch.func by more than torch.func's time over the time
# of its dense kernels: the bounds printed below.
DENSE = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm",
         "aten::_addmm_activation", "aten::mkldnn_convolution", "aten::convolution_backward",
         "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward",
         "aten::_nnpack_spatial_convolution", "aten::mkldnn_convolution_backward"}


def variants(name):
    ours, args = vmapped_grads(functorch_lite, name)
    theirs, _ = vmapped_grads(torch.func, name)
    compiled = aot_function(ours, inductor_compile)
    return {"functorch_lite": ours, "torch.func": theirs, "compiled": compiled}, args


def profile(fn, args, calls):
    """{operator: self ms per call} over `calls` calls after two untimed ones."""
    fn(*args)
    fn(*args)
    with torch.profiler.profile() as prof:
        for _ in range(calls):
            fn(*args)
    self_ms = collections.Counter()
    for event in prof.key_averages():
        self_ms[event.key] += event.self_cpu_time_total / 1e3 / calls
    return self_ms


def dense_ms(self_ms):
    return sum(ms for op, ms in self_ms.items() if op in DENSE)


def report(name, medians, profiles, top):
    """The lines of one workload: each variant's median, dense-kernel time and top operators,
    then the bounds (NOTE: [Dense kernels])."""
    base = medians["torch.func"]
    lines = [f"{name}"]
    for label, self_ms in profiles.items():
        ops = ", ".join(f"{op.removeprefix('aten::').strip('# ')} {ms:.2f}"
                        for op, ms in self_ms.most_common(top))
        lines.append(f"  {label:<15} median {medians[label] * 1e3:7.2f} ms, dense kernels "
                     f"{dense_ms(self_ms):7.2f} ms; profiled, most time in: {ops}")
    ours_dense = dense_ms(profiles["functorch_lite"]) / 1e3
    compiled_dense = dense_ms(profiles["compiled"]) / 1e3
    lines.append(f"  eager functorch_lite / torch.func: now {medians['functorch_lite'] / base:.2f},"
                 f" at best {ours_dense / base:.2f} (target <= 0.5)")
    lines.append(f"  compiled speedup over torch.func eager: now "
                 f"{base / medians['compiled']:.1f}x, at most {base / compiled_dense:.1f}x "
                 f"(target >= 5x)")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--calls", type=int, default=20, help="profiled calls per variant")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds")
    parser.add_argument("--top", type=int, default=4, help="operators listed per variant")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    os.environ.setdefault("FUNCTORCH_LITE_INDUCTOR_STRICT", "1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 64 (cnn256: 256); "
          f"medians of {args.repeats} rounds, profiles of {args.calls} calls per variant")
    for name in args.models.split(","):
        progress(f"[{name}] compiling and checking agreement")
        fns, inputs = variants(name)
        expected = fns["torch.func"](*inputs)
        for fn in fns.values():
            assert_trees_close(fn(*inputs), expected)
        progress(f"[{name}] timing")
        times = interleaved_timings(fns, args.repeats, args=inputs)
        medians = {label: statistics.median(t) for label, t in times.items()}
        progress(f"[{name}] profiling")
        profiles = {label: profile(fn, inputs, args.calls) for label, fn in fns.items()}
        print(report(name, medians, profiles, args.top), flush=True)
    print(f"dense kernels: {', '.join(sorted(op.removeprefix('aten::') for op in DENSE))}. "
          f"Load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())} (1 / 5 / 15 min).")


if __name__ == "__main__":
    main()
