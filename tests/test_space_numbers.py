"""Temperatures and magnitudes as Optuna parameters: grid values keep their old strings (so studies written
before off-grid numbers existed load unchanged), off-grid preset values join the space they seed, and trial keys
follow today's key rules."""
from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from kdzero import Genome
from kdzero.errors import GenomeError
from kdzero.genome import FULL_SPACE, SHRUNK_SPACE
from kdzero.search.evolution import trial_key
from kdzero.search.space import (
    KD_GRID_SPACE,
    distributions,
    genome_from_params,
    genome_to_params,
    space_choices,
    space_from_choices,
)

# What the space encoder wrote before any-positive numbers (f"{value:g}"), copied by hand.
OLD_TEMPERATURES = ["1", "4", "8", "16"]
OLD_MAGNITUDES = ["100", "50", "25", "10", "5", "1", "0.1", "0.01"]


@pytest.mark.parametrize("space", [FULL_SPACE, SHRUNK_SPACE, KD_GRID_SPACE])
def test_grid_numbers_keep_the_parameter_strings_old_studies_hold(space):
    choices = space_choices(space)
    assert choices["temperature"] == OLD_TEMPERATURES and choices["magnitude"] == OLD_MAGNITUDES
    assert space_from_choices(choices) == space


def test_a_study_written_with_old_strings_still_reads_back_its_genomes():
    study = optuna.create_study()
    old = {**distributions(KD_GRID_SPACE), "temperature": CategoricalDistribution(OLD_TEMPERATURES),
           "magnitude": CategoricalDistribution(OLD_MAGNITUDES)}
    params = {**genome_to_params(Genome.parse("logit[no,no,no]|kl|no|T4|x1")), "magnitude": "0.1"}
    study.add_trial(create_trial(params=params, distributions=old, value=1.0))
    assert genome_from_params(study.trials[0].params) == Genome.parse("logit[no,no,no]|kl|no|T4|x0.1")
    assert distributions(KD_GRID_SPACE) == old


def test_an_off_grid_preset_joins_the_space_it_seeds_and_round_trips_through_parameters():
    preset = Genome.parse("logit[no,no,no]|kl|no|T2|x9")
    space = SHRUNK_SPACE.including([preset])
    assert 2 in space.temperatures and 9.0 in space.magnitudes and 4 in space.temperatures
    params = genome_to_params(preset)
    assert params["temperature"] == "2" and params["magnitude"] == "9"
    assert all(params[gene] in choices for gene, choices in space_choices(space).items())
    assert genome_from_params(params) == preset and space_from_choices(space_choices(space)) == space
    fractional = Genome.parse("logit[no,no,no]|kl|no|T2.5|x0.123456789")
    assert genome_from_params(genome_to_params(fractional)) == fractional


def test_parameters_with_a_bad_number_raise_genome_error():
    params = genome_to_params(Genome.parse("logit[no,no,no]|kl|no|T4|x1"))
    for bad in ("0", "-4", "nan", "\u0664", "4_0"):
        with pytest.raises(GenomeError):
            genome_from_params({**params, "temperature": bad})


def test_trial_key_follows_todays_rules_not_a_stale_stored_key():
    genome = Genome.parse("emb[softmax_C,batchnorm,batchnorm]|l2|no|T1|x1")
    stale = "emb[softmax_C,batchnorm]|l2|no|T1|x1"  # what the old key stored: batchnorm taken as idempotent
    trial = create_trial(params=genome_to_params(genome), distributions=distributions(FULL_SPACE), value=1.0,
                         user_attrs={"key": stale}, state=TrialState.COMPLETE)
    assert trial_key(trial) == genome.key != stale
    bare = create_trial(state=TrialState.FAIL, user_attrs={"key": stale})
    assert trial_key(bare) == stale
