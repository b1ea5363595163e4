"""Model ensembling: 10 MLPs run as one vmap (functorch_lite, torch.func) vs a loop over models.

The ensemble's state is stacked with stack_module_state and the models are called through
functional_call on a "meta" copy of one of them, vmapped over the stacked state. Each case is
checked for agreement with the loop before it is timed. Run:
    python benchmarks/ensembling.py [--repeats N] [--cases same,different,grad]
"""
import argparse
import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import functorch_lite
from common import (
    assert_trees_close,
    format_table,
    progress,
    timed_row,
    write_results,
)

MODELS = 10
BATCH = 64

# NOTE: [What ensembling measures]
# 10 MLPs 784-128-128-10 (batch 64 per model), three cases:
#   same       every model sees the same minibatch: vmap(call, in_dims=(0, 0, None))
#   different  each model sees its own minibatch:   vmap(call, in_dims=(0, 0, 0))
#   grad       one training step's gradients of each model's loss on its own minibatch:
#              vmap(grad(loss), in_dims=(0, 0, 0, 0)) over params, buffers, x, y
# functorch_lite and torch.func run the same code with their own vmap, grad, functional_call
# and stack_module_state; the loop calls each model in turn (and, for grad, runs
# torch.autograd.grad per model). Times are medians over --repeats runs after 2 warmup runs, the
# three taking turns so that load from other processes hits them alike.


def make_models():
    torch.manual_seed(0)
    return [
        nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                      nn.Linear(128, 10))
        for _ in range(MODELS)
    ]


def ensemble(lib, models, case, x, y):
    """The whole ensemble as one vmapped call of `lib` (functorch_lite or torch.func)."""
    params, buffers = lib.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p, b, xi):
        return lib.functional_call(base, (p, b), (xi,))

    if case == "same":
        return lambda: lib.vmap(call, in_dims=(0, 0, None))(params, buffers, x[0])
    if case == "different":
        return lambda: lib.vmap(call)(params, buffers, x)

    def loss(p, b, xi, yi):
        return F.cross_entropy(call(p, b, xi), yi)

    return lambda: lib.vmap(lib.grad(loss))(params, buffers, x, y)


def loop(models, case, x, y):
    if case == "same":
        return lambda: torch.stack([m(x[0]) for m in models])
    if case == "different":
        return lambda: torch.stack([m(xi) for m, xi in zip(models, x)])

    def run():
        grads = [
            torch.autograd.grad(F.cross_entropy(m(xi), yi), list(m.parameters()))
            for m, xi, yi in zip(models, x, y)
        ]
        names = [k for k, _ in models[0].named_parameters()]
        return {k: torch.stack([g[i] for g in grads]) for i, k in enumerate(names)}

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--cases", default="same,different,grad")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # fallback performance warnings would clutter the table

    models = make_models()
    x = torch.randn(MODELS, BATCH, 784)
    y = torch.randint(0, 10, (MODELS, BATCH))
    rows = []
    for case in args.cases.split(","):
        ours = ensemble(functorch_lite, models, case, x, y)
        ref = ensemble(torch.func, models, case, x, y)
        naive = loop(models, case, x, y)
        progress(f"[{case}] checking agreement")
        expected = naive()
        assert_trees_close(ours(), expected)
        assert_trees_close(ref(), expected)
        progress(f"[{case}] timing functorch_lite, torch.func and the loop, taking turns")
        variants = {"functorch_lite": ours, "torch.func": ref, "loop": naive}
        rows.append(timed_row(case, variants, args.repeats))

    columns = ["functorch_lite", "torch.func", "loop"]
    output = (f"ensemble of {MODELS} MLPs 784-128-128-10, batch {BATCH} per model, torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} rounds\n\n"
              + format_table(rows, columns, "functorch_lite", "torch.func"))
    print("\n" + output)
    json_path, png = write_results("ensembling", rows, columns, output=output)
    print(f"\nwrote {json_path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
