"""The search space: an ordered Cartesian product of per-key value lists, indexed lazily.

The seed system materialised the whole product as a list (``create_search_space_pool``). That is kept
for compatibility, but nothing else needs it: :class:`SearchSpace` maps a flat index to a point and back
by mixed-radix arithmetic, so a space of 10**9 points costs a few lists of values, not 10**9 rows.

Order is the seed's: keys sorted, the last key varying fastest (``itertools.product`` order).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator, Mapping, Sequence

from ..errors import ConfigError

# Optuna's CategoricalDistribution accepts exactly these value types.
_ALLOWED_VALUE_TYPES = (bool, int, float, str, type(None))


class SearchSpace:
    """An immutable, lazily indexed search space.

    Args:
        search_space: mapping of architecture key -> non-empty list of candidate values.
        field: the config path used in error messages.
    """

    def __init__(self, search_space: Mapping[str, Sequence[Any]], field: str = "search_space"):
        if isinstance(search_space, SearchSpace):
            search_space = search_space.as_dict()
        if not isinstance(search_space, Mapping):
            raise ConfigError(field, f"expected a mapping of name -> list of values, got {search_space!r}")
        if not search_space:
            raise ConfigError(field, "expected at least one key, got an empty mapping")
        keys = sorted(search_space)
        values: list[tuple[Any, ...]] = []
        for key in keys:
            if not isinstance(key, str) or not key:
                raise ConfigError(field, f"keys must be non-empty strings, got {key!r}")
            raw = search_space[key]
            if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) == 0:
                raise ConfigError(f"{field}.{key}", f"expected a non-empty list, got {raw!r}")
            for value in raw:
                if not isinstance(value, _ALLOWED_VALUE_TYPES) or (
                    isinstance(value, float) and not math.isfinite(value)
                ):
                    raise ConfigError(
                        f"{field}.{key}",
                        f"values must be finite numbers, strings, booleans or null, got {value!r}",
                    )
            if len(set(raw)) != len(raw):
                # Equality, not identity of type: 1, 1.0 and True are one value to Optuna (a categorical
                # stores the index of the first equal choice), so two trained archs would read back alike.
                first: dict = {}
                for twice in raw:
                    if twice in first:
                        break
                    first[twice] = twice
                other = first[twice]
                shown = repr(list(raw)) if len(raw) <= 20 else f"{len(raw)} values"  # one short line
                same = f"{twice!r} twice" if _hashable(other) == _hashable(twice) else \
                    f"{other!r} and {twice!r}, which are equal (the study would store both as one value)"
                raise ConfigError(f"{field}.{key}", f"values must be distinct, got {same} in {shown}")
            values.append(tuple(raw))
        self._keys = tuple(keys)
        self._values = tuple(values)
        self._radices = tuple(len(v) for v in values)
        self._size = math.prod(self._radices)
        # Lookup tables value -> position, per key, for point -> index.
        self._positions = tuple({_hashable(v): i for i, v in enumerate(vals)} for vals in values)

    # ------------------------------------------------------------------ basic views
    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    @property
    def values(self) -> tuple[tuple[Any, ...], ...]:
        return self._values

    @property
    def radices(self) -> tuple[int, ...]:
        return self._radices

    def __len__(self) -> int:
        return self._size

    @property
    def size(self) -> int:
        return self._size

    def as_dict(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in zip(self._keys, self._values)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash((self._keys, self._values))

    def __repr__(self) -> str:
        return f"SearchSpace({self.as_dict()!r})"

    # ------------------------------------------------------------------ index <-> point
    def indices(self, index: int) -> list[int]:
        """Flat index -> per-key value positions (mixed radix, last key fastest)."""
        if not 0 <= index < self._size:
            raise IndexError(f"index {index} out of range for a space of {self._size} points")
        digits = [0] * len(self._radices)
        for pos in range(len(self._radices) - 1, -1, -1):
            index, digits[pos] = divmod(index, self._radices[pos])
        return digits

    def index_of_indices(self, indices: Sequence[int]) -> int:
        """Per-key value positions -> flat index."""
        if len(indices) != len(self._radices):
            raise ValueError(f"expected {len(self._radices)} positions, got {len(indices)}")
        index = 0
        for digit, radix in zip(indices, self._radices):
            if not 0 <= digit < radix:
                raise IndexError(f"position {digit} out of range for a key with {radix} values")
            index = index * radix + int(digit)
        return index

    def vector(self, index: int) -> list[Any]:
        """Flat index -> list of values in key order (one row of the seed's pool)."""
        return [vals[d] for vals, d in zip(self._values, self.indices(index))]

    def point(self, index: int) -> dict[str, Any]:
        """Flat index -> architecture dict."""
        return dict(zip(self._keys, self.vector(index)))

    def index_of(self, point: Mapping[str, Any] | Sequence[Any]) -> int:
        """Architecture dict (or value vector in key order) -> flat index.

        Raises ``KeyError`` / ``ValueError`` when the point is not in the space.
        """
        if isinstance(point, Mapping):
            missing = [k for k in self._keys if k not in point]
            if missing:
                raise KeyError(f"point lacks keys {missing}")
            vector = [point[k] for k in self._keys]
        else:
            vector = list(point)
            if len(vector) != len(self._keys):
                raise ValueError(f"expected {len(self._keys)} values, got {len(vector)}")
        digits = []
        for key, table, value in zip(self._keys, self._positions, vector):
            try:
                digits.append(table[_hashable(value)])
            except (KeyError, TypeError):
                raise ValueError(f"{value!r} is not a value of {key!r}") from None
        return self.index_of_indices(digits)

    def __contains__(self, point: object) -> bool:
        try:
            self.index_of(point)  # type: ignore[arg-type]
        except (KeyError, ValueError, TypeError):
            return False
        return True

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for vector in itertools.product(*self._values):
            yield dict(zip(self._keys, vector))

    def distributions(self):
        """Optuna CategoricalDistribution per key, so a trial's params are exactly the arch dict."""
        from optuna.distributions import CategoricalDistribution

        return {k: CategoricalDistribution(list(v)) for k, v in zip(self._keys, self._values)}


def _hashable(value: Any) -> Any:
    # 1 == 1.0 == True in Python; keep them apart so [1, True] is two distinct values.
    return (type(value).__name__, value)


def create_search_space_pool(search_space: Mapping[str, Sequence[Any]], idx: int = 0) -> list[list[Any]]:
    """Seed API: the Cartesian product of the space as a list of value lists, keys sorted.

    ``idx`` is the position of the key to start from in the sorted key list (the seed recursed with it);
    ``create_search_space_pool(space)`` is the whole pool. This materialises the product: prefer
    :class:`SearchSpace` for anything large.
    """
    space = SearchSpace(search_space)
    if not 0 <= idx <= len(space.keys):
        raise ValueError(f"idx must be between 0 and {len(space.keys)}, got {idx}")
    tail = space.values[idx:]
    return [list(row) for row in itertools.product(*tail)]
