"""Tasks, scoring through the model's own modules, evaluation and the metric registry."""
