"""The recipe a run trains with: the single home of every override of a model config's epochs, learning rate and seed.

Two layers, applied in this order:

- :func:`round_config`, rounds 2+ only: ``pseudo.epochs`` replaces ``recipe.epochs`` (and clears ``train.epochs``, so
  the next layer keeps it), ``recipe.lr`` is multiplied by ``pseudo.lr_scale``, and ``pseudo.share`` /
  ``pseudo.pretrain_epochs`` / ``pseudo.soft`` become ``recipe.pseudo_share`` / ``recipe.pseudo_pretrain`` /
  ``recipe.pseudo_soft``;
- :func:`run_config`, every run: ``train.epochs`` (when set) replaces ``recipe.epochs`` and ``train.seed`` is added to
  ``recipe.seed``.

What comes out is the config the run trains, saves (``config.yaml``, the checkpoint) and fingerprints.
"""

from __future__ import annotations

import dataclasses

from pipeline.config import ModelConfig, Params, TrainParams


def run_config(cfg: ModelConfig, train: TrainParams) -> ModelConfig:
    """``cfg`` with ``train.epochs`` (when set; it clears ``recipe.budget_seconds``) and its seed offset by
    ``train.seed``."""
    if train.epochs is not None:  # an explicit count: no re-sizing to a budget
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, epochs=train.epochs, budget_seconds=None))
    if train.seed:
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, seed=cfg.recipe.seed + train.seed))
    return cfg


def round_config(cfg: ModelConfig, params: Params) -> tuple[ModelConfig, TrainParams]:
    """The model config and train params of a round 2+ run: ``pseudo.epochs`` and ``recipe.lr x pseudo.lr_scale``,
    no ``recipe.budget_seconds`` (round 1's).

    ``train.epochs`` is cleared when ``pseudo.epochs`` is set: it would otherwise replace the round's epochs again.
    """
    ps = params.pseudo
    recipe = dataclasses.replace(cfg.recipe, budget_seconds=None)  # the budget was round 1's
    if ps.epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=ps.epochs)
    if ps.lr_scale != 1.0:
        recipe = dataclasses.replace(recipe, lr=recipe.lr * ps.lr_scale)
    recipe = dataclasses.replace(recipe, pseudo_share=ps.share, pseudo_pretrain=ps.pretrain_epochs, pseudo_soft=ps.soft)
    train = params.train if ps.epochs is None else dataclasses.replace(params.train, epochs=None)
    return dataclasses.replace(cfg, recipe=recipe), train
