"""Path patching, as the paper defines it (notes §4, E4-E6), as batched restarted programs.

* `path_to_score` (E4, IOI appendix-B style): for each sender head, run the baseline with *every* head's
  ``z`` (all layers, all positions) frozen to its baseline value except the sender's, which comes from the
  perturbed run. MLPs and LayerNorms are not frozen, so the result is the sender's direct effect plus its
  paths through MLPs. Frozen attention mixes no positions after the sender, so only the rows the readout
  reads ([CLS] for cross-encoders) are propagated (`engines.post_ln.frozen_attention_hidden`).
* `path_to_heads` (E5): stage 1 as above, but read the receiver heads' ``q``, ``k`` or ``v`` (all positions)
  at their layers; stage 2 runs a fresh baseline in which only those receiver inputs are replaced. Senders
  range over layers below the last receiver layer; a sender at or above a receiver's layer leaves it at its
  baseline value.
* `path_components_to_heads` (E6): stage 1 patches ``resid_pre``, ``attn_out`` or ``mlp_out`` at one layer
  and position (nothing frozen) and reads the receivers' inputs; stage 2 as in E5.

  **Difference from the reference code.** The authors' step 3 re-applies the component patch *and* the
  receiver patch. With the component patched, the receivers would compute exactly the cached inputs anyway,
  so their result is the component's total effect (plain activation patching, `block_every`) rather than the
  effect through the receivers. jaxmech patches the receivers only, which is the path effect the experiment
  is after; for the authors' numbers, run ``block_every``.

All results use the normalized metric like activation patching; shapes are ``[pair, layer, head]``,
``[pair, max_receiver_layer, head]`` and ``[pair, 3, max_receiver_layer, pos]``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxmech import runtime
from jaxmech.interventions import HeadReplacement, PatchSpec, one_hot
from jaxmech.models.bert import HookedEncoder, HookPoints, layer_slice
from jaxmech.patching.caches import SweepData, prepare
from jaxmech.patching.engines import engine_of
from jaxmech.patching.engines.post_ln import frozen_attention_hidden, layer_view, patched_hidden
from jaxmech.patching.inputs import PairBatch
from jaxmech.patching.program import Kernel, run_kernel
from jaxmech.patching.reading import finish_result, layer_value, read_block, with_weights
from jaxmech.patching.readouts import SCORE, Readout, as_bound, check_readout, score_only
from jaxmech.patching.receivers import RECEIVER_INPUTS, check_receivers, parse_heads, receivers_by_layer
from jaxmech.patching.results import SweepResult

COMPONENTS = ("resid_pre", "attn_out", "mlp_out")

__all__ = ["COMPONENTS", "RECEIVER_INPUTS", "check_receivers", "parse_heads", "path_components_to_heads",
           "path_to_heads", "path_to_score", "receivers_by_layer"]


def _own_engine(model):
    """``model``'s engine if it runs whole families itself (`jaxmech.patching.engines.Engine.patch`), else None."""
    engine = engine_of(model)
    return engine if engine.patch is not None else None


def _stage2(model, by_layer, receiver_input: str, data: SweepData, pair, new_inputs, readout: Readout = SCORE):
    """Fresh baseline run with only the receivers' inputs replaced (restarted at the first receiver layer),
    measured by ``readout`` (a readout below the first receiver layer reads the baseline)."""
    H = model.cfg.n_heads
    patches = [
        HeadReplacement(receiver_input, r, jnp.asarray(np.isin(np.arange(H), heads), jnp.float32), new_inputs[r])
        for r, heads in by_layer
    ]
    r0 = min(r for r, _ in by_layer)
    mask = data.attention_mask[pair]
    L = readout.layer
    if L is not None:
        if r0 > L:  # static: the receivers sit above the readout
            return read_block(model, readout, data.cache.resid_pre[pair, L], mask.astype(bool),
                              data.read_weights[pair])
        hooks = HookPoints(frozenset({readout.site}), patches)
        _, records = model.run_blocks(data.cache.resid_pre[pair, r0], mask.astype(bool), hooks, start_layer=r0,
                                      stop_layer=L + 1)
        return readout.site_value(records[readout.site][L], data.read_weights[pair])
    hooks = HookPoints(frozenset(), patches)
    x = data.cache.resid_pre[pair, r0]
    hidden, _ = model.run_blocks(x, mask.astype(bool), hooks, start_layer=r0)
    return readout.final_value(model, hidden, mask, data.query_embedding[pair])


