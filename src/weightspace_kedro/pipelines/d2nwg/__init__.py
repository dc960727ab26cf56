"""The D2NWG pipeline: dataset-conditioned latent diffusion generating classifier heads."""

from weightspace_kedro.pipelines.d2nwg.pipeline import create_pipeline

__all__ = ["create_pipeline"]
