"""Embedding and classifying (``train_embed_classify.py``), the GEN paper's second experiment: an
``EmbedClassifier`` (GEN or the GQN baseline composer, models/embed_classify.py) picks each query's view out of
every view of its batch, trained on the cross-entropy of the true one. No noise, no pixel sigma.

TensorBoard: ``train/accuracy``, ``train/accuracy_{k}x{k}`` (rank 0's batch, as ``train/loss_{k}x{k}``) and
``train/log_scale`` (s of the learned scale exp(s) of the scores) every step; at every evaluation
``test/loss_{k}x{k}``, ``test/accuracy_{k}x{k}``, ``test/candidates_{k}x{k}`` (the pool each query is
classified among: every view of the test batch), ``test/score_spread_{k}x{k}`` (the standard deviation of a
query's scores over its candidates, mean over queries: far below 1 the softmax is near uniform and the
classifier cannot tell its candidates apart) and image grids, each query's true view above the candidate picked
for it, of the last training batch and of each test grid.
"""
from torch import nn

from models.embed_classify import EmbedClassifier, EmbedClassifierConfig, candidates
from utils.training import summaries
from utils.checkpoint import EMBED_CLASSIFY
from utils.training.task import LR_FLAGS, Task


class Outcome(nn.Module):
    """The classifier's training forward as tensors only, each query's loss and 0/1 accuracy: DataParallel
    gathers tensors, not ``Classification``'s pool size. Each replica (or torchrun rank) classifies among the
    views of its own share of the batch."""

    def __init__(self, model: EmbedClassifier):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        out = self.model(*inputs)
        return out.loss, out.accuracy


class ClassifyTask(Task):
    name = EMBED_CLASSIFY
    prog = "train_embed_classify.py"
    run_flags = ("baseline", "img_size", "memory_norm", "embedding_norm", "raw_poses", "batch_size", "context_views",
                 "train_grids", "seed", *LR_FLAGS)
    original_off = ("memory_norm", "embedding_norm")
    metric_names = ("accuracy", "own_accuracy", "log_scale")

    def describe(self) -> str:
        return f"the {'GQN baseline' if self.args.baseline else 'GEN'} embed-and-classify model"

    def build_model(self):
        a = self.args
        return EmbedClassifier(EmbedClassifierConfig(img_size=a.img_size, baseline=a.baseline,
                                                     memory_norm=a.memory_norm, embedding_norm=a.embedding_norm))

    def trainable(self, model):
        return Outcome(model)

    def loss(self, output):
        return output[0].float().mean()

    def step_metrics(self, output, model, is_main):
        accuracy = output[1].detach().float().mean()
        return {"accuracy": accuracy, "own_accuracy": accuracy * float(is_main),
                "log_scale": model.scalar.detach().float().reshape(())}

    def log_step(self, writer, step, grid, metrics, world, finite):
        if finite:
            writer.add_scalar(f"train/accuracy_{grid}x{grid}", metrics["own_accuracy"], step)
            writer.add_scalar("train/accuracy", metrics["accuracy"] / world, step)  # means over the ranks
        writer.add_scalar("train/log_scale", metrics["log_scale"] / world, step)

    def progress(self, loss: float) -> str:
        return f"{loss:.3f}"

    def evaluate(self, trainer, writer, train_batch):
        device, step = trainer.runtime.device, trainer.step
        if train_batch is not None:
            self.log_picks(trainer, writer, "images/train", train_batch.model_inputs(device))
        for k, batch in trainer.test_batches.items():
            out = self.log_picks(trainer, writer, f"images/test_{k}x{k}", batch.model_inputs(device))
            writer.add_scalar(f"test/loss_{k}x{k}", out.loss.mean().item(), step)
            writer.add_scalar(f"test/accuracy_{k}x{k}", out.accuracy.mean().item(), step)
            writer.add_scalar(f"test/candidates_{k}x{k}", out.candidates, step)
            writer.add_scalar(f"test/score_spread_{k}x{k}", out.scores.float().std(dim=1).mean().item(), step)

    def log_picks(self, trainer, writer, tag, inputs):
        """Classify a batch; log its first queries' true views above the candidates picked for them."""
        out = trainer.model(*inputs)
        context_frames, _, query_frames = inputs[:3]
        pool, answers = candidates(context_frames, query_frames)
        shown = slice(summaries.IMAGES_PER_ROW)
        writer.add_image(tag, summaries.image_rows(pool[answers[shown]], pool[out.picked[shown]]), trainer.step)
        return out
