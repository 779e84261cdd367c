"""The lead's side of a natural sample (tests/data/NATURAL_SAMPLE.md; docs/bounces.md).

    .venv/bin/python bench/natural_sample.py skip DIR      # DIR/skip_urls.txt: pages taken before
    .venv/bin/python bench/natural_sample.py merge DIR     # DIR/part_*.toml -> DIR/merged.json
    .venv/bin/python bench/natural_sample.py blind DIR     # DIR/blind_in.json for a re-labeller
    .venv/bin/python bench/natural_sample.py compare DIR   # DIR/blind_labels.json vs merged.json
    .venv/bin/python bench/natural_sample.py write DIR N   # tests/data/bounce_naturalN.toml
    .venv/bin/python bench/natural_sample.py holdout N M   # examples/bounce_holdoutM.toml

``write`` puts DIR/header.txt on top; ``holdout`` takes naturalN's new texts.

``merge`` shows no reply text: it keeps every case except a repeat of the same text on the same
page, and marks a case ``seen`` when it is a copy or near copy (difflib ratio > 0.9) of an
example shipped now, so that the sample's new texts can be read apart. ``compare`` prints only
the cases the re-labeller labelled otherwise, for the lead's ruling (edit merged.json) before
``write``; the written file is committed ("Freeze naturalN: ...") before
``bench/bounce_accuracy.py`` reads it. ``holdout`` writes the sample's new texts, each once,
without a header: add one saying where they came from and how they measured.
"""

from __future__ import annotations

import collections
import difflib
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "zonerelay" / "bounces" / "examples"
DATA = ROOT / "tests" / "data"


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def examples() -> list[dict[str, str]]:
    paths = sorted(EXAMPLES.glob("*.toml"))
    return [case for path in paths for case in tomllib.loads(path.read_text("utf-8"))["case"]]


def near_copy(text: str, known: list[str]) -> bool:
    """Whether ``text`` is a copy or near copy (difflib ratio > 0.9) of one of ``known``."""
    n = norm(text)
    for other in known:
        if abs(len(other) - len(n)) > 0.25 * max(len(other), len(n)) + 5:
            continue  # the ratio cannot reach 0.9
        m = difflib.SequenceMatcher(None, n, other)
        if m.real_quick_ratio() > 0.9 and m.quick_ratio() > 0.9 and m.ratio() > 0.9:
            return True
    return False


def page(source: str) -> str:
    return source.strip().split()[0].rstrip(";")


def skip(work: Path) -> None:
    urls = {page(c["source"]) for path in DATA.glob("bounce_natural*.toml")
            for c in tomllib.loads(path.read_text("utf-8"))["case"]}  # fmt: skip
    (work / "skip_urls.txt").write_text("".join(f"{u}\n" for u in sorted(urls)))
    print(len(urls), "pages")


def merge(work: Path) -> None:
    known = [norm(c["reply"]) for c in examples()]
    cases: list[dict[str, object]] = []
    keys: set[tuple[str, str]] = set()
    stats: collections.Counter[tuple[str, str]] = collections.Counter()
    for path in sorted(work.glob("part_*.toml")):
        part = path.stem.split("_")[-1]
        for case in tomllib.loads(path.read_text("utf-8"))["case"]:
            case = {k: v.strip() if isinstance(v, str) else v for k, v in case.items()}
            stats[part, "in"] += 1
            key = (page(case["source"]), norm(case["reply"]))
            if key in keys:
                stats[part, "repeat"] += 1
                continue
            keys.add(key)
            case["seen"] = near_copy(case["reply"], known)
            stats[part, "seen" if case["seen"] else "new"] += 1
            cases.append(case)
    (work / "merged.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1))
    for (part, what), count in sorted(stats.items()):
        print(part, what, count)
    print("kept", len(cases), "seen", sum(bool(c["seen"]) for c in cases))


def blind(work: Path) -> None:
    cases = json.loads((work / "merged.json").read_text())
    items = [{"id": i, "provider": c["provider"], "reply": c["reply"]} for i, c in enumerate(cases)]
    (work / "blind_in.json").write_text(json.dumps(items, ensure_ascii=False, indent=1))
    print(len(items))


def compare(work: Path) -> None:
    cases = json.loads((work / "merged.json").read_text())
    labels = json.loads((work / "blind_labels.json").read_text())
    cat = act = 0
    for i, case in enumerate(cases):
        category, action = labels[str(i)]
        cat += category == case["category"]
        act += action == case["action"]
        if (category, action) != (case["category"], case["action"]):
            print(f"#{i} [{case['provider']}] collector {case['category']}/{case['action']}"
                  f" blind {category}/{action}: {case['reply'][:400]!r}")  # fmt: skip
    print(f"agreed: categories {cat}/{len(cases)}, actions {act}/{len(cases)}")


def toml_cases(cases: list[dict[str, object]], fields: tuple[str, ...]) -> str:
    out = []
    for case in cases:
        out.append("[[case]]")
        for field in fields:
            value = case[field]
            text = json.dumps(value, ensure_ascii=False)  # a TOML basic string, or true/false
            out.append(f"{field} = {text}")
        out.append("")
    return "\n".join(out)


def write(work: Path, number: int) -> None:
    cases = json.loads((work / "merged.json").read_text())
    header = (work / "header.txt").read_text().rstrip("\n")
    fields = ("provider", "source", "reply", "category", "action", "seen")
    path = DATA / f"bounce_natural{number}.toml"
    path.write_text(f"{header}\n\n{toml_cases(cases, fields)}")
    print(path, len(cases), "cases,", sum(c["seen"] for c in cases), "seen")


def holdout(number: int, target: int) -> None:
    cases = tomllib.loads((DATA / f"bounce_natural{number}.toml").read_text("utf-8"))["case"]
    present = {c["reply"] for c in examples()}
    new: dict[str, dict[str, object]] = {}
    for case in cases:
        if not case["seen"] and case["reply"] not in present:
            new.setdefault(case["reply"], case)
    path = EXAMPLES / f"bounce_holdout{target}.toml"
    path.write_text(toml_cases(list(new.values()), ("provider", "source", "reply", "category", "action")))
    print(path, len(new), "cases")


def main(argv: list[str]) -> int:
    match argv:
        case ["skip", work]:
            skip(Path(work))
        case ["merge", work]:
            merge(Path(work))
        case ["blind", work]:
            blind(Path(work))
        case ["compare", work]:
            compare(Path(work))
        case ["write", work, number]:
            write(Path(work), int(number))
        case ["holdout", number, target]:
            holdout(int(number), int(target))
        case _:
            print(__doc__)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
