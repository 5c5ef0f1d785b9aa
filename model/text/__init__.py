"""Text frontend of GPT-SoVITS v2: normalisation, G2P (English, Chinese, Japanese, Korean, Cantonese),
language runs, sentence cutting and per-phone BERT features. Entry point: ``TextFrontend``."""

from .bert import BertFeaturizer
from .cut import METHODS as CUT_METHODS
from .frontend import EmptyText, Features, PhoneSequence, TextFrontend, clean_text
from .language import LANGUAGES, UnsupportedLanguage
from .symbols import SYMBOLS_V2, cleaned_text_to_sequence, symbol_to_id

__all__ = [
    "TextFrontend",
    "PhoneSequence",
    "Features",
    "EmptyText",
    "UnsupportedLanguage",
    "BertFeaturizer",
    "clean_text",
    "LANGUAGES",
    "CUT_METHODS",
    "SYMBOLS_V2",
    "symbol_to_id",
    "cleaned_text_to_sequence",
]
