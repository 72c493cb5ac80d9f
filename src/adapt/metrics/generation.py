"""Text-generation metrics: corpus BLEU and chrF (sacrebleu, from summable statistics) and ROUGE."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

from adapt.errors import AdaptError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _check_streams(hypotheses: list[str], references: list[list[str]]) -> None:
    if not hypotheses:
        raise AdaptError("no hypotheses to score")
    if not references:
        raise AdaptError("no reference stream given")
    for i, stream in enumerate(references):
        if len(stream) != len(hypotheses):
            raise AdaptError(f"reference stream {i + 1} has {len(stream)} lines but there are {len(hypotheses)} hypotheses")


_ISO639_3 = {"zho": "zh", "cmn": "zh", "yue": "zh", "jpn": "ja", "kor": "ko"}
_SPM_TOKENIZERS = ("spm", "flores101", "flores200", "spBLEU-1K")
_EXTRAS = {"ja-mecab": "ja", "ko-mecab": "ko"}
_LANGUAGE_NAMES = {"zh": "Chinese", "ja": "Japanese", "ko": "Korean"}
_SCRIPTS = {  # Unicode blocks of the scripts that tell Chinese, Japanese and Korean text apart
    "hangul": ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xAC00, 0xD7AF)),
    "kana": ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F)),
    "han": ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F)),
}


def _script(char: str) -> str | None:
    code = ord(char)
    return next((name for name, blocks in _SCRIPTS.items() if any(a <= code <= b for a, b in blocks)), None)


def detect_cjk(texts: list[str]) -> str | None:
    """"zh", "ja" or "ko" when Han, kana or Hangul characters make up at least half of the units of `texts`
    (each CJK character is a unit, as is each run of other letters, i.e. a word of Latin, Cyrillic... text),
    else None. Hangul as the largest share means Korean; otherwise kana (at least 5% of the CJK characters)
    means Japanese, and Han alone means Chinese."""
    counts = {"hangul": 0, "kana": 0, "han": 0}
    other_words = 0
    for text in texts:
        in_word = False
        for char in text if isinstance(text, str) else ():  # sacreBLEU streams may hold None for a missing reference
            script = _script(char) if char.isalpha() else None
            if script:
                counts[script] += 1
            elif char.isalpha() and not in_word:
                other_words += 1
            in_word = char.isalpha() and not script
    cjk = sum(counts.values())
    if not cjk or cjk < other_words:
        return None
    if counts["hangul"] >= max(counts["kana"], counts["han"]):
        return "ko"
    return "ja" if counts["kana"] >= 0.05 * cjk else "zh"


def language_code(target_lang: str) -> str:
    """The primary ISO 639-1 subtag of a language tag: "zh-CN", "zh_Hans" and "zho_Hans" give "zh"."""
    primary = target_lang.replace("_", "-").split("-")[0].lower()
    return _ISO639_3.get(primary, primary)


def bleu_tokenizer(tokenize: str | None, target_lang: str | None, references: list[list[str]]) -> tuple[str, str]:
    """The sacreBLEU tokenizer for BLEU and why it was chosen, as (name, reason).

    An explicit `tokenize` wins; else sacreBLEU's own rule for a known target language (zh -> zh,
    ja -> ja-mecab, ko -> ko-mecab, any other -> 13a); else, with no language given, the references'
    script (`detect_cjk`) picks the tokenizer of that language, and other text gets sacreBLEU's default 13a.

    Raises AdaptError for an unknown tokenizer name, a mecab tokenizer whose sacreBLEU extra is not
    installed, or a SentencePiece tokenizer whose model file is not in sacreBLEU's folder (adapt never
    downloads it)."""
    if tokenize is not None:
        name, reason = tokenize, "given by --tokenize"
    elif target_lang:
        lang = language_code(target_lang)
        name = BLEU._TOKENIZER_MAP.get(lang, BLEU.TOKENIZER_DEFAULT)
        reason = f"sacreBLEU's tokenizer for the target language '{target_lang}'"
    else:
        lang = detect_cjk([text for stream in references for text in stream])
        if lang:
            name = BLEU._TOKENIZER_MAP[lang]
            reason = f"the references are {_LANGUAGE_NAMES[lang]} text; set --target-lang or --tokenize to override"
        else:
            name = BLEU.TOKENIZER_DEFAULT
            reason = "sacreBLEU's default: no target language given and the references are not Chinese/Japanese/Korean"
    if name not in BLEU.TOKENIZERS:
        raise AdaptError(f"unknown BLEU tokenizer '{name}'; sacreBLEU's tokenizers: {', '.join(BLEU.TOKENIZERS)}")
    if name in _SPM_TOKENIZERS:
        from sacrebleu.tokenizers.tokenizer_spm import SPM_MODELS
        from sacrebleu.utils import SACREBLEU_DIR

        model = Path(SACREBLEU_DIR, "models", Path(SPM_MODELS[name]["url"]).name)
        if not model.is_file():
            raise AdaptError(f"BLEU tokenizer '{name}' needs sacreBLEU's SentencePiece model {model}, which adapt "
                             f"does not download; put the file there (from {SPM_MODELS[name]['url']}) or choose "
                             "another --tokenize (13a, intl, char, zh, ja-mecab, ko-mecab)")
    if name in _EXTRAS:
        try:
            BLEU(tokenize=name)
        except (ImportError, RuntimeError):
            raise AdaptError(f"BLEU tokenizer '{name}' ({reason}) needs sacreBLEU's extra: "
                             f"pip install 'sacrebleu[{_EXTRAS[name]}]'") from None
    return name, reason


def _metric(name: str, tokenize: str | None = None) -> BLEU | CHRF:
    return BLEU(tokenize=tokenize) if name == "bleu" else CHRF()


def sentence_stats(
    name: str, hypotheses: list[str], references: list[list[str]], tokenize: str | None = None
) -> np.ndarray:
    """Per-sentence sufficient statistics of "bleu" or "chrf" (rows sum to sacrebleu's corpus statistics);
    `tokenize` is BLEU's sacreBLEU tokenizer (None: 13a)."""
    _check_streams(hypotheses, references)
    return np.asarray(_metric(name, tokenize)._extract_corpus_statistics(hypotheses, references), dtype=np.int64)


def score_from_stats(name: str, stats: np.ndarray, num_refs: int, tokenize: str | None = None) -> dict:
    """Corpus BLEU or chrF from summed statistics; equals sacrebleu's `corpus_score` on the same sentences.
    The `signature` is sacreBLEU's (it names the tokenizer, e.g. tok:zh)."""
    metric = _metric(name, tokenize)
    metric.num_refs = num_refs  # shown in the signature, as corpus_score sets it
    score = metric._compute_score_from_stats([int(x) for x in stats])
    signature = str(metric.get_signature())
    if name == "chrf":
        return {"chrf": float(score.score), "signature": signature}
    return {
        "bleu": float(score.score),
        "signature": signature,
        "precisions": [float(p) for p in score.precisions],
        "bp": float(score.bp),
        "sys_len": int(score.sys_len),
        "ref_len": int(score.ref_len),
    }


def _corpus(name: str, hypotheses: list[str], references: list[list[str]], tokenize: str | None = None) -> dict:
    stats = sentence_stats(name, hypotheses, references, tokenize).sum(axis=0)
    return score_from_stats(name, stats, len(references), tokenize)


def bleu_score(
    hypotheses: list[str], references: list[list[str]], tokenize: str | None = None, target_lang: str | None = None
) -> dict:
    """sacrebleu corpus BLEU (exp smoothing); `references` is a list of reference streams. The tokenizer is
    `bleu_tokenizer(tokenize, target_lang, references)` (13a for text that is not Chinese/Japanese/Korean);
    the result has its name in `tokenize` and sacreBLEU's `signature`."""
    _check_streams(hypotheses, references)
    name, _ = bleu_tokenizer(tokenize, target_lang, references)
    return {**_corpus("bleu", hypotheses, references, name), "tokenize": name}


def chrf_score(hypotheses: list[str], references: list[list[str]]) -> dict:
    """sacrebleu corpus chrF (character 6-grams, beta 2); `references` is a list of reference streams."""
    return _corpus("chrf", hypotheses, references)


def rouge_example_scores(predictions: list[str], references: list[str], use_stemmer: bool = True) -> np.ndarray:
    """Per-example ROUGE F-measures, one row per example, columns in ROUGE_TYPES order."""
    if len(predictions) != len(references):
        raise AdaptError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise AdaptError("no predictions to score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    rows = []
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        rows.append([scores[t].fmeasure for t in ROUGE_TYPES])
    return np.asarray(rows, dtype=np.float64)


def rouge_scores(predictions: list[str], references: list[str], use_stemmer: bool = True) -> dict:
    """Mean over examples of rouge_score's F-measure (0..1) for rouge1, rouge2, rougeL and rougeLsum.

    This equals HF evaluate's rouge with use_aggregator=False followed by a plain mean (evaluate's
    default aggregator instead reports a bootstrap median). rougeLsum splits summaries on newlines:
    the caller puts one sentence per line (as the HF summarization examples do with nltk); without
    newlines rougeLsum equals rougeL.
    """
    means = rouge_example_scores(predictions, references, use_stemmer).mean(axis=0)
    return {name: float(value) for name, value in zip(ROUGE_TYPES, means)}


def sentence_lines(text: str) -> str:
    """One sentence per line, which rougeLsum needs (a regex split: nltk's punkt is not available offline)."""
    return "\n".join(s for s in SENTENCE_END.split(text.strip()) if s)


def max_reference_rouge(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean over examples of ROUGE F1 (0..1) against the best-matching reference, per ROUGE type."""
    owners = [i for i, refs in enumerate(references) for _ in refs]
    pairs_hyp = [sentence_lines(hypotheses[i]) for i in owners]
    pairs_ref = [sentence_lines(r) for refs in references for r in refs]
    scores = rouge_example_scores(pairs_hyp, pairs_ref)
    best = np.full((len(hypotheses), len(ROUGE_TYPES)), -np.inf)
    np.maximum.at(best, np.asarray(owners), scores)
    return {name: float(value) for name, value in zip(ROUGE_TYPES, best.mean(axis=0))}


def translation_scores(hypotheses: list[str], references: list[list[str]], target_lang: str | None = None) -> dict[str, Any]:
    """sacreBLEU corpus BLEU (tokenizer from `target_lang` or the references' script, see `bleu_tokenizer`;
    13a for most languages) and chrF; examples with fewer references pad their streams with None,
    which sacreBLEU skips."""
    width = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    bleu = bleu_score(hypotheses, streams, target_lang=target_lang)
    chrf = chrf_score(hypotheses, streams)
    return {"bleu": bleu["bleu"], "chrf": chrf["chrf"], "bleu_signature": bleu["signature"],
            "chrf_signature": chrf["signature"]}


def exact_match_score(predictions: list[str], references: list[str]) -> float:
    """Share (0..1) of predictions equal to their reference once leading/trailing whitespace is stripped; case
    and punctuation count (HF evaluate's `exact_match` with its default options, on stripped strings).

    Raises:
        AdaptError: the lists differ in length or are empty."""
    if len(predictions) != len(references):
        raise AdaptError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise AdaptError("no predictions to score")
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(predictions)
