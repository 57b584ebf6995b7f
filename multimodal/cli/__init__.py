"""The ``multimodal`` command line: embed, classify, eval, shards, tokenizer, convert, interpolate, demo, index, search,
serve.

Each command is a module of this package holding its options (``add_command``) beside
the function that runs them (``run(args, parser)``). ``main(argv)`` returns the exit
status, one rule for every command (``EXIT_STATUS_HELP``): 0 when every input was
processed, 1 when some inputs were skipped or the job failed, 2 for bad arguments; so
tests call it directly. Results go to standard output; progress bars, skipped inputs
and errors to standard error, an error as one line without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from multimodal.cli import (
    classify, convert, demo, embed, evaluate, index, interpolate, search, serve, shards, tokenizer,
)
from multimodal.cli.command_options import EXIT_STATUS_HELP, PROGRAM, one_line
from multimodal.errors import ArgumentNeeded

COMMANDS = (embed, classify, evaluate, shards, tokenizer, convert, interpolate, demo, index, search, serve)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (``multimodal COMMAND --help`` describes each)."""
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Train-free uses of a multimodal checkpoint, and data preparation.",
                                     epilog=EXIT_STATUS_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit status (argparse exits with 2 on bad arguments)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Checks made after parsing report through the command's parser: usage line, status 2.
        return args.run(args, args.command_parser)
    except ArgumentNeeded as error:  # refused until an option is given: a bad argument
        args.command_parser.error(one_line(error.for_command_line()))
    except BrokenPipeError:
        # The reader went away (`multimodal search ... | head`): nothing left to tell it. Point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError) as error:
        print(f"{PROGRAM} {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 1
