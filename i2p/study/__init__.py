"""Studies built from the three stages: the masking/targets ablation (``i2p study ablation``)
and the masking statistics it reports beside the accuracies (``i2p study masking``)."""
