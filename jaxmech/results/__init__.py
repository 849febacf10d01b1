"""Stored results, in one package:

* `store`: a sweep's chunked on-disk store (zarr v3 through tensorstore, completion markers, atomic writes).
* `meta`: the run folder's ``meta.json``, typed (`RunMeta`), and `check_resume`.
* `integrity`: what each chunk wrote (sizes, sha256), checked on opening, on resuming and by ``jaxmech verify``.
* `run`: reading a run lazily, ``run = jaxmech.results.open(run_dir)``.
* `source`: what the figures and the report read: a run folder or a ``jaxmech patch`` ``.npz`` as a
  `ResultsSource` of labelled arrays, with axes and labels from the run's meta and the family registry.

The ``.npz`` of ``jaxmech patch`` is written and read by `jaxmech.patching.results.PatchingResult` (``save`` /
``load``): `jaxmech.patching.run.patch` writes it, and patching sits below results in the layer order.
"""

from __future__ import annotations

from jaxmech.results.run import LazyArray, Run, open  # noqa: A004 - the contract's name

__all__ = ["LazyArray", "Run", "open"]
