"""The reports of ``evaluate.py``: ``metrics.csv`` (one row per model or reference and grid size), ``metrics.md``
(context gain first, then PSNR and the other tables, with intervals) and ``metrics.png``."""
import csv
from pathlib import Path
from typing import Sequence
from utils.atomic import atomic_path
from utils.evaluation.scenes import DATASET_MEAN, MEAN, NEAREST, YAW_WEIGHT



COLUMNS = ("model", "grid", "hotels", "queries", "img_size", "context_views", "sigma", "neg_elbo",
           "bits_per_dim", "kl", "mse", "psnr", "ssim", "rec_mse", "rec_psnr", "rec_ssim", "seconds", "steps",
           "train_grids", "inputs",
           # added with --queries: new columns go last, so readers of the old ones are unaffected
           "psnr_lo", "psnr_hi", "context_gain_db", "context_gain_lo", "context_gain_hi", "swap_psnr",
           "swap_same_hotel")


def cell(value, digits=4) -> str:
    """A table cell: floats to ``digits`` significant digits."""
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def write_csv(rows: Sequence[dict], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: cell(row.get(key), 8) for key in columns})


def write_reports(out: Path, stem: str, rows: Sequence[dict], table: str, plot, columns: Sequence[str] = COLUMNS):
    """``out/STEM.csv``, ``.md`` (``table``) and ``.png`` (``plot(rows, path)``). All three are written before any
    replaces its old version: a failure (a full disk) leaves the previous run's reports as they were, not a mix
    of two runs."""
    with atomic_path(out / f"{stem}.csv") as csv_path, atomic_path(out / f"{stem}.md") as md_path, \
            atomic_path(out / f"{stem}.png") as png_path:
        write_csv(rows, csv_path, columns)
        md_path.write_text(table)
        plot(rows, png_path)


def interval(value, low, high, signed=False) -> str:
    """``value [low, high]``: dB to 2 decimals (context gains signed, to 3)."""
    if value is None:
        return ""
    form = "{:+.3f}" if signed else "{:.2f}"
    return f"{form.format(value)} [{form.format(low)}, {form.format(high)}]"


TABLES = (("ssim", "SSIM of generated views (higher is better)"),
          ("mse", "MSE of generated views (pixels in [0, 1])"),
          ("neg_elbo", "-ELBO (nats per image, lower is better)"),
          ("bits_per_dim", "-ELBO (bits per dimension)"),
          ("kl", "KL (nats per image)"),
          ("rec_psnr", "PSNR of posterior reconstructions (dB)"))
# The tables that lead, with their intervals: (title, value, low, high, signed).
INTERVAL_TABLES = (
    ("Context gain (dB): PSNR with the mazes' own context views minus with another maze's, 95% interval",
     "context_gain_db", "context_gain_lo", "context_gain_hi", True),
    ("PSNR of generated views (dB, higher is better), 95% interval", "psnr", "psnr_lo", "psnr_hi", False))


def add_table(lines: list, title: str, labels, grids, by_key, format_row) -> None:
    """Append one markdown table: grid sizes down, the labels that have a value across."""
    columns = [label for label in labels if any(format_row(by_key.get((label, g), {})) for g in grids)]
    if not columns:
        return
    lines += [f"## {title}", "", "| grid | " + " | ".join(columns) + " |", "|---:|" + "---:|" * len(columns)]
    for grid in grids:
        lines.append(f"| {grid}x{grid} | " + " | ".join(format_row(by_key.get((label, grid), {})) for label in columns)
                     + " |")
    lines.append("")


