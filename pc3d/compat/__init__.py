"""Import of checkpoints trained with the models' official code (reference key names -> pc3d modules)."""