class SenderKernel(Kernel):
    """Abstract kernel of sender heads: the baseline at the sender's layer (with its ``z``) and the source
    ``z``, per layer."""

    def prepare(self, model, data: SweepData, layer):
        """Baseline views at ``layer`` (with ``z``) and this layer's source ``z``."""
        views = jax.vmap(layer_view, in_axes=(0, None, None))
        return views(data.cache, layer, ("z",)), data.source[:, layer]

    @staticmethod
    def sender(model, data: SweepData, prepared, pair, head):
        """The pair's baseline view, mask, and the spec replacing the sender head's ``z`` at every position."""
        here_all, src_all = prepared
        here = jax.tree.map(lambda a: a[pair], here_all)
        spec = PatchSpec("z", source=src_all[pair][None], pos_mask=data.patchable[pair].astype(jnp.float32),
                         head_mask=one_hot(head, model.cfg.n_heads))
        return here, data.attention_mask[pair], spec


@dataclasses.dataclass(frozen=True)
class PathToScoreKernel(SenderKernel):
    """Sender head ``z`` (all positions) with every other ``z`` frozen, read at the score (or ``readout``).

    Attributes:
        readout: What each patched run measures (`jaxmech.patching.readouts`).
    """

    readout: Readout = SCORE

    def item(self, model, data: SweepData, prepared, layer, pair, head, pos):
        """The score with sender ``head`` at ``layer`` patched and every other ``z`` frozen."""
        here, mask, spec = self.sender(model, data, prepared, pair, head)
        final = data.cache.resid_pre[pair, -1]
        attn_out = data.cache.sites["attn_out"][pair]
        L = self.readout.layer
        if L is not None:  # every row up to the readout's layer, then its block with z frozen too
            resid = lambda: frozen_attention_hidden(model, mask.astype(bool), layer, here, attn_out, spec, None,
                                                    stop_layer=L)
            return layer_value(model, self.readout, data, pair, layer, mask.astype(bool), resid, spec=spec,
                               frozen_z=data.cache.sites["z"][pair, L])
        if model.readout_uses_cls_only:
            rows = jnp.zeros((1,), jnp.int32)
            out = frozen_attention_hidden(model, mask.astype(bool), layer, here, attn_out[:, :1], spec, rows)
            hidden = final.at[:1].set(out)
        else:
            hidden = frozen_attention_hidden(model, mask.astype(bool), layer, here, attn_out, spec, None)
        return self.readout.final_value(model, hidden, mask, data.query_embedding[pair])


@dataclasses.dataclass(frozen=True)
class PathToHeadsKernel(SenderKernel):
    """Sender head ``z`` with every other ``z`` frozen, read at receiver heads' inputs (stage 2 restart).

    Attributes:
        by_layer: Receiver heads by layer (`receivers_by_layer`).
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        readout: What each patched run measures (`jaxmech.patching.readouts`).
    """

    by_layer: tuple[tuple[int, tuple[int, ...]], ...]
    receiver_input: str
    readout: Readout = SCORE

    def item(self, model, data: SweepData, prepared, layer, pair, head, pos):
        """The score with the receivers' inputs as the sender's patched, frozen-attention run computes them."""
        here, mask, spec = self.sender(model, data, prepared, pair, head)
        new_inputs = {}
        for r, _ in self.by_layer:
            x_r = frozen_attention_hidden(model, mask.astype(bool), layer, here, data.cache.sites["attn_out"][pair],
                                          spec, None, stop_layer=r)
            new = layer_slice(model.blocks, r).attn.project(x_r, self.receiver_input)
            new_inputs[r] = jnp.where(layer < r, new, data.cache.site(self.receiver_input)[pair, r])
        return _stage2(model, self.by_layer, self.receiver_input, data, pair, new_inputs, self.readout)


