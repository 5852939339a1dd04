"""Does the JSON layout steer the model? Three dataclass-typed queries with a `tags: list[str]` field, under three layouts.

Run:  python bench/json_layout.py [LAYOUT ...]     (layouts: compact, optional, fixed; default all)

For each layout (the separator after "," and ":" between members: none, an optional space, the
space json.dumps writes, which is lmql_lite's), each query's value, forward passes and forced
tokens on the default model (docs/performance.md, "JSON layout"). The other layouts are made by
replacing the JSON compiler's separator for this process only.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets sys.path, HF_HUB_OFFLINE)


@dataclass
class Person:
    name: str
    age: int
    tags: list[str]


@dataclass
class Book:
    title: str
    author: str
    year: int
    tags: list[str]


QUERIES = {
    "person": '''argmax
    "Write a JSON record for a fictional software engineer who loves hiking and chess, with a name, an age and a list of tags for her hobbies.\\n"
    "[P: Person]"
    return P
''',
    "book": '''argmax
    "A JSON record for the novel Dune by Frank Herbert (1965), with tags for its genres:\\n"
    "[B: Book]"
    return B
''',
    "chat": '''argmax
    "{:user}Give a JSON object for a fictional person: name, age, and tags (a list of three hobbies).{:assistant}"
    "[P: Person]"
    return P
''',
}


def main() -> int:
    from lmql_lite import api
    from lmql_lite.constraints import json_schema
    fixed = json_schema._Compiler.separator
    layouts = {
        "compact": lambda self, mark: self.nfa.literal(mark),
        "optional": lambda self, mark: self.nfa.either([self.nfa.literal(mark), self.nfa.literal(mark + b" ")]),
        "fixed": fixed,
    }
    model = common.default_model()
    for layout in sys.argv[1:] or list(layouts):
        json_schema._Compiler.separator = layouts[layout]
        json_schema._language.cache_clear()
        for name, query in QUERIES.items():
            r = api.run_compiled(api.load(query), {}, model=model, scope={"Person": Person, "Book": Book})
            print(f"{layout:9} {name:7} passes={r.trace.forward_passes:4} forced={r.trace.forced_tokens:3}  {r.value!r}",
                  flush=True)
    json_schema._Compiler.separator = fixed
    return 0


if __name__ == "__main__":
    sys.exit(main())
