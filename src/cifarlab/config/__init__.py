"""Validated experiment config: defaults < recipe YAML < `key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo names itself. Leaf functions take
the section they need (`build_optimizer(model, cfg.optim)`), never the whole config.

The package: `base` (what every section shares), `sections` (data, augment, model, optim, schedule, range
test, lookahead), `schema` (train, checkpoint, output and the whole `Config`), `load` (recipes, overrides,
validation into one-line errors). Import from `cifarlab.config`.
"""
from cifarlab.config.load import (
    apply_override,
    keep_epoch_fractions,
    keep_peak_fraction,
    list_recipes,
    load_config,
    parse_override,
    read_recipe,
    read_with_overrides,
    recipes_dir,
    validate,
    validate_recorded,
)
from cifarlab.config.schema import CheckpointConfig, Config, OutputConfig, TrainConfig
from cifarlab.config.sections import (
    AugmentConfig,
    ColorConfig,
    CropConfig,
    CutmixConfig,
    CutoutConfig,
    DataConfig,
    FlipConfig,
    LookaheadConfig,
    LRFindConfig,
    MixupConfig,
    ModelConfig,
    OptimConfig,
    RotateConfig,
    ScheduleConfig,
)

__all__ = ["Config", "AugmentConfig", "CheckpointConfig", "ColorConfig", "CropConfig", "CutmixConfig",
           "CutoutConfig", "DataConfig", "FlipConfig", "LRFindConfig", "LookaheadConfig", "MixupConfig",
           "ModelConfig", "OptimConfig", "OutputConfig", "RotateConfig", "ScheduleConfig", "TrainConfig",
           "apply_override", "keep_epoch_fractions", "keep_peak_fraction", "list_recipes", "load_config",
           "parse_override", "read_recipe", "read_with_overrides", "recipes_dir", "validate", "validate_recorded"]
