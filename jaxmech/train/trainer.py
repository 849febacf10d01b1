"""The trainer: optax, a jitted train step, embedding-only tuning, resumable orbax checkpoints, HF export.

**State.** Parameters are handled as a flat ``{"embed.W_E": array, "blocks.attn.W_Q": array, ...}`` dict
(the names of `jaxmech.hf.loading.flat_params`); `merge_params` rebuilds the NNX module from it inside the
jitted step (NNX tree mode: ``nnx.merge`` of the split graph). The model has **no dropout** (its forward is
the eval-mode forward of ``transformers``), so training is deterministic given the data order.

**Trainable subsets.** ``[optim] trainable`` partitions the dict: ``"all"``, ``"embeddings"`` (every
``embed.*`` parameter: word, position and token-type embeddings and their LayerNorm; 11,918,592 parameters
for MiniLM-L12, the paper's F.2 count) or ``"word_embeddings"`` (``embed.W_E``). Only the trainable part is
differentiated and has optimiser state; the frozen part is passed through the step unchanged, so its
parameters are bit-for-bit those it started with. (This is the masked-update pattern with the mask applied
before differentiation instead of with ``optax.multi_transform``: same updates, less work and memory.)

**Optimiser.** ``clip_by_global_norm`` (optional) then AdamW/Adam/SGD with a warmup + linear/cosine/constant
schedule. Weight decay applies to matrices only (``ndim >= 2``), not to biases and LayerNorm parameters.

**Checkpoints** (``<out_dir>/checkpoints``, orbax ``CheckpointManager``, synchronous saves): the full
parameter dict, the optimiser state and the step, plus a JSON record of the seed, the config fingerprint and
the config. Orbax writes each checkpoint into a temporary folder and renames it into place when complete, so
an interrupted save is never listed as a checkpoint. The only randomness of training is the data order,
which is a pure function of ``(seed, step)`` (`jaxmech.train.data.GroupSampler`), so (step, seed) is the
whole RNG state: resuming from step k and training to N gives the parameters of an uninterrupted N-step run
bit for bit (``tests/test_train_trainer.py``). A resumed run must have the same config fingerprint.

**Run folder** (``runs/<name>`` by default; ``runs/`` is ignored by git, so weights are never committed):
``config.json``, ``checkpoints/``, ``teacher_scores.npz`` (cache), ``metrics.jsonl``, ``eval_before.json``,
``eval_after.json``, ``summary.json`` and ``export/`` (a Hugging Face folder that ``transformers`` loads as
``BertForSequenceClassification``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmech.models.bert import CrossEncoder
from jaxmech.train.config import TrainConfig
from jaxmech.train.data import (
    GroupSampler,
    PairTable,
    build_pair_table,
    load_candidates,
    make_batch,
    read_reference_scores,
    split_queries,
    tasb_reference,
)
from jaxmech.train.evaluate import evaluate_run, run_from_rows
from jaxmech.train.inference import score_table
from jaxmech.train.losses import POINTWISE_PROBABILITY_LOSSES, get_loss
from jaxmech.train.teachers import make_teacher, resolve_model_path


class ResumeError(RuntimeError):
    """A run folder's checkpoints do not fit the request (exists without --resume, or another config)."""


# -- parameters as a flat dict -------------------------------------------------------------------------------
def _key(path) -> str:
    return ".".join(map(str, path))


def split_params(model: CrossEncoder) -> tuple[Any, list, dict[str, jax.Array]]:
    """``(graphdef, template, params)``: the module graph, the flat variable template, and the flat params."""
    graphdef, state = nnx.split(model, nnx.Param)
    template = list(nnx.to_flat_state(state))
    return graphdef, template, {_key(p): v.get_value() for p, v in template}


def merge_params(graphdef, template, params: dict[str, jax.Array]) -> CrossEncoder:
    """The module with ``params`` (works under ``jit``)."""
    return nnx.merge(graphdef, nnx.from_flat_state([(p, v.replace(params[_key(p)])) for p, v in template]))


