"""Hyperparameter search with Ray Tune: one training run of the course's trainer as a trial, many trials as a search.

Taught in notebook 08. The words of a search:

    trial         one training run with one set of values: here one call of ``train.train`` (notebook 05's loop)
    search space  the values a search may try: fixed values, or a distribution to sample from (tune.loguniform ...)
    scheduler     decides while trials run which ones continue: ASHA stops the worst half at every rung
    stopper       a rule applied to each trial alone: the baseline's TrialPlateauStopper on the validation loss

Each trial reports its epoch's history row (validation loss, mAP@10, ...) and hands Tune its run folder
(``last.pt``, ``best.pt``, ``history.csv``) as a checkpoint. When an experiment is interrupted, or a
trial fails, ``resume`` restores the folder from the last checkpoint and the trainer resumes after that
epoch, as it does after a crash in notebook 05. The baseline drove training the same way through Ray
1.x (``tune.checkpoint_dir``, removed in Ray 2); this is the Ray 2 function API.

Ray is an optional extra (about 630 MB): ``pip install -e ".[tune]"`` or ``pip install "ray[tune]"``.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from course_lib import train
from course_lib._report import say
from course_lib.config import QUICK_TRIAL_EPOCHS, QUICK_TRIALS, Config, ConfigError

__all__ = [
    "INSTALL_HINT", "METRIC", "MODE", "Search", "trial", "trial_recipe", "search_space", "baseline_config", "asha",
    "plateau_stopper", "make_tuner", "resume", "start_ray", "stop_ray", "results_table", "curves", "plot_curves", "trial_id",
]

INSTALL_HINT = ('Ray Tune is not installed. Install the course\'s optional extra: pip install -e ".[tune]" '
                '(or pip install "ray[tune]"), then restart the kernel.')
CLUSTER_HINT = (
    "Check the address (the head node's IP and GCS port, 6379 by default) and that this machine has the same Ray version. "
    "Since Ray 2.59 clusters require a token: copy the head node's ~/.ray/auth_token here (or set RAY_AUTH_TOKEN, or "
    "RAY_AUTH_TOKEN_PATH to a file holding it; `ray get-auth-token` on the head node prints it)."
)
TRIAL_KEYS = ("recipe", "max_epochs", "seed")  # every other key of a trial's config replaces a recipe value
METRIC, MODE = "val_t2a_map10", "max"  # what ranks trials: losses at different temperatures cannot be compared


def trial(config: dict[str, Any], cfg: Config) -> None:
    """One Tune trial: ``train.train`` with this trial's values, reporting and checkpointing every epoch.

    Taught in notebook 08, section 1. ``config`` holds any recipe value to change ("lr", "temperature", "batch_size",
    ...) and optionally "recipe" (a recipe of baseline.yaml; default: the profile's), "max_epochs" and "seed".
    """
    tune = _ray("ray.tune")
    # The trial's recipe: a course recipe with this trial's values in place of its own.
    recipe, trial_cfg = trial_recipe(cfg, config)
    # The run folder sits in the trial's folder; after an interruption Tune hands back the last one it saved.
    run_dir = Path(tune.get_context().get_trial_dir()) / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            shutil.copytree(saved, run_dir)

    # After every epoch: report the history row (the baseline's stop_metric is the validation loss), with the folder.
    def report(row: dict[str, Any], model: Any) -> None:
        tune.report({**row, "stop_metric": row["val_loss"]}, checkpoint=tune.Checkpoint.from_directory(run_dir))

    # The course's own training loop: it resumes from the restored last.pt, or starts at epoch 0. A trial runs its
    # recipe's epochs (the baseline's 80), not the profile's epoch budget, unless its config says max_epochs.
    max_epochs = config.get("max_epochs") or train.recipe_settings(trial_cfg, recipe)[1]["max_epochs"]
    train.train(trial_cfg, recipe, seed=int(config.get("seed", 0)), run_dir=run_dir, max_epochs=int(max_epochs),
                callback=report, verbose=False)


def trial_recipe(cfg: Config, config: dict[str, Any]) -> tuple[str, Config]:
    """(recipe name, a Config whose recipe of that name holds the trial's values) for ``train.train``."""
    changes = {key: _plain(value) for key, value in config.items() if key not in TRIAL_KEYS}
    try:
        return train.recipe_with(cfg, changes, config.get("recipe"))
    except ConfigError as exc:
        raise ValueError(f"A trial's config cannot be used ({exc}). Trial keys besides recipe values: "
                         f"{', '.join(TRIAL_KEYS)}.") from None


def search_space(max_epochs: int = 4) -> dict[str, Any]:
    """The notebook's search: learning rate, temperature and batch size of the profile's recipe, each trial at most
    max_epochs. Taught in notebook 08, section 2.
    """
    tune = _ray("ray.tune")
    return {
        "lr": tune.loguniform(3e-4, 3e-3),
        "temperature": tune.choice([0.05, 0.07, 0.1]),
        "batch_size": tune.choice([16, 32]),
        "max_epochs": max_epochs,
    }


def baseline_config() -> dict[str, Any]:
    """The baseline's exact trial: its recipe unchanged (Adam 1e-3, batch 32, temperature 0.07, all 80 epochs, not the
    profile's epoch budget).

    Taught in notebook 08, section 6.
    """
    return {"recipe": "baseline"}


def asha(max_epochs: int, grace_period: int = 1, reduction_factor: int = 2) -> Any:
    """ASHA on the epoch count: at epochs grace, grace*rf, ... a trial continues only if it is in the best 1/rf.

    Taught in notebook 08, section 3.
    """
    return _ray("ray.tune.schedulers").ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace_period,
                                                     reduction_factor=reduction_factor)


def plateau_stopper(cfg: Config) -> Any:
    """The baseline's stopper: TrialPlateauStopper with conf.yaml's values (std of the last 10 losses < 0.001, after 60).

    Taught in notebook 08, section 3.
    """
    return _ray("ray.tune.stopper").TrialPlateauStopper(**cfg.baseline["trial_stopper"])


def make_tuner(
    cfg: Config, param_space: dict[str, Any], num_samples: int = 1, scheduler: Any = None, stopper: Any = None,
    storage_path: str | Path | None = None, name: str = "search", cpus_per_trial: float = 1, gpus_per_trial: float = 0,
    trainable: Callable[..., None] | None = None,
) -> Search:
    """A search of ``num_samples`` trials drawn from ``param_space``; ``.fit()`` runs it. Taught in notebook 08, section 4.

    Results go to <storage_path>/<name> (default: the profile's models folder, tune/); the stopper defaults
    to the baseline's plateau rule; each trial keeps only its newest checkpoint (it holds the whole run).
    ``trainable``: a function to run instead of ``trial`` (one that wraps it, say).
    """
    tune = _ray("ray.tune")
    storage = (Path(storage_path) if storage_path else cfg.models_dir / "tune").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    if cfg.quick:  # COURSE_QUICK=1: fewer and shorter trials, the same search
        num_samples = min(num_samples, QUICK_TRIALS)
        param_space = {**param_space, "max_epochs": min(int(param_space.get("max_epochs") or QUICK_TRIAL_EPOCHS),
                                                        QUICK_TRIAL_EPOCHS)}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable or trial, cfg=cfg), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=num_samples, scheduler=scheduler),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), stop=stopper if stopper is not None else plateau_stopper(cfg),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=0,
        ),
    )
    return Search(tuner, storage / name)


