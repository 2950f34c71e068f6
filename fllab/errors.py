"""Exception types that map onto the CLI's exit codes (DESIGN.md: 0 ok, 1 runtime, 2 usage/config, 130 interrupt)."""
from __future__ import annotations


class FllabError(Exception):
    """Base class for every error fllab raises on purpose."""

    exit_code = 1


class ConfigError(FllabError):
    """A scenario, override or component setting is invalid.

    The message is one readable line naming the offending field (as a dotted YAML path)
    and what is allowed.  The CLI prints it without a traceback and exits with 2.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class CapabilityError(ConfigError):
    """Two components cannot work together (e.g. an attack needs a gradient, the algorithm sends a ranking)."""


#: longest value echoed in a message; a longer one is cut in the middle
MAX_ECHO = 80


def shorten(value: object, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` (a string as itself) on one line, cut to ``limit`` characters: error
    messages name the offending value without echoing megabytes of it."""
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split()) if "\n" in text else text
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]} ({len(text):,} characters)"


def article(noun: str) -> str:
    """``"a list"``, ``"an int"``."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
