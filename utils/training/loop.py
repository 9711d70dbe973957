"""The training loop every training script shares: ``Trainer`` trains a ``Task`` (``utils/training/task.py``).

What a step sees (episodes, views, grid, shift), its noise and the learning rate are pure functions of (seed,
step, rank), so a checkpoint needs only the step to continue the same run. SIGTERM / Ctrl-C finish the steps
already queued (one or two), save a checkpoint and exit 0; ``--saved_model auto`` picks it up again. A run of
non-finite steps reloads the last checkpoint's state and halves the learning rate. Checkpoints record their
task; a checkpoint of another task is refused.
"""
import errno
import itertools
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from utils import command
from utils.training import distributed, optimizer, schedules, summaries
from utils.checkpoint import CheckpointError, checkpoint_payload, plain, load_checkpoint, load_model_state, require_task
from utils.training.checkpoint_dir import CheckpointDir
from utils.data.episodes import EpisodeError, list_episodes
from utils.data.hotel import HotelSteps, extent_warning, step_key, step_loader
from utils.training.cli import AUTO

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit
MAX_RECOVERIES = 10  # blow-ups a run recovers from (each halves the learning rate, for the rest of the run)
LOOP_STATS = ("loss", "grad_norm", "bad_files", "stop", "own_loss")  # a step's statistics the loop keeps


class TrainingError(Exception):
    """A problem the user must fix (data, devices, disk); ``run`` prints it as one line and exits 1."""


def say(prog: str, message: str) -> None:
    """One line on stderr, ``prog: message``, that does not tear the progress bar."""
    tqdm.write(f"{prog}: {message}", file=sys.stderr)


def check_batch(args, runtime: distributed.Runtime) -> int:
    """This process's batch size. A k x k step uses ``batch_size // k^2`` hotels over all devices; they must
    split evenly over the processes and DataParallel replicas, for every --train_grids size (else a step
    would silently hold fewer mazes than asked for)."""
    world, splits = runtime.world, runtime.splits

    def splits_evenly(batch: int, k: int) -> bool:  # each process takes batch // world mazes
        own = batch // world // (k * k)  # this process's hotels, which its replicas split
        return own * world == batch // (k * k) and own >= splits and own % splits == 0

    uneven = [k for k in args.train_grids if not splits_evenly(args.batch_size, k)]
    if uneven:
        fits = next(b for b in itertools.count(args.batch_size) if all(splits_evenly(b, k) for k in args.train_grids))
        k, over = uneven[0], f"{world} processes" if world > 1 else f"{splits} GPUs"
        hotels = args.batch_size // (k * k)
        raise TrainingError(f"--batch_size {args.batch_size} makes {hotels} hotel{'s' * (hotels != 1)} of {k}x{k}, "
                            f"which {'does' if hotels == 1 else 'do'} not split evenly over {over}; use a batch "
                            f"size that does for every "
                            f"--train_grids size, e.g. {fits}")
    return args.batch_size // world


def count_episodes(directory, grids, flag) -> int:
    try:
        found = len(list_episodes(directory))
    except EpisodeError as error:
        raise TrainingError(f"{flag}: {error}") from None
    k = max(grids)
    if found < k * k:
        raise TrainingError(f"{flag} {directory} holds {found} episodes; a {k}x{k} hotel needs {k * k} distinct "
                            f"ones (add episodes or use smaller grids)")
    return found


def changed_flags(saved: dict, args, names) -> dict:
    """{name: "--flag now (its run: then)"} for each flag of ``names`` that differs from a checkpoint's saved
    args (flags it did not save are not compared)."""
    def shown(value):
        return " ".join(map(str, value)) if isinstance(value, list) else value

    return {name: f"--{name} {shown(plain(getattr(args, name)))} (its run: {shown(saved[name])})"
            for name in names if name in saved and plain(getattr(args, name)) != saved[name]}


def noise_seed(seed: int, step: int, rank: int) -> int:
    """Seed of a step's noise (the renderer's DRAW noise): distinct per (seed, step, rank), different from the
    batch plan's."""
    return (step_key(seed, step, rank) * 2 + 1) % (2 ** 63)


