"""The evolution sampler as the CLI builds it proposes the same genomes for the same seed.

The expected genomes were first recorded from the sampler before it learned the Optuna sampler contract (issue 22,
commit a4b1961), which left them unchanged; they were recorded again when the space itself changed (issues 19
and 23: the zscore_C transform, the KD+LS preset, the sound key, validation of constant and overflowing
genomes). Any change to what a seeded CLI search proposes fails here: re-record only for a change of the space.
"""
from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from kdzero.genome import SHRUNK_SPACE, Genome
from kdzero.presets import PRESETS
from kdzero.search import create_sampler
from kdzero.search.space import suggest_genome
from kdzero.search.study import initialise

FEAT = {"feat": (16, 4, 4), "emb": (16,), "logit": (10,)}


def shape_check(genome: Genome) -> bool:
    """The CLI's validity filter, against fixed student/teacher shapes."""
    return genome.is_valid(FEAT, FEAT)


def synthetic_score(genome: Genome) -> float:
    """KL on logits at T4 with small magnitudes scores best (lower is better)."""
    score = 1.0 + 0.1 * math.log10(genome.magnitude + 1e-3)
    score -= 0.3 * (genome.distance == "kl") + 0.2 * (genome.input == "logit") + 0.1 * (genome.temperature == 4)
    return score + 0.01 * sum(name != "no" for name in genome.transforms)


def cli_search(seed: int, presets: bool, guided: bool, adaptive_shrink: bool, n_trials: int) -> tuple[list, object]:
    """A search driven the way the runner drives it: presets enqueued, one genome per asked trial, genomes with
    a ``mask`` transform rejected (PRUNED) so that adaptive shrinkage has something to drop."""
    enqueued = [g for g in PRESETS.values() if shape_check(g)] if presets else []
    space = SHRUNK_SPACE.including(enqueued)
    sampler = create_sampler("evolution", space, seed=seed, population_size=6, guided=guided,
                             adaptive_shrink=adaptive_shrink, is_valid=shape_check)
    study = optuna.create_study(sampler=sampler, direction="minimize")
    initialise(study, {"test": True}, space, n_trials, enqueued)
    proposed = []
    for _ in range(n_trials):
        trial = study.ask()
        genome = suggest_genome(trial)
        trial.set_user_attr("key", genome.key)
        proposed.append(str(genome))
        if "mask" in genome.transforms:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, synthetic_score(genome))
    return proposed, study.user_attrs.get("kdzero_dropped_ops")


