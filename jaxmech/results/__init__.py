"""Stored results: a sweep's chunked on-disk store (`jaxmech.results.store`) and reading it lazily
(``run = jaxmech.results.open(run_dir)``, `jaxmech.results.run`)."""

from __future__ import annotations

from jaxmech.results.run import LazyArray, Run, open  # noqa: A004 - the contract's name

__all__ = ["LazyArray", "Run", "open"]
