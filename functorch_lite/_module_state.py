"""Module state helpers: stack_module_state, make_functional*, combine_state_for_ensemble."""
import copy
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from functorch_lite._functional_call import _StateAccessor

# NOTE: [Stateless copies in make_functional]
# make_functional(model) deep-copies the model, takes every parameter (buffer) out of the
# copy and leaves a tensor on the "meta" device in its place, so the copy holds no data
# and nothing can silently read stale weights. The returned FunctionalModule puts the
# caller's tensors back for the duration of one call (NOTE: [Swapping module state] in
# _functional_call.py) and the meta placeholders back afterwards.
# Tied weights: named_parameters() lists a shared tensor once, so `params` holds it once;
# `names_map` maps that first name to every name that reaches it ({'w': ['w', 'w_tied']})
# and the call sets all of them.
#
# NOTE: [Stacked leaves for ensembling]
# stack_module_state and combine_state_for_ensemble stack the state of M models along a
# new dim 0 for vmap. torch.stack records history back to every model's parameters; the
# result is detached so it is a fresh leaf that an optimizer can own. stack_module_state
# (torch.func) then sets requires_grad on stacked params whose sources all require grad;
# combine_state_for_ensemble (functorch) returns them detached without requires_grad, as
# functorch does.


def _check_same_models(api: str, models: Sequence[nn.Module]) -> None:
    if len(models) == 0:
        raise RuntimeError(f"{api}: Expected at least one model, got 0.")
    if not (all(m.training for m in models) or all(not m.training for m in models)):
        raise RuntimeError(f"{api}: Expected all models to have the same training/eval mode.")
    if not all(type(m) is type(models[0]) for m in models):
        raise RuntimeError(f"{api}: Expected all models to be of the same class.")


def _named_state_of_all(api: str, kind: str, models: Sequence[nn.Module]) -> List[Dict[str, Tensor]]:
    named = [dict(getattr(m, f"named_{kind}")()) for m in models]
    for i, state in enumerate(named):
        if list(state) != list(named[0]):
            raise RuntimeError(
                f"{api}: Expected all models to have the same {kind}, but model 0 has "
                f"{list(named[0])} and model {i} has {list(state)}."
            )
    return named


def _stacked_leaf(api: str, name: str, tensors: Sequence[Tensor]) -> Tensor:
    """See NOTE: [Stacked leaves for ensembling]."""
    requires_grad = [t.requires_grad for t in tensors]
    if any(requires_grad) and not all(requires_grad):
        raise RuntimeError(f"{api}: Expected {name} from each model to have the same .requires_grad")
    stacked = torch.stack(tuple(tensors)).detach()
    return stacked.requires_grad_() if all(requires_grad) else stacked


