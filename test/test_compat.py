"""Every public name of functorch(.experimental, .compile) and torch.func exists in functorch_lite alike."""
import importlib
import inspect
import types

import pytest

# NOTE: [API compatibility table]
# Users write `import functorch_lite as functorch` (or use it in place of torch.func), so
# every public name of those namespaces must exist in the matching functorch_lite
# namespace, callable the same way. A name is public if it is in the module's __all__,
# or, without __all__, in dir() minus underscored names and submodules. "Callable the
# same way" means equal inspect.signature parameters: name, kind and default (classes:
# their __init__). Annotations are not compared, nor parameters whose name starts with an
# underscore: those are torch's internal knobs (make_fx's _allow_non_fake_inputs,
# jacrev's _preallocate_and_copy, ...), which no user code is expected to pass.
# Names not implemented yet are listed in KNOWN_MISSING; their cases are
# xfail(strict=True, raises=MissingName), so implementing a name makes its case XPASS,
# which fails the run until the name is removed from KNOWN_MISSING, and a name that exists
# with other parameters fails outright instead of hiding behind the xfail.
# docs/compat.md is the same table for people.

# (reference namespace, functorch_lite namespace that provides its names)
NAMESPACES = [
    ("functorch", "functorch_lite"),
    ("functorch.experimental", "functorch_lite.experimental"),
    ("functorch.compile", "functorch_lite.compile"),
    ("torch.func", "functorch_lite"),
]

# Keyed by the functorch_lite name that should exist ("functorch_lite.vmap" stands for
# functorch.vmap and torch.func.vmap alike). Remove an entry when the name lands.
KNOWN_MISSING: set = set()

MISSING_REASON = "not implemented yet: see docs/limitations.md"


class MissingName(Exception):
    """The functorch_lite name (or its namespace) does not exist: what KNOWN_MISSING excuses."""


def public_names(module):
    if hasattr(module, "__all__"):
        return sorted(module.__all__)
    return sorted(
        n
        for n in dir(module)
        if not n.startswith("_") and not isinstance(getattr(module, n), types.ModuleType)
    )


def _cases():
    cases = []
    for reference, target in NAMESPACES:
        for name in public_names(importlib.import_module(reference)):
            full_target = f"{target}.{name}"
            missing = full_target in KNOWN_MISSING
            xfail = pytest.mark.xfail(strict=True, reason=MISSING_REASON, raises=MissingName)
            marks = [xfail] if missing else []
            cases.append(pytest.param(reference, name, target, id=f"{reference}.{name}", marks=marks))
    return cases


CASES = _cases()


def _default(value):
    if value is inspect.Parameter.empty:
        return "<required>"
    if callable(value):
        return f"<callable {getattr(value, '__name__', type(value).__name__)}>"
    return repr(value)


def api_of(obj):
    """What code calling `obj` depends on; see NOTE: [API compatibility table]."""
    if not callable(obj):
        return f"value of type {type(obj).__name__}"
    kind = "class" if inspect.isclass(obj) else "callable"
    try:
        signature = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    except (TypeError, ValueError):  # builtins without a signature: only the kind is comparable
        return kind, None
    public = [p for p in signature.parameters.values() if not p.name.startswith("_")]
    return kind, [(p.name, p.kind.name, _default(p.default)) for p in public]


def check_same_api(reference, name, target):
    expected = getattr(importlib.import_module(reference), name)
    try:
        module = importlib.import_module(target)
    except ImportError as e:
        raise MissingName(
            f"{target} can't be imported ({e}), so {target}.{name} (for {reference}.{name}) is missing"
        )
    if not hasattr(module, name):
        raise MissingName(f"{target}.{name} is missing (needed for {reference}.{name})")
    actual = getattr(module, name)
    assert api_of(actual) == api_of(expected), f"{target}.{name} differs from {reference}.{name}"


@pytest.mark.parametrize("reference, name, target", CASES)
def test_same_public_api(reference, name, target):
    check_same_api(reference, name, target)


def test_known_missing_names_are_real_names():
    targets = {f"{c.values[2]}.{c.values[1]}" for c in CASES}
    assert sorted(KNOWN_MISSING - targets) == [], "stale KNOWN_MISSING entries: remove them"


def test_api_of_compares_parameters_kinds_and_defaults():
    def f(func, argnums=0, *, has_aux=False, _internal=None):
        pass

    def g(func, argnums=1, *, has_aux=False):
        pass

    def h(func, argnums=0, has_aux=False):
        pass

    assert api_of(f) == ("callable", [("func", "POSITIONAL_OR_KEYWORD", "<required>"),
                                      ("argnums", "POSITIONAL_OR_KEYWORD", "0"),
                                      ("has_aux", "KEYWORD_ONLY", "False")])
    assert api_of(f) != api_of(g) and api_of(f) != api_of(h)
    assert api_of({}) == "value of type dict"
