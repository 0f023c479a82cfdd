"""Routing: which destinations receive the results of a study."""

from __future__ import annotations

from scp_node.config import SENDER, Config

__all__ = ["SENDER", "destinations_for"]


def destinations_for(config: Config, source_aet: str | None) -> tuple[list[str], list[str]]:
    """Resolve `[routing] send_results_to` for a study sent by `source_aet`.

    Returns the destination names (no duplicates, config order) and the problems met, e.g. a
    study whose sender is not a configured destination while routing says `sender`.
    """
    names: list[str] = []
    problems: list[str] = []
    for entry in config.send_results_to:
        if entry != SENDER:
            resolved = [entry]
        else:
            resolved = [
                d.name for d in config.destinations.values() if d.ae_title == (source_aet or "")
            ]
            if not resolved:
                problems.append(
                    f"results are routed to the sender, but its AE title {source_aet!r} is not "
                    "in [destinations]; add it there to receive results"
                )
        names.extend(n for n in resolved if n not in names)
    return names, problems
