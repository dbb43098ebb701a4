"""The learning-rate range test: `finder` (the sweep and its plot), `suggest` (the rules that pick an lr
from the curve), `search` (a range test on a recipe's own model and data, and `schedule.lr_peak: auto`)."""
