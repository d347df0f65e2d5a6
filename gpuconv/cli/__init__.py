"""The ``gpuconv`` command: ``train``, ``evaluate``, ``predict``, ``summary``, ``info``,
``precompile``, ``bench``.

    gpuconv train --data DIR                      # three_layer_convnet, about a minute on a CPU
    gpuconv train --model fast --device cuda --data DIR --out runs/fast
    gpuconv train --recipe airbench94 --device cuda --data DIR --out runs/airbench
    gpuconv evaluate --checkpoint runs/fast/checkpoint.npz --data DIR --json --tta 2
    gpuconv info

Hyperparameters live in ``gpuconv.recipes.RECIPES`` (one recipe per model name); a flag
overrides one value. ``train --resume``
reads the run's settings back from its checkpoint, so ``gpuconv train --out DIR --resume`` is
enough to continue an interrupted run.

The command is a package of one module a part, each read on its own: ``_parser`` (the command
line and its argument types), ``_splits`` (--val-split and the data set), ``_models`` (the
networks, their optimizer and schedule), ``_training`` (train, and the settings --resume takes
back), ``_evaluate``, ``_predict`` (predict and summary), ``_info`` (info and precompile),
``_bench`` and ``_output`` (the command's messages); ``main`` is here. They stay one namespace,
as when they were one module: every name a part defines or imports is ``gpuconv.cli.<name>``, and
a name set on ``gpuconv.cli`` (a test's ``monkeypatch.setattr(cli, "build_model", stub)``) is set
in the parts that hold it too, where their functions look it up. So a part reaches a sibling's
names through the sibling, ``_models.build_model(...)``, never by a from-import, whose copy of the
name such a setting would not reach.
"""
from __future__ import annotations

import sys
import warnings

from .. import _env, _package
from .._console import silence
from . import _bench, _evaluate, _info, _models, _output, _parser, _predict, _splits, _training
from ._bench import cmd_bench
from ._evaluate import cmd_evaluate
from ._info import cmd_info, cmd_precompile
from ._output import _say
from ._parser import build_parser
from ._predict import cmd_predict, cmd_summary
from ._training import cmd_train

_PARTS = (_output, _parser, _splits, _models, _training, _evaluate, _predict, _info, _bench)
# The names the parts import (cli.np, cli.get_recipe, cli.CONSOLE) are the package's too, as they were the one
# module's; a name set on the package is set in the parts holding it (gpuconv._package).
_package.gather(__name__, *_PARTS)

COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "summary": cmd_summary,
            "info": cmd_info, "precompile": cmd_precompile, "bench": cmd_bench}


def _format_warning(message, category, filename, lineno, line=None):
    """A Python warning as the command's own warnings read: its message, not the file, line and
    source code of gpuconv that raised it (GPUCONV_DEBUG=1 shows those)."""
    return f"warning: {message}\n"


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"] and len(argv) > 1 and argv[1].startswith("-") and argv[1] not in ("-h", "--help"):
        # `gpuconv bench --quick`: the default benchmark's own options, its name left out (argparse refused them
        # as gpuconv's); an empty name stands for the default
        argv = ["bench", "", *argv[1:]]
    args = parser.parse_args(argv)
    try:  # (read once, before the command: a typo there is named as any error is, not a traceback)
        debug = _env.flag("GPUCONV_DEBUG")
    except ValueError as exc:
        _say(f"gpuconv {args.command}: error: {exc}")
        return 1
    formatwarning = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _format_warning
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:  # outside the trainer's own handling (loading data, a second Ctrl-C)
        _say(f"interrupted{': ' + str(exc) if str(exc) else ''}")
        return 130
    except BrokenPipeError:  # the reader of our output left (`gpuconv info | head -1`): as SIGPIPE would
        silence(sys.stdout)
        return 141
    except (ValueError, TypeError, KeyError, OSError, RuntimeError, MemoryError) as exc:  # KeyError: state-dict keys
        if debug:
            raise  # the full traceback, for bug reports
        _say(f"gpuconv {args.command}: error: {exc} (set GPUCONV_DEBUG=1 for a traceback)")
        return 1
    finally:
        warnings.formatwarning = formatwarning

