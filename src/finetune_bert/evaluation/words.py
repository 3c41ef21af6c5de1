"""A text's words coloured by an explanation's weights, as HTML: green for a word that pushed toward the label
explained, red for one that pushed against it, the deeper the larger its weight against the text's largest.

One renderer for every page that shows explanations (the training and evaluation reports, the audit's report),
and the same colours, formula and legend as the server's page draws in JavaScript (serving/page.py reads
`POSITIVE`, `NEGATIVE` and `DEEPEST` from here), so a word looks the same wherever it is shown. Every word and
label is escaped: the texts are a user's data, and a review may hold `<script>`.
"""

from __future__ import annotations

import html
from typing import Any

from finetune_bert.inference.attributions import PAIR_SEPARATOR

# RGB of the two directions, and the opacity of the word with the text's largest weight: light enough that
# black text stays readable on the deepest colour.
POSITIVE = (34, 197, 94)
NEGATIVE = (239, 68, 68)
DEEPEST = 0.7

# Where a pair's second text starts (the explanation's PAIR_SEPARATOR, which carries no weight).
SEPARATOR = '<span class="sep" title="the second text starts here">&#x2016;</span>'

# The explanation's words carry no spacing: a space goes between two, but not before a closing mark nor after an
# opening one, so that "don ' t ." reads "don't." (the page follows the same rule).
TIGHT_BEFORE = ".,!?;:)]}%'"
TIGHT_AFTER = "([{$'"

WORDS_CSS = """
.words { line-height: 1.9; overflow-wrap: anywhere; white-space: normal; }
.words .w, .legend .w { padding: 1px 2px; border-radius: 3px; }
.legend { font-size: .9em; color: #555; }
.words .sep { color: #888; font-weight: 600; padding: 0 .3em; }
"""


def colour(weight: float, largest: float) -> str:
    """The CSS background of a word of `weight` in a text whose largest |weight| is `largest`."""
    rgb = POSITIVE if weight >= 0 else NEGATIVE
    alpha = DEEPEST * abs(weight) / largest if largest > 0 else 0.0
    return f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {round(alpha, 3)})"


def spaced(previous: str, word: str) -> bool:
    """Whether a space goes between two words of an explanation (TIGHT_BEFORE, TIGHT_AFTER)."""
    return not (len(word) == 1 and word in TIGHT_BEFORE or len(previous) == 1 and previous in TIGHT_AFTER)


def words_html(words: Any, label: str | None = None) -> str:
    """`words` (an Explanation, or its words: [(word, weight), ...] as tuples or JSON lists) as a fragment of
    coloured spans in text order, each word's weight in its title; `label`: what was explained (an
    Explanation's own label by default), named in each title."""
    if hasattr(words, "words"):
        label = words.label if label is None else label
        words = words.words
    pairs = [(str(word), float(weight)) for word, weight in words]
    largest = max((abs(w) for _, w in pairs), default=0.0)
    toward = f" toward {label}" if label is not None else ""
    out = []
    for i, (word, w) in enumerate(pairs):
        if i and spaced(pairs[i - 1][0], word):
            out.append(" ")
        out.append(SEPARATOR if word == PAIR_SEPARATOR and w == 0.0 else
                   f'<span class="w" style="background: {colour(w, largest)}" title="{html.escape(f"{w:+.4f}{toward}")}">'
                   f"{html.escape(word)}</span>")
    return f'<span class="words" data-label="{html.escape(str(label or ""))}">{"".join(out)}</span>'


def legend_html(label: str | None = None, *, regression: bool = False) -> str:
    """What the colours mean, for beside the words: toward `label` (or "the label explained")."""
    what = html.escape(label) if label else "the value" if regression else "the label explained"
    green, red = (f'<span class="w" style="background: {colour(s, 1.0)}">{name}</span>'
                  for s, name in ((1.0, "green"), (-1.0, "red")))
    if regression:
        meaning = f"{green} raised {what}, {red} lowered it"
    else:
        meaning = f"{green} pushed toward {what}, {red} pushed against it"
    return (f'<p class="legend">{meaning}; the deeper the colour, the larger the word\'s weight against the '
            "text's largest (Integrated Gradients; hover a word for its weight).</p>")

