"""Deep merge: upstream's rules, purity, and the algebra those rules give."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.config.merge import merge, merge_all

# ---------------------------------------------------------------- the rules, one by one


def test_maps_merge_recursively_and_later_scalars_win() -> None:
    base = {"install": {"device": "/dev/sda", "auto": False}, "name": "a"}
    overlay = {"install": {"auto": True, "reboot": True}, "name": "b"}
    assert merge(base, overlay) == {
        "install": {"device": "/dev/sda", "auto": True, "reboot": True},
        "name": "b",
    }


def test_lists_of_maps_are_concatenated() -> None:
    a = {"users": [{"name": "kairos"}], "stages": {"boot": [{"commands": ["a"]}]}}
    b = {"users": [{"name": "kairos"}], "stages": {"boot": [{"commands": ["b"]}]}}
    out = merge(a, b)
    assert out["users"] == [{"name": "kairos"}, {"name": "kairos"}]
    # Stages are never overwritten: both definitions run.
    assert out["stages"]["boot"] == [{"commands": ["a"]}, {"commands": ["b"]}]


def test_lists_of_scalars_are_unioned_in_order() -> None:
    assert merge({"g": ["a", "b"]}, {"g": ["c", "a", "d", "c"]}) == {"g": ["a", "b", "c", "d"]}


def test_union_keeps_types_apart() -> None:
    # `1` and `true` are different YAML values even though Python says 1 == True.
    assert merge([1, "1"], [True, 1.5, 1]) == [1, "1", True, 1.5]


def test_empty_base_list_takes_the_overlay() -> None:
    assert merge({"x": []}, {"x": [{"a": 1}]}) == {"x": [{"a": 1}]}


def test_kind_of_first_item_decides_like_upstream() -> None:
    assert merge([{"a": 1}], ["x"]) == [{"a": 1}, "x"]
    assert merge(["x"], ["x", {"a": 1}]) == ["x", {"a": 1}]


def test_null_overlay_clears_to_the_empty_value() -> None:
    base = {"users": [{"name": "a"}], "install": {"device": "/dev/sda"}, "name": "n"}
    assert merge(base, {"users": None, "install": None, "name": None}) == {
        "users": [],
        "install": {},
        "name": None,
    }


def test_different_kinds_are_replaced_by_the_later() -> None:
    assert merge({"k3s": {"enabled": True}}, {"k3s": "off"}) == {"k3s": "off"}
    assert merge({"a": "x"}, {"a": ["y"]}) == {"a": ["y"]}


def test_none_base_takes_overlay() -> None:
    assert merge(None, {"a": 1}) == {"a": 1}


def test_merge_all_ignores_non_maps_and_keeps_order() -> None:
    assert merge_all([{"a": 1}, None, ["x"], {"a": 2, "b": [1]}, {"b": [2]}]) == {
        "a": 2,
        "b": [1, 2],
    }


def test_result_shares_nothing_with_inputs() -> None:
    base = {"a": {"b": [1]}, "l": [{"x": 1}]}
    overlay = {"a": {"c": [2]}, "l": [{"y": 2}]}
    out = merge(base, overlay)
    out["a"]["b"].append(99)
    out["l"][0]["x"] = 42
    out["l"][1]["y"] = 42
    assert base == {"a": {"b": [1]}, "l": [{"x": 1}]}
    assert overlay == {"a": {"c": [2]}, "l": [{"y": 2}]}


# ---------------------------------------------------------------- properties

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_keys = st.text(alphabet="abcdefgh-_", min_size=1, max_size=4)
_any_config = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=25,
)

# Maps and lists of scalars only: the part of the language where merging a config with
# itself must change nothing (lists of maps concatenate, so they double, as upstream).
_idempotent_config = st.recursive(
    _scalars,
    lambda inner: st.lists(_scalars, max_size=5) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=25,
)


@given(_any_config, _any_config)
def test_merge_never_mutates_its_inputs(a: Any, b: Any) -> None:
    a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
    merge(a, b)
    assert a == a0
    assert b == b0


@given(_idempotent_config)
def test_merging_a_config_with_itself_changes_nothing(a: Any) -> None:
    assert merge(a, a) == a


@given(st.dictionaries(_keys, _scalars), st.dictionaries(_keys, _scalars))
def test_flat_maps_later_wins(a: dict[str, Any], b: dict[str, Any]) -> None:
    out = merge(a, b)
    assert set(out) == set(a) | set(b)
    for key, value in b.items():
        assert out[key] == value


# "Same shape": one schema, three configs that follow it. Lists are homogeneous (all maps
# of one shape, or all scalars of one type) and there are no nulls: upstream's rules are
# associative there. (With mixed kinds they are not, upstream's included.)
_scalar_kinds = st.sampled_from(["int", "str", "bool"])


def _shapes() -> st.SearchStrategy[Any]:
    return st.recursive(
        _scalar_kinds,
        lambda inner: (
            st.tuples(st.just("list"), inner)
            | st.tuples(st.just("map"), st.dictionaries(_keys, inner, min_size=1, max_size=3))
        ),
        max_leaves=8,
    )


def _value_of(shape: Any) -> st.SearchStrategy[Any]:
    if shape == "int":
        return st.integers(0, 5)
    if shape == "str":
        return st.sampled_from(["a", "b", "c", "d"])
    if shape == "bool":
        return st.booleans()
    kind, inner = shape
    if kind == "list":
        return st.lists(_value_of(inner), max_size=3)
    return st.fixed_dictionaries({}, optional={k: _value_of(v) for k, v in inner.items()})


@st.composite
def _three_of_one_shape(draw: st.DrawFn) -> tuple[Any, Any, Any]:
    shape = draw(_shapes())
    value = _value_of(shape)
    return draw(value), draw(value), draw(value)


@settings(max_examples=300)
@given(_three_of_one_shape())
def test_merge_is_associative_for_configs_of_one_shape(abc: tuple[Any, Any, Any]) -> None:
    a, b, c = abc
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@given(st.lists(st.dictionaries(_keys, _idempotent_config, max_size=3), max_size=5))
def test_merge_all_is_a_left_fold_of_merge(configs: list[dict[str, Any]]) -> None:
    expected: dict[str, Any] = {}
    for config in configs:
        expected = merge(expected, config)
    assert merge_all(configs) == expected
