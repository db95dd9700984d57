"""The `ddpmcodec` command line: one thin typer module per command over the library.

``main(argv)`` is the testable entry point: it returns the exit code instead of exiting.
A user's mistake (:class:`DDPMCodecError`) prints one line on stderr and exits 1; usage
errors exit 2; anything else is a bug and keeps its traceback. Every command takes
``--json`` and then prints one strict JSON object on stdout (``null`` where a value does
not apply, never ``NaN``); progress bars go to stderr.

Importing this package must stay quick (``ddpmcodec --help`` and usage errors answer
without loading torch): see :mod:`ddpmcodec.cli.common`.
"""
from __future__ import annotations

import sys

import typer

try:  # typer >= 0.20 vendors click; the exceptions live there
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as click_exc

from ddpmcodec.cli import bench, calibrate, decode, encode, nll, rd_curve, report, train
from ddpmcodec.cli.common import _invoked
from ddpmcodec.errors import DDPMCodecError

app = typer.Typer(
    name="ddpmcodec", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Likelihoods, rate-distortion and real compression with DDPMs "
         "(Ho et al. 2020). Without --ckpt every command uses the embedded model "
         "(ddpm-cifar10-4k-ch64).")

app.command("nll")(nll.nll)
app.command("rd-curve")(rd_curve.rd_curve)
app.command("encode")(encode.encode)
app.command("decode")(decode.decode)
app.command("train")(train.train)
app.command("report")(report.report)
app.command("bench")(bench.bench)
app.command("calibrate")(calibrate.calibrate)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: sys.argv[1:]) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _invoked[:] = argv
    try:
        rv = app(args=argv, prog_name="ddpmcodec", standalone_mode=False)
    except DDPMCodecError as exc:
        typer.echo(f"ddpmcodec: error: {exc}", err=True)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except click_exc.NoArgsIsHelpError as exc:
        exc.show()
        return 0
    except click_exc.ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun the same command to resume", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def run() -> None:
    sys.exit(main())
