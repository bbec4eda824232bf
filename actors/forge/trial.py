"""One Tune trial: a Ray Train ``TorchTrainer`` run driven by a Tune function trainable.

Ray 2.60 runs Ray Train V2, where a ``TorchTrainer`` is not itself a Tune trainable:
Tune runs this function, and the function has ``TorchTrainer(...).fit()`` run in a
``TrainHost`` actor it owns. Ray's own ``TuneReportCallback`` forwards metrics only
(the checkpoint as a path in the metrics), which leaves Tune without checkpoints: a
resumed trial could not continue and PBT could not exploit. ``ReportBridge`` forwards
each report with its checkpoint instead, and this function reports both to Tune, so Tune
holds every trial's checkpoints (and hands one back as ``resume_from`` on a restore or a
PBT exploit), while Ray Train still restarts failed workers from its own latest
checkpoint (``FailureConfig``). However the trial ends, its host is killed, and the
Train run with it.

This module stays light (no torch): every trial process imports it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray
from ray import tune

from actors.forge.bridge import CHECKPOINT_KEY
from actors.forge.plan import TrialPlan
from actors.forge.train_host import ABORT_TIMEOUT_S, HOST_OPTIONS, FitRequest, TrainHost

_POLL_S = 0.2


def forge_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """The Tune trainable: train ``plan.spec`` with this trial's sampled ``config``."""
    start = tune.get_checkpoint()
    request = FitRequest(
        trial_id=tune.get_context().get_trial_id(),
        params=dict(config),
        plan=plan,
        resume_from=start.path if start is not None else None,
    )
    host = TrainHost.options(**HOST_OPTIONS).remote()  # type: ignore[attr-defined]
    try:
        _forward(host, host.fit.remote(request))
    finally:
        # Stopped by Tune (ASHA, PBT, a stop rule, Ctrl+C) or done: abort the Train run
        # (a no-op once it finished), then the host goes, and anything it still owns.
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(host.abort.remote(), timeout=ABORT_TIMEOUT_S + 5)
        ray.kill(host)


def _forward(host: Any, fitting: ray.ObjectRef) -> None:
    """Report each of the host's reports to Tune until the fit ends; raise its error."""
    while True:
        item = ray.get(host.next_report.remote(_POLL_S))
        if item is not None:
            _report(item)
            continue
        done, _ = ray.wait([fitting], timeout=0)
        if done:
            while (item := ray.get(host.next_report.remote(0))) is not None:
                _report(item)
            ray.get(fitting)  # the training error, if any, fails the trial
            return


def _report(item: dict[str, Any]) -> None:
    path = item.pop(CHECKPOINT_KEY)
    tune.report(item, checkpoint=tune.Checkpoint(path) if path else None)
