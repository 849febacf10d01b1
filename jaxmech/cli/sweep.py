"""``jaxmech sweep CONFIG``: run (or resume) a declared sweep; see `jaxmech.sweeps.job`.

    jaxmech sweep configs/demo.toml
    jaxmech sweep configs/paper/tfc1.toml --out runs/tfc1 --quiet
    jaxmech sweep CONFIG --coordinator HOST:PORT --num-processes N --process-id I    (several hosts)
    jaxmech sweep CONFIG --distributed                                               (TPU pod slice, SLURM)

Prints one summary line (where the results are) on stdout; progress goes to stderr. A bad config or a run
folder holding another sweep is one error line naming the file and key (or what changed), exit code 2.
"""

from __future__ import annotations

import argparse
import sys


def cmd_sweep(args: argparse.Namespace) -> int:
    """Runs ``jaxmech sweep`` (`jaxmech.sweeps.launch.launch_sweep`)."""
    from jaxmech.sweeps.config import ConfigError  # none of these imports JAX
    from jaxmech.sweeps.job import ResumeError, SweepInterrupted
    from jaxmech.sweeps.launch import launch_sweep
    from jaxmech.sweeps.lock import RunLockedError

    try:
        summary = launch_sweep(args.config, out=args.out, fresh=args.fresh, quiet=args.quiet,
                               coordinator=args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id, distributed=args.distributed)
    except SweepInterrupted as err:
        _ignore_sigint()  # a further Ctrl-C while the process exits would print a traceback
        print(f"jaxmech sweep: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        _ignore_sigint()
        print("jaxmech sweep: interrupted before the sweep started; nothing was written", file=sys.stderr)
        return 130
    except (ConfigError, ResumeError, RunLockedError, OSError, ValueError, KeyError, ImportError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"jaxmech sweep: error: {msg}", file=sys.stderr)
        return 2
    print(summary.line())
    return 0


def _ignore_sigint() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``sweep`` to the main parser's subcommands."""
    p = subparsers.add_parser(
        "sweep", help="run or resume a declared patching sweep (TOML config) into a chunked on-disk store"
    )
    p.add_argument("config", help="sweep config (TOML), e.g. configs/demo.toml")
    p.add_argument("--out", default=None, help="run folder (default: [run] out_dir or runs/<name>)")
    p.add_argument(
        "--fresh", action="store_true", help="delete this sweep's previous results in the folder and start over"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar: a log line a minute")
    g = p.add_argument_group("several processes (jax.distributed)")
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    g.add_argument("--distributed", action="store_true", help="detect the cluster (TPU pod slice, SLURM, MPI)")
    p.set_defaults(func=cmd_sweep)
    return p


def main(argv=None) -> int:
    """``python -m jaxmech.cli.sweep CONFIG ...``."""
    parser = argparse.ArgumentParser(prog="jaxmech")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