def resume(path: str | Path, cfg: Config, trainable: Callable[..., None] | None = None) -> Search:
    """A search that finishes an interrupted one (its folder): unfinished and failed trials go on from their last checkpoint.

    Taught in notebook 08, section 7. ``trainable``: the function the search ran, when it was not ``trial``.
    """
    tune = _ray("ray.tune")
    return Search(tune.Tuner.restore(str(path), tune.with_parameters(trainable or trial, cfg=cfg), resume_errored=True),
                  Path(path))


@dataclasses.dataclass
class Search:
    """A Ray Tune ``Tuner`` and the folder its search lives in. Taught in notebook 08, sections 4 and 7.

    ``fit()`` runs the search as ``Tuner.fit`` does, and says how to resume it when it was interrupted (Ctrl-C,
    Kernel > Interrupt): Tune then ends the trials, saves the search and returns. Any other attribute is the Tuner's.
    """

    tuner: Any
    path: Path

    def fit(self) -> Any:
        """Run every trial; returns Tune's ResultGrid. Interrupted, it says so and how to resume."""
        try:
            results = self.tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C, or Tune's own handler switched off: Tune did not finish its round
            raise KeyboardInterrupt(f"The search was interrupted. {self.resume_hint()}") from None
        saved = _saved_statuses(results)
        unfinished = [result for result in results if _status(result, saved) == "interrupted"]
        if unfinished:
            say(True, f"The search was interrupted: {len(unfinished)} of {len(results)} trials did not finish. "
                      f"{self.resume_hint()}")
        return results

    def resume_hint(self) -> str:
        return f"Resume it with: course_tune.resume({str(self.path)!r}, cfg).fit()"

    def __getattr__(self, name: str) -> Any:  # only called for names a Search lacks: the Tuner's
        if name.startswith("__") or name in ("tuner", "path"):
            raise AttributeError(name)
        return getattr(self.tuner, name)


