"""Loading models: a local Hugging Face folder, or a hub id through the ``huggingface_hub`` cache.

A folder needs ``config.json`` and weights (``model.safetensors``, a sharded ``model.safetensors.index.json``,
or a legacy ``pytorch_model.bin``, which needs torch). Sentence-transformers folders (``modules.json`` with a
``Pooling`` module) load as bi-encoders with their pooling, normalisation and similarity settings; folders
whose config names a ``*ForSequenceClassification`` architecture load as cross-encoders.

Converted parameters are cached as safetensors under ``$JAXMECH_CACHE`` (default ``~/.cache/jaxmech``), keyed
by the weight files' paths, sizes and modification times, so a second load skips conversion (and torch). The
conversion report travels with them (safetensors metadata), so a cached load still says which parameters were
initialised rather than read (e.g. a seeded classifier head).

Files and folders written here get the usual permissions under the process umask (not the private ones of
temporary files), so colleagues can read exported models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmech.config import EncoderConfig, UnsupportedConfigError
from jaxmech.files import atomic_write, resolve_model_path
from jaxmech.hf.convert import (
    ConversionReport,
    build_model,
    from_hf_state_dict,
    modernbert_from_hf_state_dict,
    to_hf_state_dict,
)
from jaxmech.hf.tokenizer import PairTokenizer, has_tokenizer_files
from jaxmech.models.base import Encoder
from jaxmech.models.bert import HookedEncoder, PoolingConfig
from jaxmech.models.modernbert import ModernBertConfig, ModernBertCrossEncoder
from jaxmech.runtime import cache_root

CACHE_FORMAT = 2  # 2: the conversion report is stored with the parameters
_REPORT_KEY = "jaxmech_conversion_report"


class ModelNotFoundError(FileNotFoundError):
    """A model folder or hub id could not be found (locally or in the hub cache)."""


class WeightsError(ValueError):
    """Weights are missing, unreadable or truncated."""


@dataclasses.dataclass
class LoadedModel:
    """A model with everything needed to run it.

    Attributes:
        model: The `CrossEncoder` or `BiEncoder` (a `jaxmech.models.modernbert.ModernBertCrossEncoder` for ModernBERT).
        tokenizer: Its `PairTokenizer`, or None if the folder has no tokenizer files (weights only).
        folder: The local folder it came from.
        kind: ``"cross"`` or ``"bi"``.
        report: What conversion consumed, ignored or initialised.
        from_cache: Whether the parameters came from jaxmech's converted-parameter cache.
    """

    model: Encoder
    tokenizer: PairTokenizer | None
    folder: Path
    kind: str
    report: ConversionReport
    from_cache: bool = False


# --------------------------------------------------------------------------------------------------------------
# Locating a folder
# --------------------------------------------------------------------------------------------------------------

_HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model.bin", "*.txt",
              "tokenizer*", "special_tokens_map.json", "modules.json", "config_sentence_transformers.json",
              "sentence_bert_config.json", "1_Pooling/*",
              "vocab.json", "sentencepiece.bpe.model", "spiece.model"]  # RoBERTa BPE, XLM-R SentencePiece


def resolve_model_dir(path_or_id: str | Path, *, timeout_s: float = 15.0) -> Path:
    """A local folder for a path or a Hugging Face hub id.

    Local paths win. A hub id is looked up in the ``huggingface_hub`` cache first; only if it is not cached
    and the hub is not offline (``HF_HUB_OFFLINE``) is it downloaded, with short timeouts.

    Raises:
        ModelNotFoundError: Naming the path or id, and how to pass a local folder instead.
    """
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    text = str(path_or_id)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1 or not text
    if looks_local:
        raise ModelNotFoundError(f"model folder {text!r} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelNotFoundError(f"{text!r} is not a local folder and huggingface_hub is not installed") from err
    how = (f"{text!r} is not a local folder and is not in the Hugging Face cache. Download it once with "
           f"`huggingface-cli download {text}` on a machine that is online, or pass a local folder "
           f"(--model /path/to/folder with config.json and model.safetensors).")
    try:
        return Path(snapshot_download(text, allow_patterns=_HUB_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss falls through to the online attempt
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelNotFoundError(how + " (HF_HUB_OFFLINE is set)")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout_s)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout_s)))
    try:
        return Path(snapshot_download(text, allow_patterns=_HUB_FILES))
    except Exception as err:  # noqa: BLE001 - network errors vary by version; the message says what failed
        raise ModelNotFoundError(f"{how} Download failed: {type(err).__name__}: {err}") from None


# --------------------------------------------------------------------------------------------------------------
# Reading weights and settings
# --------------------------------------------------------------------------------------------------------------


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder, preferring safetensors.

    Raises:
        WeightsError: If there are none, or a shard index names a missing file.
    """
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as err:
                raise WeightsError(f"{index}: malformed shard index ({err})") from None
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise WeightsError(f"{index}: shard(s) {missing} are missing from {folder}")
            return [folder / s for s in shards]
    if (folder / "pytorch_model.bin").exists():
        return [folder / "pytorch_model.bin"]
    raise WeightsError(
        f"{folder}: no weights found (expected model.safetensors, model.safetensors.index.json or "
        f"pytorch_model.bin)"
    )


