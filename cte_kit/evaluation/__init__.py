"""Judging rankings against labels: true performance (:mod:`.performance`), per-setting summaries
(:mod:`.summary`), strength sweeps (:mod:`.strength`) and estimators side by side (:mod:`.comparison`).

Labels enter the kit here (and through the estimators that declare they need them), nowhere else."""