def start_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = True, **init_args: Any) -> dict[str, float]:
    """Start Ray on this machine (address None), or join a running cluster ("auto", "host:6379"); returns its resources.

    Taught in notebook 08 (its opening cells). ``quiet`` keeps the workers' logs out of the notebook (prints inside
    trials are hidden). Ray stops when the program ends, if ``stop_ray`` has not stopped it before.
    """
    ray = _import_ray()
    if quiet:
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0 in make_tuner: no progress tables at all
        init_args = {"log_to_driver": False, "logging_level": logging.ERROR, **init_args}
    if not ray.is_initialized():
        if address is None:  # a new local instance, never an unrelated cluster that happens to run here
            _loopback_only(ray)
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **init_args)
            _LOCAL_RAY["started"] = True
        else:
            try:
                ray.init(address=address, **init_args)
            except ConnectionError as exc:
                raise ConnectionError(f"Cannot join the Ray cluster at {address!r}. {CLUSTER_HINT}") from exc
        atexit.unregister(stop_ray)
        atexit.register(stop_ray)  # runs before Ray's own exit handler, which ray.init registered
    return ray.cluster_resources()


def stop_ray() -> None:
    """Disconnect from Ray; a local instance started by start_ray stops with its helper processes.

    Taught in notebook 08, section 8.
    """
    ray = _import_ray()
    helpers = _local_ray_processes() if ray.is_initialized() and _LOCAL_RAY["started"] else []
    ray.shutdown()
    _LOCAL_RAY["started"] = False
    _stop_processes(helpers)


# --- reading the results -----------------------------------------------------------------------


def results_table(results: Any) -> pd.DataFrame:
    """One row a trial: its values, last epoch, best validation mAP@10 and loss, status (ok, error, interrupted); best first.

    Taught in notebook 08, section 4.
    """
    rows, saved = [], _saved_statuses(results)
    for result in results:
        curve = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
        config = {key: value for key, value in result.config.items() if key != "max_epochs"}
        rows.append({
            "trial": trial_id(result),
            **config,
            "epochs": int(curve["epoch"].max()) if "epoch" in curve else 0,
            "best_val_map10": float(curve[METRIC].max()) if METRIC in curve else math.nan,
            "best_val_loss": float(curve["val_loss"].min()) if "val_loss" in curve else math.nan,
            "minutes": float(curve["time_total_s"].max()) / 60 if "time_total_s" in curve else math.nan,
            "status": _status(result, saved),
        })
    return pd.DataFrame(rows).sort_values("best_val_map10", ascending=False, ignore_index=True)


def curves(results: Any) -> dict[str, pd.DataFrame]:
    """Each trial's reported rows (epoch, val_loss, val_t2a_map10, ...), by trial id."""
    return {trial_id(result): result.metrics_dataframe for result in results if result.metrics_dataframe is not None}


