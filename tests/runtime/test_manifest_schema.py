"""The manifest's one schema (runtime/artifact/manifest.py's records, schema.py's rules) against a real
export: every value it reaches, damaged one at a time, is refused in one line naming that field with its
rule's words, or read; what the reader reads, the writer writes back the same; a record the reader would
refuse is never written; docs/manifest.md's table is the schema's. tests/cpp_runtime compares the C++
reader with these messages."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from manifest_mutations import complete_manifest, schema_mutations, schema_paths

from nemotron_deploy.runtime.artifact import schema
from nemotron_deploy.runtime.artifact.manifest import (
    MANIFEST,
    MANIFEST_FILE,
    ArtifactError,
    initial_state_shapes,
    read_manifest,
    to_json,
    write_manifest,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"


@pytest.fixture(scope="module")
def complete(artifacts, tmp_path_factory):
    """A copy of a tensorrt-target export (plugins in the graphs and the artifact) whose manifest has
    every optional part: (directory, manifest as a dict)."""
    _, _, artifact = artifacts("hybrid_moe_groups", target="tensorrt")
    copy = shutil.copytree(artifact, tmp_path_factory.mktemp("schema") / "artifact")
    raw = complete_manifest(json.loads((copy / MANIFEST_FILE).read_text()))
    (copy / MANIFEST_FILE).write_text(json.dumps(raw))
    return copy, raw


def test_the_complete_manifest_reaches_every_row_of_the_schema(complete):
    _, raw = complete
    reached = {row for _, row, _, _, _ in schema_paths(raw, MANIFEST)}
    assert [path for path, _, _ in schema.rows(MANIFEST) if path not in reached] == []


def test_every_damaged_value_is_one_line_naming_its_field(complete, tmp_path):
    copy, raw = complete
    damaged = shutil.copytree(copy, tmp_path / "damaged")
    file = damaged / MANIFEST_FILE
    refused = 0
    for name, rule, _, kind, mutated, value in schema_mutations(raw, MANIFEST):
        file.write_text(json.dumps(mutated))
        try:
            manifest = read_manifest(damaged)
        except ArtifactError as e:
            message = str(e)
            refused += 1
            assert "\n" not in message and message.startswith(f"{file}: field '"), (name, kind, message)
        else:
            initial_state_shapes(manifest, 2)  # what a backend reads first
            message = None
        if kind in ("delete", "null"):
            got = "missing" if kind == "delete" else "null"
            expected = None if rule.optional else f"{file}: field '{name}' is {got}, expected {rule.expected}"
            assert message == expected, (name, kind)
        elif rule.type is not None and not schema.JSON_TYPES[rule.type](value):
            assert message == f"{file}: field '{name}' is {schema.shown_json(value)}, expected {rule.expected}", (name, kind)
        elif kind == "negative" and rule.type in ("integer", "number") and rule.test is not None:
            assert message == f"{file}: field '{name}' is {value}, expected {rule.refused or rule.expected}", (name, kind)
        elif kind == "unknown" and rule.type == "string":  # no name, choice, digest or path rule takes "no/such/value"
            want = f"{file}: field '{name}' is {schema.shown_json(value)}, expected {rule.refused or rule.expected}"
            assert message == (None if rule.test is None else want), (name, kind)
    assert refused >= 300


def test_what_is_read_is_written_back_the_same(complete, tmp_path):
    copy, raw = complete
    manifest = read_manifest(copy)
    assert to_json(manifest) == raw
    moved = dataclasses.replace(manifest, path=tmp_path)
    assert json.loads(write_manifest(moved).read_text()) == raw


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m: dict(states=(dataclasses.replace(m.states[0], dtype="int3"),) + m.states[1:]), "field 'states[0].dtype' is \"int3\""),
        (lambda m: dict(files=(dataclasses.replace(m.files[0], name="../weights.data"),)), "field 'files[0].name' is \"../weights.data\""),
        (lambda m: dict(generation=dataclasses.replace(m.generation, top_p=1.5)), "field 'generation.top_p' is 1.5"),
    ],
    ids=["state dtype", "file outside the directory", "top_p"],
)
def test_a_record_the_reader_would_refuse_is_never_written(complete, tmp_path, change, message):
    manifest = dataclasses.replace(read_manifest(complete[0]), path=tmp_path)
    with pytest.raises(ArtifactError, match=re.escape(f"{tmp_path / MANIFEST_FILE}: {message}")):
        write_manifest(dataclasses.replace(manifest, **change(manifest)))
    assert not (tmp_path / MANIFEST_FILE).exists()


def doc_table() -> str:
    """docs/manifest.md's table as the schema makes it."""
    lines = ["| field | expected | may be missing or null | the C++ reader checks it |", "| --- | --- | --- | --- |"]
    for path, rule, cpp in schema.rows(MANIFEST):
        lines.append(f"| `{path}` | {rule.expected} | {'yes' if rule.optional else ''} | {'yes' if cpp else ''} |")
    return "\n".join(lines) + "\n"


def test_the_docs_table_is_the_schema():
    text = DOC.read_text()
    assert doc_table() in text, "docs/manifest.md's table differs from the schema; it should read:\n" + doc_table()
