"""Prompt checks with recorded reasons: schema, unsafe content, single physical object, length, garbage."""
from __future__ import annotations

import re
import unicodedata

#: JSON schema of one object proposed by the LLM (structured output).
ITEM_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 80},
        "description": {"type": "string", "minLength": 8, "maxLength": 400},
        "category": {"type": "string", "minLength": 2, "maxLength": 80},
    },
    "required": ["name", "description", "category"],
    "additionalProperties": False,
}

MIN_WORDS, MAX_WORDS = 3, 40
MIN_CHARS, MAX_CHARS = 12, 300
# Deliberately short, documented word lists; a lab can extend them in config.
UNSAFE_TERMS = ("nude", "naked", "nsfw", "porn", "sexual", "erotic", "gore", "gory", "corpse", "dead body",
                "severed", "swastika", "nazi", "blood-soaked", "mutilated", "cocaine", "heroin", "meth lab")
MULTI_OR_SCENE = (r"\bscene\b", r"\blandscape\b", r"\bcityscape\b", r"\bgroup of\b", r"\bcollection of\b",
                  r"\bset of\b", r"\bpile of\b", r"\bcrowd\b", r"\bseveral\b", r"\bmany\b", r"\bpair of\b",
                  r"\binterior of\b", r"\bpanorama\b", r"\bbackground of\b", r"\bpeople\b")
ABSTRACT = (r"\bconcept of\b", r"\bfeeling of\b", r"\babstract\b", r"\bidea of\b", r"\bemotion\b")
_URL = re.compile(r"https?://|www\.|<[a-z/][^>]*>|\{\{|\}\}|```")
#: instruction-like text (prompt injection aimed at a later LLM or at whoever reads the bank)
INJECTION = re.compile(r"\b(ignore|disregard|forget)\b.{0,40}\b(previous|prior|above|earlier|all)\b.{0,40}"
                       r"\b(instructions?|prompts?|rules?)\b|\b(system prompt|api[_ ]?key|openai_api_key|password|"
                       r"secret key|print the value|environment variable)\b", re.IGNORECASE)
#: prompt ids of file banks: used in sample keys and staging paths
PROMPT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s-]", " ", text)
    return " ".join(text.split())


def validate_item(item) -> str | None:
    """None if ``item`` fits :data:`ITEM_SCHEMA`, else the reason."""
    import jsonschema

    try:
        jsonschema.validate(item, ITEM_SCHEMA)
    except jsonschema.ValidationError as e:
        return f"schema: {e.message}"[:200]
    return None


def check_prompt_id(pid) -> str | None:
    """None if ``pid`` can name a sample (letters, digits, '-', '_'; 1-64 characters), else the reason."""
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        return f"prompt_id must be a string or an integer, got {type(pid).__name__}"
    if not PROMPT_ID.match(str(pid)):
        return "prompt_id must be 1-64 characters of letters, digits, '-' or '_'"
    return None


def check_prompt(text: str) -> str | None:
    """None if the prompt passes every filter, else the reason (a stable 'class: detail' string)."""
    if not isinstance(text, str):
        return f"garbage: the prompt is a {type(text).__name__}, not text"
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Co") and ch not in "\t\n" for ch in text) or "\ufffd" in text:
        return "garbage: control or invalid characters"
    if any(unicodedata.category(ch) == "Cf" for ch in text):  # bidi overrides, zero-width characters
        return "garbage: invisible format characters (bidi override or zero-width)"
    if INJECTION.search(text):
        return "unsafe: instruction-like text"
    letters = sum(ch.isalpha() for ch in text)
    if not text.strip() or letters / max(1, len(text)) < 0.6 or _URL.search(text):
        return "garbage: not natural-language text"
    words = text.split()
    if len(words) < MIN_WORDS or len(text) < MIN_CHARS:
        return f"too short: {len(words)} words"
    if len(words) > MAX_WORDS or len(text) > MAX_CHARS:
        return f"too long: {len(words)} words"
    low = text.lower()
    for term in UNSAFE_TERMS:
        if re.search(rf"\b{re.escape(term)}\b", low):
            return f"unsafe: {term}"
    for pat in MULTI_OR_SCENE:
        if re.search(pat, low):
            return f"not a single object: {pat.strip(chr(92) + 'b')}"
    for pat in ABSTRACT:
        if re.search(pat, low):
            return f"not a physical object: {pat.strip(chr(92) + 'b')}"
    return None
