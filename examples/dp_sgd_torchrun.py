"""DP-SGD on MNIST-shaped data across processes: torchrun --standalone --nproc_per_node 2 THIS."""
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from functorch_lite import dp, functional_call

# gloo on CPU, NCCL when there is a GPU: one GPU per process
cuda = torch.cuda.is_available()
dist.init_process_group("nccl" if cuda else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
torch.set_num_threads(1)

# the same generated data and the same initial model on every rank
torch.manual_seed(0)
patterns = torch.randn(10, 1, 28, 28)
labels = torch.randint(0, 10, (1024,))
images = patterns[labels] + 2.0 * torch.randn(1024, 1, 28, 28)
model = nn.Sequential(
    nn.Conv2d(1, 8, 5, stride=3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
).to(device)
params = {k: v.detach() for k, v in model.named_parameters()}

# the noise generator: seeded alike on every rank, so every rank adds the same noise
noise = torch.Generator(device=device).manual_seed(42)
batch, steps = 64, 8
for step in range(steps):
    rows = torch.arange(step * batch, (step + 1) * batch).tensor_split(world)[rank]
    x, y = images[rows].to(device), labels[rows].to(device)  # this rank's shard of the step
    grads = dp.dp_grads(model, F.cross_entropy, params, x, y, max_norm=1.0,
                        noise_multiplier=1.0, generator=noise)
    params = {k: p - 0.5 * grads[k] for k, p in params.items()}

# every rank holds the same parameters: no broadcast was needed
flat = torch.cat([p.reshape(-1) for p in params.values()])
highest, lowest = flat.clone(), -flat
dist.all_reduce(highest, op=dist.ReduceOp.MAX)
dist.all_reduce(lowest, op=dist.ReduceOp.MAX)
test = functional_call(model, params, (images[-256:].to(device),))
accuracy = (test.argmax(1) == labels[-256:].to(device)).float().mean().item()
if rank == 0:
    print(f"{world} processes, {batch // world} examples each per step")
    print(f"ranks hold the same parameters: {torch.equal(highest, -lowest)}")
    print(f"accuracy after {steps} steps: {accuracy:.2f}")
dist.destroy_process_group()
