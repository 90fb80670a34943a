"""Weight sync and sampling for the RL controller (app.rl.controller): the learner publishes a policy version
with its checksum, every rollout actor loads and reports it, and the Sampler hands each actor its chunk of
the step's prompts, re-sampling a chunk whose actor died or came back stale. Every wait has a timeout.
A leaf module: it knows the actors only by their remote methods (load_weights, generate, weights)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import ray


class StaleWeights(RuntimeError):
    """A rollout actor was asked to sample for a policy version it does not hold."""


class SyncNotApplied(RuntimeError):
    """A rollout actor reports the published version, but its log-probs of the probe are not the learner's:
    the weights did not take effect (the stale-weights bug class: a load that silently did nothing or only
    part of its job)."""


@dataclass(frozen=True)
class SamplingPlan:
    """How a step's prompts are spread and sampled (RLConfig.sampling_plan() builds it)."""
    rollout_actors: int
    prompts_per_actor: int
    group_size: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    max_restarts: int
    timeout_s: float
    safety: dict | None = None  # RLSafety's fields: the rollout actors resample unsafe answers


def ray_get(refs, timeout: float, what: str):
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(f"{what} did not answer within {timeout:.0f}s") from None


@dataclass
class Published:
    """A policy version as the learner published it: the weights in the object store, their sha256, and the
    learner's log-probs of the probe ids, which every rollout actor must reproduce within `tolerance`
    (mean absolute difference per token) once it has loaded them."""
    version: int
    ref: object
    checksum: str
    megabytes: float
    probe_ids: list[int] | None = None
    probe: list[float] | None = None
    tolerance: float = 1e-3


def publish(learner, version: int, timeout: float, probe_ids: list[int] | None = None,
            tolerance: float = 1e-3) -> Published:
    state, checksum, probe = ray_get(learner.weights.remote(probe_ids), timeout, "learner weights")
    return Published(version, ray.put(state), checksum, sum(v.nbytes for v in state.values()) / 1e6, probe_ids,
                     probe, tolerance)


def probe_gap(engine: list[float], learner: list[float]) -> float:
    """Mean absolute difference of two log-prob lists of the same tokens."""
    return sum(abs(a - b) for a, b in zip(engine, learner, strict=True)) / max(1, len(learner))


def _check(status: dict, pub: Published) -> float:
    """The version and checksum the actor reports must be the published ones, and the log-probs it now gives
    the probe the learner's; returns that gap."""
    if (status["version"], status["checksum"]) != (pub.version, pub.checksum):
        raise RuntimeError(f"rollout actor reports v{status['version']} {status['checksum'][:12]}, expected "
                           f"v{pub.version} {pub.checksum[:12]}")
    if pub.probe is None:
        return 0.0
    gap = probe_gap(status["probe"], pub.probe)
    if gap > pub.tolerance:
        raise SyncNotApplied(f"policy v{pub.version} loaded but not in effect: the rollout engine's log-probs of "
                             f"the probe differ from the learner's by {gap:.3g} per token (tolerance "
                             f"{pub.tolerance:g}, sync_check_tolerance)")
    return gap


def _load(actor, pub: Published):
    return actor.load_weights.remote(pub.version, pub.ref, pub.checksum, pub.probe_ids)


def load_into(actor, pub: Published, timeout: float, tries: int) -> float:
    """Load a published version into one rollout actor, waiting out a restart; the actor must report it.
    An actor that is restarting (ActorUnavailableError) is waited for up to `timeout` seconds, however long
    its model takes to load; an actor that dies (any other RayActorError) is retried `tries` times."""
    deadline, deaths = time.monotonic() + timeout, 0
    while True:
        try:
            status = ray_get(_load(actor, pub), timeout, "weight sync")
            break
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        except ray.exceptions.RayActorError:
            deaths += 1
            if deaths > tries:
                raise
            time.sleep(1)
    return _check(status, pub)


def sync(rollouts: list, pub: Published, timeout: float, tries: int) -> float:
    """Every rollout actor loads `pub` (in parallel) and reports its version, checksum and probe log-probs;
    returns the largest probe gap (SyncNotApplied past the tolerance)."""
    refs = [_load(a, pub) for a in rollouts]
    gaps = []
    for actor, ref in zip(rollouts, refs):
        try:
            status = ray_get(ref, timeout, "weight sync")
        except ray.exceptions.RayActorError:  # died meanwhile: wait for the restart and load again
            gaps.append(load_into(actor, pub, timeout, tries))
            continue
        gaps.append(_check(status, pub))
    return max(gaps)


class Sampler:
    """The step's prompts, split into one chunk per rollout actor, sampled with seeds fixed by (step, chunk);
    a chunk whose actor died or came back stale is re-sampled after reloading the current version."""

    def __init__(self, plan: SamplingPlan, rollouts: list, data: list):
        self.plan, self.rollouts, self.data = plan, rollouts, data
        self.restarts = 0

    def chunks(self, step: int) -> list[list[int]]:
        per_step = self.plan.rollout_actors * self.plan.prompts_per_actor
        idx = [(step * per_step + i) % len(self.data) for i in range(per_step)]
        return [idx[j::self.plan.rollout_actors] for j in range(self.plan.rollout_actors)]

    def _launch(self, step: int, j: int, chunk: list[int], version: int):
        c = self.plan
        return self.rollouts[j].generate.remote([self.data[i].ids for i in chunk], version, c.max_new_tokens,
                                                c.temperature, c.top_p, c.seed * 100003 + step * 101 + j,
                                                n=c.group_size, safety=c.safety)

    def launch(self, step: int, version: int) -> dict:
        chunks = self.chunks(step)
        return {"step": step, "chunks": chunks, "t0": time.perf_counter(),
                "refs": [self._launch(step, j, chunk, version) for j, chunk in enumerate(chunks)]}

    def collect(self, pending: dict, pub: Published) -> list[dict]:
        batches = []
        for j, (chunk, ref) in enumerate(zip(pending["chunks"], pending["refs"])):
            for attempt in range(self.plan.max_restarts + 1):
                try:
                    batch = ray_get(ref, self.plan.timeout_s, f"rollout actor {j}")
                    break
                except (ray.exceptions.RayActorError, StaleWeights) as e:
                    if attempt == self.plan.max_restarts:
                        raise
                    self.restarts += 1
                    print(f"rollout actor {j} lost its chunk ({type(e).__name__}); reloading v{pub.version} "
                          f"and sampling it again", flush=True)
                    load_into(self.rollouts[j], pub, self.plan.timeout_s, self.plan.max_restarts)
                    ref = self._launch(pending["step"], j, chunk, pub.version)
            if len(batch["sequences"]) != len(chunk) * self.plan.group_size:
                raise RuntimeError(f"rollout actor {j} returned {len(batch['sequences'])} rows for {len(chunk)} "
                                   f"prompts x {self.plan.group_size}")
            batches.append(batch)
        return batches
