"""Sentence lengths in Markdown files: every sentence over a word limit, and the longest one.

    python scripts/sentences.py README.md docs/*.md            # exit 1 if a sentence has over 40 words
    python scripts/sentences.py --max 30 --show 5 README.md    # another limit; the five longest

Fenced code blocks are left out. A heading, a list item, a table cell and a paragraph each start
a new sentence; inside them a sentence ends at `.`, `?` or `!` followed by a space and a capital
letter, a backtick, a bracket or an emphasis mark (not after "e.g.", "i.e.", "etc.", "vs.").
A word is a whitespace-separated token holding a letter or a digit, so an inline command counts
its words too.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

LIMIT = 40
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "al.", "approx.", "resp.", "Eq.", "Fig.")
_END = re.compile(r"(?<=[.?!])[)*_]*\s+(?=[A-Z`(\[*_\"'])")
_ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.)\s+")


def units(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each paragraph, heading, list item and table cell, code left out."""
    out, current, start, fenced = [], [], 0, False

    def close():
        if current:
            out.append((start, " ".join(current)))
            current.clear()

    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            close()
            fenced = not fenced
            continue
        if fenced or not stripped:
            close()
            continue
        if stripped.startswith("|"):
            close()
            if not set(stripped) <= set("|-: "):  # a table's separator row holds no words
                out += [(no, cell) for cell in stripped.strip("|").split("|") if cell.strip()]
            continue
        if stripped.startswith("#") or _ITEM.match(line):
            close()
        if not current:
            start = no
        current.append(_ITEM.sub("", stripped) if _ITEM.match(line) else stripped.lstrip("#").strip())
        if stripped.startswith("#"):
            close()
    close()
    return out


def split_sentences(text: str) -> list[str]:
    parts, sentences = _END.split(text), []
    for part in parts:
        if sentences and sentences[-1].endswith(ABBREVIATIONS):
            sentences[-1] += " " + part
        else:
            sentences.append(part)
    return [s.strip() for s in sentences if s.strip()]


def words(sentence: str) -> int:
    return sum(1 for token in sentence.split() if re.search(r"[A-Za-z0-9]", token))


def sentences(path: Path) -> list[tuple[int, int, str]]:
    """(words, line, sentence) of every sentence in a Markdown file."""
    return [(words(s), no, s) for no, unit in units(path.read_text()) for s in split_sentences(unit)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--max", type=int, default=LIMIT, help=f"most words a sentence may have (default {LIMIT})")
    ap.add_argument("--show", type=int, default=1, help="how many of the longest sentences to print per file")
    args = ap.parse_args(argv)
    too_long = 0
    for path in args.files:
        found = sorted(sentences(path), key=lambda s: -s[0])
        over = [s for s in found if s[0] > args.max]
        too_long += len(over)
        longest = found[0][0] if found else 0
        print(f"{path}: {len(path.read_text().splitlines())} lines, {len(found)} sentences, longest {longest} words, "
              f"{len(over)} over {args.max}")
        for n, no, s in (over or found[:args.show])[:max(args.show, len(over))]:
            print(f"  {path}:{no}: {n} words: {s[:160]}{'...' if len(s) > 160 else ''}")
    return 1 if too_long else 0


if __name__ == "__main__":
    sys.exit(main())
