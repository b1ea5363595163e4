"""torch.compile over functorch_lite transforms: what dynamo sees of a vmap / grad / jvp call."""
import functools
import importlib.abc
import importlib.util
import sys
import threading

# NOTE: [torch.compile over our transforms]
# Dynamo cannot trace our transforms line by line: they enter levels in C++ (`_C._vmap_level`)
# and run the user's function on wrapper tensors that have no storage for dynamo to fake. So
# dynamo never looks inside. Every public transform funnels its calls through `_run(fn, *args,
# **kwargs)`, where `fn` is the eager transformed function (vmap(grad(loss)) with its
# in_dims, ...). Dynamo maps `_run` to `RunVariable` (_dynamo_variables.py, registered in
# its trace rules when torch._dynamo is imported), which
#   1. turns `fn` into the real Python function: a transform built inside the compiled region
#      is a closure dynamo tracked symbolically, and dynamo rebuilds it from its code and
#      closure cells when those are constants (functions, ints, tuples, modules);
#   2. puts one opaque node in the graph that calls `fn` on the tensor arguments (dynamo's
#      nonstrict-trace call: the node's target holds `fn`, its inputs are the flattened
#      tensors, its output structure is learned by running `fn` on fake tensors);
#   3. lets AOTAutograd make_fx-trace that node like any Python function, which runs our
#      transform on fake, functional tensors: the router processes the levels and the graph
#      holds only plain aten ops (as for functorch_lite.compile.aot_function(vmap(grad(f)))).
# Guards are dynamo's own: on the closure cells that rebuilt `fn` (the function objects by
# identity, in_dims / argnums / randomness by value) and on the tensor inputs. A new in_dims, a
# different loss or new input shapes recompile; calling the same code again does not.
#
# What cannot be rebuilt (a function that closes over a tensor, linearize's jvp_fn) is a graph
# break whose reason names the transform; the call then runs eagerly. vjp is two nodes: the
# forward, and, where vjp_fn is called, a node that recomputes the forward and pulls the
# cotangents back (vjp_fn itself is not a value a graph can hold).
#
# The other route, a compiled function called inside a transform (vmap(torch.compile(f))), sees
# our wrapper tensors as inputs; dynamo cannot fake them. While a transform runs eagerly,
# `_EagerFrames` therefore switches dynamo's frame evaluation off and its stance to
# force_eager, so a compiled function called inside runs as plain Python at our levels, which
# is always correct (and is how it is traced when the outer call is itself compiled).


def transform(factory):
    """Marks `factory` (vmap, grad, ...): the function it returns calls through `_run`."""

    @functools.wraps(factory)
    def make(*args, **kwargs):
        eager = factory(*args, **kwargs)

        @functools.wraps(eager)
        def transformed(*call_args, **call_kwargs):
            return _run(eager, *call_args, **call_kwargs)

        transformed.__wrapped__ = getattr(eager, "__wrapped__", eager)  # the user's function
        return transformed

    return make


def direct(api=None, *, returns_function=False):
    """Marks a transform called directly on tensors (jvp, vjp, linearize).

    With returns_function, element 1 of its result (vjp_fn) calls through `_run` too."""
    if api is None:
        return functools.partial(direct, returns_function=returns_function)

    @functools.wraps(api)
    def called(*args, **kwargs):
        result = _run(api, *args, **kwargs)
        if returns_function:
            result = (result[0], _calling_through_run(result[1]), *result[2:])
        return result

    return called


def _calling_through_run(fn):
    def through_run(*args, **kwargs):  # no functools.wraps: dynamo traces this with fn unknown
        return _run(fn, *args, **kwargs)

    return through_run


def _run(fn, /, *args, **kwargs):
    """Calls transformed `fn` eagerly; under dynamo, _RunVariable replaces this call."""
    with _EagerFrames():
        return fn(*args, **kwargs)


class _EagerFrames:
    """Dynamo off for frames run inside a transform (see NOTE: [torch.compile over our ...]).

    The frame callback is per thread; the stance is one for the process, so it is counted:
    the first transform to enter (in any thread) saves it and sets force_eager, the last to
    leave restores it. Saving and restoring it per call would leave force_eager behind when
    transforms in two threads overlap."""

    __slots__ = ("eval_frame", "callback")

    def __enter__(self):
        self.eval_frame = sys.modules.get("torch._dynamo.eval_frame")
        if self.eval_frame is not None:
            self.callback = self.eval_frame.set_eval_frame(None)
            with _STANCE_LOCK:
                if _EAGER_CALLS[0] == 0:
                    _EAGER_CALLS[1] = self.eval_frame._stance
                    self.eval_frame._stance = _FORCE_EAGER[0]
                _EAGER_CALLS[0] += 1

    def __exit__(self, *exc):
        if self.eval_frame is not None:
            with _STANCE_LOCK:
                _EAGER_CALLS[0] -= 1
                if _EAGER_CALLS[0] == 0:
                    self.eval_frame._stance = _EAGER_CALLS[1]
            self.eval_frame.set_eval_frame(self.callback)
        return False


_STANCE_LOCK = threading.Lock()
_EAGER_CALLS = [0, None]  # transforms running eagerly in the process, and the stance to restore
_FORCE_EAGER = [None]  # dynamo's force_eager stance, made when dynamo is imported


# ---- registration with dynamo, once torch._dynamo is imported (it costs seconds to import) ----


def _register():
    import torch._dynamo.eval_frame as eval_frame
    from torch._dynamo import trace_rules

    from functorch_lite import _dynamo_variables

    _FORCE_EAGER[0] = eval_frame.DynamoStance("force_eager")
    eval_frame.skip_code(_run.__code__)
    trace_rules.manual_torch_name_rule_map[f"{__name__}._run"] = _dynamo_variables.RunVariable
    trace_rules.get_torch_obj_rule_map.cache_clear()


class _AfterDynamoImport(importlib.abc.MetaPathFinder):
    """Runs _register right after torch._dynamo finishes importing."""

    def find_spec(self, name, path, target=None):
        if name != "torch._dynamo":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


def install():
    if "torch._dynamo" in sys.modules:
        _register()
    else:
        sys.meta_path.insert(0, _AfterDynamoImport())


install()