def stack_module_state(models: Sequence[nn.Module]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """stack_module_state(models) -> params, buffers, as functorch's ``stack_module_state``.

    Stacks the parameters and buffers of M models of one class along a new dim 0, keyed
    by name; stacked parameters are new leaves that require grad like the originals.
    """
    api = "stack_module_state"
    _check_same_models(api, models)
    params = _named_state_of_all(api, "parameters", models)
    buffers = _named_state_of_all(api, "buffers", models)
    return (
        {k: _stacked_leaf(api, k, [p[k] for p in params]) for k in params[0]},
        {k: _stacked_leaf(api, k, [b[k] for b in buffers]) for k in buffers[0]},
    )


def _take_out_state(
    model: nn.Module,
    named_members: Callable[..., Iterable[Tuple[str, Tensor]]],
    make_placeholder: Callable[[Tensor], Tensor],
) -> Tuple[Tuple[Tensor, ...], Tuple[str, ...], Dict[str, List[str]]]:
    """Replaces each member of `model` by a meta placeholder; returns (tensors, names, names_map)."""
    unique = tuple(named_members(remove_duplicate=True))
    first_name_of = {id(t): name for name, t in unique}
    names_map: Dict[str, List[str]] = {name: [] for name, _ in unique}
    accessor = _StateAccessor(model, "make_functional")
    placeholders: Dict[int, Tensor] = {}
    for name, tensor in tuple(named_members(remove_duplicate=False)):
        names_map[first_name_of[id(tensor)]].append(name)
        if id(tensor) not in placeholders:
            placeholders[id(tensor)] = make_placeholder(torch.empty_like(tensor, device="meta"))
        accessor.set(name, placeholders[id(tensor)])
    return tuple(t for _, t in unique), tuple(name for name, _ in unique), names_map


def _call_with_state(
    api: str,
    model: nn.Module,
    names_map: Dict[str, List[str]],
    state: Tuple[Tensor, ...],
    args: Any,
    kwargs: Any,
) -> Any:
    """Runs `model` with `state` swapped in, one tensor per names_map key.

    See NOTE: [Swapping module state] in _functional_call.py.
    """
    if len(state) != len(names_map):
        raise RuntimeError(
            f"{api}: expected {len(names_map)} tensors, one per parameter/buffer of the model "
            f"({list(names_map)}), but got {len(state)}."
        )
    accessor = _StateAccessor(model, api)
    swapped: List[Tuple[str, Tensor]] = []
    try:
        for names, tensor in zip(names_map.values(), state):
            for name in names:
                swapped.append((name, accessor.swap(name, tensor)))
        return model(*args, **kwargs)
    finally:
        for name, old in reversed(swapped):
            accessor.swap(name, old)


class FunctionalModule(nn.Module):
    """The callable returned by :func:`make_functional`: ``fmodel(params, *args, **kwargs)``."""

    def __init__(
        self, stateless_model: nn.Module, param_names: Tuple[str, ...], names_map: Dict[str, List[str]]
    ) -> None:
        super().__init__()
        self.stateless_model = stateless_model
        self.param_names = param_names
        self.names_map = names_map

    @staticmethod
    def _create_from(
        model: nn.Module, disable_autograd_tracking: bool = False
    ) -> Tuple["FunctionalModule", Tuple[Tensor, ...]]:
        model_copy = copy.deepcopy(model)
        params, param_names, names_map = _take_out_state(
            model_copy, model_copy.named_parameters, nn.Parameter
        )
        if disable_autograd_tracking:
            for param in params:
                param.requires_grad_(False)
        return FunctionalModule(model_copy, param_names, names_map), params

    def forward(self, params: Iterable[Tensor], *args: Any, **kwargs: Any) -> Any:
        api = "FunctionalModule(params, *args)"
        return _call_with_state(api, self.stateless_model, self.names_map, tuple(params), args, kwargs)


class FunctionalModuleWithBuffers(nn.Module):
    """The callable returned by :func:`make_functional_with_buffers`.

    Called as ``fmodel(params, buffers, *args, **kwargs)``.
    """

    def __init__(
        self,
        stateless_model: nn.Module,
        param_names: Tuple[str, ...],
        buffer_names: Tuple[str, ...],
        param_names_map: Dict[str, List[str]],
        buffer_names_map: Dict[str, List[str]],
    ) -> None:
        super().__init__()
        self.stateless_model = stateless_model
        self.param_names = param_names
        self.buffer_names = buffer_names
        self.all_names_map = dict(param_names_map)
        self.all_names_map.update(buffer_names_map)

    @staticmethod
    def _create_from(
        model: nn.Module, disable_autograd_tracking: bool = False
    ) -> Tuple["FunctionalModuleWithBuffers", Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        model_copy = copy.deepcopy(model)
        params, param_names, param_names_map = _take_out_state(
            model_copy, model_copy.named_parameters, nn.Parameter
        )
        buffers, buffer_names, buffer_names_map = _take_out_state(
            model_copy, model_copy.named_buffers, lambda t: t
        )
        if disable_autograd_tracking:
            for param in params:
                param.requires_grad_(False)
        fmodel = FunctionalModuleWithBuffers(
            model_copy, param_names, buffer_names, param_names_map, buffer_names_map
        )
        return fmodel, params, buffers

    def forward(
        self, params: Iterable[Tensor], buffers: Iterable[Tensor], *args: Any, **kwargs: Any
    ) -> Any:
        api = "FunctionalModuleWithBuffers(params, buffers, *args)"
        state = tuple(params) + tuple(buffers)
        return _call_with_state(api, self.stateless_model, self.all_names_map, state, args, kwargs)


def make_functional(
    model: nn.Module, disable_autograd_tracking: bool = False
) -> Tuple[FunctionalModule, Tuple[Tensor, ...]]:
    """make_functional(model, disable_autograd_tracking=False) -> fmodel, params, as functorch's.

    ``fmodel(params, *args, **kwargs)`` runs a stateless copy of ``model`` with ``params``;
    see NOTE: [Stateless copies in make_functional]. Models with buffers need
    :func:`make_functional_with_buffers`.
    """
    if len(list(model.buffers())) > 0:
        raise RuntimeError(
            "make_functional(model): `model` has buffers. "
            "Please use make_functional_with_buffers(model) instead."
        )
    return FunctionalModule._create_from(model, disable_autograd_tracking=disable_autograd_tracking)


def make_functional_with_buffers(
    model: nn.Module, disable_autograd_tracking: bool = False
) -> Tuple[FunctionalModuleWithBuffers, Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """make_functional_with_buffers(model, disable_autograd_tracking=False) -> fmodel, params, buffers.

    ``fmodel(params, buffers, *args, **kwargs)`` runs a stateless copy of ``model``; see
    NOTE: [Stateless copies in make_functional].
    """
    return FunctionalModuleWithBuffers._create_from(
        model, disable_autograd_tracking=disable_autograd_tracking
    )


def combine_state_for_ensemble(
    models: Sequence[nn.Module],
) -> Tuple[FunctionalModuleWithBuffers, Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """combine_state_for_ensemble(models) -> fmodel, params, buffers, as functorch's.

    ``params``/``buffers`` stack the state of the M models along a new dim 0 (detached,
    see NOTE: [Stacked leaves for ensembling]); ``fmodel`` is the functional version of
    ``models[0]``, meant for ``vmap(fmodel, (0, 0, None))(params, buffers, x)``.
    """
    api = "combine_state_for_ensemble"
    _check_same_models(api, models)
    fmodel, _, _ = make_functional_with_buffers(models[0])
    params = _named_state_of_all(api, "parameters", models)
    buffers = _named_state_of_all(api, "buffers", models)
    return (
        fmodel,
        tuple(torch.stack([p[k] for p in params]).detach() for k in params[0]),
        tuple(torch.stack([b[k] for b in buffers]).detach() for k in buffers[0]),
    )
