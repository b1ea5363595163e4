"""The per-sample-gradient workloads that per_sample_grads.py and bench_compile.py share.

Each workload is a loss of (params, one sample's inputs...) written for vmap(grad(loss)) with
in_dims=(None, 0, 0), its parameters, a batch, and the module (for the per-example loop and
Opacus), except the ensemble, which maps over stacked parameters instead of samples.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class TransformerBlock(nn.Module):
    """Embedding, 2-head self-attention and an MLP, each with a residual and a layer norm, then
    a linear classifier of the mean over the sequence (seq 32, dim 64)."""

    def __init__(self, vocab=1000, dim=64, heads=2, hidden=256):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, tokens):
        h = self.embed(tokens)  # (n, seq, dim)
        n, seq, dim = h.shape
        q, k, v = self.qkv(h).view(n, seq, 3, self.heads, dim // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (n, heads, seq, dim / heads)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, seq, dim)
        h = self.norm1(h + self.proj(attended))
        h = self.norm2(h + self.fc2(F.relu(self.fc1(h))))
        return self.head(h.mean(1))


def make_case(name, batch=64):
    """(module, inputs x, labels y); the module's parameters are the parameters."""
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        x = torch.randn(batch, 784)
    elif name in ("cnn", "cnn256"):
        batch = 256 if name == "cnn256" else batch
        model = MnistCNN()
        x = torch.randn(batch, 1, 28, 28)
    elif name == "embed":
        model = EmbedNorm()
        x = torch.randint(0, 1000, (batch, 16))
    elif name == "transformer":
        model = TransformerBlock()
        x = torch.randint(0, 1000, (batch, 32))
    else:
        raise ValueError(f"unknown workload {name!r}")
    return model, x, torch.randint(0, 10, (batch,))


def sample_loss(lib, model):
    """loss(params, x_i, y_i) of one sample, through lib.functional_call."""

    def loss(params, xi, yi):
        out = lib.functional_call(model, params, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    return loss


# The ensemble: ENSEMBLE MLPs 784-128-10 with stacked parameters, each model's forward and the
# gradient of its loss on one shared batch: vmap(grad_and_value(loss), in_dims=(0, None, None)).
ENSEMBLE = 10


def make_ensemble(batch=64):
    torch.manual_seed(0)
    models = [
        nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)) for _ in range(ENSEMBLE)
    ]
    x = torch.randn(batch, 784)
    return models, x, torch.randint(0, 10, (batch,))


def ensemble_loss(lib, base):
    def loss(params, x, y):
        return F.cross_entropy(lib.functional_call(base, params, (x,)), y)

    return loss


def stacked_ensemble(batch=64):
    """(base module, stacked parameters, x, y) of the ensemble."""
    models, x, y = make_ensemble(batch)
    base = models[0]
    stacked = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models])
               for k, _ in base.named_parameters()}
    return base, stacked, x, y


def vmapped_grads(lib, name, batch=64):
    """(fn, args): workload `name`'s gradients under lib's vmap (functorch_lite or torch.func),
    per sample (vmap(grad(loss)), in_dims=(None, 0, 0)) or, for the ensemble, per model
    (vmap(grad_and_value(loss)), in_dims=(0, None, None))."""
    if name == "ensemble":
        base, stacked, x, y = stacked_ensemble(batch)
        fn = lib.vmap(lib.grad_and_value(ensemble_loss(lib, base)), in_dims=(0, None, None))
        return fn, (stacked, x, y)
    model, x, y = make_case(name, batch)
    params = {k: v.detach() for k, v in model.named_parameters()}
    return lib.vmap(lib.grad(sample_loss(lib, model)), in_dims=(None, 0, 0)), (params, x, y)
