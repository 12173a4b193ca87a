"""SearchSpace and the seed's create_search_space_pool: order, round trips, validation, laziness."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas_distill.errors import ConfigError
from nas_distill.search.space import SearchSpace, create_search_space_pool

SPACE = {"num_hidden_layers": [2, 4], "hidden_size": [128, 256, 384], "act": ["gelu", "relu"]}


# ---------------------------------------------------------------------- seed pool semantics
def test_pool_is_sorted_key_product_in_itertools_order():
    pool = create_search_space_pool(SPACE)
    keys = sorted(SPACE)  # act, hidden_size, num_hidden_layers
    assert keys == ["act", "hidden_size", "num_hidden_layers"]
    assert pool == [list(row) for row in itertools.product(*(SPACE[k] for k in keys))]
    assert pool[0] == ["gelu", 128, 2]
    assert pool[1] == ["gelu", 128, 4]  # last key fastest
    assert pool[-1] == ["relu", 384, 4]
    assert len(pool) == 12


def test_pool_idx_starts_from_that_sorted_key():
    assert create_search_space_pool(SPACE, idx=1) == [[h, n] for h in (128, 256, 384) for n in (2, 4)]
    assert create_search_space_pool(SPACE, idx=2) == [[2], [4]]
    assert create_search_space_pool(SPACE, idx=3) == [[]]
    with pytest.raises(ValueError, match="idx"):
        create_search_space_pool(SPACE, idx=4)


def test_space_matches_pool_row_by_row():
    space = SearchSpace(SPACE)
    pool = create_search_space_pool(SPACE)
    assert len(space) == len(pool)
    assert space.keys == ("act", "hidden_size", "num_hidden_layers")
    for i, row in enumerate(pool):
        assert space.vector(i) == row
        assert space.point(i) == dict(zip(space.keys, row))
        assert space.index_of(row) == i
        assert space.index_of(space.point(i)) == i
    assert [space.point(i) for i in range(len(space))] == list(space)


# ---------------------------------------------------------------------- round trips
def test_indices_round_trip_and_bounds():
    space = SearchSpace(SPACE)
    assert space.indices(5) == [0, 2, 1]
    assert space.index_of_indices([0, 2, 1]) == 5
    with pytest.raises(IndexError):
        space.indices(12)
    with pytest.raises(IndexError):
        space.indices(-1)
    with pytest.raises(IndexError):
        space.index_of_indices([0, 3, 0])


def test_membership_and_unknown_values():
    space = SearchSpace(SPACE)
    assert {"act": "relu", "hidden_size": 256, "num_hidden_layers": 2} in space
    assert {"act": "relu", "hidden_size": 999, "num_hidden_layers": 2} not in space
    assert {"act": "relu"} not in space
    with pytest.raises(ValueError, match="999"):
        space.index_of({"act": "relu", "hidden_size": 999, "num_hidden_layers": 2})


@pytest.mark.parametrize("values", [[1, True], [0, False], [1, 1.0], [2, 0, 2.0]])
def test_values_equal_across_types_are_refused(values):
    """Optuna stores a categorical value as the index of the first equal choice: 1 and True (or 1.0)
    would be one stored value, and two different trained archs would read back the same."""
    from optuna.distributions import CategoricalDistribution

    dist = CategoricalDistribution(values)
    assert len({dist.to_internal_repr(v) for v in values}) < len(values)  # the collapse itself
    with pytest.raises(ConfigError, match=r"search_space\.flag: values must be distinct.*equal"):
        SearchSpace({"flag": values})


def test_values_of_other_types_that_differ_stay_distinct():
    space = SearchSpace({"flag": ["1", 1, None, "true", False]})
    assert len(space) == 5
    assert space.index_of({"flag": False}) == 4 and space.index_of({"flag": "1"}) == 0


def test_huge_space_is_lazy():
    space = SearchSpace({f"k{i}": list(range(10)) for i in range(9)})
    assert len(space) == 10**9
    last = space.point(10**9 - 1)
    assert set(last.values()) == {9}
    assert space.index_of(last) == 10**9 - 1
    assert space.index_of(space.point(123_456_789)) == 123_456_789


@pytest.mark.parametrize(
    "bad, field",
    [
        ({}, "search_space"),
        ({"a": []}, "search_space.a"),
        ({"a": "abc"}, "search_space.a"),
        ({"a": [1, 1]}, "search_space.a"),
        ({"a": [float("nan")]}, "search_space.a"),
        ({"a": [[1, 2]]}, "search_space.a"),
        ([1, 2], "search_space"),
    ],
)
def test_invalid_spaces_name_the_field(bad, field):
    with pytest.raises(ConfigError) as info:
        SearchSpace(bad)
    assert info.value.field == field


def test_space_module_imports_without_optuna():
    code = (
        "import sys; sys.modules['optuna'] = None\n"
        "from nas_distill.search.space import SearchSpace\n"
        "print(len(SearchSpace({'a': [1, 2], 'b': [3]})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"


def test_distributions_are_categorical_in_key_order():
    from optuna.distributions import CategoricalDistribution

    dists = SearchSpace(SPACE).distributions()
    assert list(dists) == ["act", "hidden_size", "num_hidden_layers"]
    assert dists["hidden_size"] == CategoricalDistribution([128, 256, 384])


# ---------------------------------------------------------------------- property tests
_values = st.one_of(
    st.lists(st.integers(-1000, 1000), min_size=1, max_size=5, unique=True),
    st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=5, unique=True),
)
_spaces = st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=6), _values, min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(space_dict=_spaces, data=st.data())
def test_property_index_point_round_trip(space_dict, data):
    space = SearchSpace(space_dict)
    index = data.draw(st.integers(0, len(space) - 1))
    point = space.point(index)
    assert sorted(point) == sorted(space_dict)
    assert all(point[k] in space_dict[k] for k in point)
    assert space.index_of(point) == index
    assert space.index_of_indices(space.indices(index)) == index
    assert space.vector(index) == [point[k] for k in space.keys]


@settings(max_examples=30, deadline=None)
@given(space_dict=_spaces)
def test_property_space_order_is_the_pool_order(space_dict):
    space = SearchSpace(space_dict)
    pool = create_search_space_pool(space_dict)
    assert len(space) == len(pool)
    assert [space.vector(i) for i in range(len(space))] == pool
