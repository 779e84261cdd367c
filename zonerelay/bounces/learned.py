"""A small text classifier learned from the labelled replies shipped with the package.

The rules (``rules.toml``) are precise where a reply uses a phrase they know; where none of
their specific families matches, a reply used to fall to the generic catch-alls or to its
status code, and measured on replies nobody had seen, that is where most mistakes were. This
model reads such a reply the way the labelled examples were read: a complement naive Bayes
(Rennie et al., 2003) over tf-idf weighted word 1-2-grams and character 3-5-grams, plus the
reply code and the enhanced status as tokens. It is trained when first used, from
``examples/*.toml`` (every labelled set once it has been measured as a held-out set), in
about a second; nothing is fitted offline and no numeric library is needed for ~700 short texts,
which is why this is written out here rather than taken from scikit-learn.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections import Counter, defaultdict
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

from zonerelay.bounces.classify import Classifier, parse_reply

ALPHA = 0.3  # additive smoothing of the complement counts
#: how many times an example that no specific rule takes counts in training: the model reads
#: only such replies, and learning more from their kind read 7 more of the 238 such examples
#: right, and 4 more actions, when each labelled set was left out in turn (docs/bounces.md)
RESIDUAL_WEIGHT = 3
_WORD = re.compile(r"(?u)\b\w\w+\b")
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


def _words(text: str) -> list[str]:
    tokens = _WORD.findall(text)
    return tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]


def _chars(text: str) -> list[str]:
    grams: list[str] = []
    for word in text.split():
        padded = f" {word} "
        for n in range(3, 6):
            if len(padded) < n:
                break
            grams.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
    return grams


def _tfidf(counts: Counter[str], idf: dict[str, float]) -> dict[str, float]:
    """Sublinear tf times idf, L2-normalised; terms never seen in training are left out."""
    weights = {t: (1.0 + math.log(n)) * idf[t] for t, n in counts.items() if t in idf}
    norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
    return {t: w / norm for t, w in weights.items()}


class ComplementNB:
    """Complement naive Bayes over two tf-idf feature spaces (words, characters)."""

    def __init__(self, examples: Iterable[tuple[str, str]]) -> None:
        docs = [(reply_text(reply), category) for reply, category in examples]
        if not docs:
            raise ValueError("no labelled examples")
        self.idf: list[dict[str, float]] = []
        per_doc: list[list[Counter[str]]] = []
        for extract in (_words, _chars):
            counts = [Counter(extract(text)) for text, _ in docs]
            df: Counter[str] = Counter()
            for c in counts:
                df.update(c.keys())
            n = len(docs)
            self.idf.append({t: math.log((1 + n) / (1 + d)) + 1.0 for t, d in df.items()})
            per_doc.append(counts)
        features: list[dict[str, float]] = []
        for i in range(len(docs)):
            vector: dict[str, float] = {}
            for space, (counts, idf) in enumerate(zip(per_doc, self.idf, strict=True)):
                vector.update({f"{space}|{t}": w for t, w in _tfidf(counts[i], idf).items()})
            features.append(vector)
        by_class: dict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        total: defaultdict[str, float] = defaultdict(float)
        for (_, category), vector in zip(docs, features, strict=True):
            for t, w in vector.items():
                by_class[category][t] += w
                total[t] += w
        vocabulary = len(total)
        self.classes = sorted(by_class)
        # weight of a feature for a class: minus the log of its smoothed share of the OTHER
        # classes' mass, so a feature the other classes use little votes for this class
        self.weights: dict[str, dict[str, float]] = {}
        self.default: dict[str, float] = {}
        for category in self.classes:
            own = by_class[category]
            complement = {t: total[t] - own.get(t, 0.0) for t in total}
            mass = sum(complement.values()) + ALPHA * vocabulary
            self.weights[category] = {t: -math.log((ALPHA + c) / mass) for t, c in complement.items()}
            self.default[category] = -math.log(ALPHA / mass)

    def vector(self, data: str) -> dict[str, float]:
        text = reply_text(data)
        vector: dict[str, float] = {}
        for space, (extract, idf) in enumerate(zip((_words, _chars), self.idf, strict=True)):
            vector.update({f"{space}|{t}": w for t, w in _tfidf(Counter(extract(text)), idf).items()})
        return vector

    def predict(self, data: str) -> str:
        vector = self.vector(data)
        scores: dict[str, float] = {}
        for c in self.classes:
            weights, default = self.weights[c], self.default[c]
            scores[c] = sum(w * weights.get(t, default) for t, w in vector.items())
        return max(self.classes, key=lambda c: (scores[c], c))


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


@lru_cache(maxsize=1)
def shipped_model() -> ComplementNB:
    return ComplementNB(weighted(shipped_examples()))
