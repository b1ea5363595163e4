"""Where the time of the per-sample-gradient workloads goes: a profile per variant.

    python benchmarks/where_time_goes.py [--models embed,transformer,...] [--calls 20]

For each workload of benchmarks/workloads.py, three variants run under torch.profiler:
functorch_lite eager, torch.func eager, and aot_function(vmap(grad(loss)), inductor_compile)
(functorch_lite's transforms traced into one graph and compiled, with inductor's generated
kernels profiled by name). The embedding model has a fourth, "by hand": the same gradients
written as one batched program of plain torch operators (NOTE: [The embedding model by hand]). For each: its median time per
call (the variants taking turns, NOTE: [Timing that order cannot bias] in common.py), the time
of its matrix-multiply and convolution kernels (NOTE: [Dense kernels]) and the operators that
take most of its time, both from the profiler (self CPU time per call), the number of operator calls it makes, the size of the gradients it returns and the
time it takes to write that many bytes once (NOTE: [Writing the gradients]), and then the bounds
these set on the targets of docs/benchmarks.md. The profiler adds a cost to every
operator it records, so its times are above the medians; the dense kernels are few and long,
and lose little to it.
"""
import argparse
import collections
import os
import time
import warnings

import statistics

import torch
import torch._inductor.config
import torch.nn.functional as F
from torch.utils import _pytree as pytree

import functorch_lite

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


# NOTE: [Writing the gradients]
# Every variant returns the same per-sample gradients, and must write each of their bytes at
# least once: 16 MB for the embedding model's table alone (64 samples x 1000 x 64), 300 MB for
# the CNN's first linear layer. How long that takes is measured here as a fill of a buffer of
# that size that was just written (warm, as the memory pool keeps it). The dense kernels that
# write per-sample gradients are the batched matrix multiplies (bmm, baddbmm, addbmm: the
# per-sample weights of linear layers, 300 of the CNN's 307 MB); inductor writes those with
# its own kernels instead. So a variant's floor is its dense kernels other than those plus the
# write, or all its dense kernels if that is more. It counts the few bytes that other dense
# kernels write as gradients twice (a convolution's per-sample weights: 5 of the CNN's 307 MB).
WRITERS = {"aten::bmm", "aten::baddbmm", "aten::addbmm"}


