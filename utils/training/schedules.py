"""Learning-rate and pixel-sigma schedules: pure functions of the step, so resuming needs only the step.

Both anneal linearly from ``initial`` to ``final`` over ``steps`` and then stay at ``final``, as in
GQN (Eslami et al. 2018):

    value(t) = final + (initial - final) * (1 - min(t / steps, 1))

which equals GQN's ``max(final + (initial - final) * (1 - t / steps), final)`` for a decreasing
schedule. The defaults are the original GEN implementation's: learning rate 8e-4 -> 5e-6 over 1.6M steps,
and GQN's pixel sigma 2.0 -> 0.7 over 200k steps. GQN's own learning rate, 5e-4 -> 5e-5, is
``GQN_LR, GQN_LR_FINAL`` (``--lr 5e-4 --lr_final 5e-5``). The embed-and-classify experiment
(train_embed_classify.py) anneals from 5e-4 to 5e-8, as the original's does.
"""

LR, LR_FINAL, LR_STEPS = 8e-4, 5e-6, 1_600_000
GQN_LR, GQN_LR_FINAL = 5e-4, 5e-5
CLASSIFY_LR, CLASSIFY_LR_FINAL = 5e-4, 5e-8
SIGMA, SIGMA_FINAL, SIGMA_STEPS = 2.0, 0.7, 200_000


def anneal(step: int, initial: float, final: float, steps: int) -> float:
    """Linear from ``initial`` at step 0 to ``final`` at ``steps``, constant afterwards."""
    progress = min(step / steps, 1.0)
    return final + (initial - final) * (1.0 - progress)


def learning_rate(step: int, initial: float = LR, final: float = LR_FINAL, steps: int = LR_STEPS) -> float:
    return anneal(step, initial, final, steps)


def pixel_sigma(step: int, initial: float = SIGMA, final: float = SIGMA_FINAL, steps: int = SIGMA_STEPS) -> float:
    return anneal(step, initial, final, steps)