TRAINABLE_PREFIXES = {"all": ("",), "embeddings": ("embed.",), "word_embeddings": ("embed.W_E",)}


def trainable_keys(params: dict[str, Any], trainable: str) -> list[str]:
    """Names of the parameters a ``[optim] trainable`` setting trains."""
    prefixes = TRAINABLE_PREFIXES[trainable]
    return sorted(k for k in params if any(k == p or k.startswith(p) for p in prefixes))


# -- optimiser -----------------------------------------------------------------------------------------------
def make_schedule(optim, steps: int) -> optax.Schedule:
    """Warmup (linear from 0) then linear decay to 0, cosine decay to 0, or constant."""
    warm = int(optim.warmup_fraction * steps)
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, optim.lr, max(warm, 1) if warm else 0, steps, 0.0)
    tail = (
        optax.linear_schedule(optim.lr, 0.0, max(steps - warm, 1))
        if optim.schedule == "linear"
        else optax.constant_schedule(optim.lr)
    )
    if warm == 0:
        return tail
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warm), tail], [warm])


def make_optimizer(optim, steps: int) -> optax.GradientTransformation:
    """The optax optimiser of an ``[optim]`` section for a run of ``steps`` steps."""
    sched = make_schedule(optim, steps)
    decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
    if optim.optimizer == "adamw":
        core = optax.adamw(sched, weight_decay=optim.weight_decay, mask=decay_mask)
    elif optim.optimizer == "adam":
        core = optax.adam(sched)
    else:
        core = optax.sgd(sched)
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip), core) if optim.grad_clip > 0 else core


def make_train_step(
    graphdef, template, loss_fn: Callable, optimizer: optax.GradientTransformation, trainable: list[str]
) -> Callable:
    """A jitted ``step(params, opt_state, ids, tt, mask, targets, valid) -> (params, opt_state, metrics)``.

    Only ``trainable`` parameters are differentiated and updated; ``opt_state`` covers only them.
    ``params`` and ``opt_state`` are donated (updated in place).
    """
    train_set = frozenset(trainable)

    def loss_of(train_params, frozen_params, ids, tt, mask, targets, valid):
        model = merge_params(graphdef, template, {**frozen_params, **train_params})
        scores = model(ids, tt, mask).score.reshape(targets.shape)
        return loss_fn(scores, targets, valid)

    def step(params, opt_state, ids, tt, mask, targets, valid):
        train_p = {k: v for k, v in params.items() if k in train_set}
        frozen_p = {k: v for k, v in params.items() if k not in train_set}
        loss, grads = jax.value_and_grad(loss_of)(train_p, frozen_p, ids, tt, mask, targets, valid)
        updates, opt_state = optimizer.update(grads, opt_state, train_p)
        train_p = optax.apply_updates(train_p, updates)
        return {**frozen_p, **train_p}, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(step, donate_argnums=(0, 1))


# -- checkpoints ---------------------------------------------------------------------------------------------
class Checkpoints:
    """Resumable checkpoints in a folder (orbax ``CheckpointManager``; see the module docstring).

    Args:
        directory: The checkpoint folder (created if missing).
        keep: Checkpoints kept (older ones are deleted).
    """

    def __init__(self, directory: str | Path, *, keep: int = 2):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.directory = Path(directory).absolute()
        self.mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (incomplete, interrupted saves are not listed)."""
        return self.mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.mgr.all_steps())

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Writes ``state`` (a pytree of arrays) and ``meta`` (JSON) as checkpoint ``step``; waits for it."""
        a = self.ocp.args
        self.mgr.save(step, args=a.Composite(state=a.StandardSave(state), meta=a.JsonSave(meta)), force=True)
        self.mgr.wait_until_finished()

    def restore(self, step: int, abstract_state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(state, meta)`` of checkpoint ``step``; ``abstract_state`` gives structure, shapes, dtypes."""
        a = self.ocp.args
        r = self.mgr.restore(step, args=a.Composite(state=a.StandardRestore(abstract_state), meta=a.JsonRestore()))
        return r.state, r.meta

    def close(self) -> None:
        self.mgr.close()


# -- the trainer ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
    """What `Trainer.fit` returns.

    Attributes:
        step: The step reached.
        params: Final flat parameters (numpy).
        eval_before: Held-out metrics of the initial model (None if not computed in this call).
        eval_after: Held-out metrics at the end (None if training stopped early).
        export_dir: The exported Hugging Face folder, if written.
        pairs_per_s: Steady-state training throughput (steps after the first of each shape).
        resumed_from: The checkpoint step training resumed from, if any.
    """

    step: int
    params: dict[str, np.ndarray]
    eval_before: dict | None = None
    eval_after: dict | None = None
    export_dir: Path | None = None
    pairs_per_s: float | None = None
    resumed_from: int | None = None


def _trim_metrics(path: Path, step: int) -> None:
    """Drops the records of steps after ``step`` (logged before an interruption, after the checkpoint that a
    resumed run restarts from; the resumed run logs them again), and a torn last line. Rewritten atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            keep.append(line)
    from jaxmech.files import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in keep)))


