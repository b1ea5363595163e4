"""AOT Autograd for nn.Modules: aot_module, aot_module_simplified, memory_efficient_fusion."""

import functools
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.utils.stateless import _functional_call

from functorch_lite.compile._aot import _aot_function, _input_name, aot_function
from functorch_lite.compile._compilers import default_decompositions, inductor_compile
from functorch_lite.compile._partition import default_partition, min_cut_rematerialization_partition

# NOTE: [Modules as functions]
# A module is compiled as the function (parameters, buffers, *args) -> module(*args): its
# parameters and buffers become graph inputs (so gradients reach them, and buffer updates
# such as BatchNorm's running stats are input mutations the runtime replays), swapped into
# the module for the call by torch.nn.utils.stateless (a plain attribute swap). Error messages
# name them by attribute path (e.g. "parameter 'fc.weight'") instead of by position.


def _named_params_and_buffers(mod: nn.Module) -> tuple[dict, dict]:
    params = dict(mod.named_parameters(remove_duplicate=False))
    buffers = dict(mod.named_buffers(remove_duplicate=False))
    return params, buffers


def aot_module(mod: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
    """aot_function for an nn.Module: parameters and buffers become graph inputs.

    args / kwargs are aot_function's (fw_compiler, ...). The returned module runs mod's
    forward through the compiled graphs; gradients reach mod's parameters.
    """
    named_params, named_buffers = _named_params_and_buffers(mod)

    def functional_call(named_params: dict, named_buffers: dict, *args: Any, **kwargs: Any) -> Any:
        return _functional_call(mod, {**named_params, **named_buffers}, args, kwargs)

    def state_name(path: tuple) -> str:  # path into (named_params, named_buffers)
        return ("parameter " if path[0].idx == 0 else "buffer ") + repr(path[1].key)

    compiled_f = _aot_function(
        functional_call,
        "aot_module",
        *args,
        num_params_buffers=len(named_params) + len(named_buffers),
        input_name=functools.partial(_input_name, num_lifted=2, lifted_name=state_name),
        **kwargs,
    )

    class AOTModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.orig_module = mod

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return compiled_f(named_params, named_buffers, *args, **kwargs)

    return AOTModule()


def aot_module_simplified(
    mod: nn.Module,
    args: Sequence[Any],
    fw_compiler: Callable,
    bw_compiler: Optional[Callable] = None,
    partition_fn: Callable = default_partition,
    decompositions: Optional[dict] = None,
    keep_inference_input_mutations: bool = False,
    inference_compiler: Optional[Callable] = None,
    compiler_config_extra: Optional[Any] = None,
    ignore_shape_env: bool = False,
    disable_functionalization: bool = False,
    pre_grad_passes: Optional[Callable] = None,
    compile_region_name: Optional[str] = None,
) -> Callable:
    """Compiles mod (typically an fx.GraphModule) for the example args now; returns forward(*args).

    The returned function takes the non-parameter inputs only, as mod.forward does.
    compiler_config_extra, ignore_shape_env and compile_region_name are accepted for
    compatibility with torch's signature and have no effect here.
    """
    if pre_grad_passes is not None:
        mod = pre_grad_passes(mod, args)
    named_params, named_buffers = _named_params_and_buffers(mod)
    names = list(named_params) + list(named_buffers)
    params_flat = list(named_params.values()) + list(named_buffers.values())

    def functional_call(*full_args: Any) -> Any:
        return _functional_call(
            mod, dict(zip(names, full_args)), tuple(full_args[len(names) :]), {}
        )

    compiled_f = _aot_function(
        functional_call,
        "aot_module_simplified",
        fw_compiler,
        bw_compiler,
        partition_fn,
        decompositions,
        len(params_flat),
        keep_inference_input_mutations,
        inference_compiler,
        disable_functionalization=disable_functionalization,
        input_name=functools.partial(
            _input_name,
            num_lifted=len(names),
            lifted_name=lambda path: f"parameter or buffer {names[path[0].idx]!r}",
        ),
    )
    compiled_f.compile_for(*params_flat, *args)

    def forward(*runtime_args: Any) -> Any:
        return compiled_f(*params_flat, *runtime_args)

    forward.zero_grad = mod.zero_grad
    forward.named_parameters = mod.named_parameters
    forward.named_buffers = mod.named_buffers
    return forward


compiled_module = aot_module


def memory_efficient_fusion(fn: Any, **kwargs: Any) -> Any:
    """aot_function / aot_module with min-cut partitioning, default decompositions and inductor.

    kwargs override any of those settings (for example fw_compiler=nop).
    """
    config = {
        "fw_compiler": inductor_compile,
        "bw_compiler": inductor_compile,
        "partition_fn": min_cut_rematerialization_partition,
        "decompositions": default_decompositions,
    }
    config.update(kwargs)
    if isinstance(fn, torch.nn.Module):
        return aot_module(fn, **config)
    return aot_function(fn, **config)
