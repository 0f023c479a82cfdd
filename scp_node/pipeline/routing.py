"""Routing: which destinations receive the results of a study.

`[routing] send_results_to = sender` means the AEs that sent what the results are made of: the
calling AE titles of the instances of the analysed series (the CT, and the PET when one was
paired), all of them when several sent instances of those series; for a study that could not be
analysed, the AEs that sent any of its series (its results then describe the whole study). Never
the AE that merely sent a study's first instance: one instance from another allowed AE cannot
draw a study's results, patient data included, to that AE. A sender receives results only when
its AE title is also a configured destination.
"""

from __future__ import annotations

from collections.abc import Sequence

from scp_node.config import SENDER, Config

__all__ = ["SENDER", "destinations_for"]


def destinations_for(config: Config, senders: Sequence[str]) -> tuple[list[str], list[str]]:
    """Resolve `[routing] send_results_to` for results made of instances sent by `senders`
    (calling AE titles; see the module docstring for which).

    Returns the destination names (no duplicates, config order) and the problems met, e.g. a
    sender that is not a configured destination while routing says `sender`.
    """
    names: list[str] = []
    problems: list[str] = []
    wanted = sorted(set(senders))
    for entry in config.send_results_to:
        if entry != SENDER:
            resolved = [entry]
        else:
            resolved = [d.name for d in config.destinations.values() if d.ae_title in wanted]
            known = {d.ae_title for d in config.destinations.values()}
            for ae_title in wanted:
                if ae_title not in known:
                    problems.append(
                        f"results are routed to the sender, but its AE title {ae_title!r} is "
                        "not in [destinations]; add it there to receive results"
                    )
            if not wanted:
                problems.append(
                    "results are routed to the sender, but no sender of the analysed series "
                    "is known"
                )
        names.extend(n for n in resolved if n not in names)
    return names, problems
