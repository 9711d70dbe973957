"""Image metrics of generated views and the rows they make: per-query MSE and SSIM, PSNR of a row, and the
bootstrap statistics of a row's intervals (``utils.evaluation.bootstrap``)."""
import math

import torch
import torch.nn.functional as F

from utils.evaluation.bootstrap import bootstrap_interval

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. (2004)
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # (K * data range)^2 with data range 1


# ---- image metrics ---------------------------------------------------------------------------------
def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 2-D Gaussian (size, size)."""
    ticks = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    line = torch.exp(-ticks ** 2 / (2 * sigma ** 2))
    line = line / line.sum()
    return (line[:, None] * line[None, :]).float()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (B,) of images (B, C, H, W) in [0, 1] (Wang et al. 2004).

    Local means, variances and covariance under an 11 x 11 Gaussian window (sigma 1.5), valid positions
    only; per position ``(2 mu_x mu_y + C1)(2 cov + C2) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2))``,
    averaged over positions and channels.
    """
    assert x.shape == y.shape and x.dim() == 4, f"ssim needs two (B, C, H, W) batches, got {x.shape}, {y.shape}"
    x, y = x.double(), y.double()  # E[x^2] - E[x]^2 cancels badly in float32 against C2 ~ 1e-3
    channels = x.shape[1]
    size = min(SSIM_WINDOW, *x.shape[-2:])
    window = gaussian_window(size).to(x)[None, None].expand(channels, 1, size, size)
    blur = lambda t: F.conv2d(t, window, groups=channels)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
             / ((mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2)))
    return index.flatten(1).mean(1).float()


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    return -10 * math.log10(mse) if mse > 0 else math.inf


# The bootstrap statistics, on the resampled mean MSEs: the same formulas as the rows' own values, so that an
# interval brackets the value it belongs to (a mean of per-query PSNRs would not).
def psnr_statistic(mean_mse: torch.Tensor) -> torch.Tensor:
    """PSNR of each resample's mean MSE: (B,) -> (B,)."""
    return -10 * torch.log10(mean_mse)


def gain_statistic(mean_mse: torch.Tensor) -> torch.Tensor:
    """Context gain of each resample's mean (own-context, swapped-context) MSEs: (B, 2) -> (B,)."""
    own, swapped = mean_mse.unbind(-1)
    return 10 * torch.log10(swapped) - 10 * torch.log10(own)


def image_row(generated: torch.Tensor, truth: torch.Tensor, prefix: str = "") -> dict:
    """Per-query scores of a chunk, ``{prefix}mse`` and ``{prefix}ssim`` (B,); :func:`finish` makes a row."""
    return {f"{prefix}mse": (generated - truth).pow(2).flatten(1).mean(1).double(),
            f"{prefix}ssim": ssim(generated, truth).double()}


def accumulate(total: dict, part: dict) -> None:
    """Collect per-query scores, chunk after chunk."""
    for key, value in part.items():
        total.setdefault(key, []).append(value.detach().double().cpu().reshape(-1))


def around(value: float, interval) -> tuple:
    """The interval, stretched to hold its own value: with a single hotel every resample is the whole row,
    equal to the value only up to the rounding of a different summation order."""
    low, high = interval
    return min(low, value), max(high, value)


def finish(total: dict, queries: int) -> dict:
    """A row from the per-query scores of its first ``queries`` queries: means, psnr of the mean mse (all
    images have the same pixel count, so that is the mean over all pixels too), and bootstrap intervals that
    resample whole hotels where ``total`` has each query's ``hotel`` (``utils.evaluation.bootstrap``)."""
    scores = {key: (torch.cat(value) if isinstance(value, list) else value.double().reshape(-1))[:queries]
              for key, value in total.items()}
    hotels = scores.pop("hotel", None)
    row = {"queries": len(next(iter(scores.values())))}
    for prefix in ("", "rec_", "swap_"):
        if f"{prefix}mse" in scores:
            mse = scores[f"{prefix}mse"].mean().item()
            row.update({f"{prefix}mse": mse, f"{prefix}psnr": psnr(mse),
                        f"{prefix}ssim": scores[f"{prefix}ssim"].mean().item()})
    if "mse" in scores:
        row["psnr_lo"], row["psnr_hi"] = around(row["psnr"], bootstrap_interval(scores["mse"], psnr_statistic,
                                                                                   hotels))
    if "swap_mse" in scores:
        # Paired: a resample keeps each query's two scores together, so what the queries share cancels.
        row["context_gain_db"] = row["psnr"] - row["swap_psnr"]
        paired = torch.stack([scores["mse"], scores["swap_mse"]], dim=1)
        row["context_gain_lo"], row["context_gain_hi"] = around(
            row["context_gain_db"], bootstrap_interval(paired, gain_statistic, hotels))
    for key in ("neg_elbo", "kl", "swap_same_hotel"):
        if key in scores:
            row[key] = scores[key].mean().item()
    return row