# The gradients of the embedding model (19 MB) fit in a large last-level cache, and the fill
# takes several times longer when they have been evicted: the second figure, a fill right after
# writing 128 MB elsewhere, is that case. The floor uses the first.
def write_ms(output, repeats=20):
    """(MB of `output`'s tensors, median ms to fill a warm buffer of that size, median ms to
    fill it after the caches were flushed)."""
    nbytes = sum(t.numel() * t.element_size() for t in pytree.tree_leaves(output))
    buffer = torch.empty(nbytes // 4)
    flush = torch.empty(128 * 2**20 // 4)

    def fill_ms(cold):
        buffer.fill_(0)
        times = []
        for _ in range(repeats):
            if cold:
                flush.fill_(1)
            start = time.perf_counter()
            buffer.fill_(0)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    return nbytes / 1e6, fill_ms(cold=False), fill_ms(cold=True)


# NOTE: [The embedding model by hand]
# The embedding model's gradients are cheap arithmetic (a gather, a layer norm, a 1024 x 10
# linear layer) on a 16 MB output, so its time is mostly operator calls, not kernels, and the
# dense-kernel bound says little. by_hand computes the same per-sample gradients as one batched
# program of plain operators, with each backward written out: what an eager program can do with
# no transform at all, a floor for any eager transform of this model.
def by_hand(params, tokens, labels):
    table = params["embed.weight"]
    n, seq = tokens.shape
    vocab, dim = table.shape
    emb = table[tokens]
    centered = emb - emb.mean(-1, keepdim=True)
    rstd = (centered.square().mean(-1, keepdim=True) + 1e-5).rsqrt()
    normed = centered * rstd
    hidden = (normed * params["norm.weight"] + params["norm.bias"]).reshape(n, seq * dim)
    logits = torch.addmm(params["fc.bias"], hidden, params["fc.weight"].t())
    d_logits = logits.softmax(-1) - F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    d_hidden = (d_logits @ params["fc.weight"]).view(n, seq, dim)
    d_normed = d_hidden * params["norm.weight"]
    d_emb = rstd * (d_normed - d_normed.mean(-1, keepdim=True)
                    - normed * (d_normed * normed).mean(-1, keepdim=True))
    rows = (tokens + torch.arange(n).unsqueeze(1) * vocab).view(-1)
    d_table = torch.zeros(n * vocab, dim).index_add_(0, rows, d_emb.view(-1, dim))
    return {"embed.weight": d_table.view(n, vocab, dim),
            "norm.weight": (d_hidden * normed).sum(1), "norm.bias": d_hidden.sum(1),
            "fc.weight": d_logits.unsqueeze(2) * hidden.unsqueeze(1), "fc.bias": d_logits}


def variants(name):
    ours, args = vmapped_grads(functorch_lite, name)
    theirs, _ = vmapped_grads(torch.func, name)
    compiled = aot_function(ours, inductor_compile)
    fns = {"functorch_lite": ours, "torch.func": theirs, "compiled": compiled}
    if name == "embed":
        fns["by hand"] = by_hand
    return fns, args


def profile(fn, args, calls):
    """({operator: self ms per call}, operator calls per call) over `calls` calls after two
    untimed ones. Generated kernels of inductor count as operators."""
    fn(*args)
    fn(*args)
    with torch.profiler.profile() as prof:
        for _ in range(calls):
            fn(*args)
    self_ms = collections.Counter()
    count = 0
    for event in prof.key_averages():
        self_ms[event.key] += event.self_cpu_time_total / 1e3 / calls
        if not event.key.startswith("## "):  # the compiled graph's own entry
            count += event.count
    return self_ms, count / calls


def dense_ms(self_ms, skip=()):
    return sum(ms for op, ms in self_ms.items() if op in DENSE and op not in skip)


def floor_ms(self_ms, fill_ms):
    """The least time a variant with these dense kernels can take (NOTE: [Writing the
    gradients])."""
    return max(dense_ms(self_ms), dense_ms(self_ms, skip=WRITERS) + fill_ms)


def report(name, medians, profiles, written, top):
    """The lines of one workload: each variant's median, dense-kernel time, operator calls and
    top operators, the gradients' size and write time, then the bounds (NOTE: [Dense kernels],
    NOTE: [Writing the gradients])."""
    base = medians["torch.func"]
    megabytes, fill_ms, cold_ms = written
    lines = [f"{name}"]
    for label, (self_ms, count) in profiles.items():
        ops = ", ".join(f"{op.removeprefix('aten::').strip('# ')} {ms:.2f}"
                        for op, ms in self_ms.most_common(top))
        lines.append(f"  {label:<15} median {medians[label] * 1e3:7.2f} ms, dense kernels "
                     f"{dense_ms(self_ms):7.2f} ms, {count:4.0f} operator calls; profiled, most "
                     f"time in: {ops}")
    lines.append(f"  gradients {megabytes:.1f} MB, written once in {fill_ms:.2f} ms "
                 f"({cold_ms:.2f} ms when not in cache)")
    ours_floor = floor_ms(profiles["functorch_lite"][0], fill_ms) / 1e3
    compiled_floor = floor_ms(profiles["compiled"][0], fill_ms) / 1e3
    eager = f"  eager functorch_lite / torch.func: now {medians['functorch_lite'] / base:.2f}, "
    eager += f"at best {ours_floor / base:.2f}"
    if "by hand" in medians:
        eager += f", by hand {medians['by hand'] / base:.2f}"
    lines.append(eager + " (target <= 0.5)")
    lines.append(f"  compiled speedup over torch.func eager: now "
                 f"{base / medians['compiled']:.1f}x, at most {base / compiled_floor:.1f}x "
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
    torch._inductor.config.cpp.enable_kernel_profile = True  # its kernels by name, not one lump
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 64 (cnn256: 256); "
          f"medians of {args.repeats} rounds, profiles of {args.calls} calls per variant")
    for name in args.models.split(","):
        progress(f"[{name}] compiling and checking agreement")
        fns, inputs = variants(name)
        expected = fns["torch.func"](*inputs)
        for fn in fns.values():
            assert_trees_close(fn(*inputs), expected)
        written = write_ms(expected)
        progress(f"[{name}] timing")
        times = interleaved_timings(fns, args.repeats, args=inputs)
        medians = {label: statistics.median(t) for label, t in times.items()}
        progress(f"[{name}] profiling")
        profiles = {label: profile(fn, inputs, args.calls) for label, fn in fns.items()}
        print(report(name, medians, profiles, written, args.top), flush=True)
    print(f"dense kernels: {', '.join(sorted(op.removeprefix('aten::') for op in DENSE))}. "
          f"Load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())} (1 / 5 / 15 min).")


if __name__ == "__main__":
    main()
