"""Weight generators: D2NWG's chunk beta-VAE, latent diffusion, denoisers and EMA, and
the dataset encoder with its contrastive alignment.

D2NWG (``d2nwg_diffusion_weight_generation_review_discussion.txt``): weights are chunked
(:mod:`weightspace.weights`), compressed by :class:`ChunkVAE`, and a
:class:`GaussianDiffusion` over the scaled latents is trained with a
:class:`ChunkDenoiser` conditioned on the dataset embedding and the chunk/layer
identity, its weights averaged by :class:`EMA`.
"""

# Dataset encoder and contrastive alignment (set_transformer.py, dataset_encoder.py,
# alignment.py)
from weightspace.generators.alignment import (
    AlignmentHead,
    SetSampler,
    align_encoder,
    clip_loss,
    retrieval_accuracy,
)
from weightspace.generators.dataset_encoder import (
    CLASS_POOLINGS,
    DatasetEncoderConfig,
    SetDatasetEncoder,
)

# Diffusion, denoisers, VAE, EMA (vae.py, diffusion.py, denoiser.py, ema.py)
from weightspace.generators.denoiser import (
    ChunkDenoiser,
    ChunkDenoiserConfig,
    ConditionEmbedding,
    MLPDenoiser,
    MLPDenoiserConfig,
    timestep_embedding,
)
from weightspace.generators.diffusion import GaussianDiffusion
from weightspace.generators.ema import EMA
from weightspace.generators.schedule import NoiseSchedule, make_schedule
from weightspace.generators.set_transformer import ISAB, MAB, PMA, SAB
from weightspace.generators.vae import (
    ChunkVAE,
    ChunkVAEConfig,
    gaussian_kl,
    train_vae,
)

__all__ = [
    # Diffusion, denoisers, VAE, EMA
    "EMA",
    "ChunkDenoiser",
    "ChunkDenoiserConfig",
    "ChunkVAE",
    "ChunkVAEConfig",
    "ConditionEmbedding",
    "GaussianDiffusion",
    "MLPDenoiser",
    "MLPDenoiserConfig",
    "NoiseSchedule",
    "gaussian_kl",
    "make_schedule",
    "timestep_embedding",
    "train_vae",
]
__all__ += [
    # Dataset encoder and contrastive alignment
    "CLASS_POOLINGS",
    "ISAB",
    "MAB",
    "PMA",
    "SAB",
    "AlignmentHead",
    "DatasetEncoderConfig",
    "SetDatasetEncoder",
    "SetSampler",
    "align_encoder",
    "clip_loss",
    "retrieval_accuracy",
]
