"""Accuracy of the shipped bounce classifier on labelled reply sets.

    .venv/bin/python bench/bounce_accuracy.py [FILE ...] [--misses]

Without FILEs: the labelled examples shipped in zonerelay/bounces/examples/ (what the rules
and the learned model are built from). Prints, per file, right categories and actions out of
the cases; ``--misses`` lists the replies classified wrongly (expected / got).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from zonerelay.bounces import classify

EXAMPLES = Path(__file__).resolve().parent.parent / "zonerelay" / "bounces" / "examples"


def main(argv: list[str]) -> int:
    show = "--misses" in argv
    files = [Path(a) for a in argv if not a.startswith("--")] or sorted(EXAMPLES.glob("*.toml"))
    for path in files:
        cases = tomllib.loads(path.read_text("utf-8"))["case"]
        cat_ok = act_ok = 0
        for case in cases:
            got = classify(case["reply"])
            cat_ok += got.category == case["category"]
            act_ok += got.action == case["action"]
            if show and (got.category, got.action) != (case["category"], case["action"]):
                expected = f"{case['category']}/{case['action']}"
                got_label = f"{got.category}/{got.action}"
                print(f"  [{case['provider']}] {expected} got {got_label}: {case['reply'][:300]!r}")
        n = len(cases)
        print(f"{path.name}: {n} cases, category {cat_ok}/{n} = {100 * cat_ok / n:.1f} %,"
              f" action {act_ok}/{n} = {100 * act_ok / n:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
