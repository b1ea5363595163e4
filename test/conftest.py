"""Shared fixtures: every test starts and ends with an empty level stack."""
import pytest
import torch

from functorch_lite import _C


@pytest.fixture(autouse=True)
def _no_leftover_levels():
    torch.manual_seed(0)
    assert _C._layer_depth() == 0
    yield
    assert _C._layer_depth() == 0, "a transform left a level behind"


@pytest.fixture
def no_fallback():
    """Disables vmap's for-loop fallback (only batching rules may run), then restores it."""
    previous = _C._is_vmap_fallback_enabled()
    _C._set_vmap_fallback_enabled(False)
    try:
        yield
    finally:
        _C._set_vmap_fallback_enabled(previous)
