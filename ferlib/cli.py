"""``python -m ferlib <verb>``: the command line over ferlib's functions.

Each stage module adds its own verbs through ``add_commands(subparsers)``;
this file only collects them and turns :class:`~ferlib.errors.FERError` into
one line on stderr and exit status 2. So does an ``OSError`` that names a
path (an output folder under a file, a read-only folder, a full disk): it is
about the paths given, not a bug of ferlib.
"""
import argparse
import importlib
import sys

from .errors import FERError

#: Modules that contribute verbs, in the order they appear in ``--help``.
STAGE_MODULES = [
    "ferlib.synth",
    "ferlib.data",
    "ferlib.demo",
    "ferlib.train",
    "ferlib.evaluate",
    "ferlib.serving",
    "ferlib.web",
    "ferlib.export",
]


def parse_assignments(text, option, convert, example):
    """``"a=1,b=2"``, the value of ``option``, as ``{"a": convert("a", "1"), ...}``; a pair without ``=``
    is a FERError that names ``option`` and gives ``example``."""
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise FERError(f"{option} {text!r}: give NAME=VALUE pairs such as {example}")
        pairs[name.strip()] = convert(name.strip(), value.strip())
    return pairs


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m ferlib",
        description="Facial emotion recognition on FER+ with MXNet Gluon: data, training, evaluation, serving.",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="<verb>")
    subparsers.required = True
    for name in STAGE_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except FERError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:
            raise  # no path to blame: keep the traceback of what is then a bug
        from .fileio import os_reason
        print(f"error: cannot use {e.filename}: {os_reason(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
