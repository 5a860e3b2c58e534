"""The default model: bundle.pt + card.json, written by `xraysynth models package` (see `make default-model`)."""