def to_cpu(value):
    """A detached CPU copy of a (nested) state dict."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)  # plain layout on disk
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


# ----------------------------------------------------------------------------- signals

class StopRequest:
    """SIGTERM / SIGINT set a flag; the loop finishes its step, saves and exits. A second Ctrl-C aborts."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, prog: Optional[str] = None):
        self.prog = prog or Path(sys.argv[0]).name
        self.signal = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        say(self.prog, f"{self.signal}: finishing the queued steps, then saving a checkpoint")

    @property
    def requested(self) -> bool:
        return self.signal is not None


def default_workers(runtime: distributed.Runtime) -> int:
    """Loader processes for --workers auto. On CPU the cores train, so 2. A GPU step is fed by
    12 workers on one H200 (README, "Measured figures"); fewer where this process's share of the cores
    (torchrun starts LOCAL_WORLD_SIZE processes per node) is smaller, one core left for the main process."""
    if runtime.device.type != "cuda":
        return 2
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores = usable // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(12, cores - 1))


def _worker_init(_):
    # The main process handles preemption; workers ignore it and are shut down by the DataLoader.
    for s in StopRequest.SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    warnings.filterwarnings("ignore", message="skipping damaged episode")


# ----------------------------------------------------------------------------- training

@dataclass
class QueuedStep:
    """A step handed to the device, and its statistics (``names``) as a tensor, summed over the ranks. On a
    GPU they come back by an asynchronous copy."""

    step: int  # steps done once it has run: its x in TensorBoard
    grid: int
    schedule: dict  # {"lr": ..., and the task's own schedules}
    stats: torch.Tensor
    names: tuple = LOOP_STATS
    new_bad_files: tuple = ()  # this rank's damaged episodes that the run did not know of
    step_time: float = 0.0
    data_wait: float = 0.0
    device_wait: float = 0.0  # how long the host waited for the device to finish it
    copied: Optional[torch.cuda.Event] = field(default=None)

    def __post_init__(self):
        if self.stats.device.type == "cuda":
            host = torch.empty(self.stats.shape, dtype=self.stats.dtype, pin_memory=True)
            self.stats = host.copy_(self.stats, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()

    def values(self) -> dict:
        if self.copied is not None:
            self.copied.synchronize()  # waits for this step only, not for the ones queued after it
        return dict(zip(self.names, self.stats.tolist()))


class Trainer:
    """Trains ``task``'s model from ``args`` (a training script's namespace) on ``runtime``'s devices."""

    def __init__(self, task, args, runtime: distributed.Runtime):
        self.task, self.args, self.runtime = task, args, runtime
        if args.compile and len(runtime.device_ids) > 1:
            raise TrainingError("--compile does not work with DataParallel (several --device_ids); use one GPU or "
                                "torchrun --nproc_per_node N")
        self.run_dir = Path(args.root_log_dir) / args.log_dir
        batch_size = check_batch(args, runtime)
        self.n_episodes = count_episodes(args.train_data_dir, args.train_grids, "--train_data_dir")
        count_episodes(args.test_data_dir, args.test_grids, "--test_data_dir")
        self.data = HotelSteps(args.train_data_dir, args.img_size, batch_size, args.train_grids, args.context_views,
                               args.seed, rank=runtime.rank, raw_poses=args.raw_poses)
        if runtime.is_main and not args.raw_poses and (warning := extent_warning(self.data.paths)):
            self.note(f"warning: {warning}")
        self.test_batches = None  # built at the first evaluation, then the same every time

        self.build()
        self.checkpoints = CheckpointDir(self.run_dir / "models", args.keep_checkpoints,
                                         warn=lambda m: runtime.is_main and self.note(f"warning: {m}"))
        self.step = 0  # steps done; the next step's index
        self.lr_scale = 1.0  # halved at each recovery from a numerical blow-up
        self.skipped_steps = 0
        self.bad_run = 0  # non-finite steps in a row
        self.bad_files = set()  # damaged episodes met by any rank: the same set on every rank, so they agree
        self.named = set()  # those this process has warned about
        self.resume()
        # Each process finds its checkpoint on its own file system; nodes that see different ones would train
        # different step ranges and hang in a collective.
        if not distributed.same_everywhere(self.step, runtime):
            raise TrainingError(f"the processes resumed at different steps (this one at {self.step}): every node "
                                f"must see the same --root_log_dir, on a shared file system")
        self.wrapped = distributed.wrap(task.trainable(self.model), runtime)
        # The model the training step runs; evaluation and image summaries use the eager fp32 model.
        # dynamic=False: one static graph per hotel size k (each has its own shapes), compiled once.
        self.step_model = (torch.compile(self.wrapped, dynamic=False, mode=args.compile) if args.compile else
                           self.wrapped)
        self.good = self.snapshot()  # what a blow-up goes back to: the last checkpoint's state
        self.saved_step = None

    def build(self):
        """The model (from ``args``) and its optimizer."""
        torch.manual_seed(self.args.seed)
        self.model = self.task.build_model().to(self.runtime.device)
        if self.runtime.device.type == "cuda":
            # cuDNN's fast kernels are NHWC: NCHW weights cost two layout transposes per convolution
            # (about 15% of a step's GPU time; bench/PROFILE.md).
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = optimizer.adam(self.model.parameters(), lr=self.args.lr)

    def note(self, message: str) -> None:
        say(self.task.prog, message)

    # --- checkpoints

    def resume(self):
        args, task = self.args, self.task
        say_ = self.note if self.runtime.is_main else (lambda message: None)
        folder = self.checkpoints.directory
        if args.saved_model is None:
            # A fresh run would overwrite these, and rotating its own would delete them.
            if held := self.checkpoints.held():
                raise TrainingError(f"{folder} already holds checkpoints of a run ({held[-1].name}); continue it "
                                    f"with --saved_model auto, or train into another --log_dir")
            return
        if args.saved_model == AUTO:
            found = self.checkpoints.newest()
            if found is None:
                say_(f"no checkpoint in {self.checkpoints.directory}: starting fresh")
                return
            path, checkpoint = found
            require_task(checkpoint, task.name, path)
        else:
            path, checkpoint = Path(args.saved_model), load_checkpoint(args.saved_model)
            require_task(checkpoint, task.name, path)
            # Training on would interleave its checkpoints with these (and --saved_model auto would pick theirs).
            if path.resolve().parent != folder.resolve() and (held := self.checkpoints.held()):
                raise TrainingError(f"{folder} already holds checkpoints ({held[-1].name}): continue them with "
                                    f"--saved_model auto, or choose another --log_dir to train on from {path}")
            if later := self.checkpoints.past(int(checkpoint.get("epoch", 0))):
                raise TrainingError(f"{folder} holds checkpoints past the step of {path.name} "
                                    f"({', '.join(p.name for p in later)}); move them away to train on from it")
        changed = changed_flags(checkpoint.get("args", {}), args, task.run_flags)
        if shape := [changed[name] for name in task.shape_flags if name in changed]:
            raise TrainingError(f"{path} holds the weights of another model: {', '.join(shape)}; give its values")
        if changed and path.resolve().parent == folder.resolve():  # the same run: silently other batches or rates
            raise TrainingError(f"{path} was trained with other flags: {', '.join(changed.values())}; a run keeps the "
                                f"flags of its model, data and schedules: give them again, or train on from it into "
                                f"another --log_dir")
        if changed:
            say_(f"warning: training on from {path} with flags its run did not use: {', '.join(changed.values())}")
        switched = [name for name in task.original_off if getattr(args, name, False)]
        if "args" not in checkpoint and switched:  # the original implementation's own
            say_(f"warning: {path} is an original-implementation checkpoint: training on as the original did "
                 f"({' '.join('--no-' + name for name in switched)})")
            for name in switched:
                setattr(args, name, False)
            self.build()
        load_model_state(self.model, checkpoint["model_state_dict"], path)
        self.step = int(checkpoint.get("epoch", 0))
        if "optimizer_state_dict" not in checkpoint:
            why = checkpoint.get("upgraded", "holds only weights (original format)")
            say_(f"warning: {path} {why}: starting at step {self.step} with a fresh optimizer")
        else:
            if "upgraded" in checkpoint:
                say_(f"warning: {path} {checkpoint['upgraded']}")
            try:
                optimizer.load_adam_state(self.optimizer, checkpoint["optimizer_state_dict"])
            except (ValueError, KeyError) as error:
                raise CheckpointError(f"{path}: optimizer state does not fit this model ({error})") from None
        schedule = checkpoint.get("scheduler_state_dict", {})
        self.lr_scale = float(schedule.get("lr_scale", 1.0))
        if self.lr_scale != 1 and changed.keys() & set(task.lr_flags):  # a branch that chose its own learning rate
            say_(f"warning: the learning rate follows the new flags; the halvings of {path}'s run (scale "
                 f"{self.lr_scale:g}) are dropped")
            self.lr_scale = 1.0
        self.skipped_steps = int(schedule.get("skipped_steps", 0))
        self.bad_files = set(schedule.get("bad_files", []))
        self.named = set(self.bad_files)
        rng = checkpoint.get("rng_state", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        say_(f"resumed {path} at step {self.step}")

    def snapshot(self) -> dict:
        return {"model": to_cpu(self.model.state_dict()), "optimizer": to_cpu(self.optimizer.state_dict())}

    def payload(self, snapshot: dict) -> dict:
        step = self.step
        scheduler = {"step": step, "lr": self.lr(step), "lr_scale": self.lr_scale, "skipped_steps": self.skipped_steps,
                     "bad_files": sorted(self.bad_files)}
        return checkpoint_payload(step, self.task.name, snapshot["model"], snapshot["optimizer"], scheduler,
                                  vars(self.args), self.task.checkpoint_extras(step))

    def save(self, final: bool = False):
        """Checkpoint the current state (rank 0 writes; every rank keeps it as the blow-up fallback)."""
        self.good = self.snapshot()
        self.saved_step = self.step
        if not self.runtime.is_main:
            return None
        try:
            return self.checkpoints.save(self.payload(self.good), final=final)
        except OSError as error:
            remedy = "once there is room" if error.errno in DISK_FULL else "once that is fixed"
            raise TrainingError(f"{error.strerror or error}; resume with --saved_model auto {remedy}") from None

    def recover(self, writer):
        """Too many non-finite steps in a row: back to the last checkpoint's state, half the learning rate;
        a run still diverging after ``MAX_RECOVERIES`` halvings stops (the rate would fall to 0 in the end)."""
        if self.lr_scale <= 0.5 ** MAX_RECOVERIES:
            raise TrainingError(f"{self.args.max_bad_steps} non-finite steps in a row at step {self.step} after "
                                f"{MAX_RECOVERIES} recoveries halved the learning rate to 1/{2 ** MAX_RECOVERIES} of "
                                f"its schedule: the run keeps diverging; check the data, or train on from a checkpoint "
                                f"before the trouble into another --log_dir with a lower --lr (the halvings then "
                                f"start over)")
        self.model.load_state_dict(self.good["model"])
        optimizer.load_adam_state(self.optimizer, to_cpu(self.good["optimizer"]))  # a copy: the snapshot stays
        self.lr_scale /= 2
        self.bad_run = 0
        self.note(f"warning: {self.args.max_bad_steps} non-finite steps in a row at step {self.step}: reloaded the "
                  f"last checkpoint's state and halved the learning rate (scale {self.lr_scale:g})")
        writer.add_scalar("train/lr_scale", self.lr_scale, self.step)

    # --- schedules

    def lr(self, step: int) -> float:
        a = self.args
        return schedules.learning_rate(step, a.lr, a.lr_final, a.lr_steps) * self.lr_scale

    # --- one step

    def train_step(self, batch, stop: StopRequest) -> QueuedStep:
        """Hand one step to the device. Nothing here waits for it: the outcome is read later (``settle``)."""
        args, runtime, step, task = self.args, self.runtime, self.step, self.task
        device = runtime.device
        torch.manual_seed(noise_seed(args.seed, step, runtime.rank))
        schedule = {"lr": self.lr(step), **task.schedules(step)}
        for group in self.optimizer.param_groups:
            group["lr"] = schedule["lr"]
        extra = task.step_inputs(schedule, device, bool(args.compile))
        # Before the forward: the last step's gradients (CUDA graph outputs under reduce-overhead, which
        # this step's replay overwrites) are dropped, not read after their memory is reused.
        self.optimizer.zero_grad(set_to_none=True)
        if args.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            output = self.step_model(*batch.model_inputs(device), *extra)
        loss = task.loss(output)
        loss.backward()
        parameters = self.model.parameters()
        grad_norm = (torch.nn.utils.clip_grad_norm_(parameters, args.clip_grad) if args.clip_grad else
                     torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None]))
        new_bad_files = tuple(sorted(set(batch.bad_files) - self.bad_files))
        for path in set(new_bad_files) - self.named:
            self.named.add(path)
            self.note(f"warning: skipped damaged episode {path}")
        # Host values become device scalars by a fill, not a copy (a blocking copy would sync).
        scalar = lambda value: torch.full((), float(value), device=device)  # noqa: E731
        loss = loss.detach()
        metrics = task.step_metrics(output, self.model, runtime.is_main)
        stats = torch.stack([
            loss, grad_norm.to(device), scalar(len(new_bad_files)), scalar(stop.requested),
            # Rank 0's own loss (the others add 0) for train/loss_{k}x{k}, logged for rank 0's grid.
            loss * float(runtime.is_main),
            *(metrics[name].to(device) for name in task.metric_names)]).float()
        # Every rank must agree on the step's outcome: everything is summed over the ranks.
        stats = distributed.reduce_sum(stats, runtime)
        loss_sum, grad_sum = stats[0], stats[1]  # views: no copy, no sync
        optimizer.step_unless(self.optimizer, (~(loss_sum.isfinite() & grad_sum.isfinite())).float())
        return QueuedStep(step + 1, batch.grid, schedule, stats, LOOP_STATS + tuple(task.metric_names),
                          new_bad_files)

    def settle(self, queued: list, writer, bar) -> dict:
        """Read queued steps' outcomes (waiting for the device as needed), log them and count the bad ones.
        Returns what they call for: {"recover", "stop", "bad_files": n} (n: damaged episodes so far)."""
        args, world = self.args, self.runtime.world
        calls = {}
        for record in queued:
            started = time.perf_counter()
            stats = record.values()
            # Near 0 with a GPU: the host, not the GPU, sets the pace (the GPU idles between steps).
            record.device_wait = time.perf_counter() - started
            # Identical on every rank: reduced values.
            finite = math.isfinite(stats["loss"]) and math.isfinite(stats["grad_norm"])
            self.skipped_steps += not finite
            self.bad_run = 0 if finite else self.bad_run + 1
            if stats["bad_files"] > 0:  # a rank met a damaged episode the run did not know of (rare): share them
                for paths in distributed.gather_objects(record.new_bad_files, self.runtime):
                    self.bad_files.update(paths)
                if len(self.bad_files) > args.max_bad_files * self.n_episodes:
                    calls["bad_files"] = len(self.bad_files)
            self.log_step(writer, record, stats, finite)
            self.task.after_step(self, stats, finite)
            bar.set_postfix(loss=self.task.progress(stats["loss"] / world), grid=f"{record.grid}x{record.grid}",
                            refresh=False)
            bar.update()
            if self.bad_run >= args.max_bad_steps:
                calls["recover"] = True
            if stats["stop"] > 0:
                calls["stop"] = True
        queued.clear()
        return calls

    def log_step(self, writer, record: QueuedStep, stats: dict, finite: bool):
        step, k, world = record.step, record.grid, self.runtime.world
        if finite:
            writer.add_scalar(f"train/loss_{k}x{k}", stats["own_loss"], step)
            writer.add_scalar("train/loss", stats["loss"] / world, step)  # means over the ranks
            writer.add_scalar("grad_norm", stats["grad_norm"] / world, step)
        self.task.log_step(writer, step, k, stats, world, finite)
        for name, value in record.schedule.items():
            writer.add_scalar(name, value, step)
        writer.add_scalar("time_per_step", record.step_time, step)
        writer.add_scalar("time_data_wait", record.data_wait, step)
        writer.add_scalar("time_device_wait", record.device_wait, step)
        device = self.runtime.device
        if device.type == "cuda":  # the most this process has held from the GPU so far: the headroom left
            writer.add_scalar("gpu_memory_peak_gb", torch.cuda.max_memory_reserved(device) / 2**30, step)
        writer.add_scalar("train/skipped_steps", self.skipped_steps, step)
        writer.add_scalar("data/skipped_episodes", len(self.bad_files), step)

    # --- evaluation

    def eval_model(self):
        # DataParallel helps with big test batches; a DDP module must not run forward on rank 0 alone.
        return self.wrapped if isinstance(self.wrapped, torch.nn.DataParallel) else self.model

    @torch.no_grad()
    def evaluate(self, writer, train_batch):
        args = self.args
        if self.test_batches is None:
            self.test_batches = {}
            for k in args.test_grids:
                steps = HotelSteps(args.test_data_dir, args.img_size, max(args.batch_size, k * k), [k],
                                   args.context_views, args.seed, raw_poses=args.raw_poses)
                self.test_batches[k] = steps[0]
                for path in self.test_batches[k].bad_files:
                    self.note(f"warning: skipped damaged test episode {path}")
        self.model.eval()
        try:
            self.task.evaluate(self, writer, train_batch)
        finally:
            self.model.train()

    # --- the loop

    def fit(self, stop: StopRequest) -> int:
        args, runtime = self.args, self.runtime
        if self.step >= args.steps:
            self.note(f"already at step {self.step} of --steps {args.steps}: nothing to do")
            return 0
        main = runtime.is_main
        try:  # purge from the step after the checkpoint's: its own events were logged before it was saved
            writer = summaries.open_writer(self.run_dir / "runs", enabled=main,
                                           purge_step=self.step + 1 if self.step else None)
        except OSError as error:
            raise TrainingError(f"cannot write the logs in {self.run_dir / 'runs'}: {error.strerror or error}") from None
        if main:  # a folder that cannot hold checkpoints fails now, not after --save_interval steps
            try:
                self.checkpoints.directory.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise TrainingError(f"cannot write checkpoints in {self.checkpoints.directory}: "
                                    f"{error.strerror or error}") from None
        workers = default_workers(runtime) if args.workers == AUTO else args.workers
        if main:
            self.note(f"training {self.task.describe()} on {runtime.describe()}, steps "
                      f"{self.step}..{args.steps}, {workers} loader workers, logs in {self.run_dir}")
        with warnings.catch_warnings():
            # Damaged episodes, training and test, are counted and named in one line each (train_step, evaluate).
            warnings.filterwarnings("ignore", message="skipping damaged episode")
            if main and self.step == 0:
                self.evaluate(writer, train_batch=None)  # the untrained model: where the test curves start
            # Into a log file (a batch job's stderr) a bar redrawn ten times a second would write one endless
            # line, tens of MB a day: there it is redrawn once a minute (maxinterval too, or tqdm's monitor thread
            # redraws it every 10 s).
            bar = tqdm(total=args.steps, initial=self.step, disable=not main, unit="step", dynamic_ncols=True,
                       **({} if sys.stderr.isatty() else {"mininterval": 60, "maxinterval": 60}))
            batches = iter(step_loader(self.data, range(self.step, args.steps), workers,
                                       pin_memory=runtime.device.type == "cuda", worker_init_fn=_worker_init))
            try:
                stopped = self.loop(batches, writer, bar, stop)
            finally:
                bar.close()
                writer.flush()
                # Now, whatever ended the loop (an error, a second Ctrl-C): the workers ignore SIGTERM
                # (preemption is the main process's), so left to Python's exit they would keep it waiting.
                if workers:
                    batches._shutdown_workers()
        if stopped and self.step < args.steps:  # a stop at the last step ends the run like any other
            path = self.save() if self.saved_step != self.step else self.checkpoints.path(self.step)
            if main:
                self.note(f"stopped by {stop.signal or 'a signal on another rank'} at step {self.step}; saved "
                          f"{path}; continue with --saved_model auto")
        else:
            path = self.save(final=True)
            if main:
                self.note(f"done: step {self.step}, saved {path}")
        writer.close()
        distributed.barrier(runtime)
        return 0

    def loop(self, batches, writer, bar, stop) -> bool:
        """Train until --steps or a stop request (then True).

        Each step's outcome is read one step late: the host queues step t+1 while the device still runs
        step t, instead of waiting for it (a sync per step leaves the GPU idle while the host prepares
        the next). Before a checkpoint or an evaluation, and when an outcome calls for action, every
        queued step is read first. The boundaries are the same on every rank, so ranks act in step."""
        args, main = self.args, self.runtime.is_main
        queued = []
        last = fetch_start = time.perf_counter()
        for batch in batches:
            data_wait = time.perf_counter() - fetch_start  # near time_per_step: the GPU starves, raise --workers
            record = self.train_step(batch, stop)
            self.step += 1
            now = time.perf_counter()
            record.step_time, record.data_wait, last = now - last, data_wait, now
            calls = self.settle(queued, writer, bar)  # the previous step's
            queued.append(record)
            at_save, at_log = self.step % args.save_interval == 0, self.step % args.log_interval == 0
            if calls or at_save or at_log or self.step == args.steps:
                calls |= self.settle(queued, writer, bar)
            if "bad_files" in calls:
                self.save()
                raise TrainingError(
                    f"{calls['bad_files']} of {self.n_episodes} episodes in {args.train_data_dir} are damaged, "
                    f"more than --max_bad_files {args.max_bad_files:g}; fix or remove them (or raise "
                    f"--max_bad_files); checkpoint saved at step {self.step}")
            if "recover" in calls:
                self.recover(writer)
            if "stop" in calls:
                return True
            if at_save and self.step < args.steps:  # the last one: final
                self.save()
            if main and at_log:
                self.evaluate(writer, batch)
                last = time.perf_counter()  # evaluation time is not step time
            fetch_start = time.perf_counter()
        return False


