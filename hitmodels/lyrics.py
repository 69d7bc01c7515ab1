"""The six stylometric lyric features of HitMusicNet (section IV-A), multilingual, offline.

Sentences are lyric lines (lyrics rarely carry punctuation), further split at ``.``, ``!`` and ``?``.
Language is detected with ``langdetect`` (its profiles ship in the package); stop words come from
``stopwordsiso`` and syllables from ``pyphen``'s hyphenation dictionaries, both shipped with their packages,
so nothing is downloaded at run time. Where a language has no hyphenation dictionary, syllables are counted
as vowel groups.

Convention for tracks without usable lyrics (empty, or no word at all): every feature is ``-1``, as in SPD.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from .config import InputPolicy

MISSING = -1.0
FEATURE_NAMES = ("n_sentences", "mean_words_sentence", "n_words", "mean_syllables_word",
                 "sentence_similarity", "vocabulary_wealth")

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*", re.UNICODE)
_SENTENCE_SPLIT = re.compile(r"[\r\n]+|(?<=[.!?])\s+")
_VOWELS = re.compile(r"[aeiouyáéíóúàèìòùâêîôûäëïöüãõåæøœ]+", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """Non-empty sentences (lines, then ``.!?`` boundaries) that contain at least one word."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text or "") if _WORD.search(s)]


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, inner apostrophes kept: ``don't``)."""
    return [w.lower() for w in _WORD.findall(text or "")]


def detect_language(text: str) -> str:
    """ISO 639-1 code of the text's language, ``en`` when undecidable. Deterministic (seeded)."""
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return detect(text[:2000]).split("-")[0]
    except LangDetectException:
        return "en"


@lru_cache(maxsize=64)
def _stopwords(lang: str) -> frozenset[str]:
    import stopwordsiso

    return frozenset(stopwordsiso.stopwords(lang)) if stopwordsiso.has_lang(lang) else frozenset()


@lru_cache(maxsize=64)
def _hyphenator(lang: str):
    import pyphen

    match = pyphen.language_fallback(lang)
    return pyphen.Pyphen(lang=match) if match else None


def syllables(word: str, lang: str = "en") -> int:
    """Syllables of one word: its vowel groups (a syllable has one vowel nucleus; Latin-script vowels with
    their accents), less English's silent final e ("love", "alone"), and never fewer than its hyphenation
    points + 1 where pyphen knows the language (the only count for scripts without Latin vowels, e.g.
    Cyrillic). Hyphenation alone undercounts: dictionaries never split off one letter ("a-bout", "ba-by")
    and skip many legal points ("for-ev-er"), which gave 1 syllable for all three."""
    groups = len(_VOWELS.findall(word))
    if lang == "en" and groups > 1 and word.endswith("e") and not word.endswith(("le", "ee", "ye")):
        groups -= 1
    dic = _hyphenator(lang)
    hyphenated = len(dic.positions(word)) + 1 if dic is not None else 1
    return max(1, groups, hyphenated)


def sentence_similarity(sents: list[str], threshold: float = 0.75, block: int = 256) -> float:
    """Share of upper-triangle sentence pairs whose Tf-Idf cosine similarity is at least ``threshold``.

    Pairs are counted ``block`` sentences against all at a time, so memory is O(block x n), not the n x n
    matrix (20,000 lines made that 8 GB)."""
    n = len(sents)
    if n < 2:
        return 0.0
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        tfidf = TfidfVectorizer(token_pattern=_WORD.pattern, lowercase=True).fit_transform(sents)
    except ValueError:  # no token survived
        return 0.0
    # rows are L2-normalised, so the dot product is the cosine; the whole (n, vocabulary) matrix is sparse
    tfidf_t = tfidf.T.tocsc()
    hits = 0
    for a in range(0, n, block):
        sim = (tfidf[a:a + block] @ tfidf_t).toarray()  # (block, n)
        upper = np.arange(n)[None, :] > np.arange(a, a + len(sim))[:, None]
        hits += int(np.count_nonzero((sim >= threshold - 1e-12) & upper))
    return hits / (n * (n - 1) / 2)


def vocabulary_wealth(tokens: list[str], lang: str = "en", coverage: float = 0.85) -> float:
    """Distinct non-stop words needed to reach ``coverage`` of the cumulative frequency, over the number of
    non-stop words."""
    stop = _stopwords(lang)
    content = [w for w in tokens if w not in stop]
    if not content:
        return 0.0
    _, counts = np.unique(content, return_counts=True)
    counts = np.sort(counts)[::-1]
    needed = int(np.searchsorted(np.cumsum(counts), coverage * len(content) - 1e-9) + 1)
    return needed / len(content)


class LyricsError(ValueError):
    """Lyrics past the bounds (``reason`` ``lyrics_too_long``); the message says which bound."""

    reason = "lyrics_too_long"

    def __init__(self, message: str):
        super().__init__(f"{self.reason}: {message}")


def check_bounds(text: str | None, max_chars: int = InputPolicy.max_lyric_chars,
                 max_lines: int = InputPolicy.max_lyric_lines) -> None:
    """Raise :class:`LyricsError` for lyrics of more than ``max_chars`` characters or ``max_lines`` lines
    (counting sentences, :func:`sentences`' pieces, as lines)."""
    if not text:
        return
    if len(text) > max_chars:
        raise LyricsError(f"{len(text)} characters, at most {max_chars} allowed")
    # sentences are lines further split at . ! ?: the similarity's cost grows with those, not with lines
    pieces = len(_SENTENCE_SPLIT.split(text))
    if pieces > max_lines:
        raise LyricsError(f"{pieces} lines or sentences, at most {max_lines} allowed")


def lyric_features(text: str | None, lang: str | None = None, policy: InputPolicy | None = None) -> dict[str, float]:
    """The six features of one lyric text; all ``-1`` when it has no usable words.

    Returns ``{"n_sentences", "mean_words_sentence", "n_words", "mean_syllables_word",
    "sentence_similarity", "vocabulary_wealth"}`` as floats. Raises :class:`LyricsError` past the
    character or line bound of ``policy`` (default :class:`InputPolicy`'s).
    """
    policy = policy or InputPolicy()
    check_bounds(text, policy.max_lyric_chars, policy.max_lyric_lines)
    sents = sentences(text or "")
    tokens = words(text or "")
    if not sents or not tokens:
        return {k: MISSING for k in FEATURE_NAMES}
    lang = lang or detect_language(text or "")
    per_sentence = [len(words(s)) for s in sents]
    return {
        "n_sentences": float(len(sents)),
        "mean_words_sentence": float(np.mean(per_sentence)),
        "n_words": float(len(tokens)),
        "mean_syllables_word": float(np.mean([syllables(w, lang) for w in tokens])),
        "sentence_similarity": sentence_similarity(sents),
        "vocabulary_wealth": vocabulary_wealth(tokens, lang),
    }
