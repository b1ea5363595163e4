"""functional_call: run an nn.Module with parameters and buffers taken from dicts."""
import contextlib
from collections.abc import Sequence
from typing import Any, Dict, Iterator, Optional, Union

import torch
from torch import Tensor, nn

# NOTE: [Swapping module state]
# functional_call, FunctionalModule and FunctionalModuleWithBuffers all run a module with
# state that it does not own. They do it the same way: for each dotted name
# ("layer1.conv.weight") find the owning submodule, put the new tensor where the old one
# lived (module._parameters, module._buffers or a plain attribute) and keep the old one.
# After the call every swap is undone in a `finally`, in reverse order, so that an
# exception in forward (or halfway through swapping in) never leaves a module holding
# borrowed tensors, and so that two names for one attribute (a submodule registered
# twice) end up holding the original tensor. A plain Tensor is stored into
# _parameters as is: the module sees exactly what the caller passed, history included,
# which is what lets grad/vjp differentiate through the call.
#
# NOTE: [Tied weights in functional_call]
# Two names are tied when the module reaches one tensor through both (named_parameters /
# named_buffers with remove_duplicate=False). With tie_weights=True a value given for one
# name is used for every name tied to it, and different values for names of one tie are
# an error; with tie_weights=False each name is swapped only if it is given.

_MISSING: Any = object()  # a name that the module did not have before the swap


class _StateAccessor:
    """Gets and swaps tensors of a module by dotted name; `api` prefixes its errors."""

    def __init__(self, module: nn.Module, api: str) -> None:
        self.module = module
        self.api = api
        self._submodules: Dict[str, nn.Module] = {"": module}

    def submodule(self, path: str) -> nn.Module:
        if path in self._submodules:
            return self._submodules[path]
        prefix, _, attr = path.rpartition(".")
        owner = self.submodule(prefix)
        if not hasattr(owner, attr):
            raise AttributeError(f"{self.api}: {owner._get_name()} has no attribute `{attr}`")
        found = getattr(owner, attr)
        if not isinstance(found, nn.Module):
            raise TypeError(f"{self.api}: `{path}` is a {type(found).__name__}, not an nn.Module")
        self._submodules[path] = found
        return found

    def swap(self, name: str, value: Optional[Tensor]) -> Optional[Tensor]:
        """Puts `value` (or _MISSING: removes it) at `name`; returns what was there."""
        if value is not _MISSING and value is not None and not isinstance(value, Tensor):
            kind = type(value).__name__
            raise TypeError(f"{self.api}: the value for `{name}` is a {kind}, not a Tensor")
        prefix, _, attr = name.rpartition(".")
        owner = self.submodule(prefix)
        for table in (owner._parameters, owner._buffers):
            if attr in table:
                old = table[attr]
                if value is _MISSING:
                    del table[attr]
                else:
                    table[attr] = value
                return old
        old = getattr(owner, attr, _MISSING)
        if old is not _MISSING and old is not None and not isinstance(old, Tensor):
            raise TypeError(
                f"{self.api}: `{name}` is a {type(old).__name__} in the module, not a Tensor, "
                "so it can't be replaced by one"
            )
        if value is not _MISSING:
            setattr(owner, attr, value)
        elif old is not _MISSING:
            delattr(owner, attr)
        return old

    def set(self, name: str, value: Tensor) -> None:
        self.swap(name, value)


def _merge_dicts(parameter_and_buffer_dicts: Any) -> Dict[str, Tensor]:
    if isinstance(parameter_and_buffer_dicts, dict):
        return parameter_and_buffer_dicts
    if not isinstance(parameter_and_buffer_dicts, Sequence):
        raise ValueError(
            "functional_call: expected parameter_and_buffer_dicts to be a dict, or a list/tuple "
            f"of dicts, but got {type(parameter_and_buffer_dicts)}"
        )
    if not all(isinstance(d, dict) for d in parameter_and_buffer_dicts):
        raise ValueError(
            "functional_call: Expected all elements of parameter_and_buffer_dicts to be "
            "dictionaries"
        )
    seen: Dict[str, int] = {}
    for d in parameter_and_buffer_dicts:
        for key in d:
            seen[key] = seen.get(key, 0) + 1
    repeated = [key for key, count in seen.items() if count > 1]
    if repeated:
        raise ValueError(
            f"functional_call: {repeated} appeared in multiple dictionaries; behavior of "
            "functional call is ambiguous. Please pass each name in only one dictionary."
        )
    return {k: v for d in parameter_and_buffer_dicts for k, v in d.items()}


