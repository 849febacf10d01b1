"""The function that runs each family of the registry (`jaxmech.patching.families`), as callables.

A runner takes ``(model, batch, family, **options)`` (a `jaxmech.patching.inputs.PairBatch`, a
`jaxmech.patching.families.Family`; options as `run_family` lists them), picks the method, and returns a
`jaxmech.patching.results.SweepResult`. The registry itself holds no runner: it is read by every module that
patches (and by configs and the CLI without JAX), so a reference from it to them would make a circle of imports;
this module sits above them. Activation families share one runner; each path family and the head-group family
has its own (`RUNNERS`).
"""

from __future__ import annotations

from collections.abc import Callable

from jaxmech.patching.engines import engine_of
from jaxmech.patching.families import Family, get_family

Runner = Callable[..., "object"]
"""``(model, batch, family, **options) -> SweepResult``."""


def run_activation(model, batch, family: Family, *, method: str = "exact", reverse: bool = False,
                   chunk_size: int | None = None, query_embedding=None, mesh=None, steps_per_call: int | None = None,
                   readout=None, **_path_options):
    """Activation families: exact (`jaxmech.patching.activation.activation_patch`) or attribution estimates
    (`jaxmech.patching.attribution.attribution_patch`, the score only); receiver options are not used."""
    if method == "attribution":
        from jaxmech.patching.attribution import attribution_patch
        from jaxmech.patching.readouts import as_bound, check_readout

        check_readout(as_bound(readout).readout, model, method=method)
        engine_of(model).check_family(family, method)  # refused by name where the engine lacks its sites
        return attribution_patch(model, batch, family, reverse=reverse, query_embedding=query_embedding)
    from jaxmech.patching.activation import activation_patch

    return activation_patch(model, batch, family, reverse=reverse, chunk_size=chunk_size, mesh=mesh,
                            query_embedding=query_embedding, steps_per_call=steps_per_call, readout=readout)


def run_path_to_score(model, batch, family: Family, *, method="exact", reverse=False, chunk_size=None,
                      query_embedding=None, mesh=None, steps_per_call=None, readout=None, **_options):
    """``path_to_score`` (receiver options are not used); ``method="attribution"``:
    `jaxmech.patching.path_attribution.path_attribution_patch` (the score only)."""
    if method == "attribution":
        from jaxmech.patching.path_attribution import path_attribution_patch
        from jaxmech.patching.readouts import score_only

        score_only(readout, "attribution")
        return path_attribution_patch(model, batch, family, reverse=reverse, query_embedding=query_embedding)
    from jaxmech.patching.path import path_to_score

    return path_to_score(model, batch, reverse=reverse, chunk_size=chunk_size, mesh=mesh,
                         query_embedding=query_embedding, steps_per_call=steps_per_call, readout=readout)


def run_path_to_heads(model, batch, family: Family, *, method="exact", receivers=(), receiver_input="k",
                      reverse=False, chunk_size=None, query_embedding=None, mesh=None, steps_per_call=None,
                      readout=None, **_options):
    """``path_to_heads``; ``method="attribution"``: `jaxmech.patching.path_attribution.path_attribution_patch`."""
    if method == "attribution":
        from jaxmech.patching.path_attribution import path_attribution_patch
        from jaxmech.patching.readouts import score_only

        score_only(readout, "attribution")
        return path_attribution_patch(model, batch, family, receivers=receivers, receiver_input=receiver_input,
                                      reverse=reverse, query_embedding=query_embedding)
    from jaxmech.patching.path import path_to_heads

    return path_to_heads(model, batch, receivers, receiver_input, reverse=reverse, chunk_size=chunk_size,
                         mesh=mesh, query_embedding=query_embedding, steps_per_call=steps_per_call, readout=readout)


def run_path_components_to_heads(model, batch, family: Family, *, receivers=(), receiver_input="k", reverse=False,
                                 chunk_size=None, query_embedding=None, mesh=None, steps_per_call=None,
                                 readout=None, **_options):
    """``path_components_to_heads`` (exact only)."""
    from jaxmech.patching.path import path_components_to_heads

    return path_components_to_heads(model, batch, receivers, receiver_input, reverse=reverse,
                                    chunk_size=chunk_size, mesh=mesh, query_embedding=query_embedding,
                                    steps_per_call=steps_per_call, readout=readout)


def run_heads_joint(model, batch, family: Family, *, groups=(), reverse=False, query_embedding=None, readout=None,
                    **_options):
    """``heads_joint`` (chunking and receiver options are not used; the score only)."""
    from jaxmech.patching.joint import heads_joint
    from jaxmech.patching.readouts import score_only

    score_only(readout, "heads_joint")
    engine_of(model).check_family(family, "exact")  # refused by name where the engine has no group patching
    return heads_joint(model, batch, groups, reverse=reverse, query_embedding=query_embedding, site=family.sites[0])


RUNNERS: dict[str, Runner] = {
    "path_to_score": run_path_to_score,
    "path_to_heads": run_path_to_heads,
    "path_components_to_heads": run_path_components_to_heads,
    "heads_joint": run_heads_joint,
}
"""The runners of families other than activation families (which all run with `run_activation`)."""


def runner(family: str | Family) -> Runner:
    """The function that runs ``family`` (the entry points it calls ask the model's engine,
    `jaxmech.patching.engines.engine_of`, whether the engine runs whole families itself)."""
    fam = get_family(family)
    return run_activation if fam.kind == "activation" else RUNNERS[fam.name]


RUNNER_OPTIONS = frozenset({"method", "reverse", "chunk_size", "query_embedding", "receivers", "receiver_input",
                            "groups", "mesh", "steps_per_call", "readout"})
"""The options every runner takes (each ignores those its family does not use)."""


def run_family(family: str | Family, model, batch, **options):
    """Runs a family on one batch of pairs with the engine the model needs.

    Args:
        family: A family or its name.
        model: The encoder.
        batch: A `jaxmech.patching.inputs.PairBatch`.
        **options: ``method``, ``reverse``, ``chunk_size``, ``query_embedding``, ``receivers``,
            ``receiver_input``, ``groups``, ``mesh``, ``steps_per_call``, ``readout`` (see
            `jaxmech.patching.run.run_patching`).

    Returns:
        A `jaxmech.patching.results.SweepResult`.

    Raises:
        TypeError: For an option not in `RUNNER_OPTIONS` (a misspelt one would otherwise be dropped unseen).
    """
    unknown = sorted(set(options) - RUNNER_OPTIONS)
    if unknown:
        raise TypeError(f"run_family() got unknown option(s) {unknown}; known: {sorted(RUNNER_OPTIONS)}")
    fam = get_family(family)
    return runner(fam)(model, batch, fam, **options)  # the runners ask the model's engine (`engine_of`)
