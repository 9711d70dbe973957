"""What the training scripts share. A script is a command line and a ``Task``; the rest is here.

* ``task.py``: ``Task``, what a task must say: its model, its loss and per-step metrics, its evaluation and
  TensorBoard summaries, the flags that define its runs.
* ``render.py``: ``RenderTask``, rendering views (``train_scene_rendering.py``).
* ``classify.py``: ``ClassifyTask``, picking the view out of a pool of candidates (``train_embed_classify.py``).
* ``loop.py``: ``Trainer``, the training loop of every task: data, devices, checkpoints and exact resume,
  SIGTERM, recovery from non-finite steps, the step queue, TensorBoard; ``run``, a script's ``main``.
* ``cli.py``: the flags every training script has (data, training, logging, devices) and their checks.
"""
