"""A linear model learned from the labelled replies shipped with the package.

The rules (``rules.toml``) are precise where a reply uses a phrase they know; where none of
their specific families matches, a reply used to fall to the generic catch-alls or to its
status code, and measured on replies nobody had seen, that is where most mistakes were. This
model reads such a reply the way the labelled examples were read: a linear support vector
machine (scikit-learn's ``LinearSVC``, i.e. liblinear, classes weighted by their inverse
frequency) over tf-idf weighted word 1-2-grams and character 3-5-grams, plus the reply code and
the enhanced status as tokens. It is fitted when
first needed, from ``examples/*.toml`` (every labelled set once it has been measured as a
held-out set), in a few seconds, and kept for the machine's other processes (``shipped_model``);
nothing is fitted offline, so a new labelled set needs no build step.

Taken from scikit-learn rather than written out: a discriminative model read unseen families
better than the hand-written naive Bayes it replaces (docs/bounces.md: re-run on twelve held-out
sets with the rules and examples of each set's time, 889 of 1 130 categories against 853), and
its solver is not something to write by hand in pure Python at this size (~3 000 texts, ~60 000
features).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pickle
import re
import sys
import tomllib
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path

import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import make_pipeline, make_union
from sklearn.svm import LinearSVC

from zonerelay.bounces.classify import Classifier, parse_reply

#: the SVM's regularisation: 0.3 read more unseen replies right than 1.0 (docs/bounces.md)
C = 0.3
#: how many times an example that no specific rule takes counts in training: the model reads
#: only such replies, and learning more from their kind read more of them right when each
#: labelled set was left out in turn (docs/bounces.md)
RESIDUAL_WEIGHT = 3
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def reply_text(data: str) -> str:
    """The reply as the model sees it: code and status as tokens, IP addresses made alike."""
    reply = parse_reply(data)
    code = f"code{reply.code} class{str(reply.code)[0]}xx" if reply.code else "nocode"
    status = ""
    if reply.status:
        _, subject, detail = reply.status.split(".")
        status = f"st{subject}_{detail} subj{subject}"
    return f"{code} {status} {_IPV4.sub(' ipaddr ', reply.text)}".lower()


class ReplyModel:
    """Sublinear tf-idf of words (1-2-grams) and characters (3-5-grams within words), then a
    one-vs-rest linear SVM; deterministic for the same examples."""

    def __init__(self, examples: Iterable[tuple[str, str]]) -> None:
        docs = [(reply_text(reply), category) for reply, category in examples]
        if not docs:
            raise ValueError("no labelled examples")
        features = make_union(
            TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), token_pattern=r"(?u)\b\w\w+\b"),
            TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(3, 5)),
        )
        self.pipeline = make_pipeline(features, LinearSVC(C=C, class_weight="balanced", random_state=0))
        self.pipeline.fit([text for text, _ in docs], [category for _, category in docs])

    def predict(self, data: str) -> str:
        return str(self.pipeline.predict([reply_text(data)])[0])


def shipped_examples() -> list[tuple[str, str]]:
    """(reply, category) of every labelled set shipped in ``zonerelay/bounces/examples/``."""
    examples = []
    folder = resources.files("zonerelay.bounces").joinpath("examples")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            for case in tomllib.loads(entry.read_text("utf-8"))["case"]:
                examples.append((str(case["reply"]), str(case["category"])))
    return examples


def weighted(examples: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The examples with those the shipped rules leave to the model repeated ``RESIDUAL_WEIGHT`` times."""
    rules = Classifier()
    return [item for item in examples for _ in range(RESIDUAL_WEIGHT if rules.needs_model(item[0]) else 1)]


def _fingerprint() -> str:
    """What the fitted model depends on: this package's bounce code, rules and examples, and the
    versions of Python and scikit-learn (its pickles are only good for the same version; NumPy
    keeps its arrays' pickles readable across versions)."""
    digest = hashlib.sha256(f"{sys.version}|{sklearn.__version__}|{RESIDUAL_WEIGHT}|{C}".encode())
    package = resources.files("zonerelay.bounces")
    for entry in sorted((*package.iterdir(), *package.joinpath("examples").iterdir()), key=lambda e: e.name):
        if entry.name.endswith((".py", ".toml")):
            digest.update(entry.name.encode() + b"\0" + entry.read_bytes())
    return digest.hexdigest()[:32]


def cache_dir() -> Path:
    """Where a fitted model is kept for the next process: ``$XDG_CACHE_HOME/zonerelay``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zonerelay"


def _load(path: Path) -> ReplyModel | None:
    try:
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            return None  # only a file this user wrote and nobody else can change is unpickled
        with path.open("rb") as f:
            model = pickle.load(f)
        return model if isinstance(model, ReplyModel) else None
    except Exception:  # missing, truncated or from another version: fit again
        return None


def _keep(model: ReplyModel, path: Path) -> None:
    """Write the fitted model for the next process; best effort: this one has its model."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.chmod(0o600)
        tmp.replace(path)
    except (OSError, pickle.PicklingError):
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return
    for old in path.parent.glob("bounce-model-*.pickle"):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink(missing_ok=True)  # fitted for an older release


@lru_cache(maxsize=1)
def shipped_model() -> ReplyModel:
    """The model fitted on the shipped examples, once per machine: the first process fits it (a
    few seconds) and leaves it in :func:`cache_dir`; the relay's other worker processes, and
    later starts, load it. Without a writable cache directory each process fits its own."""
    folder = cache_dir()
    path = folder / f"bounce-model-{_fingerprint()}.pickle"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = (folder / "bounce-model.lock").open("a")
    except OSError:
        return ReplyModel(weighted(shipped_examples()))
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # workers that need it at once: one fits, the others wait
        model = _load(path)
        if model is None:
            model = ReplyModel(weighted(shipped_examples()))
            _keep(model, path)
    return model