def plot_curves(results: Any, metric: str = METRIC, ax: Any = None) -> Any:
    """The trials' learning curves: ``metric`` against the epoch, one line a trial, labelled with its values.

    Taught in notebook 08, section 5.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(8, 3.5))[1]
    for result in results:
        curve = result.metrics_dataframe
        if curve is None or metric not in curve:
            continue
        label = ", ".join(f"{key} {_short(value)}" for key, value in result.config.items() if key != "max_epochs")
        ax.plot(curve["epoch"], curve[metric], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} of each trial (a short line: stopped by the scheduler)")
    ax.legend(fontsize=7, loc="best")
    return ax


def trial_id(result: Any) -> str:
    """A trial's id, as Tune names it (experiment id _ trial number).

    Taught in notebook 08, section 4.
    """
    return str((result.metrics or {}).get("trial_id") or Path(result.path).name)


# --- private helpers ---------------------------------------------------------------------------


_LOCAL_RAY = {"started": False}  # whether start_ray started the local instance Ray is connected to


def _ray(module: str) -> Any:
    """A module of Ray (``ray.tune``, ``ray.tune.stopper`` ...), or an ImportError that says how to install Ray."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


def _import_ray() -> Any:
    """Ray, with Tune, or an ImportError that says how to install it."""
    _ray("ray.tune")
    return _ray("ray")


def _status(result: Any, saved: dict[str, str]) -> str:
    """'error' (the trial raised), 'ok' (it finished, or Tune stopped it) or 'interrupted' (the search stopped first).

    ``saved``: each trial's status as the search's folder holds it (Tune ends interrupted trials after saving them as
    running); without it, the trial's last result says whether it was done.
    """
    if result.error:
        return "error"
    if str(result.path) in saved:
        return "ok" if saved[str(result.path)] == "TERMINATED" else "interrupted"
    return "ok" if (result.metrics or {}).get("done") else "interrupted"


def _saved_statuses(results: Any) -> dict[str, str]:
    """{trial folder: status} from the experiment state a search saved last; {} when there is none to read."""
    path = getattr(results, "experiment_path", None)
    if path is None:
        return {}
    analysis = _ray("ray.tune").ExperimentAnalysis(path, storage_filesystem=getattr(results, "filesystem", None))
    return {str(trial.path): trial.status for trial in analysis.trials}


def _local_ray_processes() -> list[Any]:
    """The processes a local Ray instance runs for this program (GCS, raylet, agents, workers): its child processes
    that are Ray's (others, such as the course's process pool or multiprocessing's fork server, are left alone)."""
    import psutil

    ours = []
    for process in psutil.Process().children(recursive=True):
        try:
            words = process.cmdline()
        except psutil.Error:
            continue
        if any(word.startswith(("ray::", "ray.")) or "/ray/" in word or os.path.basename(word) in ("raylet", "gcs_server")
               for word in words):
            ours.append(process)
    return ours


def _stop_processes(processes: list[Any], wait_s: float = 10.0) -> None:
    """Wait for processes to end (ray.shutdown asked them to); terminate, then kill, those still running."""
    import psutil

    alive = psutil.wait_procs(processes, timeout=wait_s)[1]
    for process in alive:
        process.terminate()
    for process in psutil.wait_procs(alive, timeout=5)[1]:
        process.kill()


def _loopback_only(ray: Any) -> None:
    """Make a local Ray instance talk over 127.0.0.1 only: by default its processes use the machine's network address.

    Ray reads this switch (meant for macOS and Windows, where Ray keeps to the loopback) at import time: the
    environment variable reaches the processes ray.init starts, the constant this already imported module.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False


def _plain(value: Any) -> Any:
    """NumPy scalars Tune samples, as Python numbers (a checkpoint's identity compares them)."""
    return value.item() if hasattr(value, "item") else value


def _short(value: Any) -> str:
    return f"{value:.2g}" if isinstance(value, float) else str(value)
