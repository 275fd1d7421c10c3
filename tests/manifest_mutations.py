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
            parent[key] = "x" if not isinstance(parent[key], str) else 7
        else:
            parent[key] = -abs(parent[key]) - 1 if isinstance(parent[key], (int, float)) and not isinstance(parent[key], bool) else -1
        yield f"{kind} {'.'.join(map(str, path))}", mutated


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
