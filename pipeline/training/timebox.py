"""A run held to its time: the epochs re-sized after each one so that the run ends on ``recipe.budget_seconds``.

The plan sizes ``recipe.epochs`` from a few timed steps (:mod:`pipeline.plan.machine`); on a shared or throttling
machine the epochs then run 20-40% faster or slower than the probe said (bench/RECIPE.md, 2026-12-03). With
``recipe.budget_seconds`` set (the plan sets it to the epochs it chose times their predicted cost), the loop measures
each epoch's whole cost (training, validation, checkpoint) and, after each, sets the run's total to the epochs done
plus as many more as the seconds left hold at the mean cost of the last :data:`RECENT` epochs, between the epochs
done and :data:`MAX_STRETCH` x ``recipe.epochs``. The learning-rate schedule stretches with it
(:meth:`pipeline.training.setup.Optimisation.set_total_steps`): the cosine always ends at the run's last step.

Without ``recipe.budget_seconds`` (a config's own epochs, ``train.epochs``, the later rounds) nothing changes and a
run is as deterministic as before; with it, the epoch count depends on the machine's speed, as the plan's already
does, and a resumed run goes on with the count its checkpoint holds.
"""

from __future__ import annotations

import dataclasses

RECENT = 3  # epochs whose mean cost predicts the next ones (the first epochs run slower while caches warm)
MAX_STRETCH = 2.0  # a run never grows past this many times recipe.epochs


@dataclasses.dataclass
class Timebox:
    """The seconds a run may take and what its epochs cost so far."""

    budget: float | None  # recipe.budget_seconds; None: the epochs stay as planned
    planned: int  # recipe.epochs
    costs: list[float] = dataclasses.field(default_factory=list)  # whole seconds of each epoch, this process

    def epochs(self, done: int, elapsed: float) -> int:
        """The run's total epochs after ``done`` epochs took ``elapsed`` seconds in all (:attr:`costs` holds the
        recent ones).

        >>> box = Timebox(budget=100.0, planned=10, costs=[12.0, 10.0, 8.0])
        >>> box.epochs(done=3, elapsed=30.0)  # 70 s left at 10 s an epoch
        10
        >>> Timebox(100.0, 10, [5.0, 5.0, 5.0]).epochs(3, 15.0)  # 85 s at 5 s: 17 more, capped at 2 x 10
        20
        >>> Timebox(100.0, 10, [40.0, 40.0]).epochs(2, 80.0)  # 20 s left: half an epoch rounds to one more
        3
        >>> Timebox(100.0, 10, [60.0, 60.0]).epochs(2, 120.0)  # over already: stop here
        2
        >>> Timebox(None, 10, [60.0]).epochs(1, 60.0)
        10
        """
        if self.budget is None or not self.costs:
            return self.planned
        recent = self.costs[-RECENT:]
        per = sum(recent) / len(recent)
        more = int((self.budget - elapsed) / per + 0.5) if per > 0 else 0
        return max(done, min(int(MAX_STRETCH * self.planned), done + max(0, more)))
