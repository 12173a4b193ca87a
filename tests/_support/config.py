"""A valid config in the seed layout, shared by the config tests and the config fuzzer (which mutates it)."""

from __future__ import annotations

SPACE = {"hidden_size": [64, 128], "num_layers": [1, 2]}
# Knowledge transfer over two blocks (every mapping form of the seed) and one regular-distillation stage.
KT = {
    "block_names": ["s.layer.0", "s.layer.1"],
    "layer_mappings_for_knowledge_transfer": [
        [["s.layer.0", "t.layer.0"]],
        [["s.layer.1", "1", "t.layer.3", "1"], ["s.layer.1.out", "t.layer.3.out"]],
    ],
    "loss_types": ["MSE", ["KL", "MSE"]],
    "loss_weights": [1.0, [0.3, 0.7]],
    "add_origin_loss": [False, True],
    "train_steps": [10, 20],
    "temperature": [1.0, 2.0],
}
RD = {"loss_types": [["KL"]], "add_origin_loss": [True], "train_steps": [30], "temperature": [3.0]}
SEARCH = {
    "search_space": SPACE,
    "search_algorithm": "random",
    "metrics": ["accuracy", "latency"],
    "higher_is_better": [True, False],
    "max_trials": 4,
    "seed": 7,
}
