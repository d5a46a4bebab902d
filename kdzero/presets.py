"""Classical distillers that the genome language expresses exactly, by name.

Each preset is a genome; ``UnifiedLoss(PRESETS["kd"])`` computes the paper's loss (times the genome's
magnitude, the nearest value the search space offers to the paper's weight). ``kdzero.methods`` holds the
classical distillers that need more than the language (learned regressors, memory banks, margins).
"""
from __future__ import annotations

from kdzero.genome import Genome

PRESETS: dict[str, Genome] = {
    # Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network":
    # T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean, T = 4.
    "kd": Genome.parse("logit[no,no,no]|kl|no|T4|x1"),
    # Zagoruyko & Komodakis 2017, "Paying More Attention to Attention": at(x) = normalize(mean_C x^2);
    # mean over batch and positions of (at_s - at_t)^2. The paper's beta is 1000; x100 is the space's maximum.
    "at": Genome.parse("feat[pow2,channel,norm_HW]|l2|no|T1|x100"),
    # Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation": G = row-normalised F F^T over the batch,
    # each side on its own flattened map (any channels and spatial size: the loss neither pools nor connects
    # before a batch Gram); ||G_s - G_t||_F^2 / N^2. The 1/D of our batch Gram cancels in the row normalisation.
    # The paper's weight is 3000; x100 is the space's maximum.
    "sp": Genome.parse("feat[mm,norm_C,no]|l2|no|T1|x100"),
    # Liu et al. 2021, "Exploring Inter-Channel Correlation for Diversity-preserved Knowledge Distillation":
    # per-sample channel Gram F F^T (normalised by H*W here), squared difference averaged over C^2 and batch;
    # a 1x1 conv connector maps student channels to the teacher's. Unequal spatial sizes are not pooled: each
    # side's Gram averages over its own positions (the ``ickd`` method pools, as the authors' code does).
    "ickd": Genome.parse("feat[bmm,no,no]|l2|no|T1|x1"),
    # Shu et al. 2021, "Channel-wise Knowledge Distillation for Dense Prediction": per channel, softmax over
    # positions at T = 4, KL(teacher || student), averaged over channels and batch, times T^2.
    "cwd": Genome.parse("feat[no,no,no]|kl|no|T4|x1"),
    # Romero et al. 2015, "FitNets": MSE between the connected student map and the teacher map.
    "fitnet": Genome.parse("feat[no,no,no]|l2|no|T1|x100"),
    # DIST (Huang et al. 2022), its inter-class term: 1 - pearson(softmax(s), softmax(t)) per sample, batch mean.
    # The language applies the temperature after the transforms, so the softmax runs at tau = 1 (the paper uses
    # tau = 4 inside it); a T4 genome would only multiply this by 16, which drives the proxy's training CE above
    # chance (rejected on CIFAR-10), so the preset keeps T1 and weight 1.
    "dist": Genome.parse("logit[softmax_C,no,no]|pearson|no|T1|x1"),
}

KD_LS_TEXT = "logit[zscore_C,no,no]|kl|no|T2|x9"
"""Sun et al. 2024, "Logit Standardization in Knowledge Distillation" on KD: both sides' logits z-scored per
sample over the classes (``zscore_C``: unbiased std, 1e-7 added to it, the authors' estimator), then KD at their
base temperature 2 with weight 9; equal to the ``ls`` method of ``kdzero.methods``."""
PRESETS["kd_ls"] = Genome.parse(KD_LS_TEXT)
