"""The one Optuna name this project needs that Optuna does not make public, kept here alone:
ask-and-tell has no public heartbeat, which an RDB storage needs to see that a worker lives.
tests/test_tune.py checks it against the installed Optuna and names the version when it goes."""

import contextlib

import optuna


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> contextlib.AbstractContextManager:
    """While the block runs, the trial's heartbeat on an RDB storage (nothing on a journal)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, study._storage)
