"""Build the engine adapter a ``[engines.NAME]`` table describes."""

from __future__ import annotations

from swarmd.config_engines import EngineConfig

from . import Engine


def build(cfg: EngineConfig) -> Engine:
    if cfg.kind == "slurm":
        from .slurm import SlurmEngine

        return SlurmEngine(
            cfg.name,
            partition=cfg.partition,
            account=cfg.account,
            qos=cfg.qos,
            sbatch_args=cfg.sbatch_args,
            slurm_conf=cfg.slurm_conf,
        )
    if cfg.kind == "ray":
        from . import ray  # type: ignore[attr-defined,unused-ignore]

        engine: Engine = ray.RayEngine(
            cfg.name, address=cfg.address or "", runtime_env=dict(cfg.runtime_env)
        )
        return engine
    raise ValueError(f"unknown engine kind {cfg.kind!r}")
