"""Labels that name each segmented object: from the answer's ``<p>...</p>`` text, else from the request.

Sa2VA answers a segmentation request with a few trained templates ("Sure, it is [SEG].", "It is [SEG].",
"Sure, [SEG].", "[SEG].", "Sure, the segmentation result is [SEG]."), so the words before a [SEG] are usually
boilerplate, not a name. A label is therefore, for each [SEG] in order:

1. the text inside ``<p>...</p>`` right before it, when the model gives one;
2. else the object phrase of the request ("Please segment the red car." -> "red car"); when the answer has several
   [SEG] and the phrase lists exactly that many objects ("the cat and the dog"), one object each, in order;
3. else the answer's own words before the [SEG] with the template boilerplate removed ("It is a dog [SEG]" ->
   "dog"), or "" when nothing but boilerplate is left.
"""
from __future__ import annotations

import re

SEG_TOKEN = "[SEG]"

_VERBS = (r"identify\s+and\s+segment|segment\s+out|segment|highlight|mask\s+out|mask|find|locate|select|outline|"
          r"detect|show(?:\s+me)?|identify|isolate|cut\s+out|extract|track|follow")
_POLITE = r"(?:(?:please|kindly|can\s+you|could\s+you|would\s+you|will\s+you|i\s+want\s+you\s+to|help\s+me)[\s,]+)*"
_REQUEST = re.compile(rf"^{_POLITE}(?:{_VERBS})\s+(?P<x>.+)$", re.I | re.S)
_PROVIDE = re.compile(r"^(?:.*?\b)?(?:provide|give|output|generate|create)\s+(?:me\s+)?(?:a|the)?\s*"
                      r"(?:segmentation\s+)?(?:mask|masks|segmentation)\s+(?:for|of)\s+(?P<x>.+)$", re.I | re.S)
_QUESTION = re.compile(r"^(?:what|where|which|who)\s+(?:is|are|'s)\s+(?P<x>.+)$", re.I | re.S)
#: sentences that only ask for the output format ("Please respond with segmentation mask.")
_FORMAT_ONLY = re.compile(r"^(?:please\s+)?(?:respond|answer|reply|output|give|provide|return)\s+(?:it\s+)?"
                          r"(?:with\s+|using\s+)?(?:a\s+|the\s+)?(?:segmentation\s+)?(?:masks?|segmentation)"
                          r"(?:\s+result)?[.!]?$", re.I)
_TAIL = re.compile(r"\s+(?:(?:in|on|from|of|within)\s+(?:this|the|that)\s+(?:image|picture|photo|photograph|frame|"
                   r"video|clip|scene)\b.*|with\s+(?:a\s+|the\s+)?(?:segmentation\s+)?masks?\b.*|please)$", re.I | re.S)
_LEADING = re.compile(r"^(?:the|a|an)\s+", re.I)
_DETERMINER = re.compile(r"^(?:the|a|an|this|that|his|her|its|their|my|your|one|another)\s+", re.I)
_EMPTY_OBJECTS = {"", "it", "this", "that", "them", "these", "those", "everything", "something", "anything",
                  "here", "there", "this image", "the image", "image", "picture", "the picture", "this picture",
                  "all", "all objects", "every object"}
_SPECIAL = re.compile(r"<\|[^>]*\|>|</?p>|</?vp>")
_BOILERPLATE_START = re.compile(r"^(?:and|or|then|also|,|\s)*(?:(?:sure|yes|ok|okay|certainly|of\s+course)\b[\s,.!]*)?"
                                r"(?:(?:it\s+is|it's|this\s+is|that\s+is|here\s+is|here\s+it\s+is|here\s+are|"
                                r"they\s+are|the\s+segmentation(?:\s+result|\s+mask)?\s+is|the\s+result\s+is|"
                                r"the\s+mask\s+is)\b)?[\s,:]*", re.I)
_BOILERPLATE_END = re.compile(r"\s+(?:is|are|was|were|at|here|there)$", re.I)
#: longest bare phrase (in words) taken whole as the object when the prompt has no request verb
MAX_BARE_WORDS = 12


def _tidy(phrase: str) -> str:
    phrase = re.sub(r"\s+", " ", phrase).strip(" \t\n,;:.!?\"'")
    previous = None
    while phrase != previous:
        previous = phrase
        phrase = _TAIL.sub("", phrase).strip(" ,;:.!?\"'")
    phrase = _LEADING.sub("", phrase)
    return "" if phrase.lower() in _EMPTY_OBJECTS else phrase


def request_phrase(prompt: str) -> str:
    """The object a segmentation request names, or "" when it names none.

    "Please segment the red car." -> "red car"; "Could you segment the dog in this image?" -> "dog"; "What is the
    cup on the left? Please respond with segmentation mask." -> "cup on the left"; "red car" (a bare noun phrase)
    -> "red car"; "Please segment the object similar to region1." -> "object similar to region1"; "What is this?"
    -> ""."""
    text = re.sub(r"\s+", " ", (prompt or "").replace("<image>", " ")).strip()
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    sentences = [s for s in sentences if not _FORMAT_ONLY.match(s)]
    for pattern in (_REQUEST, _PROVIDE, _QUESTION):
        for sentence in sentences:
            match = pattern.match(sentence)
            if match:
                return _tidy(match.group("x"))
    if len(sentences) == 1 and len(sentences[0].split()) <= MAX_BARE_WORDS:
        return _tidy(sentences[0])
    return ""


def split_objects(phrase: str, count: int) -> list[str] | None:
    """The ``count`` objects a phrase lists ("cat, the dog and the bird" -> ["cat", "dog", "bird"]), or None when it
    does not list exactly ``count``. Every object after the first must start with a determiner ("the", "a", ...), so
    "red and white car" stays one object."""
    if count < 2 or not phrase:
        return None
    raw = re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", phrase, flags=re.I)
    if len(raw) != count or not all(_DETERMINER.match(p) for p in raw[1:]):
        return None
    parts = [_tidy(p) for p in raw]
    return parts if all(parts) else None


def answer_words(piece: str) -> str:
    """The answer's words before one [SEG] (since the previous [SEG] or sentence end), without template
    boilerplate: "Sure, it is" -> "", "It is a dog" -> "dog", "and the sky" -> "sky"."""
    text = _SPECIAL.sub("", piece)
    sentence = re.split(r"[.!?\n]", text)[-1]
    sentence = re.sub(r"\s+", " ", sentence).strip(" ,;:")
    sentence = _BOILERPLATE_START.sub("", sentence)
    sentence = _BOILERPLATE_END.sub("", sentence)
    return _tidy(sentence)


def object_labels(raw_text: str, count: int, prompt: str = "") -> list[str]:
    """One label for each of the first ``count`` [SEG] of an answer, in order (see the module docstring)."""
    pieces = raw_text.split(SEG_TOKEN)[:count]
    request = request_phrase(prompt)
    listed = split_objects(request, count)
    labels = []
    for k, piece in enumerate(pieces):
        tagged = re.search(r"<p>(.*?)</p>\s*$", piece, flags=re.S)
        if tagged and tagged.group(1).strip():
            labels.append(re.sub(r"\s+", " ", tagged.group(1)).strip())
        elif listed:
            labels.append(listed[k])
        elif request:
            labels.append(request)
        else:
            labels.append(answer_words(piece))
    return labels
