"""Can a stage layout ever run on a cluster? Checked at start, before any work.

Ray Data starts every actor pool at ``min_actors`` and waits, silently, for resources that may never
come: a layout whose pools cannot all hold their minimum at once on the cluster's nodes hangs at
0 items (until ``no_progress_timeout_s``). :func:`check_layout` places the minimum actors the way
Ray's scheduler must (whole GPUs for ``num_gpus >= 1`` on one node, fractions packed onto one GPU,
CPUs on the same node), then checks that every task stage still finds its CPUs, and raises
:class:`LayoutError` naming the stages and the resources when it cannot.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError

EPS = 1e-9


class LayoutError(ConfigError):
    """The stage layout cannot be scheduled on the cluster (the message names stages and resources)."""


@dataclass
class Demand:
    """What one operator of the job (a stage or a fused group of stages) asks of the cluster."""

    name: str
    num_gpus: float
    num_cpus: float
    min_actors: int
    uses_actor: bool
    other: dict = field(default_factory=dict)  # memory (bytes), accelerator_type:<T>, custom resources


@dataclass
class Node:
    cpus: float
    gpus: int
    other: dict = field(default_factory=dict)  # every other resource of the node (memory, custom, ...)
    gpu_free: list[float] = field(default_factory=list)
    cpu_free: float = 0.0

    def __post_init__(self):
        self.gpu_free = [1.0] * int(self.gpus)
        self.cpu_free = float(self.cpus)
        self.other = dict(self.other)

    @classmethod
    def from_ray(cls, res: dict) -> Node:
        return cls(float(res.get("CPU", 0)), int(float(res.get("GPU", 0))),
                   {k: float(v) for k, v in res.items() if k not in ("CPU", "GPU")})

    def copy(self) -> Node:
        return Node(self.cpus, self.gpus, self.other)


def fmt_resource(key: str, value: float) -> str:
    if key == "memory":
        return f"{value / 1e9:.1f} GB memory"
    return f"{value:g} {key}{'s' if key in ('GPU', 'CPU') else ''}"


def _demand(u: Demand) -> str:
    parts = [f"{u.num_gpus:g} GPU", f"{u.num_cpus:g} CPU"] + [fmt_resource(k, v) for k, v in u.other.items()]
    return " + ".join(parts)


def min_demand(units: list[Demand]) -> dict[str, float]:
    """What the actor pools hold at once at their ``min_actors``: GPU, CPU and every other resource."""
    need = {"GPU": 0.0, "CPU": 0.0}
    for u in units:
        if u.uses_actor:
            need["GPU"] += u.num_gpus * u.min_actors
            need["CPU"] += u.num_cpus * u.min_actors
            for k, v in u.other.items():
                need[k] = need.get(k, 0.0) + v * u.min_actors
    return need


def describe_cluster(nodes: list[dict]) -> str:
    cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    return f"{len(nodes)} node{'s' * (len(nodes) != 1)}: {cpus:g} CPUs, {gpus:g} GPUs"


def _place(node: Node, u: Demand) -> bool:
    if node.cpu_free + EPS < u.num_cpus:
        return False
    if any(node.other.get(k, 0.0) + EPS < v for k, v in u.other.items()):
        return False
    g = u.num_gpus
    if g <= 0:
        node.cpu_free -= u.num_cpus
        for k, v in u.other.items():
            node.other[k] = node.other.get(k, 0.0) - v
        return True
    if g >= 1 - EPS:
        whole = int(round(g))
        free = [i for i, c in enumerate(node.gpu_free) if c >= 1 - EPS]
        if len(free) < whole:
            return False
        for i in free[:whole]:
            node.gpu_free[i] = 0.0
    else:
        # best fit: the fullest GPU that still has room, as Ray packs fractional GPU requests
        cands = [i for i, c in enumerate(node.gpu_free) if c + EPS >= g]
        if not cands:
            return False
        i = min(cands, key=lambda k: node.gpu_free[k])
        node.gpu_free[i] -= g
    node.cpu_free -= u.num_cpus
    for k, v in u.other.items():
        node.other[k] = node.other.get(k, 0.0) - v
    return True


def check_layout(units: list[Demand], nodes: list[dict]) -> None:
    """Raise :class:`LayoutError` if the minimum actors of ``units`` cannot all be placed on ``nodes``
    (Ray's ``ray.nodes()`` resource dicts: ``CPU``, ``GPU``) with CPUs left for every task stage."""
    for u in units:
        if u.num_gpus > 1 + EPS and abs(u.num_gpus - round(u.num_gpus)) > EPS:
            raise LayoutError(f"stage {u.name}: num_gpus {u.num_gpus:g} above 1 must be a whole number "
                              "(Ray gives an actor either a fraction of one GPU or whole GPUs)")
        if u.uses_actor and u.min_actors < 1:
            raise LayoutError(f"stage {u.name}: min_actors must be at least 1")
    pool = [Node.from_ray(n) for n in nodes]
    cluster = describe_cluster(nodes)
    alone = [u for u in units if not any(_place(n.copy(), u) for n in pool)]
    if alone:
        def needs(u):
            extra = "".join(f", {k} {v:g}" for k, v in u.other.items())
            return f"{u.name} ({u.num_gpus:g} GPU, {u.num_cpus:g} CPU{extra})"
        need = ", ".join(needs(u) for u in alone)
        raise LayoutError(f"the stage layout cannot be scheduled on this cluster ({cluster}): no node can hold "
                          f"one worker of {need}. Lower the stage's resources or add a node that has them.")
    demands = [u for u in units if u.uses_actor for _ in range(u.min_actors)]
    demands.sort(key=lambda u: (u.num_gpus >= 1 - EPS, u.num_gpus, u.num_cpus), reverse=True)
    failed = [u for u in demands if not any(_place(n, u) for n in pool)]
    if failed:
        actors = [u for u in units if u.uses_actor]
        want = ", ".join(f"{u.name} {u.min_actors} x {_demand(u)}" for u in actors)
        names = ", ".join(dict.fromkeys(u.name for u in failed))
        need = min_demand(units)
        have = {k: sum(float(n.get(k, 0)) for n in nodes) for k in need}
        short = [f"{fmt_resource(k, need[k])} needed, {fmt_resource(k, have[k])} in the cluster" for k in need
                 if need[k] > have[k] + EPS]
        why = ("; ".join(short) if short else
               "the totals fit, but not packed onto the nodes (whole GPUs and CPUs per node, fractions per GPU)")
        raise LayoutError(
            f"the stage layout cannot be scheduled on this cluster ({cluster}): the actor pools need at their "
            f"min_actors {want}: {why}; no room for: {names}. Ray Data would wait forever. Give the GPU stages "
            "fractions that fit on one GPU, run them in one worker (a fused group in job.stages, e.g. [era3d, lgm, "
            "render, refine]), lower min_actors or the resources asked for, or add nodes.")
    tasks = [u for u in units if not u.uses_actor]
    starved = [u for u in tasks if not any(n.cpu_free + EPS >= u.num_cpus for n in pool)]
    if starved:
        left = max((n.cpu_free for n in pool), default=0.0)
        raise LayoutError(
            f"the stage layout cannot be scheduled on this cluster ({cluster}): once the actor pools hold their "
            f"CPUs, at most {left:g} CPU is free on a node, but task stage(s) "
            f"{', '.join(f'{u.name} ({u.num_cpus:g} CPU)' for u in starved)} need more. Lower num_cpus of the "
            "actor stages or of these stages.")
