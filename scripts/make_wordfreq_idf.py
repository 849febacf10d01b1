"""python scripts/make_wordfreq_idf.py wordfreq-3.1.1-py3-none-any.whl jaxmech/demo/idf_wordfreq_en.tsv

Writes the packaged word IDF table (``idf_table = "wordfreq"``, `jaxmech.data.idf.WORDFREQ`) from the English
word frequencies of the ``wordfreq`` package (its ``large_en`` list: Wikipedia, subtitles, news, books, web
text, Reddit and Twitter, ~321k words down to a frequency of 1e-8; `pip download --no-deps wordfreq==3.1.1`
fetches the wheel, which is read as a zip: wordfreq itself is neither imported nor installed).

**Frequency -> document frequency.** wordfreq gives ``f(w)``, the share of running-text tokens that are
``w``. A document of ``L`` words contains ``w`` with probability ``1 - (1 - f)^L ~ 1 - exp(-f L)`` if words
were drawn independently, so the proxy is ``df(w) = N (1 - exp(-f(w) L))`` for a collection of ``N``
documents, and the IDF is Lucene's ``log(1 + (N - df + 0.5) / (df + 0.5))`` (`jaxmech.data.idf`, the
project's default formula). ``N = 8,841,823`` and ``L = 56`` are the MS MARCO passage collection's published
size and (about) mean length in words, so values sit on the scale of an MS MARCO IDF. Real words are bursty
(a document that uses a content word often uses it again), so the proxy overestimates df of content words:
it is a monotone, frequency-based stand-in for a collection's IDF, not a collection's IDF.

**Words -> the model's vocabulary.** Keys are the tokenizer's words: wordfreq's words are lower-cased; each is
accent-stripped (NFD, combining marks removed, as BERT's uncased basic tokenizer does) and kept only if it is
then purely alphabetic (BERT splits punctuation, so ``don't`` or ``u.s.`` never reach the table lookup; and
wordfreq writes multi-digit numbers as ``0``s, so no number is kept). Words that fold to the same key have
their frequencies summed. Only words with ``f >= 1e-7`` are written (wordfreq's list is padded down to 1e-8
with noise); a word missing from the table is rarer than that. The per-id rule is the paper's word rule
(`jaxmech.analysis.idf_svd`, ``"word"``): whole-word vocabulary entries get their word's IDF, ``##`` pieces
and specials none.

Deterministic (sorted rows, IDF rounded to 4 decimals); prints the SHA-256 of the table. wordfreq's code is
Apache-2.0; its word lists are distributed under CC BY-SA 4.0 (wordfreq's README), so the derived table
carries that licence and attribution (``jaxmech/demo/idf_wordfreq_en.LICENSE``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import math
import sys
import unicodedata
import zipfile
from pathlib import Path

N_DOCS = 8_841_823
DOC_WORDS = 56
MIN_FREQ = 1e-7
MEMBER = "wordfreq/data/large_en.msgpack.gz"


def fold(word: str) -> str:
    """The tokenizer's form of a word: lower-cased, accents stripped (BERT uncased basic tokenizer)."""
    return "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")


def frequencies(wheel: Path) -> dict[str, float]:
    """``word -> frequency`` of wordfreq's ``large_en`` list, folded (`fold`), alphabetic words only.

    The list is a cBpack: a header, then buckets of words; bucket ``j`` (0-based after the header) holds the
    words of frequency ``10 ** (-j / 100)``.
    """
    import msgpack  # a dependency of flax, installed with jaxmech

    with zipfile.ZipFile(wheel) as z:
        pack = msgpack.unpackb(gzip.decompress(z.read(MEMBER)), raw=False)
    if not (isinstance(pack[0], dict) and pack[0].get("format") == "cB"):
        raise ValueError(f"{wheel}:{MEMBER}: not a cBpack (header {pack[0]!r})")
    out: dict[str, float] = {}
    for j, bucket in enumerate(pack[1:]):
        f = 10.0 ** (-j / 100.0)
        for w in bucket:
            key = fold(w)
            if key.isalpha():
                out[key] = out.get(key, 0.0) + f
    return out


def idf_of(freq: float) -> float:
    """Lucene IDF of the document-frequency proxy ``N (1 - exp(-f L))`` (module docstring)."""
    df = N_DOCS * -math.expm1(-freq * DOC_WORDS)
    return math.log1p((N_DOCS - df + 0.5) / (df + 0.5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path, help="wordfreq-3.1.1-py3-none-any.whl")
    ap.add_argument("out", type=Path, help="TSV to write (word<TAB>idf)")
    args = ap.parse_args()
    freq = frequencies(args.wheel)
    rows = [f"{w}\t{idf_of(f):.4f}\n" for w, f in sorted(freq.items()) if f >= MIN_FREQ]
    data = "".join(rows).encode("utf-8")
    args.out.write_bytes(data)
    print(f"{hashlib.sha256(data).hexdigest()}  {args.out}  ({len(rows)} words)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
