"""The dynamic group expression language and the static group tree."""

from __future__ import annotations

import re

import pytest

from otaflow.domain.devices import DeviceState
from otaflow.domain.groups import (
    Group,
    GroupExpressionError,
    GroupRegistry,
    compile_expression,
    parse_expression,
)


def device(
    name: str = "abc-1",
    pk: str = "pk1",
    modules: dict[str, str] | None = None,
    province: str | None = None,
    city: str | None = None,
    groups: tuple[str, ...] = (),
) -> DeviceState:
    return DeviceState(
        pk, name, modules=dict(modules or {}), province=province, city=city, groups=list(groups)
    )


def holds(expression: str, state: DeviceState) -> bool:
    return compile_expression(expression)(state)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("product_key = 'pk1'", True),
        ('product_key = "pk1"', True),
        ("product_key = 'pk2'", False),
        ("product_key != 'pk2'", True),
        ("product_key <> 'pk1'", False),
        ("name like 'abc%'", True),
        ("device_name LIKE 'abc%'", True),
        ("name like 'ab_-1'", True),
        ("name like 'ab_-'", False),
        ("name not like 'x%'", True),
        ("name like 'ABC%'", False),  # values are case-sensitive
        ("province = 'Zhejiang' and city = 'Hangzhou'", True),
        ("province = 'Zhejiang' and city = 'Ningbo'", False),
        ("province = 'Jiangsu' or city = 'Hangzhou'", True),
        ("not province = 'Jiangsu'", True),
        ("NOT (province = 'Zhejiang')", False),
        ("city in ('Ningbo', 'Hangzhou')", True),
        ("city not in ('Ningbo', 'Hangzhou')", False),
        ("group_id = 'g1'", True),
        ("group_id = 'g9'", False),
        ("group_id != 'g9'", True),
        ("group_id not in ('g1')", False),
        ("group_id like 'g%'", True),
        ("ota_module.name = 'mcu' AND ota_module.version = '1.0'", True),
        ("ota_module.name = 'mcu' AND ota_module.version = '2.0'", False),
        ("ota_module.version = '2.0'", True),
        ("ota_module.name = 'wifi'", False),
        (
            "product_key = 'pk1' and (ota_module.name = 'default' and ota_module.version = '2.0')",
            True,
        ),
        ("(product_key = 'pk1' or product_key = 'pk2') and name like '%-1'", True),
        ("product_key = 'pk1' and name = 'x' or city = 'Hangzhou'", True),  # AND binds tighter
        ("product_key = 'pk1' and (name = 'x' or city = 'Ningbo')", False),
        ("name = 'it\\'s'", False),
        ("province = 'Zhejiang' AND ota_module.version = 1.0", True),  # bare numbers as text
    ],
)
def test_expression_over_a_device(expression: str, expected: bool) -> None:
    state = device(
        modules={"mcu": "1.0", "default": "2.0"},
        province="Zhejiang",
        city="Hangzhou",
        groups=("g1",),
    )
    assert holds(expression, state) is expected


def test_module_tests_joined_by_and_bind_to_one_module() -> None:
    # mcu is on 1.0 and another module is named 'default' on 2.0: "mcu on 2.0" is false
    # even though some module is mcu and some module is on 2.0.
    state = device(modules={"mcu": "1.0", "default": "2.0"})
    assert not holds("ota_module.name = 'mcu' and ota_module.version = '2.0'", state)
    assert holds("ota_module.name = 'mcu' or ota_module.version = '2.0'", state)
    assert holds("ota_module.name = 'mcu' and not ota_module.version = '2.0'", state) is False


def test_a_device_without_modules_or_region_matches_no_test_on_them() -> None:
    state = device()
    assert not holds("ota_module.version = '1.0'", state)
    assert not holds("province != 'Zhejiang'", state)
    assert not holds("city like '%'", state)
    assert holds("not city = 'Ningbo'", state)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty"),
        ("status = 'ONLINE'", "unsupported field 'status'"),
        ("name > 'a'", "ordering comparison"),
        ("name = ", "expected a quoted value"),
        ("name = 'a' and", "expected a field name"),
        ("(name = 'a'", "expected ')'"),
        ("name like abc", "LIKE takes a quoted pattern"),
        ("name in 'a'", "parenthesised list"),
        ("name = 'a' name = 'b'", "expected AND, OR"),
        ("name = 'a' ; drop", "unexpected character ';'"),
        ("name = 'unterminated", "unexpected character"),
    ],
)
def test_invalid_expressions_are_refused_with_the_reason(expression: str, message: str) -> None:
    with pytest.raises(GroupExpressionError, match=re.escape(message)):
        parse_expression(expression)


def test_keywords_are_case_insensitive_and_fields_too() -> None:
    state = device(province="Zhejiang")
    assert holds("PROVINCE = 'Zhejiang' AnD NoT Name LiKe 'x%'", state)


def test_registry_static_subtree_is_transitive_and_survives_cycles() -> None:
    groups = GroupRegistry()
    for gid, parent in [("root", None), ("a", "root"), ("b", "a"), ("c", "b"), ("other", None)]:
        groups.put(Group(gid, "STATIC", parent_id=parent))
    assert groups.subtree("root") == {"root", "a", "b", "c"}
    assert groups.subtree("b") == {"b", "c"}
    # A subgroup moved elsewhere leaves its old parent's tree.
    groups.put(Group("b", "STATIC", parent_id="other"))
    assert groups.subtree("root") == {"root", "a"}
    assert groups.subtree("other") == {"other", "b", "c"}
    # A cycle (never created by the control plane) does not hang.
    groups.put(Group("other", "STATIC", parent_id="c"))
    assert groups.subtree("b") == {"b", "c", "other"}


def test_registry_dynamic_membership_invalid_and_deleted_groups_match_nobody() -> None:
    groups = GroupRegistry()
    state = device(province="Zhejiang")
    record = {"group_id": "dg", "group_type": "DYNAMIC", "expression": "province = 'Zhejiang'"}
    groups.put(Group.from_control(record))
    assert groups.is_member("dg", state)
    bad = Group.from_control({**record, "expression": "province >= 'A'"})
    groups.put(bad)
    assert bad.error is not None and "ordering" in bad.error
    assert not groups.is_member("dg", state)
    groups.put(Group.from_control({**record, "deleted": True}))
    assert not groups.is_member("dg", state)
    assert not groups.is_member("unknown", state)
