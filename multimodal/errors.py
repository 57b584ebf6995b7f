"""Errors whose fix is an argument, worded for whoever called: Python code or the command line."""
from __future__ import annotations


class ArgumentNeeded(ValueError):
    """A refusal that an argument lifts; the message names the argument the way the caller gives it.

    ``template`` marks each argument as ``{name}``; ``arguments`` maps the name to its
    two spellings, ``(python, command_line)``::

        ArgumentNeeded("output emb.npy exists; pass {overwrite} to replace it",
                       overwrite=("overwrite=True", "--overwrite"))

    ``str(error)`` reads "... pass overwrite=True ..." (the Python API's wording);
    :meth:`for_command_line` reads "... pass --overwrite ...". Only the markers are
    replaced, so the rest of the message may hold braces (shard specs, templates).
    """

    def __init__(self, template: str, **arguments: tuple[str, str]) -> None:
        self.template = template
        self.arguments = arguments
        super().__init__(self._render(0))

    def _render(self, spelling: int) -> str:
        text = self.template
        for name, spellings in self.arguments.items():
            text = text.replace("{" + name + "}", spellings[spelling])
        return text

    def for_command_line(self) -> str:
        """The message with each argument spelt as its command-line option."""
        return self._render(1)
