"""A Chaos Toolkit control that releases every hold when the experiment ends, however it
ends: completed, failed, deviated, or interrupted (Ctrl-C, SIGTERM, SIGUSR1/2).

Add it to the experiment (or as a global control)::

    "controls": [{"name": "plugqdisc", "provider": {"type": "python",
                  "module": "chaosplugqdisc.control"}}]

Chaos Toolkit calls ``after_experiment_control`` once the rollbacks ran (or were
skipped, as they are on interruption unless the rollback strategy is "always"), and
``cleanup_control`` in its last ``finally``. Both release every hold still on. A
``chaos`` process killed outright runs neither: then each target's remote end releases
and removes its hold as its input ends.
"""

import logging
from typing import Any

from . import _state

__all__ = ["configure_control", "after_experiment_control", "cleanup_control"]

logger = logging.getLogger("chaostoolkit")


def configure_control(**kwargs: Any) -> None:
    """Nothing to set up: holds are made by the actions."""


def _release(when: str) -> None:
    left = _state.names()
    if not left:
        return
    logger.warning("plugqdisc: %s with holds still on (%s): releasing them"
                   % (when, ", ".join(left)))
    try:
        _state.finish_all()
    except Exception as e:  # logged; the targets' sessions are ended all the same
        logger.error("plugqdisc: releasing at the experiment's end failed: %s" % e)


def after_experiment_control(context: Any = None, state: Any = None, **kwargs: Any) -> None:
    """The experiment ended (after its rollbacks): release what is still held."""
    _release("the experiment ended")


def cleanup_control() -> None:
    """The run's last step: release what is still held."""
    _release("the run ended")
