"""The manifest's schema, declared once: each record field carries the rule its JSON value must keep.

A `Rule` says which JSON value a field holds and, for the message a damaged manifest gets, what was
expected. `check` walks a rule over parsed JSON and raises one line naming the field,

    FILE: field 'states[2].shape[0]' is ["x"], expected 'batch'

and `load` builds the records from JSON that `check` accepted. The records in manifest.py declare
their fields with `checked(rule)`. The C++ reader (runtime/cpp/src/manifest.cpp) checks the fields it
reads (`Rule.cpp`) with the same messages: tests/cpp_runtime/test_cpp_runtime.py damages every field
this schema reaches in a real manifest and asserts both readers say the same line, and
docs/step-contract.md's manifest table is checked against `rows`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# JSON's types, as Python holds them after json.loads (a bool is not an integer in JSON)
JSON_TYPES: dict[str | None, Callable[[Any], bool]] = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    None: lambda v: True,  # any value
}


@dataclass(frozen=True)
class Rule:
    """One JSON value: its type, what a message says was expected, and what must hold past the type."""

    type: str | None  # a key of JSON_TYPES
    expected: str  # "an integer >= 1": the message's last words when the value is missing or of another type
    optional: bool = False  # may be missing or null
    test: Callable[[Any], bool] | None = None  # what must hold past the type (after items and fields)
    refused: str | None = None  # expected, when `test` fails (default: `expected`)
    at: str = ""  # where a failed `test` is reported, below this value ("[0]": states' first dim)
    shown: Callable[[Any], Any] | None = None  # the value a failed `test` shows (default: the value)
    items: Rule | None = None  # an array's items
    fields: Mapping[str, Rule] | None = None  # an object's checked keys (other keys pass)
    values: Rule | None = None  # every value of an object used as a map
    keys: tuple[str, ...] = ()  # keys that map must have
    record: type | None = None  # the record class this object loads as
    cpp: bool = False  # the C++ reader checks this value too, with the same message


class SchemaError(Exception):
    """A value refused by its rule: `field` (e.g. "graphs.prefill.file") and the message's words."""

    def __init__(self, field: str, expected: str, value: Any = ...):
        self.field, self.expected, self.value = field, expected, value
        got = "missing" if value is ... else shown_json(value)
        super().__init__(f"field '{field}' is {got}, expected {expected}")


def shown_json(value: Any) -> str:
    """A value as a message shows it: compact JSON cut at 60 characters (as nlohmann::json::dump in C++)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)[:60]


# ------------------------------------------------------------------------------------------ declaring
def checked(rule: Rule, omit_none: bool = False, **field_args) -> Any:
    """A dataclass field with its JSON rule; `omit_none`: left out of the JSON when None or empty."""
    return dataclasses.field(metadata={"rule": rule, "omit_none": omit_none}, **field_args)


def record_fields(cls: type) -> dict[str, Rule]:
    """The rules of a record class's JSON fields, in field order (a field without a rule is not JSON)."""
    return {f.name: f.metadata["rule"] for f in dataclasses.fields(cls) if "rule" in f.metadata}


def record(cls: type, expected: str = "an object", optional: bool = False, cpp: bool = False) -> Rule:
    """An object loaded as `cls`, checked by its fields' rules."""
    return Rule("object", expected, optional=optional, fields=record_fields(cls), record=cls, cpp=cpp)


def integer(expected: str, minimum: int | None = None, refused: str | None = None, **kw) -> Rule:
    test = None if minimum is None else (lambda v: v >= minimum)
    return Rule("integer", expected, test=test, refused=refused, **kw)


def string(expected: str, **kw) -> Rule:
    return Rule("string", expected, **kw)


def one_of(choices: tuple[str, ...], **kw) -> Rule:
    expected = f"one of {', '.join(choices)}"
    return Rule("string", expected, test=lambda v: v in choices, **kw)


def array(expected: str, items: Rule | None = None, **kw) -> Rule:
    return Rule("array", expected, items=items, **kw)