def read_state_dict(files: list[Path]) -> dict[str, np.ndarray]:
    """Reads tensors from safetensors or torch ``.bin`` files into numpy.

    Raises:
        WeightsError: If a file is truncated or corrupt.
        ImportError: For ``.bin`` files when torch is not installed.
    """
    state: dict[str, np.ndarray] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            try:
                state.update(load_file(str(f)))
            except (SafetensorError, OSError, ValueError) as err:
                raise WeightsError(f"{f}: cannot read safetensors file (truncated or corrupt?): {err}") from None
        else:
            try:
                import torch  # only for legacy .bin checkpoints
            except ImportError:
                raise ImportError(
                    f"{f} is a PyTorch pickle; reading it needs torch (`pip install torch`), or convert the "
                    f"folder to model.safetensors"
                ) from None
            try:
                tensors = torch.load(str(f), map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
                raise WeightsError(f"{f}: cannot read PyTorch checkpoint (truncated or corrupt?): {err}") from None
            state.update({k: v.float().numpy() for k, v in tensors.items()})
    return state


def read_pooling(folder: Path) -> PoolingConfig | None:
    """Pooling settings of a sentence-transformers folder, or None if it is not one.

    Raises:
        ValueError: For pooling modes jaxmech does not implement.
    """
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return None
    modules = json.loads(modules_file.read_text())
    pooling = next((m for m in modules if m.get("type", "").endswith("Pooling")), None)
    if pooling is None:
        return None
    cfg_file = folder / pooling.get("path", "1_Pooling") / "config.json"
    pcfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {"pooling_mode_mean_tokens": True}
    modes = [k[len("pooling_mode_"):] for k, v in pcfg.items() if k.startswith("pooling_mode_") and v]
    mapping = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}
    if len(modes) != 1 or modes[0] not in mapping:
        raise ValueError(f"{cfg_file}: pooling modes {modes} are not supported (one of {list(mapping)})")
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    similarity = "cosine"
    st_cfg = folder / "config_sentence_transformers.json"
    if st_cfg.exists():
        name = json.loads(st_cfg.read_text()).get("similarity_fn_name") or "cosine"
        similarity = {"cosine": "cosine", "dot": "dot", "dot_product": "dot"}.get(name)
        if similarity is None:
            raise ValueError(f"{st_cfg}: similarity_fn_name={name!r} is not supported (cosine, dot)")
    return PoolingConfig(mode=mapping[modes[0]], normalize=normalize, similarity=similarity)


def detect_kind(folder: Path, hf_config: dict) -> str:
    """``"cross"`` for sequence-classification configs, ``"bi"`` for sentence-transformers folders."""
    archs = hf_config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "cross"
    if (folder / "modules.json").exists():
        return "bi"
    raise ValueError(
        f"{folder}: cannot tell whether this is a cross-encoder or a bi-encoder (architectures={archs}, no "
        f"modules.json); pass --kind cross (with --init-head-seed S for an encoder-only checkpoint) or --kind bi "
        f"(from Python: kind='cross', init_missing_head_seed=S, or kind='bi')"
    )


