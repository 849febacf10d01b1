"""The engine registry: every model class names the restart engine that patches it, and the patching package asks
`jaxmech.patching.engines.engine_of` instead of switching on the model's type."""

from __future__ import annotations

import pytest

from jaxmech.models.base import Encoder
from jaxmech.models.bert import BiEncoder, CrossEncoder
from jaxmech.models.modernbert import ModernBertCrossEncoder
from jaxmech.patching.engines import ENGINES, engine_of, post_ln_edges, pre_ln_edges


@pytest.mark.parametrize(("cls", "key"), [(CrossEncoder, "post_ln"), (BiEncoder, "post_ln"),
                                          (ModernBertCrossEncoder, "pre_ln")])
def test_every_model_class_is_an_encoder_naming_a_registered_engine(cls, key):
    assert issubclass(cls, Encoder) and cls.engine == key and ENGINES[key].name == key


def test_the_pre_ln_engine_runs_families_itself_and_refuses_what_it_lacks_by_name():
    post, pre = ENGINES["post_ln"], ENGINES["pre_ln"]
    assert post.patch is None and pre.patch is not None
    post.require("edges")
    post.require("backgrounds")
    pre.require("edges")  # both engines define edges: the post-LN one freezes LayerNorm scales, the pre-LN one not
    assert post.edges is post_ln_edges.OPS and pre.edges is pre_ln_edges.OPS
    with pytest.raises(ValueError, match=r"^background interventions \(PatchSpec\) are not supported for ModernBERT"):
        pre.require("backgrounds")


def test_a_model_without_a_registered_engine_is_refused_by_name(tiny_model):
    assert engine_of(tiny_model) is ENGINES["post_ln"]
    with pytest.raises(ValueError, match=r"^object declares engine=None, not a patching engine \(known: post_ln"):
        engine_of(object())
