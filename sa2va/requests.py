"""What a user asks for, as the engine takes it: the one place for the request rules and the defaults.

The nodes, the CLI and the library all build requests here, so the same text gives the same request everywhere:

* :func:`as_request`: a bare noun phrase ("hair", "the red car") becomes "Please segment the hair."; any other text
  (a sentence, a question, an instruction) is left as the user wrote it;
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
#: longest bare noun phrase (in words) that :func:`as_request` turns into a segmentation request
MAX_BARE_WORDS = 4

_INSTRUCTION_WORDS = {"please", "segment", "what", "where", "which", "who", "why", "how", "describe", "is", "are",
                      "can", "could", "would", "find", "show", "highlight", "mask", "select", "identify", "tell",
                      "give", "list", "count", "locate", "outline", "detect", "explain", "answer", "do", "does"}
_ARTICLES = {"the", "a", "an", "this", "that", "these", "those", "all", "every", "each", "my", "his", "her", "their"}


def as_request(prompt: str) -> str:
    """Turn a bare noun phrase ("hair", "red car") into "Please segment the hair."; leave requests alone."""
    text = prompt.replace("<image>", "").strip()
    words = text.split()
    if (not words or len(words) > MAX_BARE_WORDS or text.endswith(("?", ".", "!"))
            or words[0].lower() in _INSTRUCTION_WORDS):
        return prompt
    article = "" if words[0].lower() in _ARTICLES else "the "
    return f"Please segment {article}{text}."


def prompt_lines(text: str) -> list[str]:
    """Each non-empty line of a prompt, stripped: the requests of "one prompt per line" mode."""
    return [line.strip() for line in (text or "").replace("<image>", "").splitlines() if line.strip()]
