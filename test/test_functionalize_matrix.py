"""functionalize under every transform: {grad, vjp, jvp, vmap, jacrev, jacfwd} x programs with
views and mutations, against torch.func, each program run in a worker process so that a crash is
one failed case with its program printed."""
import pytest

from composition_worker import WorkerPool, describe

# Each program is f(x) for x of shape (4, 2) (vmap adds its batch dimension outside).
PROGRAMS = {
    "mutate_base_read_view": """
def f(x):
    y = x + x
    z = y.view(4, 2)
    y.add_(torch.ones(2))
    return z.sum(0)
""",
    "mutate_view_read_base": """
def f(x):
    y = x * 2
    y[1].mul_(3.0)
    return y
""",
    "transpose_inplace": """
def f(x):
    y = x.clone()
    y.transpose_(0, 1)
    y.mul_(x.t())
    return y
""",
    "unsqueeze_inplace": """
def f(x):
    y = x.sin()
    y.unsqueeze_(0)
    y.add_(1.0)
    return y.squeeze(0)
""",
    "squeeze_inplace_chain": """
def f(x):
    y = x.unsqueeze(1).clone()
    y.squeeze_(1)
    y.sub_(x.cos())
    return y
""",
    "view_of_view_mutation": """
def f(x):
    y = x.exp()
    v = y.view(8)[2:6]
    v.mul_(0.5)
    return y
""",
    "diagonal_mutation": """
def f(x):
    y = x.t() @ x
    y.diagonal().add_(1.0)
    return y
""",
    "returns_view_of_input": """
def f(x):
    return x.view(8)[1:5]
""",
    "returns_transpose_of_input": """
def f(x):
    return x.t()
""",
    "mutate_input_view": """
def f(x):
    y = x.clone()
    y.narrow(0, 1, 2).copy_(x[:2] * 3)
    return y * x
""",
    "factory_written": """
def f(x):
    z = torch.zeros(4, 2, dtype=x.dtype)
    z.add_(x)
    z[0].mul_(2.0)
    return z
""",
    "index_put_optional_list": """
def f(x):
    y = x.clone()
    y[torch.tensor([0, 2])] = x[:2] * 2
    return y
""",
    "masked_fill_inplace": """
def f(x):
    y = x.clone()
    y.masked_fill_(torch.tensor([True, False]), 0.0)
    return y * x
""",
    "split_views_mutated": """
def f(x):
    y = x * 1.5
    a, b = y.split(2)
    a.mul_(b)
    return y
""",
    "reshape_then_inplace": """
def f(x):
    y = x.sin().reshape(2, 4)
    y.tanh_()
    return y.reshape(4, 2) + x
""",
    "expand_then_clone_inplace": """
def f(x):
    y = x[0].expand(4, 2).clone()
    y.mul_(x)
    return y
""",
    "transposed_row_mutation": """
def f(x):
    y = x + 1
    y.t()[0].mul_(2.0)
    return y
""",
    "unbind_views": """
def f(x):
    y = x.clone()
    rows = y.unbind(0)
    rows[1].add_(rows[0])
    return y
""",
}

TRANSFORMS = {
    "grad": ("grad", {}),
    "vjp": ("vjp", {}),
    "jvp": ("jvp", {}),
    "vmap": ("vmap", {"in_dims": 0, "out_dims": 0}),
    "jacrev": ("jacrev", {}),
    "jacfwd": ("jacfwd", {}),
}
SHAPE = (4, 2)


@pytest.fixture(scope="module")
def worker():
    pool = WorkerPool()
    yield pool
    pool.close()


@pytest.mark.parametrize("remove", ["mutations", "mutations_and_views"])
@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_functionalize_under_transform(worker, program, transform, remove):
    stack = [["functionalize", {"remove": remove}], list(TRANSFORMS[transform])]
    source = PROGRAMS[program].strip()
    result = worker.run(source, stack, SHAPE)
    assert result["outcome"] in ("same", "both_raise", "theirs_raises"), (
        f"{result['outcome']}: {result['detail']}\n{describe(source, stack, SHAPE)}")
