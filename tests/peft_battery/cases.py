"""Our test cases for PEFT's own custom-model battery (``tests/test_custom_models.py`` of the pinned PEFT, fetched
at test time by ``tests/test_peft_battery.py``): the same (name, model id, config class, kwargs) tuples PEFT uses
for its own methods, on its toy models. ``lin1`` of PEFT's ``MLP`` is 20 -> 2, hence the small ranks there."""

import sparseflow.peft_ext  # noqa: F401  (registers the methods)
from sparseflow.peft_ext import DSEEConfig, GSLoRAConfig, PSTConfig

SPARSEFLOW_TEST_CASES = [
    ("Vanilla MLP 1 DSEE", "MLP", DSEEConfig, {"r": 4, "sparse_size": 16, "target_modules": "lin0"}),
    ("Vanilla MLP 2 DSEE", "MLP", DSEEConfig, {"r": 4, "sparse_size": 16, "target_modules": ["lin0"]}),
    ("Vanilla MLP 3 DSEE", "MLP", DSEEConfig, {"r": 2, "sparse_size": 8, "target_modules": ["lin1"]}),
    ("Vanilla MLP 4 DSEE", "MLP", DSEEConfig, {"r": 2, "sparse_size": 0.1, "target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 5 DSEE", "MLP", DSEEConfig,
     {"r": 2, "sparse_size": 8, "target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("Vanilla MLP 6 DSEE magnitude", "MLP", DSEEConfig,
     {"r": 2, "sparse_size": 12, "sparse_init": "magnitude", "target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 7 DSEE random", "MLP", DSEEConfig,
     {"r": 2, "sparse_size": 12, "sparse_init": "random", "target_modules": ["lin0"]}),
    ("Vanilla MLP 1 GSLoRA", "MLP", GSLoRAConfig, {"r": 4, "target_modules": "lin0"}),
    ("Vanilla MLP 2 GSLoRA", "MLP", GSLoRAConfig, {"r": 4, "target_modules": ["lin0"]}),
    ("Vanilla MLP 3 GSLoRA", "MLP", GSLoRAConfig, {"r": 2, "target_modules": ["lin1"]}),
    ("Vanilla MLP 4 GSLoRA per module", "MLP", GSLoRAConfig,
     {"r": 2, "target_modules": ["lin0", "lin1"], "group_by": "module"}),
    ("Vanilla MLP 5 GSLoRA", "MLP", GSLoRAConfig, {"r": 2, "target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("Vanilla MLP 1 PST", "MLP", PSTConfig, {"r": 2, "importance_rank": 2, "target_modules": "lin0"}),
    ("Vanilla MLP 2 PST", "MLP", PSTConfig, {"r": 2, "importance_rank": 2, "target_modules": ["lin0"]}),
    ("Vanilla MLP 3 PST", "MLP", PSTConfig, {"r": 1, "importance_rank": 1, "target_modules": ["lin1"]}),
    ("Vanilla MLP 4 PST", "MLP", PSTConfig,
     {"r": 1, "importance_rank": 1, "target_modules": ["lin0", "lin1"], "sparsity": 0.3}),
    ("Vanilla MLP 5 PST nm", "MLP", PSTConfig,
     {"r": 2, "importance_rank": 2, "target_modules": ["lin0"], "mask": "nm", "nm_pattern": "1:2",
      "modules_to_save": ["lin1"]}),
]
