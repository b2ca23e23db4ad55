"""Configs: the default blocks (`base.py`), their allowed values (`validate.py`) and one `get_config()`
file per experiment (`rm.py`, `rm_smollm2.py`, `sft.py`, `ppo.py`).

The experiment files ship in the wheel, so each trainer defaults to its own one; a checkout also has a
top-level `configs/` with a twin of each, so `--config=configs/rm.py` works from the repository root.
"""
