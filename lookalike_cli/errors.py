"""Errors the CLI shows as a one-line message (exit 1) instead of a traceback."""

from __future__ import annotations

from collections.abc import Mapping


class LookalikeError(Exception):
    """A problem with the user's input or environment; the message says what to do next."""


class ParameterError(LookalikeError):
    """A bad argument, in a message that names the parameters it is about.

    The library does not know how its caller spells a parameter: a notebook user passed
    `size="150%"`, a CLI user typed `--size 150%`. So the message is a template that names each
    parameter as a `{name}` field (`{{name}}` inside an f-string), `params` lists those names,
    str() reads with the Python names and `render` with the caller's spelling (the CLI passes
    its flags, cli/_common.py). Fields are replaced as plain text, not by str.format, so braces
    in the values (SQL, JSON) are safe.

        error = ParameterError(f"{{max_bid}} ({max_bid}) must be above {{min_bid}} ({min_bid}).", "max_bid", "min_bid")
        str(error)                                                     # max_bid (3) must be above min_bid (5).
        error.render({"max_bid": "--max-bid", "min_bid": "--min-bid"})  # --max-bid (3) must be above --min-bid (5).
    """

    def __init__(self, template: str, *params: str):
        self.template = template
        self.params = params
        super().__init__(self.render({}))

    def render(self, names: Mapping[str, str]) -> str:
        """The message with each parameter spelled as `names` says (its Python name where it says nothing)."""
        message = self.template
        for param in self.params:
            message = message.replace("{" + param + "}", names.get(param, param))
        return message


def input_error(what: str, problem: str) -> LookalikeError:
    """An error about something the user gave, `what` first: a ParameterError when `what` is the
    name of the parameter that holds it ("exclude_sql"), a plain LookalikeError when it describes
    it ("Seed sql: select ...", "raw.opt_outs")."""
    if what.isidentifier():
        return ParameterError(f"{{{what}}} {problem}", what)
    return LookalikeError(f"{what} {problem}")
