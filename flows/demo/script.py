"""The demo's render script: short, varied English sentences, the same for the same seed."""

from __future__ import annotations

import numpy as np

__all__ = ["build_demo_script"]

_SUBJECTS = (
    "The old lighthouse keeper", "My neighbour", "A small grey cat", "The night train", "Our team",
    "The baker on the corner", "Her younger brother", "The museum guide", "A quiet student",
    "The new manager", "Grandma", "The delivery driver", "A tired musician", "The little girl",
    "The school band", "Everyone in the office", "The gardener", "A stranger in a red coat",
    "The pilot", "My best friend",
)
_PREDICATES = (
    "painted the fence", "forgot the keys again", "sang softly in the kitchen",
    "fixed the broken bicycle", "read the letter twice", "missed the last bus",
    "baked a lemon cake", "found a map in the attic", "waited by the window",
    "laughed at the old joke", "cleaned the whole garage", "walked along the beach",
    "wrote a short poem", "planted a cherry tree", "lost the football match",
    "opened a tiny bookshop", "called the doctor", "watched the sunrise",
    "carried the heavy boxes upstairs", "learned to play the violin",
)
_TAILS = (
    "", " this morning", " after the storm", " every Sunday", " before lunch", " last winter",
    ", and nobody noticed", " because it was raining", " without saying a word",
    " while the kettle boiled", " for the first time", " just before midnight",
)
_STANDALONE = (
    "Could you close the window, please?", "Where did you put the blue folder?",
    "What a beautiful evening!", "I can't believe it's already Friday.", "Let's meet at the station.",
    "Don't forget to bring your umbrella.", "Is this seat taken?", "Thank you so much for your help.",
    "The coffee is ready.", "Wait for me!", "How was your trip to the mountains?",
    "We should try the new restaurant downtown.", "Please speak a little more slowly.",
    "That sounds like a wonderful idea.", "Have you seen my glasses anywhere?",
    "The meeting has been moved to Thursday.", "It's colder than I expected.",
    "Turn off the lights when you leave.", "Nobody knows where the path ends.",
    "Happy birthday, and many happy returns!",
)


def build_demo_script(voices: list[str], n_lines: int, seed: int = 0) -> list[dict[str, str]]:
    """Render-script rows of short, varied English sentences, the same for the same arguments.

    Rows are ``{"line_id", "voice_id", "text", "language": "en"}``; ``line_id`` is
    ``"line-000000"``, ``"line-000001"``, ...; each line's voice is drawn from ``voices``.
    About one line in seven is a question, request or exclamation (20 of them, repeating); the
    rest are sentences from 4,800 distinct subject/predicate/tail combinations.
    """
    if not voices:
        raise ValueError("voices must name at least one voice")
    if n_lines < 0:
        raise ValueError(f"n_lines must be >= 0, got {n_lines}")
    rng = np.random.default_rng(seed)
    combos = len(_SUBJECTS) * len(_PREDICATES) * len(_TAILS)
    templated = rng.permutation(combos)
    standalone = rng.permutation(len(_STANDALONE))
    is_standalone = rng.random(n_lines) < 0.15  # questions, requests, exclamations
    voice_of = rng.integers(0, len(voices), size=n_lines)
    rows = []
    n_templated = n_standalone = 0
    for i in range(n_lines):
        if is_standalone[i]:
            text = _STANDALONE[int(standalone[n_standalone % len(standalone)])]
            n_standalone += 1
        else:
            k = int(templated[n_templated % combos])
            n_templated += 1
            s, rest = divmod(k, len(_PREDICATES) * len(_TAILS))
            p, t = divmod(rest, len(_TAILS))
            text = f"{_SUBJECTS[s]} {_PREDICATES[p]}{_TAILS[t]}."
        rows.append({"line_id": f"line-{i:06d}", "voice_id": voices[int(voice_of[i])], "text": text, "language": "en"})
    return rows