@dataclasses.dataclass(frozen=True)
class ComponentsToHeadsKernel(Kernel):
    """A component at one layer and position (nothing frozen), read at receiver heads' inputs.

    Attributes:
        site: ``resid_pre``, ``attn_out`` or ``mlp_out``.
        by_layer: Receiver heads by layer.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        readout: What each patched run measures (`jaxmech.patching.readouts`).
    """

    site: str
    by_layer: tuple[tuple[int, tuple[int, ...]], ...]
    receiver_input: str
    readout: Readout = SCORE

    def prepare(self, model, data: SweepData, layer):
        """Baseline views at ``layer`` and ``layer + 1``, and this layer's sources."""
        views = jax.vmap(layer_view, in_axes=(0, None, None))
        extras = () if self.site == "resid_pre" else (self.site,)
        return views(data.cache, layer, extras), views(data.cache, layer + 1, ()), data.source[:, layer]

    def item(self, model, data: SweepData, prepared, layer, pair, head, pos):
        """The score with the receivers' inputs as the component-patched run computes them."""
        here_all, after_all, src_all = prepared
        take = lambda a: a[pair]
        here, after = jax.tree.map(take, here_all), jax.tree.map(take, after_all)
        mask = data.attention_mask[pair]
        spec = PatchSpec(self.site, source=src_all[pair][None], pos_mask=one_hot(pos, mask.shape[0]))
        new_inputs = {}
        for r, _ in self.by_layer:
            x_r = patched_hidden(model, mask.astype(bool), layer, here, after, spec, pos[None], stop_layer=r)
            new = layer_slice(model.blocks, r).attn.project(x_r, self.receiver_input)
            reaches = (layer < r) | ((layer == r) & (self.site == "resid_pre"))
            new_inputs[r] = jnp.where(reaches, new, data.cache.site(self.receiver_input)[pair, r])
        return _stage2(model, self.by_layer, self.receiver_input, data, pair, new_inputs, self.readout)


@runtime.with_precision
def path_to_score(model: HookedEncoder, batch: PairBatch, *, reverse: bool = False, chunk_size: int | None = None,
                  mesh=None, query_embedding=None, steps_per_call: int | None = None, readout=None) -> SweepResult:
    """Path patching from every head to the score (E4). Result ``[pair, layer, head]``.

    Args:
        model: The encoder.
        batch: Aligned pairs.
        reverse: Swap baseline and perturbed roles.
        chunk_size: Items per vmapped step.
        mesh: Devices to shard items over.
        query_embedding: For bi-encoders.
        steps_per_call: Fixed-shape calls (see `jaxmech.patching.program.run_kernel`).
        readout: What to measure (see `jaxmech.patching.activation.activation_patch`).
    """
    if own := _own_engine(model):
        score_only(readout, own.label)
        return own.patch(model, batch, "path_to_score", reverse=reverse, chunk_size=chunk_size, mesh=mesh,
                         steps_per_call=steps_per_call)
    bound = as_bound(readout)
    check_readout(bound.readout, model)
    prep = prepare(model, batch, base_sites=("z", "attn_out"), source_sites=("z",), reverse=reverse,
                   query_embedding=query_embedding)
    out = run_kernel(PathToScoreKernel(bound.readout), model, prep, with_weights(prep.data("z"), bound, reverse),
                     per_pos=False, per_head=True, chunk_size=chunk_size, mesh=mesh, steps_per_call=steps_per_call)
    return finish_result(SweepResult.from_prepared("path_to_score", out[:, :, 0, :], prep), model, prep, bound,
                         reverse)


def _receiver_setup(model: HookedEncoder, receivers, receiver_input: str):
    receivers = check_receivers(receivers, receiver_input, model.cfg.n_layers, model.cfg.n_heads)
    by_layer = receivers_by_layer(receivers)
    return by_layer, max(r for r, _ in by_layer)


