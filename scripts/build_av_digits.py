"""Build the av_digits dataset ahead of time (spoken clips with espeak-ng, then features).

    python scripts/build_av_digits.py                                  # the dataset config's defaults
    python scripts/build_av_digits.py dataset.speeds=[120,200] seed=1  # any overrides of a run

It composes ``dataset=av_digits`` exactly as ``mtmm-train`` would (same overrides, same cache
folder: ``$MTMM_CACHE_DIR`` or ``~/.cache/mtmm-train``), so the run that follows finds
everything in the cache. Deterministic: the same settings give the same files.
"""

from __future__ import annotations

import logging
import sys
import time

from hydra import compose, initialize_config_module

from mtmm_train.data.av_digits import build_clips
from mtmm_train.errors import UserError
from mtmm_train.instantiate import build


def main(overrides: list[str]) -> int:
    """Build the clips and the dataset for ``overrides``; print what was built and where.

    ``-h``/``--help`` prints the usage (this module's docstring) and builds nothing; any other argument
    that starts with ``-`` is refused in one line (exit 2): the arguments are a run's overrides.
    """
    if any(a in ("-h", "--help") for a in overrides):
        print(f"usage: python scripts/build_av_digits.py [override ...]\n\n{__doc__.strip()}")
        return 0
    option = next((a for a in overrides if a.startswith("-")), None)
    if option is not None:
        print(f"build_av_digits: error: unknown option '{option}'; the arguments are overrides of a run "
              "(key=value, e.g. dataset.speeds=[120,200] seed=1); see --help", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with initialize_config_module(config_module="mtmm_train.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["dataset=av_digits", *overrides])
    d = cfg.dataset
    try:
        start = time.perf_counter()
        clips = build_clips(d.cache_dir, list(d.male_voices), list(d.female_voices), list(d.speeds),
                            list(d.pitches), d.sample_rate)
        t_clips = time.perf_counter() - start
        data = build(d, "dataset")
    except UserError as e:
        print(f"build_av_digits: error: {e}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{k} {len(s)}" for k, s in data.splits.items())
    print(f"clips: {clips} ({t_clips:.1f} s)\ndataset: {sizes}; total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
