"""What only a model author runs: the world's trainers, model cards, loss plots, probe and the
``accelframe world`` command."""
