"""Re-run the frozen held-out sets with the rules and examples of their time, and a chosen model.

    .venv/bin/python bench/bounce_retro.py [--model now|then] [--misses]

Every held-out set since holdout10 was committed alone ("Freeze holdoutN: ...") before it was
measured once; after that, rules were written for its misses and it joined the examples. So a
later change to the learned model cannot be judged on those sets as they stand: the rules now
know them. This benchmark goes back instead: for each freeze commit it extracts the package and
the set as they were then (``git archive``) and classifies the set with that commit's rules,
examples and classifier, and with the model code of the working tree (``--model now``, the
default) or the commit's own (``--model then``, which reproduces the figures recorded when each
set was measured). What it prints is how the model would have done on replies the rules of the
time had never seen; the sets stay frozen, nothing is tuned here. Needs the git history.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def freeze_commits(kind: str = "holdout") -> list[tuple[int, str]]:
    """(number, commit) of every "Freeze holdoutN: ..." (or "Freeze naturalN: ...") commit."""
    log = subprocess.run(["git", "-C", str(ROOT), "log", "--format=%H %s", f"--grep=^Freeze {kind}"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    freeze = re.compile(rf"^Freeze {kind}(\d+):")
    found = []
    for line in log.splitlines():
        commit, subject = line.split(" ", 1)
        if m := freeze.match(subject):
            found.append((int(m.group(1)), commit))
    return sorted(found)


def extract(commit: str, tree: str) -> dict[str, str]:
    """Unpack ``commit``'s package and test data into ``tree``; return the environment for a
    process run there, with a model cache of its own (the user's fitted model stays as it is)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "zonerelay", "tests/data"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return {**os.environ, "XDG_CACHE_HOME": f"{tree}/.cache"}


def child(tree: str, number: int, model: str, misses: bool) -> None:
    """Score one set inside ``tree`` (the extracted commit); runs in its own interpreter."""
    sys.path.insert(0, tree)
    if model == "now":  # the working tree's model over the old package's rules and examples
        spec = importlib.util.spec_from_file_location(
            "zonerelay.bounces.learned", ROOT / "zonerelay" / "bounces" / "learned.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    import bounce_accuracy  # beside this file; imports the old tree's classifier, first on the path

    classifier = bounce_accuracy.Classifier()
    text = (Path(tree) / "tests" / "data" / f"bounce_holdout{number}.toml").read_text("utf-8")
    cases = tomllib.loads(text)["case"]
    if misses:
        for miss in bounce_accuracy.misses(classifier, cases):
            print(miss)
    print("RESULT {} {} {}".format(*bounce_accuracy.score(classifier, cases)))


def run(number: int, commit: str, model: str, misses: bool) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as tree:
        env = extract(commit, tree)
        flags = ["--misses"] if misses else []
        argv = [sys.executable, __file__, "--child", tree, str(number), model, *flags]
        out = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=tree, env=env).stdout
    return number, out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child(argv[1], int(argv[2]), argv[3], "--misses" in argv)
        return 0
    model = argv[argv.index("--model") + 1] if "--model" in argv else "now"
    if model not in ("now", "then"):
        raise SystemExit("--model is now or then")
    commits = freeze_commits()
    totals = [0, 0, 0]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [pool.submit(run, n, c, model, "--misses" in argv) for n, c in commits]
        for (number, commit), job in zip(commits, jobs, strict=True):
            _, out = job.result()
            *lines, result = out.strip().splitlines()
            cat_ok, act_ok, n = (int(x) for x in result.split()[1:])
            totals = [totals[0] + cat_ok, totals[1] + act_ok, totals[2] + n]
            for line in lines:
                print(line)
            print(f"holdout{number} ({commit[:7]}, model {model}): {n} cases, category {cat_ok}/{n},"
                  f" action {act_ok}/{n}")  # fmt: skip
    cat_ok, act_ok, n = totals
    print(f"all frozen sets (model {model}): {n} cases, category {cat_ok}/{n} = {100 * cat_ok / n:.1f} %,"
          f" action {act_ok}/{n} = {100 * act_ok / n:.1f} %")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