PINNED = {
    "cli-defaults": (dict(seed=3, presets=True, guided=True, adaptive_shrink=True), None, [
        "logit[no,no,no]|kl|no|T4|x1",
        "feat[pow2,channel,norm_HW]|l2|no|T1|x100",
        "feat[mm,norm_C,no]|l2|no|T1|x100",
        "feat[bmm,no,no]|l2|no|T1|x1",
        "feat[no,no,no]|kl|no|T4|x1",
        "feat[no,no,no]|l2|no|T1|x100",
        "logit[softmax_C,no,no]|pearson|no|T1|x1",
        "logit[zscore_C,no,no]|kl|no|T2|x9",
        "logit[no,no,no]|l2|no|T4|x1",
        "emb[no,no,no]|pearson|no|T4|x1",
        "logit[catt,no,no]|l2|no|T4|x1",
        "logit[softmax_C,no,no]|batch_congruence|no|T1|x0.1",
        "logit[zscore_C,no,no]|kl|focal|T2|x9",
        "feat[no,no,no]|kl|no|T4|x100",
        "logit[no,no,no]|kl|sim|T4|x1",
        "feat[no,no,no]|smooth_l1|no|T4|x1",
        "emb[mask,scale,batchnorm]|kl|sim|T2|x25",
        "logit[catt,no,no]|kl|sim|T8|x1",
        "feat[satt,no,no]|kl|no|T4|x1",
        "logit[softmax_C,no,no]|kl|no|T8|x9",
        "logit[no,no,no]|kl|no|T4|x0.01",
        "emb[no,no,no]|smooth_l1|no|T4|x1",
        "logit[mask,norm_C,softmax_C]|kl|focal|T8|x0.01",
        "logit[no,no,no]|kl|conf|T4|x1",
        "feat[no,local_s1,no]|kl|no|T4|x0.01",
        "emb[no,scale,no]|kl|conf|T4|x1",
        "logit[mm,no,no]|kl|no|T4|x1",
        "logit[no,no,no]|hard|no|T4|x1",
        "feat[no,local_s1,no]|kl|focal|T4|x0.01",
        "logit[zscore_C,no,no]|l2|no|T4|x0.01",
        "logit[mm,no,no]|cosine|no|T4|x0.1",
        "logit[no,no,no]|cosine|no|T4|x1",
        "logit[mm,no,no]|kl|no|T16|x1",
        "feat[no,no,no]|kl|entropy|T4|x1",
        "logit[no,no,no]|l1|sim|T4|x0.01",
        "logit[no,no,no]|kl|no|T2|x1",
        "logit[mm,no,softmax_C]|kl|no|T4|x1",
        "logit[no,no,no]|kl|entropy|T4|x100",
        "logit[no,no,no]|kl|no|T4|x10",
        "feat[no,local_s1,no]|l1|no|T4|x0.01",
    ]),
    "plain": (dict(seed=0, presets=False, guided=False, adaptive_shrink=False), None, [
        "emb[catt,no,norm_C]|batch_congruence|sim|T8|x0.01",
        "feat[mask,multi_scale_r1,norm_C]|l2|sim|T16|x0.01",
        "feat[no,multi_scale_r1,norm_N]|smooth_l1|focal|T8|x10",
        "feat[mask,multi_scale_r2,norm_N]|batch_congruence|conf|T1|x100",
        "feat[satt,local_s1,norm_C]|cosine|no|T8|x0.1",
        "feat[no,local_s2,softmax_C]|kl|sim|T1|x10",
        "logit[no,scale,min_max_normalize]|hard|no|T1|x25",
        "feat[satt,no,softmax_HW]|smooth_l1|focal|T16|x25",
        "feat[satt,no,norm_C]|batch_congruence|no|T1|x0.1",
        "feat[satt,local_s1,norm_C]|cosine|no|T1|x0.1",
        "feat[satt,local_s1,norm_C]|cosine|no|T1|x0.01",
        "feat[mask,local_s1,batchnorm]|cosine|no|T8|x0.1",
        "feat[satt,local_s1,norm_C]|cosine|no|T1|x25",
        "feat[satt,local_s1,norm_C]|cosine|focal|T1|x0.01",
        "emb[mask,no,norm_C]|batch_congruence|sim|T8|x0.01",
        "feat[satt,local_s1,norm_C]|cosine|focal|T1|x5",
        "feat[satt,local_s1,norm_C]|kl|focal|T1|x0.01",
        "feat[no,local_s1,norm_C]|cosine|focal|T16|x0.01",
        "feat[no,local_s1,channel]|cosine|sim|T16|x10",
        "feat[satt,local_s1,norm_C]|l1|focal|T1|x0.01",
        "feat[satt,local_s1,norm_C]|cosine|entropy|T1|x0.01",
        "feat[natt,local_s1,softmax_C]|cosine|no|T1|x0.01",
        "feat[catt,local_s1,norm_C]|cosine|focal|T1|x0.01",
        "feat[satt,local_s1,norm_C]|pearson|no|T1|x0.01",
        "feat[satt,local_s1,norm_C]|cosine|focal|T1|x100",
        "feat[no,local_s2,softmax_C]|l1|sim|T1|x10",
        "feat[satt,scale,norm_C]|cosine|focal|T1|x0.01",
        "feat[mask,local_s1,norm_C]|batch_congruence|focal|T16|x0.01",
        "feat[mask,local_s1,norm_C]|kl|focal|T1|x0.01",
        "feat[catt,local_s1,norm_C]|cosine|no|T1|x0.01",
        "feat[satt,local_s1,norm_C]|l1|no|T1|x0.01",
        "feat[satt,local_s1,norm_C]|l2|focal|T16|x10",
        "feat[no,local_s2,softmax_C]|kl|sim|T1|x100",
        "feat[satt,local_s2,norm_C]|cosine|sim|T1|x0.01",
        "feat[satt,local_s1,norm_C]|kl|no|T1|x0.01",
        "feat[no,local_s1,norm_C]|kl|focal|T16|x0.01",
        "feat[no,local_s1,logsoftmax_N]|cosine|focal|T1|x0.01",
        "logit[catt,no,norm_C]|batch_congruence|conf|T8|x0.01",
        "emb[no,no,softmax_C]|kl|sim|T4|x0.01",
        "feat[satt,local_s1,norm_C]|kl|no|T16|x0.01",
    ]),
}


@pytest.mark.parametrize("case", PINNED)
def test_seeded_cli_search_proposes_the_pinned_genomes(case: str):
    settings, dropped, expected = PINNED[case]
    proposed, dropped_now = cli_search(n_trials=len(expected), **settings)
    assert proposed == expected
    assert dropped_now == dropped
