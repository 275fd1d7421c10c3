"""Single-field damage to a manifest, shared by the Python and C++ manifest tests."""

import json


def manifest_mutations(raw, rng, count):
    """`count` single-field mutations of a manifest: delete, null, wrong type, negative number."""
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append(path + (k,))
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append(path + (i,))
                walk(v, path + (i,))

    walk(raw, ())
    for _ in range(count):
        path = rng.choice(paths)
        kind = rng.choice(["delete", "null", "type", "negative"])
        yield f"{kind} {'.'.join(map(str, path))}", mutate(raw, path, kind)


def damaged_copies(artifact, tmp_path, seed, count):
    """A copy of `artifact` whose manifest.json is rewritten with each mutation in turn:
    yields (description, copy directory, the original manifest as a dict)."""
    import random
    import shutil

    copy = shutil.copytree(artifact, tmp_path / "damaged")
    raw = json.loads((copy / "manifest.json").read_text())
    for what, mutated in manifest_mutations(raw, random.Random(seed), count):
        (copy / "manifest.json").write_text(json.dumps(mutated))
        yield what, copy, raw


def schema_paths(raw, rule, path=(), pattern="", cpp=True):
    """(path, pattern, rule, whether the C++ reader checks it, whether it is a key a reader looks up) of every value of `raw` the manifest schema
    reaches, depth first; a list's first item only. A path is a tuple of keys and list indices; a
    pattern names the schema's row (schema.rows): "states[].shape", "engines.*.version"."""
    children = []
    if rule.fields and isinstance(raw, dict):
        children += [(key, f"{pattern}.{key}" if pattern else key, sub, True) for key, sub in rule.fields.items() if key in raw]
    if rule.items is not None and isinstance(raw, list) and raw:
        children.append((0, f"{pattern}[]", rule.items, False))  # a shorter list is valid
    if rule.values is not None and isinstance(raw, dict):
        children += [(key, f"{pattern}.*", rule.values, key in rule.keys) for key in raw]  # a map without it, unless required
    for key, row, sub, looked_up in children:
        checked = cpp and sub.cpp
        yield path + (key,), row, sub, checked, looked_up
        if raw[key] is not None:
            yield from schema_paths(raw[key], sub, path + (key,), row, checked)


def field_name(path):
    """("states", 0, "shape") -> "states[0].shape", as the readers' messages name fields."""
    name = ""
    for key in path:
        name += f"[{key}]" if isinstance(key, int) else (f".{key}" if name else key)
    return name


def mutate(raw, path, kind):
    """A copy of `raw` with the value at `path` deleted, made null, of another type, an unknown string or negative."""
    mutated = json.loads(json.dumps(raw))
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if kind == "delete":
        del parent[key]
    elif kind == "null":
        parent[key] = None
    elif kind == "type":
        parent[key] = 7 if isinstance(parent[key], str) else "x"
    elif kind == "unknown":
        parent[key] = "no/such/value"
    else:
        value = parent[key]
        parent[key] = -abs(value) - 1 if isinstance(value, (int, float)) and not isinstance(value, bool) else -1
    return mutated


def schema_mutations(raw, rule):
    """Every single-value damage of `raw` at a path the schema reaches: (field name, rule, C++ checks it,
    kind, mutated manifest, the damaged value: None where deleted). Only keys a reader looks up are
    deleted: list items and a map's optional entries are replaced (a shorter list, or a map without that
    entry, is valid)."""
    for path, _, sub, cpp, looked_up in schema_paths(raw, rule):
        for kind in ("delete", "null", "type", "unknown", "negative"):
            if (kind == "delete" and not looked_up) or (kind == "unknown" and not isinstance(_at(raw, path), str)):
                continue
            mutated = mutate(raw, path, kind)
            yield field_name(path), sub, cpp, kind, mutated, None if kind == "delete" else _at(mutated, path)


def _at(raw, path):
    for key in path:
        raw = raw[key]
    return raw


def engine_record(**fields) -> dict:
    """An engine record as `nemotron-deploy build` writes it into the manifest (exporter/engine_build.py),
    for artifacts whose engines cannot be built here (no GPU); `fields` replace its values."""
    graphs = {
        graph: {"file": f"{graph}.plan", "bytes": 0, "profile": {"input_ids": [[1, 1], [1, 8], [2, 16]]}} for graph in ("prefill", "decode")
    }
    record = dict(
        version="10.14.1",
        precision="float32",
        compute_capability="native",
        built_on="90",
        max_batch=4,
        max_seq_len=256,
        max_new_tokens=128,
        plugins=None,
        graphs=graphs,
    )
    return record | fields


def complete_manifest(raw):
    """`raw` (a real export's manifest) with every optional part the schema has that an export of a random
    checkpoint leaves out: an engine record with its plugin library, a quantization record, a tokenizer and
    the checkpoint's sampling defaults; so that damaging each reachable value covers the whole schema."""
    plugins = [dict(plugin, nodes=plugin.get("nodes") or 1) for plugin in raw.get("plugins") or []]  # a count, as the graphs' lists have
    engine = engine_record(precision="float16", plugins={"library": "/opt/libnemotron_deploy_plugins.so", "plugins": plugins})
    generation = dict(temperature=0.6, top_k=20, top_p=0.95, do_sample=True, max_new_tokens=32, bos_token_id=1, pad_token_id=0)
    return dict(
        raw,
        plugins=plugins,
        requires={"onnxruntime": "1.32", **(raw.get("requires") or {})},
        engines={"tensorrt": engine},
        quantization={"method": "block-wise weight-only RTN, symmetric", "bits": 4, "block_size": 32},
        tokenizer=raw.get("tokenizer") or {"file": "tokenizer.json"},
        generation={**generation, **{k: v for k, v in (raw.get("generation") or {}).items() if v is not None}},
    )