RUN_ERRORS = (TrainingError, CheckpointError, EpisodeError, distributed.DeviceError)


def _one_line(error: Exception) -> str:
    # Errors re-raised from DataLoader workers carry the worker's traceback; keep the last line.
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].split(": ", 1)[-1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)


def run(prog: str, args, task_class) -> int:
    """A training script's ``main`` once its flags are parsed: a ``Trainer`` of ``task_class(args)`` fits, under
    a ``StopRequest``. Errors are one line ``prog: error: ...`` (``utils.command``): exit status 2 when the run
    cannot start (its data, checkpoint or devices), 1 when it fails on the way."""
    runtime = None
    try:
        with StopRequest(prog) as stop:
            try:
                runtime = distributed.setup(args.device_ids)
                trainer = Trainer(task_class(args), args, runtime)
            except RUN_ERRORS as error:
                command.fail(prog, _one_line(error), command.BAD_ARGUMENT)
            try:
                return trainer.fit(stop)
            except RUN_ERRORS as error:
                command.fail(prog, _one_line(error), command.FAILED_RUN)
    except KeyboardInterrupt:  # the second Ctrl-C: no traceback, and the shell's status for an interrupt
        say(prog, "aborted by a second Ctrl-C: nothing saved since the last checkpoint")
        raise SystemExit(128 + signal.SIGINT) from None
    finally:
        distributed.shutdown(runtime)
