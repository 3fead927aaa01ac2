"""Chaos Toolkit extension for plugqdisc: hold and release packets on several machines.

:mod:`chaosplugqdisc.actions` (``hold``, ``release``, ``release_all``),
:mod:`chaosplugqdisc.probes` (``hold_status``, ``wait_buffered``, ``holds``) and the
control :mod:`chaosplugqdisc.control`, which releases every hold however the experiment
ends. The holds live in this process (Chaos Toolkit runs the method, the rollbacks and
the controls in one process), by name, in :mod:`chaosplugqdisc._state`.
"""

from typing import Any, Dict, List

__version__ = "0.1.0"
__all__ = ["__version__", "discover"]


def discover(discover_system: bool = True) -> Dict[str, Any]:
    """What `chaos discover chaostoolkit-plugqdisc` lists: the actions and probes."""
    from chaoslib.discovery.discover import (discover_actions, discover_probes,
                                             initialize_discovery_result)
    discovery = initialize_discovery_result("chaostoolkit-plugqdisc", __version__, "plugqdisc")
    activities: List[Dict[str, Any]] = []
    activities.extend(discover_actions("chaosplugqdisc.actions"))
    activities.extend(discover_probes("chaosplugqdisc.probes"))
    discovery["activities"].extend(activities)
    return discovery
