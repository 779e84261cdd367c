"""Accuracy of the shipped bounce classifier on labelled reply sets.

    .venv/bin/python bench/bounce_accuracy.py [FILE ...] [--misses]

Without FILEs: the labelled examples shipped in zonerelay/bounces/examples/ (what the rules
and the learned model are built from). Prints, per file, right categories and actions out of
the cases, the same for the issue's named providers alone and for the rules alone (without
the learned model), then the total over all files; ``--misses`` lists the replies classified
wrongly (expected / got). For a natural sample, whose cases say whether they were ``seen`` (a
copy of an example), it also prints the seen and the new cases apart, and each text counted once.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

from zonerelay.bounces.classify import Classifier

EXAMPLES = Path(__file__).resolve().parent.parent / "zonerelay" / "bounces" / "examples"
#: the providers issue #10 names (Outlook.com, AOL, 1&1 and UCEPROTECT as their own names)
NAMED = frozenset({
    "gmail", "microsoft", "outlook.com", "yahoo", "aol", "icloud", "gmx", "web.de", "1und1", "mail.ru",
    "yandex", "proofpoint", "mimecast", "barracuda", "spamhaus", "spamcop", "uceprotect", "postfix", "exim",
    "sendmail", "exchange",
})  # fmt: skip


def score(classifier: Classifier, cases: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(right categories, right actions, cases)."""
    cat_ok = act_ok = 0
    for case in cases:
        got = classifier.classify(case["reply"])
        cat_ok += got.category == case["category"]
        act_ok += got.action == case["action"]
    return cat_ok, act_ok, len(cases)


def misses(classifier: Classifier, cases: list[dict[str, Any]]) -> list[str]:
    """One line per reply classified wrongly: provider, expected and got, the reply's start."""
    lines = []
    for case in cases:
        got = classifier.classify(case["reply"])
        if (got.category, got.action) != (case["category"], case["action"]):
            expected = f"{case['category']}/{case['action']}"
            lines.append(f"  [{case['provider']}] {expected} got {got.category}/{got.action}:"
                         f" {case['reply'][:300]!r}")  # fmt: skip
    return lines


def line(label: str, result: tuple[int, int, int]) -> str:
    cat_ok, act_ok, n = result
    if not n:
        return f"{label}: no cases"
    return (f"{label}: {n} cases, category {cat_ok}/{n} = {100 * cat_ok / n:.1f} %,"
            f" action {act_ok}/{n} = {100 * act_ok / n:.1f} %")  # fmt: skip


def main(argv: list[str]) -> int:
    show = "--misses" in argv
    files = [Path(a) for a in argv if not a.startswith("--")] or sorted(EXAMPLES.glob("*.toml"))
    full, rules = Classifier(), Classifier(learned=False)
    every: list[dict[str, Any]] = []
    for path in files:
        cases = tomllib.loads(path.read_text("utf-8"))["case"]
        every += cases
        if show:
            for miss in misses(full, cases):
                print(miss)
        print(line(path.name, score(full, cases)))
        print(line("  named providers", score(full, [c for c in cases if c["provider"] in NAMED])))
        print(line("  rules alone", score(rules, cases)))
        if any("seen" in c for c in cases):  # a natural sample (tests/data/bounce_natural*.toml)
            print(line("  seen (copies of examples)", score(full, [c for c in cases if c["seen"]])))
            print(line("  new", score(full, [c for c in cases if not c["seen"]])))
            distinct = list({c["reply"]: c for c in cases}.values())
            print(line("  each text once", score(full, distinct)))
            print(line("  each new text once", score(full, [c for c in distinct if not c["seen"]])))
    if len(files) > 1:
        print(line("all files", score(full, every)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
