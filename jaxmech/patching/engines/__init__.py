"""How a patched run is recomputed, and the one registry from a model's engine key to its engine.

Every model declares which restart engine patches it (``engine``, `jaxmech.models.base.Encoder`); the patching
package asks `engine_of` and never names a model type. Models sit below the patching package, so they name their
engine by a key, and `ENGINES` is the only place that maps keys to engines:

* ``"post_ln"``: post-LayerNorm blocks (BERT, ELECTRA, (XLM-)RoBERTa). The baseline and its restart cache come
  from `jaxmech.patching.caches.prepare`; the family kernels of `jaxmech.patching.activation`, `path`, `joint`
  and `edges` run on the restart primitives of `post_ln` (restart at the patched layer, dirty rows, [CLS]-only
  last block, frozen attention).
* ``"pre_ln"``: pre-LayerNorm blocks (ModernBERT), restarted from the cached running sum ``resid_pre[l]``
  (`pre_ln`); the engine runs every family it supports itself (`pre_ln.modernbert_patch`).

`full_forward` (hooked full forwards, for backgrounds of general interventions) is not a model's engine: a run
picks it for its interventions and asks the model's engine whether backgrounds are supported.

**A new block type** is a model class declaring ``engine = "<key>"`` plus one engine module here, registered in
`ENGINES` with its `Engine` entry points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from jaxmech.patching import caches
from jaxmech.patching.edge_data import EdgeOps
from jaxmech.patching.engines import post_ln_edges, pre_ln, pre_ln_edges
from jaxmech.patching.families import Family, get_family


@dataclasses.dataclass(frozen=True, eq=False)
class Engine:
    """What the patching package asks a model's engine for.

    Attributes:
        name: The key models declare (``engine``).
        label: What the engine patches, for messages (e.g. ``"ModernBERT models"``).
        prepare: ``prepare(model, batch, *, base_sites=(), source_sites=(), reverse=False, query_embedding=None)
            -> PreparedBatch``: the baseline run with the engine's restart cache and the perturbed run's sources.
        check_family: ``check_family(family, method) -> Family``: the family, refused by name (ValueError) if
            the engine cannot run it with ``method``.
        patch: ``patch(model, batch, family, *, receivers=(), receiver_input="k", reverse=False, chunk_size=None,
            mesh=None, positions=None, steps_per_call=None) -> SweepResult``: for an engine that runs every
            exact family itself (measuring the score only); None where the patching package's family kernels
            run on the engine's primitives.
        unsupported: ``{feature: why}`` for what the engine lacks (``"backgrounds"``: background interventions),
            ``why`` being the one-line error.
        edges: The engine's edge functions (`jaxmech.patching.edge_data.EdgeOps`; the definition of an edge is
            the engine's, `jaxmech.patching.edge_graph`), or None where it defines no edges.
    """

    name: str
    label: str
    prepare: Callable
    check_family: Callable[[str | Family, str], Family]
    patch: Callable | None = None
    unsupported: Mapping[str, str] = dataclasses.field(default_factory=dict)
    edges: EdgeOps | None = None

    def require(self, feature: str) -> None:
        """Raises ValueError (the engine's one-line reason) if the engine lacks ``feature``."""
        if feature in self.unsupported:
            raise ValueError(self.unsupported[feature])


def _every_family(family: str | Family, method: str = "exact") -> Family:
    """The post-LN engine runs every registered family (methods are checked where runs are planned)."""
    return get_family(family)


ENGINES: dict[str, Engine] = {
    "post_ln": Engine("post_ln", "post-LN models", caches.prepare, _every_family, edges=post_ln_edges.OPS),
    "pre_ln": Engine("pre_ln", "ModernBERT models", pre_ln.prepare, pre_ln.check_family, pre_ln.modernbert_patch,
                     pre_ln.UNSUPPORTED, pre_ln_edges.OPS),
}
"""Engine key (``model.engine``) to `Engine`."""


def engine_of(model) -> Engine:
    """The engine that patches ``model`` (the key it declares, `jaxmech.models.base.Encoder.engine`).

    Raises:
        ValueError: If the model declares no engine, or one that is not registered in `ENGINES`.
    """
    key = getattr(model, "engine", None)
    if key not in ENGINES:
        raise ValueError(f"{type(model).__name__} declares engine={key!r}, not a patching engine (known: "
                         f"{', '.join(ENGINES)}); a model class names its engine in `engine`")
    return ENGINES[key]


def prepare(model, batch, **options):
    """The baseline and perturbed runs of ``batch`` by ``model``'s engine (`Engine.prepare`; see
    `jaxmech.patching.caches.prepare` for the options and the programs it compiles)."""
    return engine_of(model).prepare(model, batch, **options)


__all__ = ["ENGINES", "Engine", "engine_of", "prepare"]
