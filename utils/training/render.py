"""Rendering (``train_scene_rendering.py``): a ``SceneModel`` (GEN or the GQN baseline) trained on -ELBO, with
the pixel sigma annealed beside the learning rate.

TensorBoard: ``train/kl``, ``sigma``, ``diag/composer_grad_norm`` every step; at every evaluation
``test/loss_{k}x{k}`` (-ELBO) and ``test/kl_{k}x{k}``, image grids (truth / reconstruction / generation) of the
last training batch and of each test grid, and the memory path's health (``diag/*``, utils/training/diagnostics.py).
"""
import torch

from models.scene import SceneModel
from utils.training import schedules, summaries
from utils.checkpoint import RENDER, model_config
from utils.training.diagnostics import DEAD_WARNING, composer_grad_norm, memory_diagnostics
from utils.training.task import LR_FLAGS, Task

SIGMA_FLAGS = ("sigma", "sigma_final", "sigma_steps")


class RenderTask(Task):
    name = RENDER
    prog = "train_scene_rendering.py"
    run_flags = ("baseline", "img_size", "layers", "memory_norm", "raw_poses", "batch_size", "context_views",
                 "train_grids", "seed", *LR_FLAGS, *SIGMA_FLAGS)
    metric_names = ("kl", "composer_grad_norm")

    def __init__(self, args):
        super().__init__(args)
        self.dead_steps = 0  # steps in a row whose composer got no gradient

    def describe(self) -> str:
        return "GQN baseline" if self.args.baseline else "GEN"

    def build_model(self):
        return SceneModel(model_config(self.args))

    # --- a step

    def sigma(self, step: int) -> float:
        a = self.args
        return schedules.pixel_sigma(step, a.sigma, a.sigma_final, a.sigma_steps)

    def schedules(self, step: int) -> dict:
        return {"sigma": self.sigma(step)}

    def step_inputs(self, schedule, device, compiled):
        # A float sigma would be a constant of the compiled graph: a recompile at every step.
        return (torch.full((), schedule["sigma"], device=device) if compiled else schedule["sigma"],)

    def loss(self, output):
        return output.loss.float().mean()

    def step_metrics(self, output, model, is_main):
        return {"kl": output.kl.detach().float().mean(), "composer_grad_norm": composer_grad_norm(model)}

    def log_step(self, writer, step, grid, metrics, world, finite):
        if finite:
            writer.add_scalar("train/kl", metrics["kl"] / world, step)
            writer.add_scalar("diag/composer_grad_norm", metrics["composer_grad_norm"] / world, step)

    def after_step(self, trainer, metrics, finite):
        self.dead_steps = self.dead_steps + 1 if finite and metrics["composer_grad_norm"] == 0 else 0
        if self.dead_steps == self.args.log_interval and trainer.runtime.is_main:
            trainer.note("warning: " + DEAD_WARNING.format(what=f"no gradient has reached the composer for "
                                                                f"{self.dead_steps} steps"))

    def checkpoint_extras(self, step):
        return {"sigma": self.sigma(step)}

    # --- evaluation

    def evaluate(self, trainer, writer, train_batch):
        args, device, step = self.args, trainer.runtime.device, trainer.step
        sigma = self.sigma(step)
        torch.manual_seed(args.seed)  # the same noise at every evaluation; training reseeds every step
        if train_batch is not None:
            self.log_images(trainer, writer, "images/train", train_batch)
        for k, batch in trainer.test_batches.items():
            torch.manual_seed(args.seed)
            losses = trainer.eval_model()(*batch.model_inputs(device), sigma)
            writer.add_scalar(f"test/loss_{k}x{k}", losses.loss.mean().item(), step)
            writer.add_scalar(f"test/kl_{k}x{k}", losses.kl.mean().item(), step)
            self.log_images(trainer, writer, f"images/test_{k}x{k}", batch)
        self.log_memory(trainer, writer)

    def log_memory(self, trainer, writer):
        """diag/*: the memory path's health on the test batch of the smallest test grid (most mazes)."""
        batch = trainer.test_batches[min(trainer.test_batches)]
        if batch.query_frames.shape[0] * batch.grid ** 2 < 2:
            return  # one maze: no other maze's views to swap in
        values = memory_diagnostics(trainer.model, batch.model_inputs(trainer.runtime.device), self.args.seed)
        for name, value in values.items():
            writer.add_scalar(f"diag/{name}", value, trainer.step)
        if trainer.step and values["context_sensitivity"] == 0:
            trainer.note("warning: " + DEAD_WARNING.format(what="the generated views do not change at all when the "
                                                                "context views are another maze's"))

    def log_images(self, trainer, writer, tag, batch):
        inputs = batch.model_inputs(trainer.runtime.device)
        context_frames, context_poses, query_frames, query_poses, origin, grid = inputs
        hotels = max(1, summaries.IMAGES_PER_ROW // (grid * grid))  # render only what is shown
        head = [t[:hotels] for t in (context_frames, context_poses, query_poses, origin)]
        truth = query_frames[:hotels].flatten(0, 1)
        reconstruction = trainer.model.render(*head, grid, query_frames=query_frames[:hotels])
        generation = trainer.model.render(*head, grid)
        writer.add_image(tag, summaries.image_rows(truth, reconstruction, generation), trainer.step)
