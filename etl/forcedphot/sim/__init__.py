"""The simulated survey: a deterministic multi-band tract written as a forcedphot repository."""

from forcedphot.sim.recipe import Recipe, load_recipe
from forcedphot.sim.survey import simulate

__all__ = ["Recipe", "load_recipe", "simulate"]
