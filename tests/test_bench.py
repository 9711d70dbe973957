"""The benchmarks the README quotes still run and report what they promise (tiny configurations: the
numbers themselves are measured on purpose-run machines, not here)."""
import importlib
import json
import math
import re
import subprocess
import sys

import pytest
import torch

from bench import bench_data, bench_host, bench_loader, bench_step, seed_table, train_windows
from models.scene import ModelConfig, SceneModel
from tests.conftest import REPO_ROOT
from utils.training import loop

SAMPLES = REPO_ROOT / "data_samples" / "train"
# Run from the repository root as modules (``python -m bench.bench_step``), never as files: nothing edits sys.path.
MODULES = ["bench_data", "bench_host", "bench_loader", "bench_ops", "bench_step", "profile_cli", "seed_table",
           "step_profile", "step_times", "train_windows"]


@pytest.mark.parametrize("name", MODULES)
def test_each_benchmark_names_its_module_command_in_its_usage(name, capsys):
    module = importlib.import_module(f"bench.{name}")
    with pytest.raises(SystemExit) as exit_:
        (module.main if name in ("step_times", "seed_table", "train_windows") else module.parse_args)(["--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: python -m bench.{name} ")


def test_a_benchmark_runs_as_a_module_from_the_repository_root():
    run = subprocess.run([sys.executable, "-m", "bench.step_times", "--help"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("usage: python -m bench.step_times "), run.stderr


def test_bench_step_reports_time_speedup_and_flops(capsys):
    args = bench_step.parse_args(["--batch_size", "2", "--layers", "1", "--img_size", "16", "--steps", "1",
                                  "--context_views", "2", "--flops", "--threads", "1"])
    result = bench_step.main(args)
    assert result["step_s_median"] > 0 and result["samples_per_s"] == pytest.approx(2 / result["step_s_median"],
                                                                                     rel=1e-2)
    # At this size our step need not beat the naive one (few, small operations: overhead dominates); the
    # speed-up itself is checked at a size where the README claims it, below.
    assert math.isfinite(result["speedup_vs_naive"]) and result["speedup_vs_naive"] > 0
    assert 0 < result["gflop_per_step"] < result["naive_gflop_per_step"]  # the optimised model does less work
    assert result["aten_ops_fwd_bwd"] > 0
    assert "cpu_target" not in result  # only the configuration is judged against the target
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")


# The speed-up the benchmark exists to show (README: 3.4x at batch 4, L 8, 64 x 64) at a size a test can
# afford: 64 x 64 images, where the naive model's transposed convolutions of r cost the most, with one maze and
# two DRAW layers. Measured on the 2-core machine with other jobs running: 1.8x with one layer, 2.8-2.9x with
# two. The bar of 1.5x is well under that and well over the 1.0 (within noise) of two equally fast models.
SPEEDUP_CONFIG = ["--batch_size", "1", "--layers", "2", "--img_size", "64", "--context_views", "1", "--steps", "3",
                  "--threads", "1"]
MIN_SPEEDUP = 1.5


def test_bench_step_shows_the_speedup_over_the_naive_step(capsys):
    result = bench_step.main(bench_step.parse_args(SPEEDUP_CONFIG))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["speedup_vs_naive"] == result["speedup_vs_naive"]
    speedup = printed["speedup_vs_naive"]
    assert isinstance(speedup, float) and math.isfinite(speedup), speedup
    assert speedup > MIN_SPEEDUP, (speedup, result["steps_s"], result["naive_steps_s"])
    # Step by step too (each of our steps against the naive one run beside it), not just the medians.
    assert result["paired_ratio_median"] < 1 / MIN_SPEEDUP, result


def test_the_op_counter_counts_each_aten_op_once_and_a_deeper_model_dispatches_more():
    with bench_step.OpCounter() as counter:
        torch.ones(2).add(1).mul(2)
    assert counter.ops == 3
    batch = bench_step.synthetic_batch(2, 1, 16, 2, "cpu")
    ops = []
    for layers in (1, 2):
        model = SceneModel(ModelConfig(img_size=16, layers=layers))
        ops.append(bench_step.count_work(bench_step.Stepper(model, batch, torch.device("cpu"), amp=False), model)[1])
    assert ops[0] < ops[1]


def test_bench_host_times_launches_alone_and_beside_the_loader(capsys):
    args = bench_host.parse_args(["--data_dir", str(SAMPLES), "--workers", "0", "--batch_size", "4", "--img_size",
                                  "16", "--context_views", "2", "--steps", "2", "--warmup", "1", "--ops", "300",
                                  "--device", "cpu"])
    result = bench_host.main(args)
    rows = result["setups"]
    assert [row["setup"] for row in rows] == ["alone", "main_pin", "pin_thread", "alone"]
    assert all(row["launch_ms"] > 0 for row in rows)
    # Only the loader setups decode a batch per iteration (in-process: --workers 0).
    assert min(rows[1]["fetch_ms"], rows[2]["fetch_ms"]) > max(rows[0]["fetch_ms"], rows[3]["fetch_ms"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("{")
    with pytest.raises(SystemExit):
        bench_host.parse_args(["--ops", "0"])
    assert "--ops must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1])
def test_bench_loader_counts_the_mazes_it_delivered(workers):
    args = bench_loader.parse_args(["--data_dir", str(SAMPLES), "--workers", str(workers), "--batch_size", "4",
                                    "--img_size", "16", "--context_views", "2", "--steps", "3", "--warmup", "1"])
    result = bench_loader.main(args)
    assert result["samples_per_s"] == pytest.approx(4 * result["batches_per_s"], rel=0.02)
    assert result["workers"] == workers and result["config"]["episodes"] == 16


def test_bench_loader_rejects_a_folder_without_episodes_and_oversized_hotels(tmp_path):
    with pytest.raises(SystemExit, match="holds no episode files"):
        bench_loader.main(bench_loader.parse_args(["--data_dir", str(tmp_path)]))
    with pytest.raises(SystemExit, match="a 3x3 hotel needs 9 distinct mazes"):
        bench_loader.main(bench_loader.parse_args(["--data_dir", str(SAMPLES), "--batch_size", "4",
                                                   "--grids", "1", "3"]))


def test_bench_data_compares_with_the_decode_everything_path(capsys):
    args = bench_data.parse_args(["--data_dir", str(SAMPLES), "--rounds", "1", "--per_round", "2",
                                  "--img_size", "16"])
    assert bench_data.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    ratio, ours, reference = result["ratio"], result["samples_per_s"], result["reference_samples_per_s"]
    assert all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in (ratio, ours, reference)), result
    assert ratio == pytest.approx(ours / reference, rel=0.01)
    # Decoding the 9 views a sample uses instead of all 300 frames: faster by far more than noise (38-41x at
    # 64 x 64 on the real episodes, README), whatever the machine's load.
    assert ratio > 3, result
    said = re.search(r"ratio ([0-9.]+)x$", out[-2])  # the human-readable line says the same
    assert said and float(said.group(1)) == pytest.approx(ratio, abs=0.06), out[-2]


def test_bench_data_on_a_damaged_episode_is_a_one_line_error(tmp_path, capsys):
    from utils.data.episodes import load_episode, save_episode
    episode = load_episode(sorted(SAMPLES.glob("*.pt"))[0])
    save_episode(tmp_path / "bad.pt", [b"\xff\xd8" + bytes(100)] * len(episode), episode.cameras)  # undecodable
    args = bench_data.parse_args(["--data_dir", str(tmp_path), "--rounds", "1", "--per_round", "1", "--img_size", "16"])
    assert bench_data.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad.pt" in err[0]


def test_step_times_reads_medians_after_the_skipped_steps(tmp_path, capsys):
    from bench import step_times
    from utils.training.summaries import open_writer
    writer = open_writer(tmp_path)
    for step in range(1, 8):  # steps 1-2 are slow (compilation), then 0.1 s with 0.02 s of loader wait
        writer.add_scalar("time_per_step", 30.0 if step <= 2 else 0.1 + step / 1000, step)
        writer.add_scalar("time_data_wait", 0.02, step)
        writer.add_scalar("time_device_wait", 0.05, step)
        writer.add_scalar("gpu_memory_peak_gb", 1.0 + step / 10, step)  # the peak over the whole run counts
        k = 1 if step % 2 else 2  # odd steps 1x1 hotels, even steps 2x2
        writer.add_scalar(f"train/loss_{k}x{k}", 1.0, step)
    writer.close()
    step_times.main([str(tmp_path), "--skip", "2", "--batch_size", "36"])
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 5
    assert result["time_per_step_median"] == pytest.approx(0.105)
    assert result["time_per_step_min"] == pytest.approx(0.103)
    assert result["time_data_wait_median"] == pytest.approx(0.02)
    assert result["time_device_wait_median"] == pytest.approx(0.05)
    assert result["time_per_step_less_data_wait_median"] == pytest.approx(0.085)
    assert result["samples_per_s"] == pytest.approx(36 / 0.105, rel=1e-3)
    assert result["gpu_memory_peak_gb"] == pytest.approx(1.7)
    one, two = result["by_grid"]["1x1"], result["by_grid"]["2x2"]
    assert (one["steps"], two["steps"]) == (3, 2)  # steps 3, 5, 7 and 4, 6
    assert one["time_per_step_median"] == pytest.approx(0.105)
    assert two["time_per_step_median"] == pytest.approx(0.105)
    assert two["time_per_step_min"] == pytest.approx(0.104)
    for argv, message in (["--skip", "10"], "has no steps after --skip 10"), (["--batch_size", "0"], "expected int > 0"):
        with pytest.raises(SystemExit) as exit_:
            step_times.main([str(tmp_path), *argv])
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage line
        assert exit_.value.code == 2 and message in err and "error:" in err, err


def test_bench_loader_times_every_batch_it_counts(monkeypatch):
    """Batches that each take 50 ms come out at exactly 20 per second, not faster (the clock starts when the
    last warm-up batch has arrived, so no counted batch was made before it). The benchmark's clock is a fake
    one that advances 50 ms per batch made: the result does not depend on how busy the machine is."""
    from types import SimpleNamespace

    import torch

    clock = [100.0]

    class SlowSteps:
        paths = ["one.pt"]

        def __init__(self, *args, **kwargs):
            pass

        def __getitem__(self, step):
            clock[0] += 0.05
            return SimpleNamespace(query_frames=torch.zeros(2, 2, 3, 4, 4))

    monkeypatch.setattr(bench_loader, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(bench_loader, "HotelSteps", SlowSteps)
    monkeypatch.setattr(bench_loader, "step_loader",
                        lambda steps, indices, workers, pin_memory: (steps[i] for i in indices))
    for warmup in (1, 3):
        result = bench_loader.main(bench_loader.parse_args(["--workers", "0", "--steps", "4", "--warmup",
                                                            str(warmup), "--grids", "1"]))
        assert result["batches_per_s"] == pytest.approx(20.0)
        assert result["samples_per_s"] == pytest.approx(4 * 20.0)  # 2 hotels of 2 mazes a batch


def test_profile_cli_profiles_only_the_steps_after_the_skipped_ones(tmp_path, capsys):
    from bench import profile_cli
    from tests.train_support import tiny

    queue = loop.Trainer.train_step
    argv = ["--skip", "2", "--steps", "3", "--rows", "100000", "--"] + tiny(tmp_path, steps=6, data=SAMPLES,
                                                                              test_data=SAMPLES)
    assert profile_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "profiled 3 steps after the first 2" in out
    # Steps 3, 4 and 5 of 6 ran in the window (ncalls is the first column).
    calls = [line.split()[0] for line in out.splitlines() if line.endswith("(train_step)")]
    assert calls == ["3"], calls
    assert any(line.endswith("(settle)") for line in out.splitlines()), "reading outcomes is in the window"
    assert loop.Trainer.train_step is queue, "the patch is undone"
    with pytest.raises(SystemExit, match="none after --skip 10"):
        profile_cli.main(["--skip", "10", "--"] + tiny(tmp_path / "again", steps=2, data=SAMPLES, test_data=SAMPLES))


def _tiny_step():
    batch = bench_step.synthetic_batch(2, 1, 16, 1, "cpu")
    model = SceneModel(ModelConfig(img_size=16, layers=1))
    return bench_step.Stepper(model, batch, torch.device("cpu"), amp=False), model


def test_bench_ops_records_every_flop_of_the_step():
    """Replaying the recorded calls, each as often as the step made it, does the step's counted work."""
    from bench import bench_ops
    stepper, model = _tiny_step()
    calls = bench_ops.record_step(stepper, model)
    assert any(func in bench_ops.CONVOLUTIONS for func, _ in calls)
    replayed = sum(bench_ops.flops_of(func, args, "cpu") * count for (func, args), count in calls.items())
    assert replayed == bench_step.count_work(stepper, model)[0]


def test_bench_ops_gemms_do_the_arithmetic_of_the_convolution_they_stand_for():
    from bench import bench_ops
    stepper, model = _tiny_step()
    calls = bench_ops.record_step(stepper, model)
    plain = 0
    for func, args in calls:
        gemms = bench_ops.as_gemms(func, args)
        if gemms is None:
            continue
        plain += 1
        assert sum(bench_ops.flops_of(*gemm, "cpu") for gemm in gemms) == bench_ops.flops_of(func, args, "cpu")
    assert plain > 0


def test_bench_ops_pads_only_the_channel_counts_that_need_it():
    from bench import bench_ops
    stepper, model = _tiny_step()
    calls = bench_ops.record_step(stepper, model)
    convolutions = [(func, args) for func, args in calls if func in bench_ops.CONVOLUTIONS]
    padded = 0
    for func, args in convolutions:
        weight = args[2 if func is torch.ops.aten.convolution_backward.default else 1][0]
        pad = bench_ops.padded(func, args, 8)
        if weight[0] % 8 == 0 and weight[1] % 8 == 0:
            assert pad is None
            continue
        padded += 1
        new_func, new_args = pad
        outputs = new_func(*(bench_ops._thaw(a, "cpu") for a in new_args))  # the padded call runs
        for tensor in outputs if isinstance(outputs, tuple) else (outputs,):
            if tensor is not None and tensor.dim() >= 2:  # (N, C_out, ...), grad (N, C_in, ...) or (C_out, C_in, ...)
                assert tensor.shape[1] % 8 == 0
    assert padded > 0  # the 3-channel images, at least


def test_bench_ops_prints_a_table_and_a_json_line(capsys):
    from bench import bench_ops
    args = bench_ops.parse_args(["--device", "cpu", "--batch_size", "2", "--layers", "1", "--img_size", "16",
                                 "--context_views", "1", "--reps", "1", "--pad", "8", "--rows", "5"])
    result = bench_ops.main(args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1])["distinct_ops"] == len(result["rows"]) and len(lines) == 1 + 5 + 1
    times = [row["ms_per_step"] for row in result["rows"]]
    assert times == sorted(times, reverse=True)
    for row in result["rows"]:
        channels = re.search(r" (\d+)->(\d+) ", row["op"])  # convolutions only
        needs_padding = channels is not None and any(int(c) % 8 for c in channels.groups())
        assert ("padded_ms_per_call" in row) == needs_padding, row["op"]
    assert result["calls"] == sum(row["calls"] for row in result["rows"])
    assert result["as_gemms_ms_per_step"] > 0
    assert 0 < result["plain_convolutions_ms_per_step"] < result["ops_ms_per_step"]


@pytest.mark.parametrize("baseline", [False, True])
def test_step_profile_splits_a_step_into_its_parts(baseline, capsys):
    from bench import step_profile

    result = step_profile.main(["--context_views", "2", "--steps", "1", "--layers", "1"] +
                               (["--baseline"] if baseline else []))
    parts = result["parts"]
    memory = "GQN sum" if baseline else "message passing"
    assert list(parts) == ["Pool network", memory, "DRAW cores", "other (Adam, losses, glue)"]
    counted = [parts[name]["gflop"] for name in ("Pool network", memory, "DRAW cores")]
    # The parts' FLOPs add up to the step's (a loss's few reductions aside); only GEN's memory does work.
    assert sum(counted) == pytest.approx(result["step_gflop"], rel=0.01)
    assert (parts[memory]["gflop"] == 0) == baseline
    assert all(parts[name]["ms"] > 0 for name in ("Pool network", "DRAW cores"))
    assert "| whole step |" in capsys.readouterr().out


def test_maze_spread_shows_what_the_per_view_standardisation_adds(capsys):
    """bench/maze_spread.py, the figure in docs/training.md: with only the layer norm of GQN's sum, what tells
    the built-in mazes apart is a third of r's memory at initialisation; with --memory_norm, all of it."""
    from bench import maze_spread
    maze_spread.main([str(SAMPLES), "--mazes", "8", "--views", "16"])
    values = [float(line.rsplit("= ", 1)[1]) for line in capsys.readouterr().out.splitlines()]
    assert len(values) == 2 and values[0] < 0.5 < 0.9 < values[1], values


def write_gains(folder, gains):
    """metrics.csv with the columns bench.seed_table reads: {(model, grid): (gain, lo, hi)}."""
    folder.mkdir()
    lines = ["model,grid,psnr,context_gain_db,context_gain_lo,context_gain_hi"]
    lines += [f"{model} (run/checkpoint-final.pt),{grid},13.0,{g},{lo},{hi}" for (model, grid), (g, lo, hi) in gains.items()]
    lines.append("dataset mean,1,13.0,0,0,0")  # reference rows are not models
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def checked(folder):
    return list(seed_table.targets(*seed_table.read_rows(folder)).values())


def test_seed_table_checks_each_target_seed_by_seed(tmp_path, capsys):
    met = {("GEN", k): (1.2, 0.9, 1.5) for k in range(1, 6)}
    met.update({("GQN", 1): (0.4, 0.3, 0.5), ("GQN", 3): (0.1, 0.0, 0.2), ("GQN", 4): (0.1, 0.0, 0.2),
                ("GQN", 5): (0.2, 0.1, 0.3)})
    missed = dict(met)
    missed[("GEN", 1)] = (1.2, 0.4, 2.0)  # gain above 1 dB but its lower bound not above 0.5
    missed[("GQN", 5)] = (0.3, 0.1, 0.95)  # more than half of 0.4, and above GEN's lower bound on 5x5
    assert checked(write_gains(tmp_path / "met", met)) == [True] * 4
    missed_folder = write_gains(tmp_path / "b", missed)
    assert checked(missed_folder) == [False, True, False, False]
    del met[("GEN", 4)]
    gap_folder = write_gains(tmp_path / "a", met)
    assert checked(gap_folder) == [True, None, True, None]
    seed_table.main([str(gap_folder), str(missed_folder), "--label", "seed 0", "--label", "seed 1"])
    out = capsys.readouterr().out
    assert "| grid | GEN, seed 0 | GEN, seed 1 | GQN, seed 0 | GQN, seed 1 |" in out
    assert "| 4x4 | - | +1.20 [+0.90, +1.50] | +0.10 [+0.00, +0.20] | +0.10 [+0.00, +0.20] |" in out
    assert "| GEN >= 1.0 dB on 1x1 (lower bound > 0.5) | met | missed |" in out


def write_accuracies(folder, accuracies):
    """retrieval.csv as bench/retrieval_experiment.sh writes it: {(model, grid): (accuracy, lo, hi)}, chance 1/36
    and maze accuracy 0.5 [0.4, 0.6] throughout."""
    folder.mkdir()
    lines = ["model,grid,queries,candidates,chance,accuracy,accuracy_lo,accuracy_hi,maze_chance,maze_accuracy,"
             "maze_accuracy_lo,maze_accuracy_hi"]
    lines += [f"{model} (run/checkpoint-final.pt),{grid},400,36,{1 / 36},{a},{lo},{hi},0.25,0.5,0.4,0.6"
              for (model, grid), (a, lo, hi) in accuracies.items()]
    (folder / "retrieval.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_seed_table_checks_the_retrieval_targets(tmp_path, capsys):
    met = {("GEN", k): (0.60, 0.55, 0.65) for k in range(1, 6)}
    met.update({("GQN", 1): (0.50, 0.45, 0.55), **{("GQN", k): (0.30, 0.25, 0.35) for k in range(2, 6)}})
    missed = dict(met)
    missed[("GQN", 1)] = (0.25, 0.20, 0.30)  # under 10x chance (0.278), and only 5 points above its 5x5
    missed[("GEN", 5)] = (0.50, 0.30, 0.70)  # 10 points below its 1x1, lower bound under GQN's upper bound
    assert checked(write_accuracies(tmp_path / "met", met)) == [True] * 4
    assert checked(write_accuracies(tmp_path / "missed", missed)) == [False] * 4
    seed_table.main([str(tmp_path / "met"), str(tmp_path / "missed")])
    out = capsys.readouterr().out
    assert "| 5x5 | 0.600 [0.550, 0.650] | 0.500 [0.300, 0.700] | 0.300 [0.250, 0.350] | 0.300 [0.250, 0.350] |" in out
    assert out.count("| 1x1 | 0.500 [0.400, 0.600] |") == 1  # the maze accuracy's table
    assert "| both models' top-1 >= 10x chance on 1x1 | met | missed |" in out


def test_seed_table_refuses_two_experiments_at_once(tmp_path, capsys):
    memory = write_gains(tmp_path / "memory", {("GEN", 1): (1.0, 0.8, 1.2), ("GQN", 1): (0.5, 0.3, 0.7)})
    retrieval = write_accuracies(tmp_path / "retrieval", {("GEN", 1): (0.5, 0.4, 0.6), ("GQN", 1): (0.5, 0.4, 0.6)})
    with pytest.raises(SystemExit) as exit_:
        seed_table.main([str(memory), str(retrieval)])
    assert exit_.value.code == 2 and "different experiments" in capsys.readouterr().err


def test_seed_table_without_a_model_is_a_one_line_error(tmp_path, capsys):
    folder = write_gains(tmp_path / "gen_only", {("GEN", 1): (1.0, 0.8, 1.2)})
    with pytest.raises(SystemExit) as exit_:
        seed_table.main([str(folder)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.endswith("metrics.csv: no GQN rows") and "\n" not in err


def test_train_windows_averages_each_tag_over_its_steps(tmp_path, capsys):
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(tmp_path / "GEN" / "runs")) as writer:
        for step in range(1, 7):
            writer.add_scalar("train/loss", float(step), step)
    train_windows.main([str(tmp_path / "GEN" / "runs"), "--tags", "train/loss", "train/accuracy",
                        "--windows", "0:2", "4:6"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| run | tag | 0-2 | 4-6 |"
    assert out[2:] == ["| GEN | train/loss | 1.5000 | 5.5000 |", "| GEN | train/accuracy | - | - |"]
    train_windows.main([str(tmp_path / "GEN" / "runs"), "--tags", "train/loss"])  # default: every 500 steps
    assert capsys.readouterr().out.splitlines()[2] == "| GEN | train/loss | 3.5000 |"


def test_train_windows_without_events_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_windows.main([str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.endswith("no scalar events (is it a run's runs/ folder?)") and "\n" not in err
