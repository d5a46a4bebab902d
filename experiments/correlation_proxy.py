"""The correlation study's proxy stage: which genomes it samples and their proxy scores, saved as they come.

``sample_and_score`` fills the study's state with the presets' and the accepted random genomes' proxy results
(rejected draws are counted and replaced); ``rescore`` scores the planned genomes again under another step budget
or proxy seed, ``bf16_check`` under bf16 autocast. Every stage writes after each group, so an interrupted study
resumes. ``log`` is the study's timestamped progress line, shared with ``correlation.py``.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from kdzero.genome import SHRUNK_SPACE, Genome
from kdzero.presets import PRESETS
from kdzero.proxy import CPU_GROUP, ProxyConfig, ProxyResult, ProxyTask, evaluate


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def proxy_config(args: argparse.Namespace, bf16: bool = False, steps: int | None = None,
                 seed: int | None = None) -> ProxyConfig:
    """The proxy of this run; ``steps`` and ``seed`` override the budget and the proxy's seed (initialisation,
    batch order, augmented views, proxy train images) for the budget and seed studies."""
    subset = None if args.dataset == "digits" or not args.proxy_subset else args.proxy_subset // 10
    return ProxyConfig(steps=steps or args.proxy_steps, num_views=args.views, train_subset=subset,
                       seed=args.seed if seed is None else seed, bf16=bf16, device=args.device)


def bf16_check(task: ProxyTask, plan: list[tuple[str, ProxyResult]], state: dict, state_path: Path) -> None:
    """Proxy-score every planned genome again with bf16 autocast (``state["bf16"]``): does the faster proxy rank
    genomes as the fp32 one does, and predict final accuracy as well?"""
    scores = state.setdefault("bf16", {})
    todo = [Genome.parse(r.genome) for _, r in plan if r.genome not in scores]
    for genome, result in zip(todo, evaluate(task, todo) if todo else []):
        scores[str(genome)] = result.to_dict()
    state_path.write_text(json.dumps(state, indent=1) + "\n")


def budget_path(stem: Path, steps: int) -> Path:
    return stem.with_name(f"{stem.name}_proxy{steps}steps.json")


def seed_path(stem: Path, seed: int) -> Path:
    return stem.with_name(f"{stem.name}_proxyseed{seed}.json")


def rescore(make_task, plan: list[tuple[str, ProxyResult]], path: Path, identity: dict, label: str) -> dict:
    """Proxy-score every planned genome again with another proxy (``make_task()``: another step budget or seed),
    saving after each group to ``path`` so an interrupted study resumes; returns {genome: result dict}.
    The final accuracies do not depend on the proxy, so one training stage serves every variant."""
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("identity") != identity:
        saved = {"identity": identity, "variant": label, "results": {}}
    results = saved["results"]
    todo = [Genome.parse(r.genome) for _, r in plan if r.genome not in results]
    if todo:
        task = make_task()
        log(f"proxy {label}: {len(todo)} genomes to score")
        for i in range(0, len(todo), CPU_GROUP):
            group = todo[i:i + CPU_GROUP]
            for genome, result in zip(group, evaluate(task, group)):
                results[str(genome)] = result.to_dict()
            path.write_text(json.dumps(saved, indent=1) + "\n")
    return results


def sample_and_score(task: ProxyTask, args: argparse.Namespace, state: dict, state_path: Path) -> None:
    """Fill ``state`` with the presets' and ``args.genomes`` accepted random genomes' proxy results."""
    def save() -> None:
        state_path.write_text(json.dumps(state, indent=1) + "\n")

    shapes = task.student_shapes, task.teacher_shapes
    if "baseline" not in state:
        base = task.baseline()
        state["baseline"] = base.to_dict()
        save()
        log(f"CE-only student: val CE {base.val_ce:.4f} s_gap {base.s_gap:.4f} cka_gap {base.cka_gap:.4f}")
    if "presets" not in state:
        names = [n for n, g in PRESETS.items() if g.is_valid(*shapes)]
        state["static_invalid_presets"] = [n for n in PRESETS if n not in names]
        results = evaluate(task, [PRESETS[n] for n in names])
        state["presets"] = {n: r.to_dict() for n, r in zip(names, results)}
        save()
        for n, r in zip(names, results):
            log(f"preset {n:7s} {r.status:9s} score {r.score:.4f} {r.reason}")
    rng = random.Random(args.seed)
    seen = set(map(str, PRESETS.values()))
    state.setdefault("random", [])
    state.setdefault("rejected", [])
    state.setdefault("static_invalid", 0)
    # Replay the draws already made, so a resumed run continues the same sequence.
    drawn = state.get("drawn", 0)
    for _ in range(drawn):
        seen.add(str(Genome.random(rng, SHRUNK_SPACE)))
    state.setdefault("spare", [])
    while state["spare"] and len(state["random"]) < args.genomes:  # accepted earlier beyond the count asked for
        state["random"].append(state["spare"].pop(0))
    while len(state["random"]) < args.genomes:
        need = args.genomes - len(state["random"])
        group: list[Genome] = []
        while len(group) < need + 1:  # one spare: some will be rejected
            genome = Genome.random(rng, SHRUNK_SPACE)
            state["drawn"] = state.get("drawn", 0) + 1
            text = str(genome)
            if text in seen:
                continue
            seen.add(text)
            if not genome.is_valid(*shapes):
                state["static_invalid"] += 1
                continue
            group.append(genome)
        for genome, result in zip(group, evaluate(task, group)):
            if result.rejected:
                state["rejected"].append(result.to_dict())
                log(f"rejected ({result.stage}): {genome} -- {result.reason}")
            else:
                state["random" if len(state["random"]) < args.genomes else "spare"].append(result.to_dict())
                log(f"accepted: {genome} score {result.score:.4f} ({result.seconds:.0f} s)")
        save()