def _log_default(msg: str) -> None:
    print(msg, flush=True)


class Trainer:
    """Trains a cross-encoder as a `jaxmech.train.config.TrainConfig` says.

    Args:
        cfg: The config.
        out_dir: Run folder (default ``cfg.out_dir``).
        log: Where progress lines go.

    Attributes set by `setup`: ``model`` (the initial `CrossEncoder`), ``tokenizer``, ``candidates``,
    ``train_qids``, ``heldout_qids``, ``train_table``, ``heldout_table``, ``train_targets``,
    ``teacher_scores`` (``{"train": ..., "heldout": ...}`` raw teacher scores or None), ``sampler``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        out_dir: str | Path | None = None,
        log: Callable[[str], None] = _log_default,
    ):
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else cfg.out_dir
        self.log = log
        self._ready = False

    # -- setup -----------------------------------------------------------------------------------------------
    def load_student(self):
        """``(model, tokenizer)``: the cross-encoder to train (pretrained, or fresh: ``[model.random]``)."""
        from jaxmech.config import EncoderConfig
        from jaxmech.hf.convert import build_model
        from jaxmech.hf.loading import load_model
        from jaxmech.hf.tokenizer import PairTokenizer

        m = self.cfg.model
        path = resolve_model_path(m.path)
        if m.random is not None:
            ecfg = EncoderConfig(**m.random)
            tok = PairTokenizer.from_pretrained(path, max_length=min(m.max_length, ecfg.n_ctx))
            if len(tok.hf) > ecfg.d_vocab:
                raise ValueError(
                    f"[model.random] d_vocab={ecfg.d_vocab} is smaller than the tokenizer's "
                    f"vocabulary ({len(tok.hf)}) of {path}"
                )
            return build_model(ecfg, "cross", seed=self.cfg.run.seed), tok
        loaded = load_model(path, kind="cross", init_missing_head_seed=m.init_head_seed, max_length=m.max_length)
        if loaded.report.initialized:
            self.log(f"initialised from seed {m.init_head_seed}: {', '.join(loaded.report.initialized)}")
        return loaded.model, loaded.tokenizer

    def setup(self) -> Trainer:
        """Loads the model, data and teacher, tokenises, and builds the optimiser and step (idempotent)."""
        if self._ready:
            return self
        cfg = self.cfg
        t0 = time.perf_counter()
        self.model, self.tokenizer = self.load_student()
        self.candidates = load_candidates(cfg.data)
        self.train_qids, held = split_queries(
            list(self.candidates.queries), cfg.data.heldout_fraction, cfg.data.split_seed
        )
        if cfg.data.max_train_queries is not None:
            self.train_qids = self.train_qids[: cfg.data.max_train_queries]
        self.heldout_qids = held[: cfg.eval.max_queries] if cfg.eval.max_queries is not None else held
        self.train_table = build_pair_table(self.candidates, self.train_qids, self.tokenizer)
        self.heldout_table = build_pair_table(self.candidates, self.heldout_qids, self.tokenizer)
        self.log(
            f"data: {len(self.train_qids)} train queries ({len(self.train_table)} pairs, "
            f"{self.train_table.n_truncated} truncated to {self.tokenizer.max_length}), "
            f"{len(self.heldout_qids)} held-out queries ({len(self.heldout_table)} pairs)"
        )
        self.teacher_scores = self._teacher_scores()
        self.train_targets = self._targets()
        index = self.train_table.row_index()
        groups = [[index[(q, d)] for d in docs] for q, docs in self.candidates.group_list(self.train_qids)]
        self.sampler = GroupSampler(groups, cfg.data.queries_per_batch, cfg.data.docs_per_query, cfg.run.seed)
        if cfg.idf_init.enabled:
            self.model = self._idf_init(self.model)
        self.graphdef, self.template, params = split_params(self.model)
        self.trainable = trainable_keys(params, cfg.optim.trainable)
        self.optimizer = make_optimizer(cfg.optim, cfg.train.steps)
        self.step_fn = make_train_step(
            self.graphdef,
            self.template,
            get_loss(cfg.loss.kind, margin=cfg.loss.margin),
            self.optimizer,
            self.trainable,
        )
        n_train = sum(int(np.prod(params[k].shape)) for k in self.trainable)
        self.log(
            f"model: {sum(int(np.prod(v.shape)) for v in params.values()):,} parameters, {n_train:,} "
            f"trainable ({cfg.optim.trainable}); setup {time.perf_counter() - t0:.1f} s"
        )
        self._ready = True
        return self

    def _teacher_scores(self) -> dict[str, np.ndarray] | None:
        teacher = make_teacher(self.cfg.teacher, self.candidates)
        if teacher is None:
            return None
        cache = self.out_dir / "teacher_scores.npz"
        qids = self.train_table.qids + self.heldout_table.qids
        docs = self.train_table.doc_ids + self.heldout_table.doc_ids
        scores = None
        if cache.exists():
            z = np.load(cache, allow_pickle=False)
            if str(z["teacher"]) == teacher.name and list(z["qids"]) == qids and list(z["doc_ids"]) == docs:
                scores = z["scores"]
                self.log(f"teacher scores: {len(scores)} rows from {cache}")
        if scores is None:
            t = time.perf_counter()
            scores = np.asarray(teacher.score_rows(self.candidates, qids, docs), np.float64)
            self.log(f"teacher scores: {len(scores)} rows from {teacher.name} in {time.perf_counter() - t:.1f} s")
            self.out_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(
                tmp,
                teacher=np.array(teacher.name),
                qids=np.array(qids),
                doc_ids=np.array(docs),
                scores=scores,
            )
            tmp.replace(cache)
        n = len(self.train_table)
        return {"train": scores[:n], "heldout": scores[n:], "name": teacher.name}

    def _labels(self, table: PairTable) -> np.ndarray | None:
        labels = self.candidates.labels
        if labels is None:
            return None
        return np.array([labels[q][d] for q, d in zip(table.qids, table.doc_ids, strict=True)], np.float64)

    def _targets(self) -> np.ndarray:
        cfg = self.cfg
        if self.teacher_scores is not None:
            t = self.teacher_scores["train"] * cfg.teacher.scale
            return 1.0 / (1.0 + np.exp(-t)) if cfg.loss.kind in POINTWISE_PROBABILITY_LOSSES else t
        labels = self._labels(self.train_table)
        if labels is None:
            raise ValueError(
                f"{cfg.source}: [teacher] kind='none' but the data ({self.candidates.name}) has no "
                "labels; choose a teacher"
            )
        if cfg.loss.kind in POINTWISE_PROBABILITY_LOSSES and ((labels < 0) | (labels > 1)).any():
            raise ValueError(
                f"{cfg.source}: [loss] kind={cfg.loss.kind!r} needs labels in [0, 1]; "
                f"{self.candidates.name} has labels in [{labels.min()}, {labels.max()}]"
            )
        return labels

    def _idf_init(self, model):
        from jaxmech.data.idf import load_idf_tsv, word_idf, wordpiece_idf
        from jaxmech.train.idf_init import apply_idf_init, vocab_idf_vector

        c = self.cfg.idf_init
        if c.idf_file:
            table = load_idf_tsv(c.idf_file)
        else:
            texts = sorted({self.candidates.docs[q][d] for q in self.train_qids for d in self.candidates.docs[q]})
            fn = word_idf if c.granularity == "word" else wordpiece_idf
            table = fn(texts, self.tokenizer, formula=c.formula)
        idf, known = vocab_idf_vector(table, self.tokenizer, granularity=c.granularity, default=c.default)
        pad = model.cfg.d_vocab - len(idf)
        if pad > 0:  # vocabulary rows the tokenizer never produces
            idf, known = (
                np.concatenate([idf, np.full(pad, c.default)]),
                np.concatenate([known, np.zeros(pad, bool)]),
            )
        model, report = apply_idf_init(model, idf, known=known, default=c.default)
        self.log(
            f"idf_init: U0 replaced for {report.n_replaced} ids; corr(U0, idf) {report.corr_before:+.3f} -> "
            f"{report.corr_after:+.3f} (flipped={report.flipped})"
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "idf_init.json").write_text(json.dumps(dataclasses.asdict(report), indent=1))
        return model

    # -- evaluation ------------------------------------------------------------------------------------------
    def reference_scores(self) -> dict[str, dict[str, float]] | None:
        """Independent reference scores of ``[eval] reference`` as a run (``qid -> {doc: score}``)."""
        ref = self.cfg.eval.reference
        if ref == "none":
            return None
        pairs = tasb_reference(self.cfg.data.path or None) if ref == "tasb" else read_reference_scores(ref)
        out: dict[str, dict[str, float]] = {}
        for (q, d), s in pairs.items():
            out.setdefault(q, {})[d] = s
        return out

    def evaluate(self, model: CrossEncoder) -> dict[str, Any]:
        """Held-out reranking metrics of ``model`` (`jaxmech.train.evaluate.evaluate_run`)."""
        self.setup()
        t = self.heldout_table
        if len(t) == 0:
            return {}
        scores = score_table(model, t, batch_size=self.cfg.eval.batch_size)
        run = run_from_rows(t.qids, t.doc_ids, scores)
        teacher = None
        if self.teacher_scores is not None:
            teacher = run_from_rows(t.qids, t.doc_ids, self.teacher_scores["heldout"])
        labels_arr = self._labels(t)
        labels = run_from_rows(t.qids, t.doc_ids, labels_arr) if labels_arr is not None else None
        out = evaluate_run(
            run,
            k=self.cfg.eval.k,
            label_top_k=self.cfg.eval.label_top_k,
            teacher=teacher,
            labels=labels,
            reference=self.reference_scores(),
        )
        out["queries"] = len(run)
        out["pairs"] = len(t)
        return out

    # -- checkpoint helpers ----------------------------------------------------------------------------------
    def _meta(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "seed": self.cfg.run.seed,
            "fingerprint": self.cfg.fingerprint(),
            "epoch": self.sampler.epoch_of(step),
            "config": self.cfg.to_dict(),
            "teacher": self.teacher_scores["name"] if self.teacher_scores else None,
        }

    def _abstract_state(self, params) -> dict[str, Any]:
        opt_state = jax.eval_shape(self.optimizer.init, {k: params[k] for k in self.trainable})
        state = {"params": params, "opt_state": opt_state, "step": np.int64(0)}
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)

    # -- training --------------------------------------------------------------------------------------------
    def fit(self, *, resume: bool = False, max_steps: int | None = None) -> TrainResult:
        """Trains to ``[train] steps`` (or stops after ``max_steps``, checkpointing there).

        Args:
            resume: Continue from the newest checkpoint in ``<out_dir>/checkpoints`` (a fresh start if none).
            max_steps: Stop once this step is reached (simulates an interruption; the run can be resumed).

        Raises:
            ResumeError: If checkpoints exist and ``resume`` is False, or they were written by a config with
                another fingerprint.
        """
        self.setup()
        cfg = self.cfg
        ckpt = Checkpoints(self.out_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
        try:
            return self._fit(ckpt, resume, max_steps)
        finally:
            ckpt.close()

    def _fit(self, ckpt: Checkpoints, resume: bool, max_steps: int | None) -> TrainResult:
        cfg = self.cfg
        result = TrainResult(step=0, params={})
        params, opt_state, start = self._start(ckpt, resume, result)
        params = {k: jnp.array(v) for k, v in params.items()}  # fresh buffers: the step donates its inputs
        stop = min(cfg.train.steps, max_steps) if max_steps is not None else cfg.train.steps
        params, opt_state, saved_at, result.pairs_per_s = self._steps(ckpt, params, opt_state, start, stop)
        if saved_at != stop:
            self._save(ckpt, stop, params, opt_state)
        result.step = stop
        result.params = {k: np.asarray(v) for k, v in params.items()}
        if stop == cfg.train.steps:
            self._finish(merge_params(self.graphdef, self.template, params), result)
        return result

    def _start(self, ckpt: Checkpoints, resume: bool, result: TrainResult) -> tuple[dict, Any, int]:
        """``(params, opt_state, first step)``: restored from the newest checkpoint, or fresh (then the model is
        evaluated first when ``[eval] before``); writes the run's config.json either way.

        Raises:
            ResumeError: If checkpoints exist and ``resume`` is False, or another config wrote them.
        """
        cfg = self.cfg
        _, _, params = split_params(self.model)
        latest = ckpt.latest_step()
        if latest is not None and not resume:
            raise ResumeError(
                f"{ckpt.directory} already holds checkpoint(s) up to step {latest}; pass --resume "
                "to continue, or choose another --out"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(
            json.dumps({"source": cfg.source, "fingerprint": cfg.fingerprint(), **cfg.to_dict()}, indent=1)
        )
        if latest is None:
            opt_state = self.optimizer.init({k: params[k] for k in self.trainable})
            if cfg.eval.before and len(self.heldout_table):
                result.eval_before = self.evaluate(self.model)
                self._write_json("eval_before.json", result.eval_before)
                self.log(f"eval before: {json.dumps(result.eval_before)}")
            return params, opt_state, 0
        state, meta = ckpt.restore(latest, self._abstract_state(params))
        if meta.get("fingerprint") != cfg.fingerprint():
            old = meta.get("config", {})
            diffs = [
                f"[{s}] {k}: {old.get(s, {}).get(k)!r} -> {v!r}"
                for s, sec in cfg.trajectory_settings().items()
                for k, v in sec.items()
                if old.get(s, {}).get(k) != v
            ]
            raise ResumeError(
                f"{ckpt.directory}: checkpoints were written with another config; differences: " + "; ".join(diffs)
            )
        start = int(state["step"])
        result.resumed_from = start
        _trim_metrics(self.out_dir / "metrics.jsonl", start)
        self.log(f"resumed from step {start} ({ckpt.directory})")
        return state["params"], state["opt_state"], start

    def _steps(self, ckpt: Checkpoints, params: dict, opt_state: Any, start: int, stop: int):
        """Runs steps ``start..stop-1``, logging to metrics.jsonl every ``log_every`` steps and checkpointing every
        ``checkpoint_every``; returns ``(params, opt_state, last step saved, pairs/s of steps whose batch shape
        was compiled already, or None)``."""
        cfg = self.cfg
        steady_pairs, steady_time, seen_shapes = 0, 0.0, set()
        saved_at = start
        with (self.out_dir / "metrics.jsonl").open("a") as metrics_file:
            for step in range(start, stop):
                rows, valid = self.sampler.indices(step)
                b = make_batch(self.train_table, self.train_targets, rows, valid)
                t = time.perf_counter()
                params, opt_state, m = self.step_fn(
                    params, opt_state, b.input_ids, b.token_type_ids, b.attention_mask, b.targets, b.valid
                )
                loss = float(m["loss"])  # blocks until the step is done
                dt = time.perf_counter() - t
                if b.input_ids.shape in seen_shapes:
                    steady_pairs, steady_time = steady_pairs + int(b.valid.sum()), steady_time + dt
                seen_shapes.add(b.input_ids.shape)
                done = step + 1
                if done % cfg.train.log_every == 0 or done == stop:
                    rec = {
                        "step": done,
                        "loss": loss,
                        "grad_norm": float(m["grad_norm"]),
                        "seq_len": b.input_ids.shape[1],
                        "step_s": round(dt, 4),
                        "epoch": self.sampler.epoch_of(step),
                    }
                    metrics_file.write(json.dumps(rec) + "\n")
                    metrics_file.flush()
                    self.log(
                        f"step {done}/{cfg.train.steps} loss {loss:.4f} |g| {rec['grad_norm']:.3f} "
                        f"T={rec['seq_len']} {dt:.2f} s/step"
                    )
                if cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0 and done < stop:
                    self._save(ckpt, done, params, opt_state)
                    saved_at = done
        return params, opt_state, saved_at, (steady_pairs / steady_time if steady_time > 0 else None)

    def _save(self, ckpt: Checkpoints, step: int, params: dict, opt_state: Any) -> None:
        ckpt.save(step, {"params": params, "opt_state": opt_state, "step": np.int64(step)}, self._meta(step))

    def _finish(self, model: CrossEncoder, result: TrainResult) -> None:
        """After the last step: evaluates on the held-out queries, exports, and writes summary.json."""
        cfg = self.cfg
        if len(self.heldout_table):
            result.eval_after = self.evaluate(model)
            self._write_json("eval_after.json", result.eval_after)
            self.log(f"eval after: {json.dumps(result.eval_after)}")
        if cfg.export.enabled:
            result.export_dir = self.export(model, self.out_dir / "export")
            self.log(f"exported to {result.export_dir}")
        before = result.eval_before
        if before is None and (self.out_dir / "eval_before.json").exists():
            before = json.loads((self.out_dir / "eval_before.json").read_text())
        self._write_json(
            "summary.json",
            {
                "steps": result.step,
                "fingerprint": cfg.fingerprint(),
                "pairs_per_s_this_session": result.pairs_per_s,
                "eval_before": before,
                "eval_after": result.eval_after,
                "export_dir": str(result.export_dir) if result.export_dir else None,
            },
        )

    def export(self, model: CrossEncoder, folder: str | Path) -> Path:
        """Writes ``model`` and the tokenizer as a Hugging Face folder, replacing an earlier export."""
        from jaxmech.hf.loading import save_pretrained

        folder = Path(folder)
        new = folder.with_name(folder.name + ".new")
        shutil.rmtree(new, ignore_errors=True)
        save_pretrained(model, new, tokenizer=self.tokenizer)
        if folder.exists():
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            new.rename(folder)
            shutil.rmtree(old)
        else:
            new.rename(folder)
        return folder

    def model_from_params(self, params: dict[str, Any]) -> CrossEncoder:
        """The module with the given flat parameters."""
        self.setup()
        return merge_params(self.graphdef, self.template, {k: jnp.asarray(v) for k, v in params.items()})

    def _write_json(self, name: str, obj: Any) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / name).write_text(json.dumps(obj, indent=1))


def transformers_parity(
    folder: str | Path,
    input_ids: np.ndarray,
    token_type_ids: np.ndarray,
    attention_mask: np.ndarray,
    expected: np.ndarray,
) -> float:
    """Max |logit difference| between ``transformers``' ``BertForSequenceClassification`` loaded from
    ``folder`` and ``expected`` (jaxmech's logits) on the given batch. Needs torch."""
    import torch
    from transformers import BertForSequenceClassification

    hf = BertForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        out = hf(
            input_ids=torch.as_tensor(np.asarray(input_ids), dtype=torch.long),
            token_type_ids=torch.as_tensor(np.asarray(token_type_ids), dtype=torch.long),
            attention_mask=torch.as_tensor(np.asarray(attention_mask), dtype=torch.long),
        ).logits
    return float(np.abs(out[:, 0].numpy() - np.asarray(expected)).max())