@runtime.with_precision
def path_to_heads(model: HookedEncoder, batch: PairBatch, receivers, receiver_input: str = "k", *,
                  reverse: bool = False, chunk_size: int | None = None, mesh=None,
                  query_embedding=None, steps_per_call: int | None = None, readout=None) -> SweepResult:
    """Path patching from every head below the last receiver layer to receiver heads' ``q``/``k``/``v`` (E5).

    Args:
        model: The encoder.
        batch: Aligned pairs.
        receivers: Receiver heads, e.g. ``["10.1"]`` or ``[(10, 1), (10, 10)]``.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        reverse: Swap baseline and perturbed roles.
        chunk_size: Items per vmapped step.
        mesh: Devices to shard items over.
        query_embedding: For bi-encoders.
        steps_per_call: Fixed-shape calls (see `jaxmech.patching.program.run_kernel`).
        readout: What to measure (see `jaxmech.patching.activation.activation_patch`).

    Returns:
        `SweepResult` with ``patched`` of shape ``[pair, max_receiver_layer, head]``.
    """
    if own := _own_engine(model):
        score_only(readout, own.label)
        return own.patch(model, batch, "path_to_heads", receivers=receivers, receiver_input=receiver_input,
                         reverse=reverse, chunk_size=chunk_size, mesh=mesh, steps_per_call=steps_per_call)
    by_layer, r_max = _receiver_setup(model, receivers, receiver_input)
    bound = as_bound(readout)
    check_readout(bound.readout, model)
    prep = prepare(model, batch, base_sites=("z", "attn_out"), source_sites=("z",), reverse=reverse,
                   query_embedding=query_embedding)
    out = run_kernel(PathToHeadsKernel(by_layer, receiver_input, bound.readout), model, prep,
                     with_weights(prep.data("z"), bound, reverse), per_pos=False,
                     per_head=True, layers=range(r_max), chunk_size=chunk_size, mesh=mesh,
                     steps_per_call=steps_per_call)
    res = SweepResult.from_prepared(f"path_to_heads_{receiver_input}", out[:, :r_max, 0, :], prep)
    return finish_result(res, model, prep, bound, reverse)


@runtime.with_precision
def path_components_to_heads(model: HookedEncoder, batch: PairBatch, receivers, receiver_input: str = "k", *,
                             reverse: bool = False, chunk_size: int | None = None, mesh=None,
                             query_embedding=None, positions=None, steps_per_call: int | None = None,
                             readout=None) -> SweepResult:
    """Path patching from ``resid_pre``/``attn_out``/``mlp_out`` at each layer and position to receiver
    heads' inputs (E6, without the reference code's double patch; see the module docstring).

    Args:
        model: The encoder.
        batch: Aligned pairs.
        receivers: Receiver heads.
        receiver_input: ``"q"``, ``"k"`` or ``"v"``.
        reverse: Swap baseline and perturbed roles.
        chunk_size: Items per vmapped step.
        mesh: Devices to shard items over.
        query_embedding: For bi-encoders.
        positions: Patch only these positions (others stay NaN).
        steps_per_call: Fixed-shape calls (see `jaxmech.patching.program.run_kernel`).
        readout: What to measure (see `jaxmech.patching.activation.activation_patch`).

    Returns:
        `SweepResult` with ``patched`` of shape ``[pair, 3, max_receiver_layer, pos]``.
    """
    if own := _own_engine(model):
        score_only(readout, own.label)
        return own.patch(model, batch, "path_components_to_heads", receivers=receivers,
                         receiver_input=receiver_input, reverse=reverse, chunk_size=chunk_size, mesh=mesh,
                         positions=positions, steps_per_call=steps_per_call)
    by_layer, r_max = _receiver_setup(model, receivers, receiver_input)
    bound = as_bound(readout)
    check_readout(bound.readout, model)
    prep = prepare(model, batch, base_sites=("attn_out", "mlp_out"), source_sites=COMPONENTS, reverse=reverse,
                   query_embedding=query_embedding)
    comps = []
    for site in COMPONENTS:
        out = run_kernel(ComponentsToHeadsKernel(site, by_layer, receiver_input, bound.readout), model, prep,
                         with_weights(prep.data(site), bound, reverse), per_pos=True, per_head=False,
                         layers=range(r_max), chunk_size=chunk_size, mesh=mesh,
                         positions=positions, steps_per_call=steps_per_call)
        comps.append(out[:, :r_max, :, 0])
    res = SweepResult.from_prepared(f"path_components_to_heads_{receiver_input}", np.stack(comps, 1), prep)
    return finish_result(res, model, prep, bound, reverse)
