"""The ``unstoppable`` command line (also ``python -m unstoppable``).

    unstoppable demo [--dir DIR] [--log nats://...] [--seats N] [--users N] [--workers N] ...
    unstoppable topics create NAME [--partitions N] [--config KEY=VALUE ...]
    unstoppable topics list | describe NAME
    unstoppable produce TOPIC [--format lines|json] [--codec C] [--key K | --key-field F]
    unstoppable consume TOPIC [--group G] [--offset O] [-n N] [-f]
    unstoppable tail TOPIC [-n N] [-f]
    unstoppable groups [GROUP] [--sqlite DB]
    unstoppable dump TOPIC [--partition P] [--offset O] [-n N]
    unstoppable verify
    unstoppable compact [TOPIC]
    unstoppable dlq list | redrive [ID ... | --all]
    unstoppable bench [--records N] [--value-bytes B]
    unstoppable export TOPIC --format parquet|arrow|csv --out PATH [--from X] [--to Y]

Every command that reads a log takes ``--log DIR`` (default: $UNSTOPPABLE_LOG);
``topics``, ``produce``, ``consume``, ``tail`` and ``dlq`` also take
``--log nats://host:port[,host:port...]`` (a JetStream cluster, through
``unstoppable.connect``), and ``demo --log nats://...`` runs the demo there.
Output is for people by default; ``--json`` prints JSON for scripts (one
document, or one per line for record streams). Long work shows a progress bar
on stderr when it is a terminal (``--progress`` forces it). Bad input gives a
one-line error and a non-zero exit: 2 for bad usage, 1 for everything else.
"""
from __future__ import annotations

import argparse
import os
import sys

from unstoppable.cli import (
    bench,
    compact,
    consume,
    demo,
    dlq,
    dump,
    export,
    groups,
    natsserver,
    produce,
    serve,
    topics,
    verify,
)
from unstoppable.cli._common import _EXIT_ERROR, CLIError, _Parser

__all__ = ["main"]

# In the order of the help text.
_COMMANDS = (demo, topics, produce, consume, groups, dump, verify, compact, dlq, bench, export, serve, natsserver)


def _parser() -> argparse.ArgumentParser:
    # The common options work before and after the command name; the
    # subcommands' copies default to SUPPRESS so they never overwrite a value
    # given before the command.
    def common_options(parser, default):
        parser.add_argument("--json", action="store_true", default=default(False),
                            help="print JSON for scripts")
        parser.add_argument("--progress", action="store_true", default=default(False),
                            help="show the progress bar even when stderr is not a terminal")

    common = _Parser(add_help=False)
    common_options(common, lambda v: argparse.SUPPRESS)
    withlog = _Parser(add_help=False, parents=[common])
    withlog.add_argument("--log", metavar="DIR", default=argparse.SUPPRESS,
                         help="the log directory (default: $UNSTOPPABLE_LOG)")

    p = _Parser(prog="unstoppable", description="An embedded, durable, partitioned event log.",
                epilog="Run 'unstoppable COMMAND --help' for a command's options.")
    common_options(p, lambda v: v)
    p.add_argument("--log", metavar="DIR", help="the log directory (default: $UNSTOPPABLE_LOG)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in _COMMANDS:
        module.register(sub, common, withlog)
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    import unstoppable as us
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = _parser()
        args, unknown = parser.parse_known_args(groups.rewrite_argv(argv))
        if unknown:     # before "COMMAND is required", which would hide the real mistake
            parser.error(f"unrecognized argument{'s' if len(unknown) > 1 else ''}: {' '.join(unknown)}")
        if args.command is None:
            parser.error("a COMMAND is required")
        args.argv = argv
        return args.func(args)
    except CLIError as e:
        msg, code = str(e), e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (| head): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (us.UnstoppableError, OSError, ValueError, KeyError, ImportError, TimeoutError,
            RuntimeError) as e:
        if os.environ.get("UNSTOPPABLE_DEBUG") == "1":
            raise
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        msg, code = text or type(e).__name__, _EXIT_ERROR
    except Exception as e:
        # A bug of the command line itself, not bad input: say so, and how to see it.
        if os.environ.get("UNSTOPPABLE_DEBUG") == "1":
            raise
        text = f"{type(e).__name__}: {e}".splitlines()[0]
        print(f"unstoppable: internal error: {text} (a bug; UNSTOPPABLE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return _EXIT_ERROR
    print(f"unstoppable: error: {msg}".splitlines()[0], file=sys.stderr)
    return code
