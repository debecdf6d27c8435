"""Training recipes: every setting of a training run, one recipe per model and dataset the project ships.

`scripts/train.py` starts from the recipe of its ``--model`` and ``--dataset``; each flag given
on the command line overrides that one setting, and the resolved settings (with where each came
from) are printed by ``--show-recipe`` and recorded in ``metrics.json`` and the checkpoint, so a
run can be repeated exactly. A model and dataset without a recipe of their own (your own data
through the library, say) get `GENERAL`. What each recipe reached, measured, is in
docs/training.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["GENERAL", "RECIPES", "SETTINGS", "Recipe", "Resolved", "recipe_for", "resolve"]

#: The settings a recipe holds, in the order they are shown.
SETTINGS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "gamma", "batch_size", "epochs",
            "augment", "label_smoothing")


@dataclass(frozen=True)
class Recipe:
    """Every training setting. ``schedule``: ``constant``, ``cosine`` (to 0 at the last epoch) or
    ``exponential`` (``lr * gamma ** epochs_done``); ``momentum`` is SGD's (Adam ignores it);
    ``augment`` is a `cnnxp.data.parse_augment` spec."""

    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    schedule: str = "constant"
    gamma: float = 0.7
    momentum: float = 0.9
    weight_decay: float = 0.0
    augment: str = "none"
    label_smoothing: float = 0.0

    def settings(self) -> dict[str, Any]:
        return {name: asdict(self)[name] for name in SETTINGS}


#: For a model and dataset without a recipe: Adam with a cosine decay, a batch that keeps a CPU busy.
GENERAL = Recipe("adam", 1e-3, batch_size=64, epochs=10, schedule="cosine")

_LENET5_DIGITS = Recipe("adam", 2e-3, batch_size=32, epochs=15, schedule="cosine", augment="shift:2",
                        label_smoothing=0.1)
_SEED = Recipe("sgd", 0.02, batch_size=32, epochs=15, schedule="cosine", momentum=0.9, augment="shift:1")

RECIPES: dict[tuple[str, str], Recipe] = {
    ("lenet5", "mnist-sample"): _LENET5_DIGITS,
    ("lenet5", "mnist"): replace(_LENET5_DIGITS, batch_size=64, epochs=10),
    ("lenet5", "fashion-mnist"): Recipe("adam", 2e-3, batch_size=64, epochs=15, schedule="cosine",
                                        augment="shift:1", label_smoothing=0.1),
    ("seed", "mnist-sample"): _SEED,
    ("seed", "mnist"): replace(_SEED, epochs=10),
    ("seed", "fashion-mnist"): replace(_SEED, epochs=10),
    ("fashion", "mnist-sample"): Recipe("adam", 1e-3, batch_size=32, epochs=15, schedule="cosine",
                                        augment="shift:2"),
    ("fashion", "mnist"): Recipe("adam", 1e-3, batch_size=64, epochs=10, schedule="cosine", augment="shift:2"),
    ("fashion", "fashion-mnist"): Recipe("adam", 2e-3, batch_size=64, epochs=40, schedule="cosine",
                                         augment="flip", label_smoothing=0.1),
}


def recipe_for(model: str, dataset: str) -> tuple[str, Recipe]:
    """The recipe of ``model`` on ``dataset`` and its name (``"lenet5 on fashion-mnist"``, or ``"general"``)."""
    if (model, dataset) in RECIPES:
        return f"{model} on {dataset}", RECIPES[(model, dataset)]
    return "general", GENERAL


@dataclass(frozen=True)
class Resolved:
    """The settings of a run and where each came from: ``"recipe"``, ``"flag"`` (given explicitly), or
    another word a program records (``"checkpoint"``: a resumed run that predates recipes). ``recipe`` is
    the recipe's name (None when none was recorded)."""

    recipe: str | None
    settings: dict[str, Any]
    sources: dict[str, str]

    def source_of(self, name: str) -> str:
        """Where setting ``name`` came from, in words: ``recipe lenet5 on mnist``, ``--lr``, or the source as is."""
        source = self.sources[name]
        if source == "recipe":
            return f"recipe {self.recipe}"
        if source == "flag":
            return "--" + name.replace("_", "-")
        return source

    def table(self, before: tuple[tuple[str, Any, str], ...] = ()) -> str:
        """One line per setting: ``lr  0.002  (recipe lenet5 on fashion-mnist)``; ``before``: rows
        ``(name, value, source)`` shown first in the same columns."""
        rows = [*before, *((name, self.settings[name], self.source_of(name)) for name in SETTINGS)]
        width = max(len(name) for name, _, _ in rows)
        values = max(len(str(value)) for _, value, _ in rows)
        return "\n".join(f"{name:<{width}}  {value!s:<{values}}  ({source})" for name, value, source in rows)


def resolve(model: str, dataset: str, given: dict[str, Any]) -> Resolved:
    """The recipe of ``model`` on ``dataset`` with the settings in ``given`` (those given explicitly,
    None for absent) taking its place. Raises KeyError for a name that is not a setting."""
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise KeyError(f"not recipe settings: {unknown}; the settings are {list(SETTINGS)}")
    name, recipe = recipe_for(model, dataset)
    settings = recipe.settings()
    sources = dict.fromkeys(SETTINGS, "recipe")
    for key, value in given.items():
        if value is not None:
            settings[key], sources[key] = value, "flag"
    return Resolved(name, settings, sources)