def _all_named_tensors(module: nn.Module) -> Dict[str, Tensor]:
    named = dict(module.named_parameters(remove_duplicate=False))
    named.update(module.named_buffers(remove_duplicate=False))
    return named


def _untie(module: nn.Module, named_tensors: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """See NOTE: [Tied weights in functional_call]; returns a new dict."""
    names_of: Dict[int, set] = {}
    for name, tensor in _all_named_tensors(module).items():
        names_of.setdefault(id(tensor), set()).add(name)
    tie_of = {name: names for names in names_of.values() if len(names) > 1 for name in names}
    given = [name for name in named_tensors if name in tie_of]
    for name in given:
        given_in_tie = tie_of[name].intersection(given)
        if len({id(named_tensors[n]) for n in given_in_tie}) > 1:
            raise ValueError(
                f"functional_call: got multiple values for keys {sorted(tie_of[name])}, which are "
                "tied. Consider using tie_weights=False"
            )
    untied = dict(named_tensors)
    for name in given:
        for tied_name in tie_of[name]:
            untied[tied_name] = named_tensors[name]
    return untied


def _check_keys(module: nn.Module, named_tensors: Dict[str, Tensor]) -> None:
    valid = set(_all_named_tensors(module))
    missing = sorted(valid - set(named_tensors))
    unexpected = sorted(set(named_tensors) - valid)
    messages = []
    if unexpected:
        messages.append(f"Unexpected key(s): {', '.join(map(repr, unexpected))}.")
    if missing:
        messages.append(f"Missing key(s): {', '.join(map(repr, missing))}.")
    if messages:
        header = f"functional_call: Error(s) in reparametrizing for {module._get_name()}:"
        raise RuntimeError("\n\t".join([header] + messages))


@contextlib.contextmanager
def _swapped_state(
    module: nn.Module, named_tensors: Dict[str, Tensor], *, tie_weights: bool, strict: bool
) -> Iterator[None]:
    """See NOTE: [Swapping module state]. Writes rebound tensors back into `named_tensors`."""
    to_swap = _untie(module, named_tensors) if tie_weights else named_tensors
    if strict:
        _check_keys(module, to_swap)
    accessor = _StateAccessor(module, "functional_call")
    originals: Dict[str, Any] = {}
    try:
        for name, tensor in to_swap.items():
            originals[name] = accessor.swap(name, tensor)
        yield
    finally:
        after_call = {name: accessor.swap(name, old) for name, old in reversed(originals.items())}
        # The module may have rebound a tensor (self.foo = self.foo + 1): report it back.
        named_tensors.update({k: after_call[k] for k in named_tensors if k in after_call})


def functional_call(
    module: nn.Module,
    parameter_and_buffer_dicts: Union[Dict[str, Tensor], Sequence[Dict[str, Tensor]]],
    args: Any = None,
    kwargs: Optional[Dict[str, Any]] = None,
    *,
    tie_weights: bool = True,
    strict: bool = False,
) -> Any:
    """Calls ``module(*args, **kwargs)`` with its parameters and buffers replaced by the given ones.

    Same contract as functorch's ``functional_call``: ``parameter_and_buffer_dicts`` is one
    dict or a tuple/list of dicts with distinct keys; ``args`` that is not a tuple is a single
    argument; ``tie_weights`` and ``strict`` as documented there. The module is restored
    afterwards, even when the call raises.
    """
    named_tensors = _merge_dicts(parameter_and_buffer_dicts)
    if torch.jit.is_tracing() or torch.jit.is_scripting() or isinstance(
        module, (torch.jit.RecursiveScriptModule, torch.jit.ScriptModule, torch.jit.ScriptFunction)
    ):
        raise RuntimeError(
            "functional_call: can't be used with TorchScript (jitted) modules or under torch.jit "
            "tracing. Please call it on the eager nn.Module instead."
        )
    if isinstance(module, nn.DataParallel):
        raise RuntimeError(
            "functional_call: can't be used with an nn.DataParallel module. Please pass the "
            "wrapped module (module.module) instead."
        )
    if kwargs is None:
        kwargs = {}
    if args is None:
        args = ()
    elif not isinstance(args, tuple):
        args = (args,)
    with _swapped_state(module, named_tensors, tie_weights=tie_weights, strict=strict):
        return module(*args, **kwargs)
