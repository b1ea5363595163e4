"""Dynamo's view of `_dynamo._run`: one opaque graph node per transform call (imports dynamo)."""
import re

from torch._dynamo.exc import TorchRuntimeError, Unsupported, unimplemented
from torch._dynamo.variables.base import VariableTracker
from torch._dynamo.variables.functions import BaseUserFunctionVariable, UserFunctionVariable
from torch._dynamo.variables.lists import TupleVariable
from torch._dynamo.variables.torch import TorchInGraphFunctionVariable

# See NOTE: [torch.compile over our transforms] in _dynamo.py.


def _api_name(fn):
    return getattr(fn, "__name__", type(fn).__name__)


def _constant(vt, what):
    """The real Python object behind `vt` (a function dynamo tracked), or a graph break."""
    try:
        return vt.as_python_constant()
    except Exception as e:  # noqa: BLE001 - dynamo raises several kinds here
        unimplemented(
            gb_type="functorch_lite transform of a function dynamo cannot rebuild",
            context=f"{what}: {vt}",
            explanation=(
                f"functorch_lite runs {what} as one opaque graph node, which needs the real "
                "Python function. Dynamo could not rebuild it from what it traced: a function "
                "defined inside the compiled region can be rebuilt only when everything it "
                "closes over is a constant (functions, modules, numbers, tuples), not a tensor."
            ),
            hints=[
                "Pass the tensors the function uses as arguments instead of closing over them.",
                "Or define the transformed function outside the compiled region.",
            ],
            from_exc=e,
        )


def _is_function(vt):
    return isinstance(vt, (BaseUserFunctionVariable, VjpFnVariable))


class _Bound:
    """`api` with its function arguments fixed: the target of the graph node.

    The node's inputs are the remaining (tensor) arguments; `consts` maps positions of the
    full positional argument list to the functions taken out of it."""

    def __init__(self, api, consts, num_args):
        self.api = api
        self.consts = consts
        self.num_args = num_args
        self.__name__ = re.sub(r"\W+", "_", "functorch_lite_" + _api_name(api))  # a graph attribute

    def __call__(self, *dynamic, **kwargs):
        dynamic = iter(dynamic)
        full = [self.consts[i] if i in self.consts else next(dynamic) for i in range(self.num_args)]
        return self.api(*full, **kwargs)


def _opaque_call(tx, target, args, kwargs):
    """One graph node calling `target` on args/kwargs (VariableTrackers of tensors, pytrees)."""
    try:
        return TorchInGraphFunctionVariable(target)._call_nonstrict_traceable_function(
            tx, list(args), dict(kwargs)
        )
    except Unsupported as e:
        # An error raised by the transform itself while dynamo runs it on fake tensors (bad
        # in_dims, randomness="error", ...) reaches the user as dynamo reports any failing op,
        # a TorchRuntimeError with our message, not as an unsupported output type.
        cause = e.__cause__ or e.__context__
        if isinstance(cause, TorchRuntimeError):
            raise cause from None
        raise


def _bind(fn, args, kwargs, what):
    consts = {i: _constant(a, what) for i, a in enumerate(args) if _is_function(a)}
    for k, v in kwargs.items():
        if _is_function(v):
            unimplemented(
                gb_type="functorch_lite transform called with a function keyword argument",
                context=f"{what}: keyword {k}",
                explanation=f"{what} passes functions only positionally to its graph node.",
                hints=["Pass the function positionally."],
            )
    dynamic = [a for i, a in enumerate(args) if i not in consts]
    return _Bound(fn, consts, len(args)), dynamic


class RunVariable(UserFunctionVariable):
    """`_run(fn, *args, **kwargs)` as dynamo sees it: a graph node calling `fn`."""

    def call_function(self, tx, args, kwargs):
        fn_vt, args = args[0], args[1:]
        if isinstance(fn_vt, VjpFnVariable):
            return fn_vt.call_function(tx, args, kwargs)
        fn = _constant(fn_vt, "a functorch_lite transform")
        what = f"functorch_lite.{_api_name(fn)}"
        from functorch_lite import _autodiff, _linearize

        if fn is _linearize.linearize.__wrapped__:
            unimplemented(
                gb_type="functorch_lite.linearize in a compiled region",
                context=what,
                explanation="linearize returns a function (jvp_fn), which a graph cannot hold.",
                hints=["Call linearize outside the compiled region, or use jvp inside it."],
            )
        if fn is _autodiff.vjp.__wrapped__:
            return _vjp(tx, args, kwargs, what)
        target, dynamic = _bind(fn, args, kwargs, what)
        return _opaque_call(tx, target, dynamic, kwargs)


class _VjpForward:
    """vjp's primal output (and aux): the first of the two nodes of a vjp."""

    __name__ = "functorch_lite_vjp_forward"

    def __init__(self, func, has_aux):
        self.func, self.has_aux = func, has_aux

    def __call__(self, *primals):
        from functorch_lite._autodiff import vjp

        result = vjp(self.func, *primals, has_aux=self.has_aux)
        return (result[0], result[2]) if self.has_aux else result[0]


class _VjpBackward:
    """vjp_fn(cotangents): recomputes the forward at the primals and pulls the cotangents back."""

    __name__ = "functorch_lite_vjp_backward"

    def __init__(self, func, has_aux):
        self.func, self.has_aux = func, has_aux

    def __call__(self, primals, cotangents):
        from functorch_lite._autodiff import vjp

        return vjp(self.func, *primals, has_aux=self.has_aux)[1](cotangents)


def _vjp(tx, args, kwargs, what):
    if set(kwargs) - {"has_aux"}:
        unimplemented(
            gb_type="functorch_lite.vjp with unexpected keyword arguments",
            context=f"{what}: {sorted(kwargs)}",
            explanation="vjp takes has_aux as its only keyword argument.",
            hints=["Call vjp(func, *primals, has_aux=...)."],
        )
    has_aux = kwargs["has_aux"].as_python_constant() if "has_aux" in kwargs else False
    func = _constant(args[0], what)
    primals = args[1:]
    out = _opaque_call(tx, _VjpForward(func, has_aux), primals, {})
    vjp_fn = VjpFnVariable(_VjpBackward(func, has_aux), TupleVariable(list(primals)))
    if has_aux:
        parts = out.unpack_var_sequence(tx)
        return TupleVariable([parts[0], vjp_fn, parts[1]])
    return TupleVariable([out, vjp_fn])


class VjpFnVariable(VariableTracker):
    """The vjp_fn of a vjp traced by dynamo: calling it adds the backward node."""

    def __init__(self, backward, primals, **kwargs):
        super().__init__(**kwargs)
        self.backward = backward
        self.primals = primals

    def python_type(self):
        return type(lambda: None)

    def call_function(self, tx, args, kwargs):
        if len(args) != 1 or kwargs:
            unimplemented(
                gb_type="functorch_lite vjp_fn called with extra arguments",
                context=f"{len(args)} positional, keywords {sorted(kwargs)}",
                explanation="In a compiled region vjp_fn takes the cotangents only.",
                hints=["Call vjp_fn(cotangents)."],
            )
        return _opaque_call(tx, self.backward, [self.primals, args[0]], {})

    def as_python_constant(self):
        raise NotImplementedError("vjp_fn of a traced vjp")

