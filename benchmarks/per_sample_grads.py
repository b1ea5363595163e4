"""Per-sample gradients: functorch_lite vs torch.func vs a per-example loop, in one process.

Models (batch 64): an MLP 784-512-256-10, the classic MNIST CNN, and a small embedding +
layer-norm model. Opacus joins the comparison when it is installed (`pip install opacus`).
Each is checked for agreement before it is timed; the variants take turns in a new order every
round, each timed right after an untimed call of itself (NOTE: [Timing that order cannot bias]
in common.py). `--repeats 2` is a quick smoke run. Run:
    python benchmarks/per_sample_grads.py [--repeats N] [--models mlp,cnn,embed] [--seed N]
"""
import argparse
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import functorch_lite
from common import assert_trees_close, format_table, progress, timed_row, write_results

BATCH = 64


class MnistCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class EmbedNorm(nn.Module):
    def __init__(self, vocab=1000, dim=64, seq=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim * seq, 10)

    def forward(self, tokens):
        return self.fc(self.norm(self.embed(tokens)).flatten(1))


def make_case(name):
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        x = torch.randn(BATCH, 784)
    elif name == "cnn":
        model = MnistCNN()
        x = torch.randn(BATCH, 1, 28, 28)
    else:
        model = EmbedNorm()
        x = torch.randint(0, 1000, (BATCH, 16))
    return model, x, torch.randint(0, 10, (BATCH,))


def per_sample(lib, model, params, x, y):
    def loss(p, xi, yi):
        out = lib.functional_call(model, p, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    return lambda: lib.vmap(lib.grad(loss), in_dims=(None, 0, 0))(params, x, y)


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", default="mlp,cnn,embed")
    parser.add_argument("--seed", type=int, default=0, help="seeds the order of the variants")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # fallback performance warnings would clutter the table

    rows = []
    for name in args.models.split(","):
        model, x, y = make_case(name)
        params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
        ours = per_sample(functorch_lite, model, params, x, y)
        ref = per_sample(torch.func, model, params, x, y)
        naive = loop(model, params, x, y)
        hooks = opacus(model, x, y)
        progress(f"[{name}] checking agreement")
        assert_trees_close(ours(), ref())
        assert_trees_close(ours(), naive())
        variants = {"functorch_lite": ours, "torch.func": ref, "loop": naive}
        if hooks is not None:
            assert_trees_close(ours(), hooks())
            variants["opacus"] = hooks
        progress(f"[{name}] timing {', '.join(variants)}, taking turns")
        rows.append(timed_row(name, variants, args.repeats, seed=args.seed))

    columns = [c for c in ("functorch_lite", "torch.func", "loop", "opacus") if c in rows[0]]
    output = (f"per-sample gradients, batch {BATCH}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {args.repeats} rounds\n\n"
              + format_table(rows, columns, "functorch_lite", "torch.func"))
    print("\n" + output)
    json_path, png = write_results("per_sample_grads", rows, columns, output=output)
    print(f"\nwrote {json_path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
