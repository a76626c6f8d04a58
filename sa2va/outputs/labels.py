"""Labels that name each segmented object: from the answer's ``<p>...</p>`` phrases, else from the request.

Sa2VA answers a segmentation request with a few trained templates ("Sure, it is [SEG].", "It is [SEG].",
"Sure, [SEG].", "[SEG].", "Sure, the segmentation result is [SEG]."), so the words before a [SEG] are usually
boilerplate, not a name. A label is therefore, for each [SEG] in order:

1. the ``<p>...</p>`` phrase paired with it (:func:`tagged_phrases`: phrases and [SEG] pair one by one, nearest
   first), when the model gives one;
2. else the object the request names (:func:`request_phrase`: "Please segment the red car." -> "red car", "Where's
   the cat?" -> "cat"); when the answer has several [SEG] and the phrase lists exactly that many objects ("the cat
   and the dog"), one object each, in order;
3. else the answer's own words before the [SEG] with the template boilerplate removed ("It is a dog [SEG]" ->
   "dog"), or "" when nothing but boilerplate is left.

The request is read by a small grammar over its words (docs/labels.md): named word classes (:data:`WORD_CLASSES`),
an ordered list of rules for the words before the object (:data:`RULES`) and one for the words after it
(:data:`TAILS`). A rule is a line of slots: an upper-case name is a word class or a named part (:data:`PARTS`), a
lower-case word stands for itself, and ``?`` marks a slot that may be missing.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..requests import as_request
from ..tasks import TASK_INSTRUCTIONS

SEG_TOKEN = "[SEG]"

#: the word classes of the grammar: each a set of words or phrases, compared in lower case without punctuation
WORD_CLASSES: dict[str, tuple[str, ...]] = {
    "ARTICLE": ("the", "a", "an"),
    "DETERMINER": ("the", "a", "an", "this", "that", "his", "her", "its", "their", "my", "your", "one", "another"),
    # words that only make a request polite or chain it to another
    "POLITE": ("please", "kindly", "pls", "plz", "hey", "hi", "hello", "ok", "okay", "now", "just", "also", "then",
               "so", "and", "go ahead and", "can you", "could you", "would you", "will you", "can u", "could u",
               "help me", "help me to", "try to", "let's", "let us"),
    # a wish; what follows is a request of its own or the object itself
    "WISH": ("i'd like", "i would like", "i'd love", "i would love", "i want", "i wanna", "i need", "we want",
             "we need", "we'd like", "i'm looking for", "i am looking for", "looking for"),
    # questions whose subject is the object
    "QUESTION": ("which is", "which one is", "which are", "which ones are", "what is", "what's", "whats", "what are",
                 "who is", "who's", "who are", "is there", "is there any", "are there", "are there any",
                 "do you see", "can you see", "where can i find", "where can i see", "where do you see"),
    "WHERE_QUESTION": ("where is", "where's", "wheres", "where are", "where exactly is", "where exactly are"),
    # verbs whose object is the thing to segment
    "VERB": ("segment", "segment out", "identify and segment", "outline", "highlight", "isolate", "cut out",
             "select", "mask", "mask out", "find", "locate", "detect", "identify", "extract", "track", "show",
             "pick out", "point out", "point to", "see", "get", "look for", "search for", "separate"),
    # verbs that point to where something is ("show me where ... is")
    "SHOW": ("show", "tell", "find", "see", "let me know", "let me see", "point out", "indicate", "highlight"),
    # verbs whose object is a mask of the thing
    "MAKE": ("draw", "make", "give", "create", "generate", "produce", "provide", "output", "return", "paint", "get"),
    # answers about the format only ("Please respond with segmentation mask.")
    "RESPOND": ("respond", "answer", "reply"),
    "ME": ("me", "us"),
    "MASK": ("mask", "masks", "segmentation mask", "segmentation masks", "segmentation", "binary mask",
             "outline", "outlines", "cutout", "cut-out", "silhouette", "matte", "selection"),
    "MASK_PREPOSITION": ("of", "for", "around", "over", "covering"),
    # the picture as a whole: "in this image", "from the video"
    "PLACE": ("in", "on", "from", "within", "inside"),
    "SCENE_DETERMINER": ("this", "the", "that", "my", "our", "your"),
    "SCENE_ADJECTIVE": ("given", "attached", "provided", "current", "following", "above", "whole"),
    "SCENE": ("image", "images", "picture", "photo", "photograph", "frame", "frames", "video", "clip", "scene",
              "shot", "pic"),
    "WITH": ("with", "using", "as"),
    "COURTESY": ("please", "for me", "for us", "thanks", "thank you", "if you can", "if possible", "if you could",
                 "now"),
    # what was asked done to the object ("I want the chair segmented")
    "DONE": ("segmented", "masked", "masked out", "highlighted", "outlined", "isolated", "selected", "cut out",
             "extracted", "found", "located", "detected", "shown"),
    "WHERE_END": ("is", "are", "is located", "are located", "located", "is at", "are at", "at"),
}

#: named parts, used as slots in the rules
PARTS: dict[str, str] = {
    "MASK_OF": "ARTICLE? MASK MASK_PREPOSITION",   # "a mask of", "the segmentation mask for", "masks around"
}


@dataclass(frozen=True)
class Rule:
    """One way the words before the object go: ``slots`` as in the module docstring. A ``lead`` rule is followed
    by more request words (the rules are tried again after it); any other rule is followed by the object. A
    ``where`` rule asks where something is, so the object may end in "is" / "is located" (:data:`TAILS`)."""

    name: str
    slots: str
    lead: bool = False
    where: bool = False


#: the rules for the words before the object, in order: at each point the first rule that matches is taken
RULES: tuple[Rule, ...] = (
    Rule("politeness", "POLITE", lead=True),                  # "please", "could you", "hey,"
    Rule("wish", "WISH you? to?", lead=True),                 # "I'd like", "I want you to", "I need"
    Rule("where question", "WHERE_QUESTION", where=True),     # "where's", "where is"
    Rule("question", "QUESTION"),                             # "which is", "is there", "do you see"
    Rule("show where", "SHOW ME? where", where=True),         # "show me where", "tell me where"
    Rule("mask making", "MAKE ME? MASK_OF"),                  # "draw a mask around", "give me a mask of"
    Rule("mask", "MASK_OF"),                                  # "(I'd like) a mask of"
    Rule("two verbs", "VERB and VERB ME? MASK_OF?"),          # "find and segment", "locate and highlight"
    Rule("verb", "VERB ME? MASK_OF?"),                        # "segment", "find me", "outline the mask of"
    Rule("making", "MAKE ME?"),                               # "give me"
    Rule("format", "RESPOND"),                                # "respond (with segmentation mask)"
)

#: the words after the object that are not the object's, removed from its end again and again
TAILS: tuple[Rule, ...] = (
    Rule("scene", "PLACE SCENE_DETERMINER? SCENE_ADJECTIVE? SCENE"),   # "in this image", "from the video"
    Rule("with a mask", "WITH ARTICLE? MASK"),                         # "with a segmentation mask"
    Rule("courtesy", "COURTESY"),                                      # "please", "for me", "thanks"
    Rule("done", "DONE"),                                              # "(I want the chair) segmented"
    Rule("where", "WHERE_END", where=True),                            # "(show me where the bicycle) is"
)

#: what a request may name that is no object
EMPTY_OBJECTS = frozenset({"", "it", "this", "that", "them", "these", "those", "everything", "something",
                           "anything", "here", "there", "this image", "the image", "image", "picture", "the picture",
                           "this picture", "all", "all objects", "every object"})

_PUNCTUATION = ",;:.!?\"'()"
_SPECIAL = re.compile(r"<\|[^>]*\|>|</?p>|</?vp>")
_TAGGED = re.compile(r"<p>((?:(?!</?p>).)*)</p>|\[SEG\]", re.S)
_BOILERPLATE_START = re.compile(r"^(?:and|or|then|also|,|\s)*(?:(?:sure|yes|ok|okay|certainly|of\s+course)\b[\s,.!]*)?"
                                r"(?:(?:it\s+is|it's|this\s+is|that\s+is|here\s+is|here\s+it\s+is|here\s+are|"
                                r"they\s+are|the\s+segmentation(?:\s+result|\s+mask)?\s+is|the\s+result\s+is|"
                                r"the\s+mask\s+is)\b)?[\s,:]*", re.I)
_BOILERPLATE_END = re.compile(r"\s+(?:is|are|was|were|at|here|there)$", re.I)


# ------------------------------------------------------------------------------------------------ the grammar
def _key(word: str) -> str:
    return word.lower().replace("\u2019", "'").strip(_PUNCTUATION)


def _slot_ends(slot: str, keys: list[str], start: int) -> Iterator[int]:
    """Where one slot (a part, a word class or a literal word) can end when it starts at ``start``."""
    if slot in PARTS:
        yield from _ends(PARTS[slot].split(), keys, start)
        return
    phrases = WORD_CLASSES.get(slot, (slot,))
    for phrase in sorted(phrases, key=lambda p: -len(p.split())):  # the longest phrase first
        words = phrase.split()
        if keys[start:start + len(words)] == words:
            yield start + len(words)


def _ends(slots: list[str], keys: list[str], start: int) -> Iterator[int]:
    """Where a line of slots can end when it starts at ``start``: each optional slot tried present, then missing."""
    if not slots:
        yield start
        return
    slot, optional = slots[0].rstrip("?"), slots[0].endswith("?")
    for end in _slot_ends(slot, keys, start):
        yield from _ends(slots[1:], keys, end)
    if optional:
        yield from _ends(slots[1:], keys, start)


def _prefix(rule: Rule, keys: list[str], start: int) -> int | None:
    """The end of ``rule`` matched at ``start`` (at least one word), or None."""
    return next((end for end in _ends(rule.slots.split(), keys, start) if end > start), None)


def _tail_start(keys: list[str], where: bool) -> int | None:
    """Where the shortest tail (:data:`TAILS`; the ``where`` ones only when ``where``) that ends ``keys`` starts."""
    for start in range(len(keys) - 1, -1, -1):
        for rule in TAILS:
            if (where or not rule.where) and len(keys) in _ends(rule.slots.split(), keys, start):
                return start
    return None


def _strip_tails(words: list[str], where: bool) -> list[str]:
    """``words`` without the tails that end them, removed one after another."""
    while words:
        cut = _tail_start([_key(w) for w in words], where)
        if cut is None:
            break
        words = words[:cut]
    return words


def sentence_object(sentence: str) -> str | None:
    """The object one sentence of a request names by the grammar (:data:`RULES`, then a leading article dropped,
    then :data:`TAILS`), "" when it names none ("What is this?"), or None when no rule reads the sentence."""
    words = sentence.split()
    keys = [_key(w) for w in words]
    start, where, read = 0, False, False
    while start < len(words):
        found = next(((rule, end) for rule in RULES if (end := _prefix(rule, keys, start)) is not None), None)
        if found is None:
            break
        rule, start = found
        read, where = True, where or rule.where
        if not rule.lead:
            break
    if not read:
        return None
    words = words[start:]
    if len(words) > 1 and keys[start] in WORD_CLASSES["ARTICLE"]:  # "the" of "the ... in this image" goes too
        words = words[1:]
    return _tidy(" ".join(_strip_tails(words, where)))


def _tidy(phrase: str) -> str:
    """A phrase without outer punctuation, its tails, a leading article, or a name of nothing ("it", "a mask")."""
    words = _strip_tails(re.sub(r"\s+", " ", phrase).strip(" ,;:.!?\"'").split(), where=False)
    if len(words) > 1 and _key(words[0]) in WORD_CLASSES["ARTICLE"]:
        words = words[1:]
    phrase = " ".join(words).strip(" ,;:.!?\"'")
    keys = [_key(w) for w in words]
    if phrase.lower() in EMPTY_OBJECTS or len(keys) in _ends("ARTICLE? MASK".split(), keys, 0):
        return ""
    return phrase


def request_phrase(prompt: str) -> str:
    """The object a segmentation request names, or "" when it names none.

    The prompt is first made a request as the nodes and the library make it (:func:`sa2va.requests.as_request`: a
    bare "red car" is "Please segment the red car."), then its sentences are read in order by the grammar and the
    first that names an object gives it: "Please segment the red car." -> "red car"; "Where's the cat?" -> "cat";
    "I'd like a mask of the dog." -> "dog"; "Show me where the bicycle is." -> "bicycle"; "What is the cup on the
    left? Please respond with segmentation mask." -> "cup on the left"; "What is this?" -> "". The describe tasks'
    instructions (:data:`sa2va.tasks.TASK_INSTRUCTIONS`) name no object: a [SEG] of a description without its own
    ``<p>`` phrase is named by the answer's words."""
    text = re.sub(r"\s+", " ", as_request(prompt or "").replace("<image>", " ")).strip()
    if text in TASK_INSTRUCTIONS:
        return ""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        found = sentence_object(sentence)
        if found:
            return found
    return ""


