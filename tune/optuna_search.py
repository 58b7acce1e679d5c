"""``SweepOptunaSearch``: Ray Tune's Optuna searcher with correct trial states for sweeps.

Ray 2.60's ``OptunaSearch.on_trial_complete`` marks the Optuna trial
COMPLETE whenever the last result contains the metric. Three cases come out wrong for a sweep:

* A trial that ASHA stopped early reaches Optuna as COMPLETE with its truncated score,
  so TPE treats a score after a few epochs like a final one.
* A NaN score makes ``study.tell`` raise; Ray logs the error and the Optuna
  trial stays RUNNING for ever.
* An infinite score is marked COMPLETE and can become the best trial.

This subclass marks PRUNED a trial whose last result has fewer epochs than
its config requests, FAIL a trial with a non-finite or missing score, and
never reports a non-finite intermediate value.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from tune.results import STUDY_SUMMARY_FILE

logger = logging.getLogger(__name__)

EPOCH_KEY = "epoch"
EPOCHS_CONFIG_KEY = "config/epochs"


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class SweepOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that marks early-stopped trials PRUNED and trials with non-finite scores FAIL.

    Intermediate values are reported with ``step = epoch`` (1-based) rather
    than Tune's ``training_iteration``, so a trial restored from a checkpoint
    reports each epoch once.

    At every experiment checkpoint the searcher also writes
    :meth:`study_summary` as ``optuna_study.json`` next to its pickled state.
    Tune saves both in the driver's staging folder and copies that folder to
    the sweep's storage, so the summary lands in the experiment folder. A file
    written straight into the storage folder would not last: after a restore,
    Tune's next copy overwrites it with the stale version it downloaded.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Report the epoch's score to Optuna, skipping non-finite values."""
        if isinstance(self.metric, list):
            return
        value = result.get(self.metric)
        if not _is_finite_number(value):
            logger.warning(
                "trial %s reported %s=%r at epoch %s; Optuna does not receive it",
                trial_id,
                self.metric,
                value,
                result.get(EPOCH_KEY),
            )
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return
        step = int(result.get(EPOCH_KEY, result.get("training_iteration", 0)))
        reported = self.__dict__.setdefault("_reported_steps", {}).setdefault(trial_id, set())
        if step in reported:
            return
        ot_trial.report(float(value), step)
        reported.add(step)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Mark the Optuna trial of a finished Tune trial COMPLETE, PRUNED or FAIL."""
        if trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        state, value = self.final_state(result, error)
        if trial_id in self._completed_trials:
            self._record_late_completion(trial_id, state, value)
            return
        if state is TrialState.PRUNED and result:
            # Tune does not pass the result that made the scheduler stop the
            # trial to on_trial_result. Reporting it here makes the PRUNED
            # trial's value the score that the scheduler judged.
            self.on_trial_result(trial_id, result)
        if state is TrialState.COMPLETE:
            self._ot_study.tell(ot_trial, value, state=state)
        else:
            self._ot_study.tell(ot_trial, state=state)
        logger.debug("trial %s: Optuna trial %d is %s", trial_id, ot_trial.number, state.name)
        self._completed_trials.add(trial_id)

    def _record_late_completion(self, trial_id: str, state: TrialState, value: float | None) -> None:
        """Add a COMPLETE Optuna trial for a Tune trial that failed, was resumed, and then finished.

        ``idarts sweep --resume`` resumes failed trials, but Optuna cannot
        change a finished trial's state, so the result goes into a new
        Optuna trial with the same params.
        """
        if state is not TrialState.COMPLETE:
            return
        from optuna.trial import create_trial

        ot_trial = self._ot_trials[trial_id]
        late = self.__dict__.setdefault("_late_trials", {})
        if trial_id in late:
            return
        self._ot_study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=value,
                params=ot_trial.params,
                distributions=ot_trial.distributions,
            )
        )
        late[trial_id] = self._ot_study.get_trials(deepcopy=False)[-1].number
        logger.info("trial %s finished after it had failed; added it to Optuna as trial %d", trial_id, late[trial_id])

    def save(self, checkpoint_path: str) -> None:
        """Pickle the searcher state (Tune calls this at every experiment checkpoint) and write the summary."""
        super().save(checkpoint_path)
        self.write_summary(Path(checkpoint_path).parent / STUDY_SUMMARY_FILE)

    def final_state(
        self, result: dict[str, Any] | None, error: bool
    ) -> tuple[TrialState, float | None]:
        """Return the Optuna state and value of a trial from its last result (flattened)."""
        if error:
            return TrialState.FAIL, None
        if not result or self.metric not in result:
            # Tune stopped the trial before it reported anything (or it was never started).
            return TrialState.PRUNED, None
        value = result[self.metric]
        if not _is_finite_number(value):
            return TrialState.FAIL, None

        epoch = result.get(EPOCH_KEY)
        epochs = result.get(EPOCHS_CONFIG_KEY)
        if epoch is not None and epochs is not None and int(epoch) < int(epochs):
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, float(value)

    def optuna_trial_number(self, trial_id: str) -> int | None:
        """Return the Optuna trial number of a Tune trial, or None if it was never suggested."""
        ot_trial = self._ot_trials.get(trial_id)
        return None if ot_trial is None else ot_trial.number

    def study_summary(self) -> list[dict[str, Any]]:
        """Return one record per Optuna trial: number, Tune trial id, state, value and params."""
        numbers = {trial.number: trial_id for trial_id, trial in self._ot_trials.items()}
        numbers.update({number: trial_id for trial_id, number in self.__dict__.get("_late_trials", {}).items()})
        summary = []
        for trial in self._ot_study.get_trials(deepcopy=False):
            summary.append(
                {
                    "number": trial.number,
                    "tune_trial_id": numbers.get(trial.number),
                    "state": trial.state.name,
                    "value": trial.value,
                    "params": dict(trial.params),
                    "intermediate_values": {str(step): value for step, value in trial.intermediate_values.items()},
                }
            )
        return summary

    def write_summary(self, path: Path) -> None:
        """Write :meth:`study_summary` to ``path`` atomically."""
        if self._ot_study is None:
            return
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            temporary.write_text(json.dumps(self.study_summary(), indent=1) + "\n")
            os.replace(temporary, path)
        except OSError as error:
            logger.warning("writing the Optuna study summary to %s failed: %s", path, error)
