"""Random small programs for the composition fuzzer (test/test_fuzz_compositions.py).

NOTE: [What the composition fuzzer generates]
A program is `f(x)` for x of shape BASE_SHAPE: a few statements, each making a new variable
from earlier ones, or writing in place into one. Shapes are tracked, so every statement is
well-formed outside any transform. The statements come from families where transforms meet:
pointwise and broadcasting ops, views of inputs and intermediates (t, transpose, select,
slices, unsqueeze, diagonal, narrow, expand), in-place ops (also through views, and into
inputs), factory functions written into, and reductions; the program returns one variable,
possibly a view aliasing the input. Programs reshape nothing: whether a reshape copies depends
on the physical layout, which differs between vmap implementations, and so would writes
through it. A stack is 1-3 transforms applied innermost first (see composition_worker).
"""
from hypothesis import strategies as st

BASE_SHAPE = (2, 3)

_UNARY = ["{a}.sin()", "{a}.exp()", "torch.tanh({a})", "{a} * 2.0", "{a} + 1.0", "{a}.clone()",
          "{a}.abs() + 0.5", "{a}.sigmoid()"]
_BINARY = ["{a} * {b}", "{a} + {b}", "{a} - {b}", "torch.maximum({a}, {b} + 0.25)"]
_INPLACE_UNARY = ["{a}.mul_(2.0)", "{a}.sin_()", "{a}.add_(0.5)", "{a}.clamp_(-2.0, 2.0)",
                  "{a}.zero_()"]
_INPLACE_BINARY = ["{a}.add_({b})", "{a}.mul_({b})", "{a}.copy_({b})"]


def _views(shape):
    """(template, result shape) of the views that apply to a tensor of `shape`."""
    rank = len(shape)
    out = [("{a}.unsqueeze(0)", (1,) + shape)]
    if rank == 2:
        out += [("{a}.t()", shape[::-1]), ("{a}.diagonal()", (min(shape),))]
    if rank >= 2:
        out.append(("{a}.transpose(0, 1)", (shape[1], shape[0]) + shape[2:]))
    if rank >= 1:
        out += [("{a}[0]", shape[1:]), ("{a}.narrow(-1, 0, 1)", shape[:-1] + (1,)),
                ("{a}.expand(2, *{a}.shape)", (2,) + shape)]
        if shape[0] >= 2:
            out.append(("{a}[1:]", (shape[0] - 1,) + shape[1:]))
    return out


def _reductions(shape):
    out = [("{a}.sum()", ())]
    if shape:
        out += [("{a}.sum(0)", shape[1:]), ("{a}.mean(-1)", shape[:-1]),
                ("{a}.amax(0)", shape[1:])]
    return out


def _broadcasts(src, dst):
    """True when a tensor of shape src broadcasts to dst without changing dst."""
    if len(src) > len(dst):
        return False
    return all(s in (1, d) for s, d in zip(reversed(src), reversed(dst)))


@st.composite
def programs(draw, max_statements=6):
    """(source of f, shape of x)."""
    shapes = {"x": BASE_SHAPE}
    expanded = set()  # views that may not be written into (expand)
    lines = []
    for i in range(draw(st.integers(1, max_statements))):
        names = sorted(shapes)
        a = draw(st.sampled_from(names))
        kind = draw(st.sampled_from(
            ["unary", "binary", "view", "view", "inplace", "inplace", "factory", "reduce"]))
        new = f"v{i}"
        if kind == "unary":
            lines.append(f"{new} = " + draw(st.sampled_from(_UNARY)).format(a=a))
            shapes[new] = shapes[a]
        elif kind == "binary":
            partners = [n for n in names if _broadcasts(shapes[n], shapes[a])]
            b = draw(st.sampled_from(partners))
            lines.append(f"{new} = " + draw(st.sampled_from(_BINARY)).format(a=a, b=b))
            shapes[new] = shapes[a]
        elif kind == "view":
            template, shape = draw(st.sampled_from(_views(shapes[a])))
            lines.append(f"{new} = " + template.format(a=a))
            shapes[new] = shape
            if "expand" in template or a in expanded:
                expanded.add(new)
        elif kind == "inplace":
            if a in expanded:
                continue
            # not a.mul_(a): forward AD of a self-aliased in-place op gives a result that
            # depends on evaluation order (eager torch differs from its own functionalize)
            partners = [n for n in names if _broadcasts(shapes[n], shapes[a]) and n != a]
            if partners and draw(st.booleans()):
                b = draw(st.sampled_from(partners))
                lines.append(draw(st.sampled_from(_INPLACE_BINARY)).format(a=a, b=b))
            else:
                lines.append(draw(st.sampled_from(_INPLACE_UNARY)).format(a=a))
        elif kind == "factory":
            shape = shapes[a]
            factory = draw(st.sampled_from([
                f"torch.zeros({shape}, dtype=x.dtype)", f"torch.ones_like({a})",
                f"torch.full({shape}, 0.5, dtype=x.dtype)"]))
            lines.append(f"{new} = {factory}")
            shapes[new] = shape
            if draw(st.booleans()):
                lines.append(f"{new}.add_({a})")
        else:
            template, shape = draw(st.sampled_from(_reductions(shapes[a])))
            lines.append(f"{new} = " + template.format(a=a))
            shapes[new] = shape
    names = sorted(shapes, key=lambda n: (n != "x", int(n[1:]) if n != "x" else -1))
    result = draw(st.sampled_from(names[-3:]))
    body = "\n".join("    " + line for line in lines + [f"return {result}"])
    return f"def f(x):\n{body}", BASE_SHAPE


_DIFF = ["grad", "vjp", "jvp", "jacrev", "jacfwd"]


@st.composite
def transform_stacks(draw):
    """1-3 transforms, innermost first, each [kind, options]."""
    stack = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["vmap", "vmap", "functionalize"] + _DIFF))
        if kind == "vmap":
            opts = {"in_dims": draw(st.sampled_from([0, 1])),
                    "out_dims": draw(st.sampled_from([0, 1]))}
        elif kind == "functionalize":
            opts = {"remove": draw(st.sampled_from(["mutations", "mutations_and_views"]))}
        else:
            opts = {}
        stack.append([kind, opts])
    return stack