# --------------------------------------------------------------------------------------------------------------
# Converted-parameter cache
# --------------------------------------------------------------------------------------------------------------


def _cache_key(files: list[Path], kind: str, extra: str) -> str:
    h = hashlib.sha256(f"v{CACHE_FORMAT}|{kind}|{extra}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def flat_params(model: HookedEncoder) -> dict[str, np.ndarray]:
    """Parameters as a flat ``{"blocks.attn.W_Q": array}`` dict (stacked layers keep their layer axis)."""
    return {".".join(map(str, path)): np.asarray(var.get_value())
            for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def load_flat_params(model: HookedEncoder, flat: dict[str, np.ndarray]) -> HookedEncoder:
    """A copy of ``model`` with parameters from `flat_params` output (shapes checked)."""
    graphdef, state = nnx.split(model, nnx.Param)
    new = []
    for path, var in nnx.to_flat_state(state):
        key = ".".join(map(str, path))
        if key not in flat or flat[key].shape != var.get_value().shape:
            raise WeightsError(f"cached parameters: {key} missing or misshapen")
        new.append((path, var.replace(jnp.asarray(flat[key], jnp.float32))))
    return nnx.merge(graphdef, nnx.from_flat_state(new))


def _usual_permissions(folder: Path) -> None:
    """Gives a folder tree the permissions of newly created files and folders under the umask."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


# --------------------------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------------------------


def load_model(
    path_or_id: str | Path,
    *,
    kind: str = "auto",
    init_missing_head_seed: int | None = None,
    score_label: int = 0,
    use_cache: bool = True,
    max_length: int | None = None,
    truncation: str = "longest_first",
    tokenizer_path: str | Path | None = None,
    require_tokenizer: bool = False,
) -> LoadedModel:
    """Loads a cross- or bi-encoder and its tokenizer. The config's ``model_type`` picks the loader
    (`MODEL_LOADERS`): a ``"modernbert"`` folder loads as a `jaxmech.models.modernbert.ModernBertCrossEncoder`
    (cross-encoder only, not cached), every other as a BERT-family `CrossEncoder` or `BiEncoder`.

    Args:
        path_or_id: A local folder or a Hugging Face hub id (resolved through the hub cache).
        kind: ``"auto"``, ``"cross"`` or ``"bi"``.
        init_missing_head_seed: Build a cross-encoder from an encoder-only checkpoint, initialising the
            missing pooler/classifier from this seed (reported in ``report.initialized``).
        score_label: See `CrossEncoder`.
        use_cache: Read/write the converted-parameter cache.
        max_length: Tokenizer maximum length (default: the tokenizer's, capped at 512 and ``n_ctx``).
        truncation: See `PairTokenizer`.
        tokenizer_path: Folder to take the tokenizer from (default: the model folder).
        require_tokenizer: Fail if there is no tokenizer (instead of returning ``tokenizer=None``).

    Returns:
        A `LoadedModel`.

    Raises:
        ModelNotFoundError, WeightsError, UnsupportedConfigError, ConversionError: With the folder or file
            named in the message.
    """
    folder = resolve_model_dir(resolve_model_path(path_or_id))
    hf_config, config_file = _read_hf_config(folder)
    load = MODEL_LOADERS.get(hf_config.get("model_type"), _load_encoder)
    model, kind, report, from_cache = load(folder, hf_config, config_file, kind=kind,
                                           init_missing_head_seed=init_missing_head_seed, score_label=score_label,
                                           use_cache=use_cache)
    tokenizer = _load_tokenizer(folder, min(model.cfg.max_length, max_length or 512), truncation=truncation,
                                tokenizer_path=tokenizer_path, require_tokenizer=require_tokenizer)
    return LoadedModel(model, tokenizer, folder, kind, report, from_cache)


def _read_hf_config(folder: Path) -> tuple[dict, Path]:
    """The ``config.json`` of a model folder, and its path.

    Raises:
        ModelNotFoundError: If the folder has none.
    """
    config_file = folder / "config.json"
    if not config_file.exists():
        raise ModelNotFoundError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
    return json.loads(config_file.read_text()), config_file


def _load_encoder(folder: Path, hf_config: dict, config_file: Path, *, kind: str, init_missing_head_seed: int | None,
                  score_label: int, use_cache: bool) -> tuple[HookedEncoder, str, ConversionReport, bool]:
    """`load_model`'s BERT-family loader (BERT, ELECTRA, (XLM-)RoBERTa): ``(model, kind, report, from_cache)``,
    the parameters read from the converted-parameter cache when it holds them."""
    cfg = EncoderConfig.from_hf_config(hf_config, source=str(config_file))
    if kind == "auto":
        kind = detect_kind(folder, hf_config)
    pooling = (read_pooling(folder) or PoolingConfig()) if kind == "bi" else None
    files = weight_files(folder)
    key = _cache_key(files, kind, f"seed={init_missing_head_seed}|{cfg}")
    cached = cache_root() / "converted" / f"{key}.safetensors"
    hit = _read_cached(cached, cfg, kind, pooling, score_label) if use_cache and cached.exists() else None
    if hit is not None:
        return hit[0], kind, hit[1], True
    model, report = from_hf_state_dict(
        read_state_dict(files), cfg, kind, pooling=pooling, score_label=score_label,
        init_missing_head_seed=init_missing_head_seed, source=", ".join(str(f) for f in files),
    )
    if use_cache:
        from safetensors.numpy import save_file

        with contextlib.suppress(OSError):  # an unwritable cache only costs speed
            meta = {_REPORT_KEY: json.dumps(dataclasses.asdict(report))}
            atomic_write(cached, lambda tmp: save_file(flat_params(model), tmp, metadata=meta))
    return model, kind, report, False


def _read_cached(cached: Path, cfg: EncoderConfig, kind: str, pooling: PoolingConfig | None,
                 score_label: int) -> tuple[HookedEncoder, ConversionReport] | None:
    """The model and conversion report stored in a converted-parameter cache entry, or None (and the entry
    removed) when it is stale or damaged."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    try:
        with safe_open(str(cached), framework="numpy") as f:
            report = ConversionReport(**json.loads((f.metadata() or {})[_REPORT_KEY]))
        template = nnx.eval_shape(lambda: build_model(cfg, kind, pooling=pooling, score_label=score_label))
        return load_flat_params(template, load_file(str(cached))), report
    except Exception:  # noqa: BLE001 - a stale or damaged cache entry is rebuilt by the caller
        cached.unlink(missing_ok=True)
        return None


def _load_tokenizer(folder: Path, limit: int, *, truncation: str, tokenizer_path: str | Path | None,
                    require_tokenizer: bool) -> PairTokenizer | None:
    """The `PairTokenizer` of ``tokenizer_path`` (default: the model folder), or None without tokenizer files."""
    tok_dir = Path(tokenizer_path) if tokenizer_path else folder
    has_tokenizer = has_tokenizer_files(tok_dir)
    if tokenizer_path and not has_tokenizer:
        raise ModelNotFoundError(f"{tok_dir}: no tokenizer files (tokenizer.json, vocab.txt, ...)")
    if require_tokenizer and not has_tokenizer:
        raise FileNotFoundError(f"{folder}: the model folder has no tokenizer (tokenizer.json, vocab.txt, ...)")
    return (PairTokenizer.from_pretrained(tok_dir, max_length=limit, truncation=truncation)
            if has_tokenizer else None)


def _load_modernbert(folder: Path, hf_config: dict, config_file: Path, *, kind: str,
                     init_missing_head_seed: int | None, score_label: int,
                     use_cache: bool) -> tuple[ModernBertCrossEncoder, str, ConversionReport, bool]:
    """`load_model`'s loader of ``ModernBertForSequenceClassification`` folders: its own pre-LN blocks
    (`jaxmech.models.modernbert`), a cross-encoder with its classifier head; converted on every load (no parameter
    cache, ``use_cache`` is not used). Bi-encoder use and a fresh head are refused by name."""
    if kind not in ("auto", "cross"):
        raise UnsupportedConfigError(f"{folder}: kind={kind!r} is not available for model_type='modernbert' "
                                     "(ModernBERT loads as a cross-encoder only: kind='cross' or 'auto')")
    if init_missing_head_seed is not None:
        raise UnsupportedConfigError(f"{folder}: init_missing_head_seed is not available for "
                                     "model_type='modernbert' (it needs a ModernBertForSequenceClassification "
                                     "checkpoint with its classifier head)")
    cfg = ModernBertConfig.from_hf_config(hf_config, source=str(config_file))
    files = weight_files(folder)
    model = modernbert_from_hf_state_dict(read_state_dict(files), cfg, score_label=score_label,
                                          source=", ".join(str(f) for f in files))
    return model, "cross", ConversionReport(), False


MODEL_LOADERS = {"modernbert": _load_modernbert}
"""`load_model`'s loader by the config's ``model_type``, for model families with their own blocks; every other
``model_type`` loads as a BERT-family encoder (`EncoderConfig.from_hf_config` refuses what it does not support).
A loader takes ``(folder, hf_config, config_file, *, kind, init_missing_head_seed, score_label, use_cache)`` and
returns ``(model, kind, report, from_cache)``."""


def load_modernbert(path_or_id, *, score_label: int = 0) -> tuple[ModernBertCrossEncoder, PairTokenizer | None]:
    """Loads a ``ModernBertForSequenceClassification`` folder or hub id: ``(model, tokenizer)``; the tokenizer
    (a `jaxmech.hf.tokenizer.PairTokenizer`, its pair layout read off the post-processor) is None without tokenizer
    files. `load_model` loads ModernBERT folders the same way (in a `LoadedModel`, for `run_patching`, the CLI and
    sweeps); patch the model with `jaxmech.patching.engines.pre_ln.modernbert_patch` or
    `jaxmech.patching.runners.run_family`.

    Raises:
        ModelNotFoundError, WeightsError, UnsupportedConfigError, ConversionError: Naming the folder or tensor.
    """
    folder = resolve_model_dir(path_or_id)
    hf_config, config_file = _read_hf_config(folder)
    cfg = ModernBertConfig.from_hf_config(hf_config, source=str(config_file))
    files = weight_files(folder)
    model = modernbert_from_hf_state_dict(read_state_dict(files), cfg, score_label=score_label,
                                          source=", ".join(str(f) for f in files))
    tokenizer = PairTokenizer.from_pretrained(folder, max_length=min(cfg.max_length, 512)) \
        if has_tokenizer_files(folder) else None
    return model, tokenizer


def save_pretrained(model: HookedEncoder, folder: str | Path, *, tokenizer: PairTokenizer | None = None) -> Path:
    """Writes a Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer) that ``transformers``
    loads: ``BertForSequenceClassification`` (``ElectraForSequenceClassification``, ...: `EncoderConfig.hf_class`)
    for cross-encoders, ``BertModel`` (etc.; + sentence-transformers pooling files) for bi-encoders. Files are
    written to a temporary folder and moved into place, so an interrupted save never looks complete; the folder
    gets the usual permissions under the umask.
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp-"))
    try:
        arch = model.cfg.hf_class(model.kind)
        (tmp / "config.json").write_text(json.dumps(model.cfg.to_hf_config(architecture=arch), indent=2))
        save_file(to_hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if model.kind == "bi":
            p = model.pooling
            (tmp / "1_Pooling").mkdir()
            (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
                "word_embedding_dimension": model.cfg.d_model,
                "pooling_mode_cls_token": p.mode == "cls",
                "pooling_mode_mean_tokens": p.mode == "mean",
                "pooling_mode_max_tokens": p.mode == "max",
            }, indent=2))
            modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                       {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
            if p.normalize:
                modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                                "type": "sentence_transformers.models.Normalize"})
            (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
            (tmp / "config_sentence_transformers.json").write_text(
                json.dumps({"similarity_fn_name": p.similarity}, indent=2))
        if tokenizer is not None:
            tokenizer.hf.save_pretrained(str(tmp))
        if folder.exists():
            raise FileExistsError(f"{folder} already exists; refusing to overwrite")
        _usual_permissions(tmp)  # mkdtemp (and safetensors) make them private
        os.replace(tmp, folder)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
