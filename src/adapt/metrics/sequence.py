"""Entity-level sequence-labelling metrics (precision/recall/F1 per type, token accuracy) via seqeval."""

from __future__ import annotations

import warnings

from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import IOB1, IOB2, IOBES

from adapt.errors import AdaptError

_SUMMARY_ROWS = ("micro avg", "macro avg", "weighted avg")
_PREFIXES = ("B-", "I-", "E-", "S-")
_SCHEMES = {"IOB1": IOB1, "IOB2": IOB2, "IOBES": IOBES}


def tag_problem(tag) -> str | None:
    """Why `tag` is no tag seqeval can score (None when it is one): it must be "O" or B-/I-/E-/S- + a type."""
    if not isinstance(tag, str):
        return f"tag {tag!r} is not a string"
    if tag == "O" or (tag.startswith(_PREFIXES) and len(tag) > 2):
        return None
    if tag.startswith(("L-", "U-")):
        return f"tag '{tag}' is BILOU; seqeval reads IOB1, IOB2 and IOBES tags: write L- as E- and U- as S-"
    return f"tag '{tag}' is neither 'O' nor a B-/I-/E-/S- prefix followed by an entity type (e.g. B-PER)"


def check_tags(sentences: list[list[str]], where: str = "sentence") -> None:
    """Raise AdaptError naming the first sentence (`<where> N`, from 1) that holds a tag seqeval cannot score."""
    for i, tags in enumerate(sentences, start=1):
        for tag in tags:
            problem = tag_problem(tag)
            if problem:
                raise AdaptError(f"{where} {i}: {problem}")


def tag_scheme(sentences: list[list[str]]) -> str:
    """The tagging scheme of valid tag sequences: "IOBES" when E-/S- occur, "IOB1" when an entity starts
    with I- (after O, at a sentence start, or after a tag of another type), else "IOB2"."""
    scheme = "IOB2"
    for tags in sentences:
        previous = "O"
        for tag in tags:
            if tag[:2] in ("E-", "S-"):
                return "IOBES"
            if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
                scheme = "IOB1"
            previous = tag
    return scheme


def tag_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start word, end word) of every entity in one tag sequence of any scheme (IOB1, IOB2, IOE, BIOES,
    BILOU: prefixes B, I, E, S, L, U), read leniently as conlleval does: an I-/E-/L- tag continues an open entity of its type and otherwise
    starts one; B-, S- and U- always start one; E-, L-, S- and U- close it. This is the one decoder of tags:
    reading data and `predict`'s entities (adapt.tasks.token_classification) and the scores (`common_scheme`)
    all use it.
    """
    spans: list[list] = []
    open_entity = False
    for i, tag in enumerate(tags):
        prefix, _, kind = tag.partition("-")
        if tag == "O":
            open_entity = False
            continue
        if open_entity and spans[-1][0] == kind and prefix in ("I", "E", "L"):
            spans[-1][2] = i + 1
        else:
            spans.append([kind, i, i + 1])
        open_entity = prefix not in ("E", "L", "S", "U")
    return [(kind, start, end) for kind, start, end in spans]


def to_iob2(tags: list[str]) -> list[str]:
    """The same entities (`tag_spans`) written in IOB2: B- on each entity's first word, I- on the rest."""
    out = ["O"] * len(tags)
    for kind, start, end in tag_spans(tags):
        out[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
    return out


def common_scheme(predictions: list[list[str]], references: list[list[str]]) -> tuple[list, list, str]:
    """(predictions, references, scheme) ready to score together, the same whichever side is which: when exactly
    one side uses E-/S- tags (IOBES) both are rewritten in IOB2 with the one tag decoder
    (`to_iob2`, the same entities read leniently) and the scheme is "IOB2";
    otherwise both are returned unchanged with the references' scheme (`tag_scheme`)."""
    scheme, predicted = tag_scheme(references), tag_scheme(predictions)
    if (scheme == "IOBES") == (predicted == "IOBES"):
        return predictions, references, scheme
    return [to_iob2(p) for p in predictions], [to_iob2(r) for r in references], "IOB2"


def _report(references, predictions, **mode) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return classification_report(references, predictions, output_dict=True, zero_division=0, **mode)


def seqeval_scores(predictions: list[list[str]], references: list[list[str]]) -> dict:
    """Entity scores of word-level tag sequences, one list of tags per sentence.

    The headline `precision`/`recall`/`f1` (micro over entities) and `per_type` use seqeval's default mode,
    the conlleval behaviour that seqeval's `f1_score(y_true, y_pred)`, evaluate's seqeval metric and
    published CoNLL figures use: an entity may start with I- (IOB1) and ill-formed spans are read leniently.
    `strict_precision`/`strict_recall`/`strict_f1` are seqeval's `mode="strict"` in `strict_scheme`, the
    references' scheme (IOB2, IOB1 or IOBES; see `tag_scheme`): an entity counts only when its type and
    exact span are well-formed in that scheme. `accuracy` is token accuracy.

    When only one side is IOBES, both are scored in IOB2 (`common_scheme`), so the order of the files never
    changes the scores.

    Raises AdaptError when the counts of sentences or of tags in a sentence differ, or when a tag is neither O
    nor B-/I-/E-/S-TYPE.
    """
    if len(predictions) != len(references):
        raise AdaptError(f"{len(predictions)} predicted sentences but {len(references)} reference sentences")
    if not references:
        raise AdaptError("no sentences to score")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if len(p) != len(r):
            raise AdaptError(f"sentence {i + 1}: {len(p)} predicted tags but {len(r)} reference tags")
    check_tags(references, "reference sentence")
    check_tags(predictions, "predicted sentence")
    predictions, references, scheme = common_scheme(predictions, references)
    report = _report(references, predictions)
    strict = _report(references, predictions, mode="strict", scheme=_SCHEMES[scheme])
    empty = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0}
    micro, strict_micro = report.get("micro avg", empty), strict.get("micro avg", empty)
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(accuracy_score(references, predictions)),
        "strict_precision": float(strict_micro["precision"]),
        "strict_recall": float(strict_micro["recall"]),
        "strict_f1": float(strict_micro["f1-score"]),
        "strict_scheme": scheme,
        "per_type": {
            name: {
                "precision": float(row["precision"]),
                "recall": float(row["recall"]),
                "f1": float(row["f1-score"]),
                "support": int(row["support"]),
            }
            for name, row in report.items()
            if name not in _SUMMARY_ROWS
        },
    }
