"""functorch_lite._tree's fast maps give what torch's pytree gives (NOTE: [Fast tree maps])."""
import collections

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils import _pytree as pytree

from functorch_lite import _tree

Point = collections.namedtuple("Point", "x y")

leaves = st.one_of(
    st.builds(lambda n: torch.full((n,), float(n)), st.integers(0, 3)),
    st.integers(-3, 3),
    st.none(),
    st.text(max_size=2),
)


def _containers(children):
    keys = st.text(min_size=1, max_size=3)
    return st.one_of(
        st.tuples(children, children),
        st.lists(children, max_size=3),
        st.dictionaries(keys, children, max_size=3),
        st.builds(Point, children, children),
        st.dictionaries(keys, children, max_size=3).map(collections.OrderedDict),
    )


trees = st.recursive(leaves, _containers, max_leaves=12)


def _same(a, b):
    """Equal trees: same structure, leaves equal (tensors by value), same container types."""
    if pytree.tree_structure(a) != pytree.tree_structure(b):
        return False
    for x, y in zip(pytree.tree_leaves(a), pytree.tree_leaves(b)):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor) and not torch.equal(x, y):
            return False
        if not isinstance(x, torch.Tensor) and x != y:
            return False
    return True


def _mark(x):
    return ("leaf", x.tolist()) if isinstance(x, torch.Tensor) else ("leaf", x)


@settings(max_examples=300, deadline=None)
@given(trees)
def test_tree_map_is_pytrees(tree):
    assert _same(_tree.tree_map(_mark, tree), pytree.tree_map(_mark, tree))


@settings(max_examples=300, deadline=None)
@given(trees)
def test_leaves_come_in_pytrees_order(tree):
    ours = _tree.tree_leaves(tree)
    theirs = pytree.tree_leaves(tree)
    assert len(ours) == len(theirs)
    assert all(a is b for a, b in zip(ours, theirs))


@settings(max_examples=300, deadline=None)
@given(trees)
def test_fill_is_unflatten(tree):
    replacements = list(range(len(pytree.tree_leaves(tree))))
    expected = pytree.tree_unflatten(replacements, pytree.tree_structure(tree))
    assert _same(_tree.tree_fill(tree, replacements), expected)
