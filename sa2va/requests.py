"""What a user asks for, as the engine takes it: the one place for the request rules and the defaults.

The nodes, the CLI and the library all build requests here, so the same text gives the same request everywhere:

* :func:`as_request`: a bare noun phrase ("hair", "the red car"; :func:`is_bare_phrase`, the one rule for what that
  is) becomes "Please segment the hair."; any other text (a sentence, a question, an instruction) is left as the user
  wrote it. :func:`sa2va.outputs.labels.request_phrase` reads the request this builds, so a text and its request
  name the same object (docs/labels.md);
* :func:`prompt_lines`: the requests of "one prompt per line" mode;
* the defaults: the prompt, the answer length (:data:`DEFAULT_MAX_NEW_TOKENS`) and its upper bound.
"""
from __future__ import annotations

#: the prompt the nodes start with
DEFAULT_PROMPT = "Please segment the main subject."
#: the answer length limit of every entry point (nodes, CLI, library); each [SEG] needs a few tokens, a described
#: image a few hundred (the reference code's own limit is 2048: pass it for long free-form answers)
DEFAULT_MAX_NEW_TOKENS = 512
#: the longest answer the nodes and the CLI offer
MAX_NEW_TOKENS = 2048
#: longest bare noun phrase (in words) that :func:`as_request` turns into a segmentation request: a name with one
#: modifier ("the man in the red shirt", "red car on the left") is one; a longer text is taken as the user wrote it
MAX_BARE_WORDS = 6

#: words and phrases that make a text an instruction or a question, not a name, when it starts with one (compared
#: in lower case, without punctuation). Every way of asking that sa2va.outputs.labels reads starts with one of these
#: (tests/test_labels.py checks it), so a request in any of those forms is never wrapped as a bare name.
INSTRUCTION_STARTS = frozenset({
    # politeness and wishes
    "please", "kindly", "pls", "plz", "hey", "hi", "hello", "ok", "okay", "now", "just", "also", "then", "so",
    "and", "go ahead", "help", "let", "let's", "try", "i", "i'd", "i'm", "we", "we'd", "we're", "looking for",
    # questions
    "what", "what's", "whats", "where", "where's", "wheres", "which", "who", "who's", "whose", "why", "how", "when",
    "is", "are", "was", "were", "can", "could", "would", "will", "should", "do", "does", "did", "has", "have",
    "there", "there's",
    # verbs whose object is the thing to segment, or the mask of it
    "segment", "outline", "highlight", "isolate", "cut out", "select", "mask", "masks", "find", "locate", "detect",
    "identify", "extract", "track", "show", "pick out", "point out", "point to", "see", "get",
    "look for", "search for", "separate", "draw", "make", "give", "create", "generate", "produce", "provide",
    "output", "return", "paint", "tell", "indicate",
    # other tasks and answers about the format
    "describe", "explain", "caption", "summarize", "list", "count", "answer", "respond", "reply",
})
_ARTICLES = {"the", "a", "an", "this", "that", "these", "those", "all", "every", "each", "my", "his", "her", "their"}
_PUNCTUATION = ",;:.!?\"'()"


def starts_as_instruction(text: str) -> bool:
    """Whether ``text`` starts with one of :data:`INSTRUCTION_STARTS` ("Where's the cat", "cut out the bird")."""
    words = [w.lower().replace("\u2019", "'").strip(_PUNCTUATION) for w in text.split()]
    return any(" ".join(words[:n]) in INSTRUCTION_STARTS for n in (1, 2))


def is_bare_phrase(text: str) -> bool:
    """Whether ``text`` is a bare name of what to segment ("hair", "the red car"): at most :data:`MAX_BARE_WORDS`
    words, no sentence end (".", "?", "!"), and not starting as an instruction or question
    (:func:`starts_as_instruction`). The one rule for what a bare phrase is, for the nodes and the library alike."""
    text = text.replace("<image>", "").strip()
    words = text.split()
    return (0 < len(words) <= MAX_BARE_WORDS and not text.endswith(("?", ".", "!"))
            and not starts_as_instruction(text))


def as_request(prompt: str) -> str:
    """Turn a bare noun phrase (:func:`is_bare_phrase`: "hair", "red car") into "Please segment the hair."; leave
    any other text (a sentence, a question, an instruction) as the user wrote it."""
    if not is_bare_phrase(prompt):
        return prompt
    text = prompt.replace("<image>", "").strip()
    article = "" if text.split()[0].lower() in _ARTICLES else "the "
    return f"Please segment {article}{text}."


def prompt_lines(text: str) -> list[str]:
    """Each non-empty line of a prompt, stripped: the requests of "one prompt per line" mode."""
    return [line.strip() for line in (text or "").replace("<image>", "").splitlines() if line.strip()]