def objects(item: type, expected: str = "a list", cpp: bool = False, **kw) -> Rule:
    """A list of records of class `item`."""
    return Rule("array", expected, items=record(item, cpp=cpp), cpp=cpp, **kw)


def obj(expected: str, fields: Mapping[str, Rule] | None = None, **kw) -> Rule:
    return Rule("object", expected, fields=fields, **kw)


# ------------------------------------------------------------------------------------------ checking
def check(value: Any, rule: Rule, where: str = "") -> None:
    """Raise SchemaError for the first value of `value` that `rule` refuses."""
    if not JSON_TYPES[rule.type](value):
        raise SchemaError(where, rule.expected, value)
    if rule.items is not None:
        for i, item in enumerate(value):
            _check_present(item, rule.items, f"{where}[{i}]")
    for key, field_rule in (rule.fields or {}).items():
        _check_key(value, key, field_rule, _join(where, key))
    if rule.values is not None:
        for key in rule.keys:
            _check_key(value, key, rule.values, _join(where, key))
        for key, item in value.items():
            _check_present(item, rule.values, _join(where, key))
    if rule.test is not None and not rule.test(value):
        raise SchemaError(where + rule.at, rule.refused or rule.expected, rule.shown(value) if rule.shown else value)


def _check_key(obj: dict, key: str, rule: Rule, where: str) -> None:
    if key not in obj:
        if not rule.optional:
            raise SchemaError(where, rule.expected)
        return
    _check_present(obj[key], rule, where)


def _check_present(value: Any, rule: Rule, where: str) -> None:
    if value is None and rule.optional:
        return
    check(value, rule, where)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# ------------------------------------------------------------------------------------------ loading
def load(cls: type, raw: dict, **given) -> Any:
    """A record of class `cls` from JSON that `check` accepted: nested records built, arrays as tuples,
    a missing or null field at its default (None without one). `given` fields are passed as they are."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in given or "rule" not in f.metadata:
            continue
        value = raw.get(f.name)
        if value is None:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                values[f.name] = None
            continue
        values[f.name] = _load(value, f.metadata["rule"])
    return cls(**values, **given)


def _load(value: Any, rule: Rule) -> Any:
    if value is None:
        return None
    if rule.record is not None:
        return load(rule.record, value)
    if rule.type == "array":
        return tuple(value if rule.items is None else [_load(item, rule.items) for item in value])
    if rule.values is not None:
        return {key: _load(item, rule.values) for key, item in value.items()}
    return value


# ------------------------------------------------------------------------------------------ writing
def to_json(record: Any) -> Any:
    """A record as JSON values: its JSON fields in order, `omit_none` ones only when set."""
    if dataclasses.is_dataclass(record):
        out = {}
        for f in dataclasses.fields(record):
            value = getattr(record, f.name)
            if "rule" in f.metadata and not (f.metadata["omit_none"] and (value is None or value == {})):
                out[f.name] = to_json(value)
        return out
    if isinstance(record, (list, tuple)):
        return [to_json(item) for item in record]
    if isinstance(record, dict):
        return {key: to_json(value) for key, value in record.items()}
    return record


# ------------------------------------------------------------------------------------------ reading it
def rows(rule: Rule, where: str = "", cpp: bool = True) -> Iterator[tuple[str, Rule, bool]]:
    """Every value below `rule` as (path, rule, whether the C++ reader checks it), depth first: list items
    as `[]` and map values as `.*`, e.g. ("states[].shape", rule, True). The C++ reader checks a value
    when its rule and every rule above it say `cpp`."""
    for key, field_rule in (rule.fields or {}).items():
        yield from _rows_of(field_rule, _join(where, key), cpp)
    if rule.items is not None:
        yield from _rows_of(rule.items, f"{where}[]", cpp)
    if rule.values is not None:
        yield from _rows_of(rule.values, _join(where, "*"), cpp)


def _rows_of(rule: Rule, where: str, cpp: bool) -> Iterator[tuple[str, Rule, bool]]:
    yield where, rule, cpp and rule.cpp
    yield from rows(rule, where, cpp and rule.cpp)