def split_objects(phrase: str, count: int) -> list[str] | None:
    """The ``count`` objects a phrase lists ("cat, the dog and the bird" -> ["cat", "dog", "bird"]), or None when it
    does not list exactly ``count``. Every object after the first must start with a determiner ("the", "a", ...), so
    "red and white car" stays one object."""
    if count < 2 or not phrase:
        return None
    raw = re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", phrase, flags=re.I)
    if len(raw) != count or not all(_key(p.split()[0]) in WORD_CLASSES["DETERMINER"] for p in raw[1:] if p):
        return None
    parts = [_tidy(p) for p in raw]
    return parts if all(parts) else None


# ------------------------------------------------------------------------------------------------ the answer
def tagged_phrases(raw_text: str) -> list[str | None]:
    """The ``<p>...</p>`` phrase paired with each [SEG] of an answer, in order (None for a [SEG] without one).

    The answer is read as runs: some phrases, then some [SEG]. In a run the phrases and [SEG] nearest each other
    pair up one by one: "<p>a</p> [SEG] <p>b</p> [SEG]" -> a, b; "<p>a</p> and <p>b</p> [SEG]" -> b (the phrase
    right before it); "<p>a</p> and <p>b</p> [SEG] [SEG]" -> a, b; "<p>a</p> [SEG] [SEG]" -> a, None."""
    runs: list[tuple[list[str], int]] = [([], 0)]
    for match in _TAGGED.finditer(raw_text):
        phrases, segs = runs[-1]
        if match.group(0) == SEG_TOKEN:
            runs[-1] = (phrases, segs + 1)
        elif segs:
            runs.append(([match.group(1)], 0))
        else:
            phrases.append(match.group(1))
    paired: list[str | None] = []
    for phrases, segs in runs:
        chosen = phrases[len(phrases) - segs:] if len(phrases) >= segs else phrases + [None] * (segs - len(phrases))
        paired += [_phrase_text(p) for p in chosen[:segs]]
    return paired


def _phrase_text(phrase: str | None) -> str | None:
    text = re.sub(r"\s+", " ", phrase or "").strip()
    return text or None


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
    tagged = tagged_phrases(raw_text)
    request = request_phrase(prompt)
    listed = split_objects(request, count)
    labels = []
    for k, piece in enumerate(pieces):
        if k < len(tagged) and tagged[k]:
            labels.append(tagged[k])
        elif listed:
            labels.append(listed[k])
        elif request:
            labels.append(request)
        else:
            labels.append(answer_words(piece))
    return labels
