"""The lead's side of a natural sample (tests/data/NATURAL_SAMPLE.md; docs/bounces.md).

    .venv/bin/python bench/natural_sample.py skip DIR      # DIR/skip_urls.txt: pages taken before
    .venv/bin/python bench/natural_sample.py merge DIR     # DIR/part_*.toml -> DIR/merged.json
    .venv/bin/python bench/natural_sample.py blind DIR     # DIR/blind_in.json for a re-labeller
    .venv/bin/python bench/natural_sample.py compare DIR   # DIR/blind_labels.json vs merged.json
    .venv/bin/python bench/natural_sample.py write DIR N   # tests/data/bounce_naturalN.toml
    .venv/bin/python bench/natural_sample.py holdout N M   # examples/bounce_holdoutM.toml
    .venv/bin/python bench/natural_sample.py figures       # every sample, as first measured

``write`` puts DIR/header.txt on top; ``holdout`` takes naturalN's new texts.

``merge`` shows no reply text: it keeps every case except a repeat of the same text on the same
page, and marks a case ``seen`` when it is a copy or near copy (difflib ratio > 0.9) of an
example shipped now, so that the sample's new texts can be read apart. ``compare`` prints only
the cases the re-labeller labelled otherwise, for the lead's ruling (edit merged.json) before
``write``; the written file is committed ("Freeze naturalN: ...") before
``bench/bounce_accuracy.py`` reads it. ``holdout`` writes the sample's new texts, each once,
without a header: add one saying where they came from and how they measured. ``figures``
re-runs each frozen sample with the package of its freeze commit (``git archive``), under the
labels as ruled, the collectors' own (``collector``), the blind re-labeller's (``relabeller``)
and the label two of the three gave where a third labeller read the splits (``third``; a
three-way split counts wrong).
"""

from __future__ import annotations

import collections
import difflib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import bounce_retro  # beside this file: the frozen sets' commits, unpacked

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


CLASSIFY = """
import json, sys, tomllib
sys.path.insert(0, sys.argv[1])
from zonerelay.bounces.classify import Classifier
classifier = Classifier()
cases = tomllib.loads(open(sys.argv[2], encoding="utf-8").read())["case"]
print(json.dumps([[r.category, r.action] for r in map(classifier.classify, (c["reply"] for c in cases))]))
"""


def as_first_measured(number: int) -> list[tuple[str, str]]:
    """(category, action) of each case, by the package of the sample's freeze commit."""
    commit = dict(bounce_retro.freeze_commits("natural"))[number]
    with tempfile.TemporaryDirectory() as tree:
        env = bounce_retro.extract(commit, tree)
        argv = [sys.executable, "-c", CLASSIFY, tree, f"{tree}/tests/data/bounce_natural{number}.toml"]
        out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=tree, env=env).stdout
    return [(category, action) for category, action in json.loads(out)]


def majority(case: dict[str, str]) -> tuple[str | None, str]:
    """The label two of the three labellers gave (None: a three-way split of categories)."""
    votes = [tuple(case[k].split("/")) for k in ("collector", "relabeller", "third") if k in case]
    if len(votes) == 2:
        return votes[0][0], votes[0][1]  # the two agreed
    category, count = collections.Counter(v[0] for v in votes).most_common(1)[0]
    action = collections.Counter(v[1] for v in votes).most_common(1)[0][0]
    return (category if count > 1 else None), action


def figures() -> None:
    totals: collections.Counter[str] = collections.Counter()
    for path in sorted(DATA.glob("bounce_natural*.toml"), key=lambda p: int(p.stem[len("bounce_natural"):])):
        number = int(path.stem[len("bounce_natural"):])
        cases = tomllib.loads(path.read_text("utf-8"))["case"]
        got = as_first_measured(number)
        labellings = {
            "as ruled": [(c["category"], c["action"]) for c in cases],
            "collectors": [tuple(c["collector"].split("/")) for c in cases],
            "re-labeller": [tuple(c["relabeller"].split("/")) for c in cases],
            "two of three": [majority(c) for c in cases],
        }
        parts = []
        for name, labels in labellings.items():
            cat = sum(g[0] == lab[0] for g, lab in zip(got, labels, strict=True))
            act = sum(g[1] == lab[1] for g, lab in zip(got, labels, strict=True))
            totals[f"{name} cat"] += cat
            totals[f"{name} act"] += act
            parts.append(f"{name} {cat}/{act}")
        totals["n"] += len(cases)
        print(f"natural{number}: {len(cases)} cases; categories/actions right: " + ", ".join(parts))
    n = totals["n"]
    for name in ("as ruled", "collectors", "re-labeller", "two of three"):
        cat, act = totals[f"{name} cat"], totals[f"{name} act"]
        print(f"all, {name}: categories {cat}/{n} = {100 * cat / n:.1f} %,"
              f" actions {act}/{n} = {100 * act / n:.1f} %")  # fmt: skip


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
        case ["figures"]:
            figures()
        case _:
            print(__doc__)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
