"""The DRAW renderer of GQN: r + query pose -> image, written once and used four ways.

One loop (``draw``) serves the ELBO and KL (posterior path, with the query image), reconstruction
(posterior path, canvas returned) and generation (prior path, no query image).

Tensor contract: x (B, 3, S, S) in [0, 1], v (B, 7), r (B, r_dim).
"""
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.gqn import IMAGE_CHANNELS, CoreConfig, GenerationCore, InferenceCore, canvas_to_state

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class Losses(NamedTuple):
    """Per-image terms in nats: ``loss`` = -ELBO = ``nll`` + ``kl``."""
    loss: torch.Tensor
    nll: torch.Tensor
    kl: torch.Tensor


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per element, in closed form, in fp32: under bf16 autocast the
    difference of nearly equal terms would lose the KL's sign. The variances enter as ratios (exp of a
    difference), which stay finite where exp(logvar) alone would overflow."""
    mu_q, logvar_q, mu_p, logvar_p = (t.float() for t in (mu_q, logvar_q, mu_p, logvar_p))
    return 0.5 * (logvar_p - logvar_q + (logvar_q - logvar_p).exp() + (mu_q - mu_p) ** 2 * (-logvar_p).exp() - 1)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, sigma) -> torch.Tensor:
    """-log N(x; mean, sigma^2) summed over each image's pixels -> (B,). ``sigma``: a float, or a 0-d
    tensor where it changes every step under torch.compile (a float would be baked into the graph)."""
    log_sigma = sigma.log() if isinstance(sigma, torch.Tensor) else math.log(sigma)
    return (0.5 * ((x - mean) / sigma) ** 2 + log_sigma + HALF_LOG_TWO_PI).flatten(1).sum(1)


class Renderer(nn.Module):
    def __init__(self, cfg: CoreConfig, layers: int):
        super().__init__()
        self.cfg = cfg
        self.layers = layers
        self.inference_core = InferenceCore(cfg)
        self.generation_core = GenerationCore(cfg)
        self.eta_pi = nn.Conv2d(cfg.hidden, 2 * cfg.latent, 5, padding=2)  # prior mean, log variance
        self.eta_e = nn.Conv2d(cfg.hidden, 2 * cfg.latent, 5, padding=2)  # posterior mean, log variance
        self.eta_g = nn.Conv2d(cfg.hidden, IMAGE_CHANNELS, 1)  # canvas -> image mean

    def draw(self, v: torch.Tensor, r: torch.Tensor, x: Optional[torch.Tensor] = None):
        """Run the L DRAW layers; returns (image mean (B, 3, S, S), KL per image (B,) or None).

        With ``x`` the latents are sampled from the posterior (and the KL to the prior summed);
        without it, from the prior.
        """
        cfg = self.cfg
        batch, s, size = v.shape[0], cfg.state_size, cfg.img_size
        assert r.shape == (batch, cfg.r_dim), f"r must be ({batch}, {cfg.r_dim}), got {tuple(r.shape)}"
        generator = self.generation_core.prepare(v, r)
        posterior = x is not None
        if posterior:
            assert x.shape == (batch, IMAGE_CHANNELS, size, size), f"x must be ({batch}, 3, {size}, {size})"
            inference = self.inference_core.prepare(x, v, r)
        # None = the zero state before the first layer: the cores skip convolving it.
        c_g = h_g = c_e = h_e = None
        # The canvas is u = sum over layers of upsample_h(h_g), and upsample_h is linear, so keep the sum
        # of the generator states instead (s x s, not S x S) and lift it once at the end; the inference
        # core's downsample_u(u) is then one 1 x 1 convolution of that sum.
        state_sum = None
        if posterior:
            to_state = canvas_to_state(self.inference_core.downsample_u, self.generation_core.upsample_h)
        kl = v.new_zeros(batch) if posterior else None
        for _ in range(self.layers):
            h_prior = v.new_zeros(batch, cfg.hidden, s, s) if h_g is None else h_g
            prior_mu, prior_logvar = self.eta_pi(h_prior).chunk(2, dim=1)  # (B, latent, s, s) each
            if posterior:
                u_state = None if state_sum is None else F.conv2d(state_sum, to_state)  # (B, hidden, s, s)
                c_e, h_e = self.inference_core.step(inference, c_e, h_e, h_g, u_state)
                mu, logvar = self.eta_e(h_e).chunk(2, dim=1)
                kl = kl + gaussian_kl(mu, logvar, prior_mu, prior_logvar).flatten(1).sum(1)
            else:
                mu, logvar = prior_mu, prior_logvar
            z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
            c_g, h_g = self.generation_core.step(generator, c_g, h_g, z)
            state_sum = h_g if state_sum is None else state_sum + h_g
        canvas = self.generation_core.upsample_h(state_sum)  # (B, hidden, S, S)
        return self.eta_g(canvas), kl

    def elbo(self, x, v, r, sigma: float) -> Losses:
        mean, kl = self.draw(v, r, x)
        nll = gaussian_nll(x, mean, sigma)
        return Losses(nll + kl, nll, kl)

    def reconstruct(self, x, v, r) -> torch.Tensor:
        return self.draw(v, r, x)[0].clamp(0, 1)

    def generate(self, v, r) -> torch.Tensor:
        return self.draw(v, r)[0].clamp(0, 1)
