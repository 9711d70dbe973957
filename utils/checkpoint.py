"""Checkpoints: written atomically, read without executing code, understood in the original's format.

A checkpoint is a dict of plain types (loads with ``torch.load(..., weights_only=True)``):
``epoch`` (the step, as the original named it), ``format`` (``FORMAT``), ``task`` (what the model does:
``RENDER`` or ``EMBED_CLASSIFY``), ``model_state_dict`` (unwrapped: no ``module.`` or compile prefixes),
``optimizer_state_dict``, ``scheduler_state_dict``, ``sigma`` (rendering only), ``args`` (``vars()`` of the
training command line) and RNG states. Checkpoints of the original implementation hold only ``epoch`` and
``model_state_dict`` (keys possibly prefixed ``module.``); those, and ours written before ``task`` existed, are
told apart by their weights (``checkpoint_task``).
"""
import re
import warnings
from pathlib import Path

import torch

from models.scene import ModelConfig, SceneModel, clean_state_dict
from utils.atomic import atomic_path


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the file."""


def plain(value):
    """A command-line value as a checkpoint-safe plain type."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def checkpoint_payload(step: int, task: str, model_state: dict, optimizer_state: dict, scheduler: dict, args: dict,
                       extras: dict) -> dict:
    """What a training run saves (the module docstring's layout), with this process's RNG states."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"epoch": step, "format": FORMAT, "task": task, "model_state_dict": model_state,
            "optimizer_state_dict": optimizer_state, "scheduler_state_dict": scheduler, **extras,
            "args": {name: plain(value) for name, value in args.items()}, "rng_state": rng}


def save_checkpoint(payload: dict, path) -> None:
    """Write ``payload`` to ``path`` atomically: temp file in the same directory, fsync, rename.

    If anything fails (a full disk, say) the temp file is removed and any previous file at ``path``
    is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temp, open(temp, "wb") as file:
            sink = _KeepWriteError(file)
            try:
                torch.save(payload, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None
    except OSError as error:
        raise OSError(error.errno, f"could not write checkpoint {path} ({error.strerror}); "
                                   f"the previous checkpoints are intact") from error


class _KeepWriteError:
    """A file for torch.save that keeps the OSError of a failed write: torch's zip writer reports it as a
    RuntimeError without its cause (a full disk, a file-size limit)."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self):
        self.file.flush()


def checkpoint_step(path) -> int:
    """The step (``epoch``) a checkpoint file holds. Memory-mapped, so its tensors are not read (a
    paper-size run's checkpoint is hundreds of MB); files of torch's pre-1.6 format cannot be mapped and
    are loaded whole. ``CheckpointError`` if unreadable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if isinstance(payload, dict) and isinstance(payload.get("model_state_dict"), dict):
            return int(payload.get("epoch", 0))
    except Exception:  # noqa: BLE001 - not a zip checkpoint, or not a checkpoint: load_checkpoint says which
        pass
    return int(load_checkpoint(path).get("epoch", 0))


def load_checkpoint(path) -> dict:
    """Read a checkpoint dict safely; ``CheckpointError`` naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    try:
        with warnings.catch_warnings():  # a pickle torch did not write: the error below says so, in one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - weights_only parsing of arbitrary bytes fails in many ways
        # (UnpicklingError, RuntimeError, EOFError, BadZipFile, but also IndexError, KeyError, ...)
        raise CheckpointError(_unreadable(path, error)) from None
    if not isinstance(payload, dict) or "model_state_dict" not in payload:
        raise CheckpointError(f"{path} is not a checkpoint: no model_state_dict in it")
    weights = payload["model_state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise CheckpointError(f"{path} is not a checkpoint: its model_state_dict is not a dict of named tensors")
    payload["model_state_dict"] = clean_state_dict(payload["model_state_dict"])
    if not isinstance(payload.get("args", {}), dict):
        raise CheckpointError(f"{path} is not a checkpoint: its args are not a dict")
    if "args" in payload:  # this project's checkpoint; the original implementation's have no args
        payload["args"].setdefault("memory_norm", False)  # runs saved before --memory_norm trained the original
        payload["args"].setdefault("embedding_norm", False)  # and classifiers before --embedding_norm its embeddings
        version = payload.get("format", 1)
        if version < 2:
            _reorder_r(payload)
        if version < 3:
            _add_view_norm(payload)
        payload["format"] = FORMAT
    if not isinstance(payload.get("task", ""), str):
        raise CheckpointError(f"{path} is not a checkpoint: its task is not a name")
    return payload


# What a checkpoint's model does, and the script that trains it.
RENDER, EMBED_CLASSIFY = "render", "embed_classify"
TASKS = {RENDER: ("a renderer", "train_scene_rendering.py"),
         EMBED_CLASSIFY: ("an embed-and-classify model", "train_embed_classify.py")}
_CLASSIFIER_KEY = "candidates_encoder."  # a parameter only the embed-and-classify model has


def checkpoint_task(checkpoint: dict) -> str:
    """The task of a checkpoint (``load_checkpoint``'s dict): its ``task``, else (the original's, and ours written
    before checkpoints named it) what its weights are."""
    if "task" in checkpoint:
        return checkpoint["task"]
    classifier = any(key.startswith(_CLASSIFIER_KEY) for key in checkpoint["model_state_dict"])
    return EMBED_CLASSIFY if classifier else RENDER


def require_task(checkpoint: dict, task: str, path="checkpoint") -> None:
    """``CheckpointError`` unless ``checkpoint`` holds a model of ``task``; the message names the script that
    trains what it holds."""
    found = checkpoint_task(checkpoint)
    if found != task:
        what, script = TASKS.get(found, (f"a model of an unknown task {found!r}", None))
        made = f" (trained by {script})" if script else ""
        raise CheckpointError(f"{path} holds {what}{made}, not {TASKS[task][0]}")


# What torch's weights-only unpickler says when it refuses a file for what it holds (a class, a function, a
# TorchScript archive, ...) rather than for bytes it cannot parse.
_REFUSED = re.compile(r"GLOBAL (\S+)|unrecognized function|Can only (?:create new object|build)|persistent_load"
                      r"|must be imported to load|TorchScript|legacy \.tar")
# Lines of torch's message that are advice, not diagnosis: above all its suggestion to retry with
# weights_only=False, which would run whatever the file holds and is no cure for a damaged file.
_ADVICE = re.compile(r"weights.only|arbitrary code|trusted source|documentation of torch\.load|file an issue",
                     re.IGNORECASE)


def _unreadable(path, error: Exception) -> str:
    """The one-line reason a file did not load as a checkpoint, without torch's advice to load it unsafely."""
    text = str(error)
    refused = _REFUSED.search(text)
    if refused:
        what = f" ({refused.group(1).rstrip('.')})" if refused.group(1) else ""
        return (f"{path} is not a readable checkpoint: it holds objects other than plain tensors and numbers{what}, "
                "refused for safety (nothing in it was run)")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _ADVICE.search(line)]
    detail = type(error).__name__
    if lines:  # the first sentence of torch's diagnosis, e.g. "... failed finding central directory"
        detail += ": " + re.split(r"(?<=\w)\. ", lines[0], maxsplit=1)[0].rstrip(".")
    return f"{path} is not a readable checkpoint: the file is damaged (truncated or corrupt) or not a checkpoint ({detail})"


# 2: r in the original implementation's channel order. This project's checkpoints written before it (format 1:
# they have saved args but no format) fed upsample_r r as [read state | pose copies] (GEN) or [hotel centre |
# sum | pose copies] (baseline). Original-implementation checkpoints (no args) are in the original order.
# 3: the baseline's --memory_norm standardises each view (composer.view_norm buffers).
FORMAT = 3
_R_WEIGHTS = ("inference_core.upsample_r.weight", "generation_core.upsample_r.weight")


def _reorder_r(payload: dict) -> None:
    """Reorder a format-1 checkpoint's upsample_r input rows to format 2's r, and drop its optimizer state
    (Adam's moments follow the old order). Exact for GEN; the baseline's first two inputs were the hotel
    centre and are now the query's x, y. ``payload["upgraded"]`` says so."""
    baseline = bool(payload["args"].get("baseline", False))
    weights = payload["model_state_dict"]
    for key in _R_WEIGHTS:
        if key in weights:
            w = weights[key]
            weights[key] = torch.cat([w[:2], w[256:], w[2:256]] if baseline else [w[256:], w[:256]])
    payload.pop("optimizer_state_dict", None)
    payload["upgraded"] = ("written before r took the original's channel order: its upsample_r weights were "
                           "reordered" + (" (the first two inputs, once the hotel centre, are now the query's "
                                          "x, y)" if baseline else "") + " and its optimizer state dropped")


_VIEW_NORM = "composer.view_norm."


def _add_view_norm(payload: dict) -> None:
    """Give a baseline that layer-normalised only its sum (``--memory_norm`` before format 3) the statistics of
    no standardisation (mean 0, variance 1): it then computes what it was trained to, up to the variance's
    epsilon, which the layer norm of the sum cancels. Training on from it standardises with batch statistics."""
    args, weights = payload["args"], payload["model_state_dict"]
    embedder = weights.get("composer.embedder.conv8.weight")  # missing: the loader's mismatch error says so
    if not (args.get("baseline") and args["memory_norm"]) or embedder is None:
        return
    channels = embedder.shape[0]
    weights.update({_VIEW_NORM + "running_mean": torch.zeros(channels), _VIEW_NORM + "running_var": torch.ones(channels),
                    _VIEW_NORM + "num_batches_tracked": torch.zeros((), dtype=torch.long)})
    payload["upgraded"] = ("written before the baseline's --memory_norm standardised each view: it evaluates as "
                           "trained; training on from it standardises the views")


def load_model_state(model: torch.nn.Module, state_dict: dict, path="checkpoint") -> None:
    """Load weights, with one clear error if the checkpoint's architecture differs from the model's."""
    expected = model.state_dict()
    mismatched = [key for key in expected if key in state_dict and state_dict[key].shape != expected[key].shape]
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if mismatched or missing or unexpected:
        details = "; ".join(part for part in (
            f"shape differs for {mismatched[:3]}" if mismatched else "",
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "") if part)
        raise CheckpointError(f"{path} does not fit this model ({details}): check --baseline, --img_size "
                              f"and the other model flags")
    model.load_state_dict(state_dict)


def model_config(args) -> ModelConfig:
    """The renderer a run's flags describe (an argparse namespace, or a checkpoint's ``args`` dict)."""
    values = args if isinstance(args, dict) else vars(args)
    return ModelConfig(img_size=values["img_size"], layers=values["layers"], baseline=values["baseline"],
                       max_grid=values.get("max_grid", ModelConfig.max_grid), memory_norm=values["memory_norm"])


def model_from_checkpoint(path, device="cpu"):
    """(model in eval mode, checkpoint dict) from a checkpoint this project wrote."""
    checkpoint = load_checkpoint(path)
    require_task(checkpoint, RENDER, path)
    if "args" not in checkpoint:
        raise CheckpointError(f"{path} has no saved args (an original-format checkpoint?): "
                              f"resume it with train_scene_rendering.py --saved_model instead")
    model = SceneModel(model_config(checkpoint["args"]))
    load_model_state(model, checkpoint["model_state_dict"], path)
    if "upgraded" in checkpoint:
        warnings.warn(f"{path}: {checkpoint['upgraded']}")
    return model.to(device).eval(), checkpoint