def markdown(rows: Sequence[dict], args) -> str:
    """Readable tables: the context gain, then one per metric; grid sizes down, models (and references) across."""
    labels = list(dict.fromkeys(row["model"] for row in rows))
    grids = list(dict.fromkeys(row["grid"] for row in rows))
    by_key = {(row["model"], row["grid"]): row for row in rows}
    model_rows = [row for row in rows if "neg_elbo" in row]
    sigmas = sorted({row["sigma"] for row in model_rows})
    counts = {row["grid"]: (row["queries"], row["hotels"]) for row in rows}
    sigma_source = "set by --sigma" if args.sigma is not None else "the checkpoint's final sigma"
    shared = {grid: row["swap_same_hotel"] for (label, grid), row in by_key.items() if row.get("swap_same_hotel")}
    lines = [f"# Evaluation on `{args.test_data_dir}`", "",
             "Query views per grid size (one per maze of k x k distinct episodes, seed "
             f"{args.seed}): " + ", ".join(f"{g}x{g}: {q} from {h} hotels" for g, (q, h) in counts.items())
             + "; every model sees identical inputs and prior samples (column `inputs` of metrics.csv). "
             "**Context gain**: the PSNR of a model's generated views minus its PSNR on the same queries, with the "
             "same poses and prior samples, when every maze's context frames are those of another test maze; 0 "
             "for a model that ignores its context views. Intervals: 95% percentile bootstrap over hotels (a "
             "hotel's queries share its memory; paired for the gain). "
             f"Generated views are sampled from the prior; -ELBO uses a Gaussian pixel likelihood with sigma "
             f"{', '.join(cell(s) for s in sigmas)} ({sigma_source}), so it is a density, "
             f"comparable only at equal sigma. References: `{NEAREST}` copies the query maze's context "
             f"image with the nearest pose (|dxy| + {YAW_WEIGHT} |dyaw|), `{MEAN}` is the mean of its "
             f"context images, `{DATASET_MEAN}` the mean frame of the other test episodes (no context).", ""]
    if shared:
        lines += ["Too few test episodes for donors from outside every hotel: in the swap, a share of the mazes "
                  "took another maze of their own hotel's views (" + ", ".join(
                      f"{g}x{g}: {share:.0%}" for g, share in sorted(shared.items())) + "), which a model "
                  "summing all of a hotel's views (GQN) partly still sees.", ""]
    for title, key, low, high, signed in INTERVAL_TABLES:
        add_table(lines, title, labels, grids, by_key,
              lambda row: interval(row.get(key), row.get(low), row.get(high), signed))
    for key, title in TABLES:
        add_table(lines, title, labels, grids, by_key, lambda row: cell(row.get(key)))
    lines += ["## Runs", "", "| model | training steps | trained on grids | grid | queries | img_size | "
              "context views | seconds (model only) |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for row in model_rows:
        lines.append(f"| {row['model']} | {cell(row['steps'])} | {row['train_grids']} | {row['grid']} | "
                     f"{row['queries']} | {row['img_size']} | {row['context_views']} | {row['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(row["model"] for row in rows))
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
    for label in labels:
        series = [row for _, row in sorted((row["grid"], row) for row in rows if row["model"] == label)]
        grids = [row["grid"] for row in series]
        reference = "neg_elbo" not in series[0]
        line, = left.plot(grids, [row["psnr"] for row in series], "--" if reference else "-o", label=label,
                          alpha=0.6 if reference else 1.0)
        if not reference:  # the references' bands would hide the models'
            left.fill_between(grids, [row["psnr_lo"] for row in series], [row["psnr_hi"] for row in series],
                              color=line.get_color(), alpha=0.15)
            middle.errorbar(grids, [row["context_gain_db"] for row in series],
                            yerr=[[row["context_gain_db"] - row["context_gain_lo"] for row in series],
                                  [row["context_gain_hi"] - row["context_gain_db"] for row in series]],
                            fmt="-o", capsize=3, label=label, color=line.get_color())
            right.plot(grids, [row["neg_elbo"] for row in series], "-o", label=label, color=line.get_color())
    middle.axhline(0, color="black", lw=0.8)
    all_grids = sorted({row["grid"] for row in rows})
    trained = {row["train_grids"] for row in rows if row.get("train_grids")}
    if len(trained) == 1:  # every model trained on the same sizes: shade those that were evaluated
        shaded = sorted({int(k) for k in trained.pop().split()} & set(all_grids))
        for axis in (left, middle, right):
            for i, k in enumerate(shaded):
                axis.axvspan(k - 0.3, k + 0.3, color="grey", alpha=0.12, label="trained sizes" if i == 0 else None)
    for axis, title in ((left, "PSNR of generated views (dB)"), (middle, "context gain (dB), 95% interval"),
                        (right, "-ELBO (nats per image)")):
        axis.set_xlabel("hotel size k (k x k mazes)")
        axis.set_xticks(all_grids)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    for axis in (left, middle, right):
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)
